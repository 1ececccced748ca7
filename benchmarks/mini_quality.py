"""Measure mini-SD's quality and speed; write benchmarks/results/mini_quality.json and the model card.

    python benchmarks/mini_quality.py            # everything (a few minutes on 2 cores)
    python benchmarks/mini_quality.py --quick    # fewer prompts, for a progress check
"""

import argparse
import json
import platform
import time
from pathlib import Path

import diffusers
import torch

from sdcourse import models, quality, train_mini, world

OUT = Path(__file__).parent / "results" / "mini_quality.json"


def seconds_per_image(pipe, steps=25, repeats=5) -> float:
    """One 64×64 image, `steps` DDIM steps with CFG, batch 1: median wall time."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        pipe("a red circle on a blue background", num_inference_steps=steps, guidance_scale=7.5,
             generator=torch.Generator("cpu").manual_seed(i))
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]  # the first call warms up


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-card", action="store_true", help="do not rewrite the model card")
    args = parser.parse_args()
    n_one, n_two, n_variant = (16, 8, 8) if args.quick else (48, 16, 32)

    def load(task):
        pipe = models.load_pipeline("mini", task=task, device="cpu")
        pipe.set_progress_bar_config(disable=True)
        return pipe

    prompts = [world.caption(s) for s in quality.eval_scenes(n_one, two_objects=False)]
    prompts += [world.caption(s) for s in quality.eval_scenes(n_two, two_objects=True)]
    text2img = load("text2img")
    results = {"prompts": len(prompts), "seeds": 2}
    for scale in (7.5, 1.0):
        start = time.perf_counter()
        results[f"text2img@{scale}"] = quality.text2img_quality(text2img, prompts, guidance_scale=scale)
        print(scale, results[f"text2img@{scale}"], f"{time.perf_counter() - start:.0f}s", flush=True)
    results["vae_psnr_db"] = quality.vae_psnr(text2img.vae, quality.eval_scenes(256))
    results["seconds_per_image_25_steps_cfg"] = seconds_per_image(text2img)
    print(results, flush=True)
    single = quality.eval_scenes(n_variant, two_objects=False)
    if (models.MINI_DIR / "unet_inpaint").is_dir():
        results["inpaint"] = quality.inpaint_quality(load("inpaint"), single)
    if (models.MINI_DIR / "unet_depth").is_dir():
        results["depth2img"] = quality.depth2img_quality(load("depth2img"), single)
    if (models.MINI_DIR / "unet_upscale").is_dir():
        upscale = load("upscale")
        results["upscale"] = quality.upscale_quality(upscale, quality.eval_scenes(n_variant))
        # UPSCALE_GUIDANCE was chosen on the scenes above; these were not looked at.
        results["upscale_heldout"] = quality.upscale_quality(upscale, quality.eval_scenes(2 * n_variant, seed=quality.HELDOUT_SEED))
    results["environment"] = dict(torch=torch.__version__, diffusers=diffusers.__version__,
                                  threads=torch.get_num_threads(), machine=platform.machine())
    print(json.dumps(results, indent=2))
    if args.quick:
        return
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_card:
        train_mini.write_model_card(models.MINI_DIR, card_metrics(results))


def card_metrics(results: dict) -> dict:
    """The flat table of the model card."""
    metrics = {}
    for scale in (7.5, 1.0):
        r = results[f"text2img@{scale}"]
        for key in ("background", "colour", "shape", "size", "position", "two_objects_all_right"):
            if key in r:
                metrics[f"text2img guidance {scale}: {key}"] = r[key]
    metrics["VAE PSNR on held-out renders (dB)"] = results["vae_psnr_db"]
    metrics["seconds per 64×64 image (25 steps, CFG, CPU)"] = results["seconds_per_image_25_steps_cfg"]
    upscale = f"upscale (guidance {quality.UPSCALE_GUIDANCE:g}"
    labels = {"inpaint": "inpaint", "depth2img": "depth2img", "upscale": f"{upscale})",
              "upscale_heldout": f"{upscale}, held-out scenes)"}
    for task, label in labels.items():
        for key, value in results.get(task, {}).items():
            if key != "n":
                metrics[f"{label}: {key}"] = value
    return metrics


if __name__ == "__main__":
    main()

"""Measure mini-SD's quality and speed; write benchmarks/results/mini_quality.json and the model card.

    python benchmarks/mini_quality.py            # everything (a few minutes on 2 cores)
    python benchmarks/mini_quality.py --quick    # fewer prompts, for a progress check
    python benchmarks/mini_quality.py --card-only  # rewrite the card from the results file, measure nothing
"""

import argparse
import json
import platform
import time
from pathlib import Path

import diffusers
import torch

from sdcourse import model_card, models, quality, world

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
    parser.add_argument("--card-only", action="store_true", help=f"rewrite the model card from {OUT.name}, measure nothing")
    args = parser.parse_args()
    if args.card_only:
        write_card(json.loads(OUT.read_text()))
        return
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
        write_card(results)


def write_card(results: dict):
    """Rewrite the shipped model card from `results` (sdcourse.model_card writes it)."""
    metrics = model_card.card_metrics(results)
    model_card.write_card(models.MINI_DIR, metrics, bar_rows(metrics))


# Why a bar is missed, for the card (formatted with the measures `bar_rows` names); a bar that is met shows no text.
WHY_NOT_MET = {
    "colour at 7.5 minus colour at 1.0": (
        "mini-SD gets object colours mostly right without guidance ({colour_at_1:.2f} at 1.0), so guidance runs into "
        "the ceiling: 7.5 can add at most {headroom:.0f} points here. Guidance still makes the difference elsewhere: "
        "from 1.0 to 7.5, shape goes {shape_at_1:.2f} → {shape_at_7_5:.2f} and two objects both right {two_at_1:.2f} → "
        "{two_at_7_5:.2f} (the measured-quality table above). The curve "
        "(notebook 3, 16 prompts × 2 seeds, 10 steps): colour 94 % at scale 1, 100 % from 3 on; shape and all-correct "
        "rise to scale 3 (75 → 90 %, 47 → 81 %) and fall back by 12 (81 %, 62 %, with extra objects); position is right "
        "at every scale."),
}


def bar_rows(metrics: dict) -> list[tuple[str, float, str, bool, str]]:
    """The course's quality bars (tests/test_mini_sd.py asserts each), with the measured value,
    whether it is met, and why not where it is not."""
    g75, g1 = "text2img guidance 7.5", "text2img guidance 1.0"
    held = f"upscale (guidance {quality.UPSCALE_GUIDANCE:g}, held-out scenes)"
    bars = [
        ("background at 7.5", metrics[f"{g75}: background"], "≥", 0.90),
        ("object colour at 7.5", metrics[f"{g75}: colour"], "≥", 0.90),
        ("shape at 7.5", metrics[f"{g75}: shape"], "≥", 0.85),
        ("position at 7.5", metrics[f"{g75}: position"], "≥", 0.70),
        ("two objects, both right at 7.5", metrics[f"{g75}: two_objects_all_right"], "≥", 0.50),
        ("colour at 7.5 minus colour at 1.0", metrics[f"{g75}: colour"] - metrics[f"{g1}: colour"], "≥", 0.20),
        ("VAE PSNR on held-out renders (dB)", metrics["VAE PSNR on held-out renders (dB)"], "≥", 28.0),
        ("inpaint: PSNR outside the mask (dB)", metrics["inpaint: psnr_outside_mask"], "≥", 30.0),
        ("inpaint: prompt's object judged right", metrics["inpaint: prompt_right"], "≥", 0.80),
        ("depth2img: silhouette IoU", metrics["depth2img: silhouette_iou"], "≥", 0.60),
        ("upscale: PSNR minus bicubic's (dB, held-out scenes)",
         metrics[f"{held}: psnr"] - metrics[f"{held}: psnr_bicubic"], ">", 0.0),
        ("upscale: judged right (held-out scenes)", metrics[f"{held}: judged_right"], "≥", 0.90),
        ("seconds per image (25 steps, CFG, CPU)", metrics["seconds per 64×64 image (25 steps, CFG, CPU)"], "≤", 1.0),
    ]
    compare = {"≥": float.__ge__, ">": float.__gt__, "≤": float.__le__}
    colour_at_1 = metrics[f"{g1}: colour"]
    named = dict(colour_at_1=colour_at_1, headroom=100 * (1 - colour_at_1),
                 shape_at_1=metrics[f"{g1}: shape"], shape_at_7_5=metrics[f"{g75}: shape"],
                 two_at_1=metrics[f"{g1}: two_objects_all_right"], two_at_7_5=metrics[f"{g75}: two_objects_all_right"])
    rows = []
    for what, value, op, bar in bars:
        met = compare[op](float(value), bar)
        rows.append((what, float(value), f"{op} {bar:g}", met,
                     "" if met else WHY_NOT_MET.get(what, "Not explained yet.").format(**named)))
    return rows


if __name__ == "__main__":
    main()

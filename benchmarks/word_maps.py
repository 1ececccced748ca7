"""Where each word's cross-attention map sits: on the region the word is about? Writes
benchmarks/results/word_maps.json.

    python benchmarks/word_maps.py [--compare-unet DIR]

Chapter 2's maps (`attention.trace`, every layer, head and step; 20 DDIM steps, guidance 7.5) for
one-object prompts in chapter 2's form ("a red circle on a blue background") and two-object
captions, judged by `quality.word_map_regions`: the share of maps of each kind of word that are
heavier on their own region (an object word's object, the background word's background) than on
any other. "tuning": the prompts the words stage's settings were chosen on (evaluation scenes);
"held_out": the test suite's prompts (held-out scenes, other seeds). With --compare-unet, the same
for another text-to-image UNet folder (e.g. a words run's `runs/NAME/words/final/unet`) with the
text encoder beside it where it has one, side by side in one run.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import diffusers
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel

from sdcourse import models, quality, world

OUT = Path(__file__).parent / "results" / "word_maps.json"


def prompt_sets() -> dict:
    """name -> (prompts, seeds): the tuning prompts, and the held-out ones tests/test_attention.py uses."""
    tuning = quality.one_object_prompts(32) + [world.caption(s) for s in quality.eval_scenes(32, two_objects=True)]
    held_out = quality.one_object_prompts(24, seed=quality.HELDOUT_SEED)
    held_out += [world.caption(s) for s in quality.eval_scenes(24, two_objects=True, seed=quality.HELDOUT_SEED)]
    return {"tuning": (tuning, list(range(len(tuning)))), "held_out": (held_out, [100 + i for i in range(len(held_out))])}


def shares(result: dict) -> dict:
    """The measured share of each kind of word, per group (one object, two objects, all)."""
    return {group: {role: round(v.get("on_its_region", v.get("on_objects")), 3) for role, v in result[group].items()}
            for group in ("one_object", "two_objects", "all")}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--compare-unet", type=Path, help="another text-to-image UNet folder, measured the same way")
    parser.add_argument("--label", default="compared", help="its name in the results")
    args = parser.parse_args()
    pipe = models.load_pipeline("mini", "text2img", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    compared = {"shipped": (pipe.unet, pipe.text_encoder)}
    if args.compare_unet:
        text_encoder = pipe.text_encoder
        if (args.compare_unet.parent / "text_encoder").is_dir():
            text_encoder = CLIPTextModel.from_pretrained(args.compare_unet.parent / "text_encoder", dtype=torch.float32).eval()
        unet = UNet2DConditionModel.from_pretrained(args.compare_unet, dtype=torch.float32).eval()
        compared[args.label] = (unet, text_encoder)
    results = {"steps": 20, "guidance_scale": 7.5, "models": {}}
    for name, (unet, text_encoder) in compared.items():
        pipe.unet, pipe.text_encoder = unet, text_encoder
        results["models"][name] = {}
        for prompts_name, (prompts, seeds) in prompt_sets().items():
            start = time.perf_counter()
            measured = quality.word_map_regions(pipe, prompts, seeds)
            results["models"][name][prompts_name] = {"images": measured["images"], "unjudged": measured["unjudged"],
                                                     **shares(measured), "detail": measured}
            print(name, prompts_name, json.dumps(shares(measured)), f"{time.perf_counter() - start:.0f} s", flush=True)
    if args.compare_unet:
        results["compared_unet"] = {"label": args.label, "folder": str(args.compare_unet)}
    results["environment"] = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                              "threads": torch.get_num_threads(), "machine": platform.machine()}
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    json.dump({k: v for k, v in results.items() if k != "environment"}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()

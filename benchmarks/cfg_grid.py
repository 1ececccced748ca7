"""A guidance grid rendered in batches versus one pipeline call per image; writes
benchmarks/results/cfg_grid.json.

    OMP_NUM_THREADS=1 python benchmarks/cfg_grid.py

Both variants make the same 4 scales × 4 seeds grid of 64×64 images (DDIM, 25 steps) in
the same process and build the same figure:
- "batched": `sdcourse.guidance.cfg_grid`, one pipeline call per scale with the 4 seeds as
  a batch (a list of generators);
- "per_image": 16 pipeline calls of one image each, then `cfg_grid_figure`.
Repetitions are interleaved (batched, per_image, ... in turn) after one warm-up of each;
the median of each and their ratio (per_image / batched: > 1 means batching is faster)
are reported, for the tiny random pipeline and, once trained, for mini-SD.
"""

import json
import os
import platform
import statistics
import time
from pathlib import Path

import diffusers
import numpy as np
import torch

from sdcourse import models
from sdcourse.guidance import cfg_grid, cfg_grid_figure
from sdcourse.testing import tiny_pipeline

OUT = Path(__file__).parent / "results" / "cfg_grid.json"
PROMPT = "a red circle on a blue background"
SCALES = [1.0, 3.0, 7.5, 15.0]
SEEDS = [0, 1, 2, 3]
STEPS = 25


def load(name: str):
    pipe = tiny_pipeline("text2img") if name == "tiny" else models.load_pipeline("mini", "text2img", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def batched(pipe):
    return cfg_grid(pipe, PROMPT, SCALES, SEEDS, num_inference_steps=STEPS, progress=False).images


def per_image(pipe):
    images = [
        [
            pipe(
                PROMPT,
                guidance_scale=scale,
                num_inference_steps=STEPS,
                generator=torch.Generator("cpu").manual_seed(seed),
            ).images[0]
            for seed in SEEDS
        ]
        for scale in SCALES
    ]
    cfg_grid_figure(images, SCALES, SEEDS, title=PROMPT)
    return images


VARIANTS = {"batched": batched, "per_image": per_image}


def max_pixel_difference(grid_a, grid_b) -> int:
    """Largest difference between the two grids' images, in 8-bit grey levels."""
    return max(
        int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())
        for row_a, row_b in zip(grid_a, grid_b)
        for a, b in zip(row_a, row_b)
    )


def measure(pipe, repeats: int) -> dict:
    grids = {variant: run(pipe) for variant, run in VARIANTS.items()}  # warm-up, and the images to compare
    times = {variant: [] for variant in VARIANTS}
    for _ in range(repeats):
        for variant, run in VARIANTS.items():
            start = time.perf_counter()
            run(pipe)
            times[variant].append(time.perf_counter() - start)
    medians = {variant: statistics.median(values) for variant, values in times.items()}
    return {
        "images": len(SCALES) * len(SEEDS),
        "repeats": repeats,
        "median_seconds": medians,
        "min_seconds": {variant: min(values) for variant, values in times.items()},
        "ratio_per_image_to_batched": medians["per_image"] / medians["batched"],
        "max_pixel_difference_levels": max_pixel_difference(grids["batched"], grids["per_image"]),
    }


def main():
    results = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": "cpu",
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "prompt": PROMPT,
        "scales": SCALES,
        "seeds": SEEDS,
        "steps": STEPS,
        "size": [64, 64],
        "scheduler": "DDIM",
    }
    names = ["tiny"] + (["mini"] if models.mini_available() else [])
    for name in names:
        results[name] = measure(load(name), repeats=5 if name == "tiny" else 3)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

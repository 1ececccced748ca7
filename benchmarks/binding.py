"""Two objects: does the prompt or the starting noise decide which goes where? Writes
benchmarks/results/binding.json.

    python benchmarks/binding.py

For 32 two-object evaluation scenes × seeds 0 and 1 (25 DDIM steps, guidance 7.5), the
caption is run as is and with the two positions swapped, same seed
(`quality.arrangement_quality`). Then, for the captions as they are, the arrangement of the
predicted x̂0 after each step: do the mean colours on the two objects' regions fit the
caption's pairing better than the swapped pairing? 0.5 is a coin toss; where the share stops
changing, the arrangement has (on the whole) been decided.
"""

import json
import platform
import sys
from pathlib import Path

import diffusers
import numpy as np
import torch

from sdcourse import models, quality, sampling, world
from sdcourse.latents import seeded_generator

OUT = Path(__file__).parent / "results" / "binding.json"
SEEDS = (0, 1)
STEPS = 25
GUIDANCE = 7.5


def x0_arrangement_by_step(pipe, scenes, seeds=SEEDS, steps=STEPS, guidance_scale=GUIDANCE) -> dict:
    """timestep -> share of images whose predicted x̂0 has the two colours where the caption puts them."""
    prompts = [world.caption(s) for s in scenes]
    frames = []  # per seed: one list of decoded x̂0 images per step (sampling.text2img: the pipeline's loop)
    for seed in seeds:
        frames.append(sampling.text2img(pipe, prompts, num_inference_steps=steps, guidance_scale=guidance_scale,
                                        generator=[seeded_generator(seed) for _ in prompts], return_x0=True,
                                        progress=False).x0_frames)
    masks = [world.render(s).masks for s in scenes]
    expected = [[np.array(world.COLOURS[o.colour], float) for o in s.objects] for s in scenes]
    shares = {}
    for step, timestep in enumerate(pipe.scheduler.timesteps):
        right = []
        for seed_frames in frames:
            for image, (first, second), (c1, c2) in zip(seed_frames[step], masks, expected):
                image = np.asarray(image, dtype=float)
                r1, r2 = image[first].mean(axis=0), image[second].mean(axis=0)
                as_said = np.linalg.norm(r1 - c1) + np.linalg.norm(r2 - c2)
                right.append(as_said < np.linalg.norm(r1 - c2) + np.linalg.norm(r2 - c1))
        shares[int(timestep)] = float(np.mean(right))
    return shares


def main():
    pipe = models.load_pipeline("mini", "text2img", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    scenes = quality.eval_scenes(32, two_objects=True)
    result = {
        "scenes": len(scenes), "seeds": list(SEEDS), "steps": STEPS, "guidance_scale": GUIDANCE,
        "swapped_positions": quality.arrangement_quality(pipe, scenes, seeds=SEEDS, steps=STEPS,
                                                         guidance_scale=GUIDANCE),
        "x0_arrangement_right_by_timestep": x0_arrangement_by_step(pipe, scenes),
        "environment": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    json.dump({k: v for k, v in result.items() if k != "environment"}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()

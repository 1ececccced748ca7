"""DreamBooth measured on the shapes world: the held-out star as a subject (instance images,
captions, class prompts) and judged scores of a model before and after training.

This is the experiment side of chapter 5 and `benchmarks/dreambooth.py`; it sits above both the
trainer (`sdcourse.dreambooth`) and the grader (`sdcourse.judge`), which know nothing of each other.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from . import judge, world
from .dreambooth.checks import check_count, check_finite, check_seeds
from .dreambooth.config import IDENTIFIER
from .latents import seeded_generator
from .models import images_per_batch

CONCEPT_COLOUR = "yellow"


def subject_scenes(n: int = 8, seed: int = 0, colour: str = CONCEPT_COLOUR) -> list:
    """`n` scenes of ONE subject: the held-out star in one colour, at varied sizes, positions and
    backgrounds (never its own colour). A DreamBooth subject is one specific thing, so
    "a sks shape" comes to mean "a {colour} star", and prompts can still change its background."""
    check_count("n", n)
    _check_colour(colour)
    scenes, batch = [], 0
    while len(scenes) < n:
        for scene in world.concept_scenes(4 * n, seed=seed + 1000 * batch):
            if scene.background != colour and len(scenes) < n:
                scene.objects[0].colour = colour
                scenes.append(scene)
        batch += 1
    return scenes


def _check_colour(colour) -> None:
    if colour not in world.COLOURS:
        raise ValueError(f"colour={colour!r} is not one of {', '.join(world.COLOURS)}.")


def concept_caption(scene, identifier: str = IDENTIFIER) -> str:
    """What a person would write under a picture of the subject: its name and the background
    ("a sks shape on a black background"), not the colour, size or place the identifier stands for."""
    subject = [dataclasses.replace(obj, colour=None, size=None, position=None) for obj in scene.objects]
    return world.caption(dataclasses.replace(scene, objects=subject), identifier=identifier)


def write_concept_images(folder, n: int = 8, seed: int = 0, colour: str = CONCEPT_COLOUR,
                         caption_extension: str | None = None) -> Path:
    """Render `subject_scenes(n, seed, colour)` as PNG instance images into `folder`; with
    `caption_extension` (".txt") also each image's `concept_caption` beside it."""
    scenes = subject_scenes(n, seed, colour)  # checks n and colour before the folder is made
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(scenes):
        world.render(scene).pil().save(folder / f"instance_{i:02d}.png")
        if caption_extension:
            (folder / f"instance_{i:02d}{caption_extension}").write_text(concept_caption(scene) + "\n", encoding="utf-8")
    return folder


def concept_class_prompts(n: int = 64, seed: int = 0) -> list[str]:
    """`n` different class prompts that each name a colour and a background ("a red shape on a
    blue background"), for prior preservation on the shapes world.

    The class prompt "a shape" alone protects only itself: after training "a red shape" and the
    other colours came out wrong about half of the time. Class images of every colour on every
    background keep those words meaning what they meant, and since the instance captions also name
    the background (`concept_caption`), "sks" is left as the one word that means "the star"."""
    pairs = [(colour, background) for colour in world.COLOURS for background in world.COLOURS if colour != background]
    if not 1 <= n <= len(pairs):
        raise ValueError(f"n={n!r} must be between 1 and {len(pairs)} (the colour-background pairs).")
    chosen = [pairs[i] for i in np.random.default_rng(seed).permutation(len(pairs))[:n]]
    return [world.caption(world.Scene(background, [world.SceneObject(shape=None, colour=colour)]))
            for colour, background in chosen]


def concept_settings() -> dict:
    """The subject's side of the course's DreamBooth recipe on the shapes world (the preset holds
    the hardware's): per-image captions that name the background, and `concept_class_prompts`."""
    return dict(caption_extension=".txt", class_prompt=concept_class_prompts())


def concept_prompts(identifier: str = IDENTIFIER, colour: str | None = CONCEPT_COLOUR) -> dict:
    """The three prompt sets of `concept_report`: the subject alone, the subject on other
    backgrounds, and the plain class in each colour (the language-drift check)."""
    noun = world.CLASS_NOUN
    backgrounds = [c for c in world.COLOURS if c != colour]
    return {
        "concept": [f"a {identifier} {noun}"],
        "composition": [f"a {identifier} {noun} on a {b} background" for b in backgrounds],
        "class": [f"a {c} {noun}" for c in world.COLOURS],
    }


@torch.no_grad()
def _judged(pipe, prompts, seeds, identifier, steps, guidance_scale) -> list:
    """Generate every prompt with every seed and judge each image against its prompt (16 images per
    call on mini-SD, as many as fit a 16 GB GPU at larger sizes)."""
    batch_size = images_per_batch(pipe, most=16)
    pipe.set_progress_bar_config(disable=True)
    jobs = [(p, s) for p in prompts for s in seeds]
    verdicts = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        images = pipe(
            [p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance_scale,
            generator=[seeded_generator(s) for _, s in chunk],
        ).images
        verdicts += [judge.judge(image, p, identifier=identifier) for image, (p, _) in zip(images, chunk)]
    return verdicts


def concept_scores(pipe, identifier: str = IDENTIFIER, colour: str | None = CONCEPT_COLOUR, seeds=range(30),
                   composition_seeds=range(3), class_seeds=range(1000, 1010), num_inference_steps: int = 25,
                   guidance_scale: float = 7.5) -> dict:
    """The fraction of images the judge finds fully right, for one pipeline:

    - concept: "a sks shape" shows the star (concept_colour: ... in `colour`);
    - composition: "a sks shape on a green background" gets both star and background right;
    - class: "a red shape" shows a red circle, square or triangle, not a star (language drift);
      its seeds are not those of the class images (0, 1, ...). Ten seeds per colour, so that the
      score's own spread stays well under the drift bar of 10 points.
    """
    seeds, composition_seeds, class_seeds = (check_seeds(name, value) for name, value in (
        ("seeds", seeds), ("composition_seeds", composition_seeds), ("class_seeds", class_seeds)))
    check_count("num_inference_steps", num_inference_steps)
    check_finite("guidance_scale", guidance_scale)
    if colour is not None:
        _check_colour(colour)
    prompts = concept_prompts(identifier, colour)
    run = dict(identifier=identifier, steps=num_inference_steps, guidance_scale=guidance_scale)
    concept = _judged(pipe, prompts["concept"], seeds, **run)
    composition = _judged(pipe, prompts["composition"], composition_seeds, **run)
    classes = _judged(pipe, prompts["class"], class_seeds, **run)
    scores = {
        "concept": float(np.mean([v.correct for v in concept])),
        "composition": float(np.mean([v.correct for v in composition])),
        "class": float(np.mean([v.correct for v in classes])),
    }
    if colour is not None:
        scores["concept_colour"] = float(np.mean(
            [v.correct and any(o.colour == colour for o in v.found.objects) for v in concept]
        ))
    return scores


def concept_report(pipe_before, pipe_after, **settings) -> dict:
    """`concept_scores` before and after DreamBooth, and `class_drop` = class accuracy
    before − after (positive: the model forgot some of the class). `settings` go to concept_scores."""
    before, after = concept_scores(pipe_before, **settings), concept_scores(pipe_after, **settings)
    return {"before": before, "after": after, "class_drop": before["class"] - after["class"]}


CHAPTER_STEPS = 400  # chapter 5's live runs: the fewest steps in which its LoRA with prior preservation drew the star


def chapter_settings(max_train_steps: int | None = None) -> dict:
    """Chapter 5's live runs on mini-SD: what they change in the "cpu-mini" preset, so that a LoRA
    with prior preservation learns the star in the steps a 2-core CPU affords in the chapter.

    The preset's plain MSE and cosine decay learn the star in about 600 steps; min-SNR weighting with
    an x0-weight floor (the noisiest steps, where a new outline is decided) at a constant rate after
    the warm-up learns it in fewer (benchmarks/dreambooth_fast.py measures both against steps).
    `max_train_steps` None: CHAPTER_STEPS; the warm-up stays a twelfth of the run, as the preset's.
    """
    if max_train_steps is None:
        max_train_steps = CHAPTER_STEPS
    if not isinstance(max_train_steps, int) or max_train_steps < 1:
        raise ValueError(f"max_train_steps={max_train_steps!r} must be a positive whole number of steps.")
    return dict(
        concept_settings(), max_train_steps=max_train_steps, lr_warmup_steps=max_train_steps // 12,
        lr_scheduler="constant_with_warmup", snr_gamma=5.0, snr_floor=0.2, num_class_images=64,
        num_inference_steps=25,
    )


def chapter_eval_settings() -> dict:
    """Chapter 5's live measurement (`concept_scores` settings): 10 seeds for "a sks shape" (a bar
    of 0.7 is 7 images in 10) and 3 per colour for the class, fewer than the project's 30 and 10."""
    return dict(seeds=range(10), composition_seeds=range(1), class_seeds=range(1000, 1003), num_inference_steps=20)

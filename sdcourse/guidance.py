"""Classifier-free guidance: the arithmetic, grids over guidance scales, and what it buys.

At every denoising step the UNet predicts the noise twice, without the text
(`noise_pred_uncond`, from the empty or negative prompt) and with it (`noise_pred_text`).
Classifier-free guidance (Ho & Salimans, 2022) walks from the first towards the second and
`guidance_scale` times as far:

    noise_pred = noise_pred_uncond + guidance_scale · (noise_pred_text − noise_pred_uncond)

0 is the unconditional model, 1 the text-conditioned one, 7.5 (SD's default) much "more
of the prompt". `cfg_grid` shows it as pictures; `sdcourse.quality.adherence_curve` measures it.

diffusers' pipelines switch guidance off for `guidance_scale <= 1` (they run the UNet on the
text only), so through a pipeline every scale in [0, 1] gives the text-only image.
`sdcourse.sampling.text2img` applies the formula for every scale, so its scale 0 really is
the unconditional model.
"""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib.figure import Figure
from tqdm.auto import tqdm

from . import checks
from .latents import seeded_generator
from .plotting import image_grid

# diffusers' pipelines check `height % 8` and `width % 8` themselves, whatever the VAE factor.
PIPELINE_SIZE_MULTIPLE = 8


# --------------------------------------------------------------------------- arithmetic


def classifier_free_guidance(noise_pred_uncond, noise_pred_text, guidance_scale):
    """Mix the unconditional and text noise predictions: uncond + scale · (text − uncond)."""
    return noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)


def rescale_guidance(noise_cfg, noise_pred_text, guidance_rescale):
    """Tame the over-exposure that high guidance scales cause (Lin et al., 2023, section 3.4).

    The guided prediction `noise_cfg` has a larger spread than the text prediction. Rescale
    it, image by image, to the standard deviation of `noise_pred_text`, then mix the two:
    `guidance_rescale` φ = 0 keeps `noise_cfg`, 1 takes the rescaled one (the paper uses 0.7;
    all-rescaled images look plain). The same computation as diffusers' `rescale_noise_cfg`.
    """
    dims = list(range(1, noise_cfg.ndim))  # every dimension but the batch
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    noise_rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * noise_rescaled + (1 - guidance_rescale) * noise_cfg


# --------------------------------------------------------------------------- checks


def check_guidance_scale(guidance_scale, name: str = "guidance_scale") -> float:
    """`guidance_scale` as a float, or a ValueError if it is not a finite number ≥ 0 (NaN or
    infinity would turn every pixel into NaN: a black image, without an error)."""
    guidance_scale = checks.finite(guidance_scale, name, example=7.5)
    if guidance_scale < 0:
        raise ValueError(
            f"{name}={guidance_scale} is negative: use 0 (unconditional), 1 (text only) or more (stronger guidance)."
        )
    return float(guidance_scale)


def _check_scales(scales) -> list[float]:
    scales = checks.as_list(scales, "scales", example="[1, 3, 7.5]")
    return [check_guidance_scale(scale, name=f"scales[{i}]") for i, scale in enumerate(scales)]


def _check_seeds(seeds) -> list[int]:
    return checks.int_list(seeds, "seeds", example="[0, 1, 2]", minimum=-(2**63))


def _check_prompts(prompts) -> list[str]:
    prompts = checks.prompt(prompts, "prompts")
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt.")
    return prompts


def _check_pipeline_size(name: str, value) -> None:
    """None (the model's own size), or a positive multiple of 8, which diffusers' pipelines require."""
    if value is not None:
        checks.size(value, name, PIPELINE_SIZE_MULTIPLE)


# --------------------------------------------------------------------------- grids


@dataclass
class GridResult:
    """The images of a guidance grid, `images[scale_index][seed_index]`, and their figure."""

    images: list
    figure: Figure
    scales: list
    seeds: list


def cfg_grid_figure(images, scales, seeds, title=None) -> Figure:
    """The figure of a guidance grid: one row per scale, one column per seed."""
    figure = image_grid(
        [image for row in images for image in row],
        rows=len(scales),
        cols=len(seeds),
        row_titles=[f"scale {scale:g}" for scale in scales],
        col_titles=[f"seed {seed}" for seed in seeds],
        figsize_per=1.6,
    )
    if title:
        figure.suptitle(title, fontsize="medium")
    return figure


def cfg_grid(
    pipe,
    prompt: str,
    scales,
    seeds,
    num_inference_steps: int = 25,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    progress: bool = True,
) -> GridResult:
    """Render `prompt` at every guidance scale × seed; rows are scales, columns seeds.

    One pipeline call per scale renders all seeds as one batch (a list of generators, one per
    seed, so each image gets exactly the noise that seed alone would give). Remember that the
    pipeline turns guidance off for scales ≤ 1: 0, 0.5 and 1 give the same image.
    `progress=False` also silences the pipeline's own bar (`pipe.set_progress_bar_config`).
    """
    checks.prompt(prompt, "prompt", allow_list=False)  # cfg_grid shows one prompt
    scales = _check_scales(scales)
    seeds = _check_seeds(seeds)
    num_inference_steps = checks.positive_int(num_inference_steps, "num_inference_steps")
    _check_pipeline_size("height", height)
    _check_pipeline_size("width", width)
    if not progress:
        pipe.set_progress_bar_config(disable=True)

    images = []
    for scale in tqdm(scales, desc="guidance scales", disable=not progress):
        output = pipe(
            prompt,
            negative_prompt=negative_prompt,
            num_images_per_prompt=len(seeds),
            generator=[seeded_generator(seed) for seed in seeds],
            guidance_scale=scale,
            num_inference_steps=num_inference_steps,
            height=height,
            width=width,
        )
        images.append(output.images)
    figure = cfg_grid_figure(images, scales, seeds, title=prompt)
    return GridResult(images=images, figure=figure, scales=scales, seeds=seeds)

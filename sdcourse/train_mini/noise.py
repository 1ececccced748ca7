"""How mini-SD's training noises its latents: offset and pyramid noise, mirrored signals at high
noise, and more high-noise timesteps for two-object scenes."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import world
from ..training import offset_noise


def training_noise(shape, generator: torch.Generator, offset: float, pyramid_discount: float = 0.0) -> torch.Tensor:
    """Gaussian noise for one training batch, with offset noise and optionally pyramid noise.

    Offset noise (a per-channel constant added to the noise): with SD's schedule, √ᾱ_T ≈ 0.07
    keeps the mean of each latent channel (the background colour) visible at the last timestep
    on a 16×16 grid, so without it the model reads the background from the noise and ignores
    the prompt's; sampling starts from noise whose mean says nothing.

    Pyramid noise (multi-resolution noise) adds upsampled noise at 8×8, 4×4, 2×2 and 1×1 with
    weights discount, discount², ...: white noise on a 16×16 grid hides fine detail long before
    it hides where an object is, so the noisy latents still show the layout at timesteps the
    model sees; with coarse noise it has to take the layout, "on the left", from the caption.
    """
    noise = torch.randn(shape, generator=generator)
    if pyramid_discount > 0:
        size = shape[-1]
        for level in range(1, int(math.log2(size)) + 1):
            coarse = torch.randn(shape[:2] + (size >> level, size >> level), generator=generator)
            noise = noise + F.interpolate(coarse, size=shape[-2:], mode="bilinear") * pyramid_discount**level
        noise = noise / noise.std(dim=(1, 2, 3), keepdim=True)
    return noise + offset_noise(shape, generator, offset)


MIRROR_AXES = {"left": -1, "right": -1, "top": -2, "bottom": -2}  # the latent axis that swaps each pair


def mirror_axis(caption: str) -> int | None:
    """The latent axis (-1 width, -2 height) whose flip moves every object the caption places to
    the opposite place; None when the caption places none, or says "center"."""
    if not caption:
        return None
    axes = {MIRROR_AXES.get(obj.position) for obj in world.parse_caption(caption).objects}
    return axes.pop() if len(axes) == 1 and None not in axes else None


def mirrored_signal(clean, captions, timesteps, draws, p_mirror: float, min_timestep: int) -> torch.Tensor:
    """The clean latents that the noisy latents are built from: for a share `p_mirror` of the
    examples at timesteps ≥ `min_timestep` whose caption places the objects, their mirror image.

    With SD's schedule the noisiest timesteps keep a faint copy of the image (√ᾱ ≈ 0.07-0.2), and
    the model learns to read where each object is from it instead of from the caption; sampling
    starts from pure noise, whose random faint "copy" then decides which object goes where. Built
    from a mirrored copy and trained to predict the unmirrored image, the model has to take the
    arrangement from the words at those noise levels.
    """
    signal = clean.clone()
    for k, caption in enumerate(captions):
        axis = mirror_axis(caption)
        if axis is not None and timesteps[k] >= min_timestep and draws[k] < p_mirror:
            signal[k] = clean[k].flip(axis)
    return signal


def epsilon_target(noise_scheduler, noise, signal, clean, timesteps) -> torch.Tensor:
    """The noise to predict for `add_noise(signal, noise, timesteps)` so that x0 comes out as
    `clean`: `noise` itself where the signal is the clean latents."""
    alphas_cumprod = noise_scheduler.alphas_cumprod[timesteps.cpu()].to(noise.device)[:, None, None, None]
    return noise + (alphas_cumprod / (1 - alphas_cumprod)).sqrt() * (signal - clean)


def more_high_noise(timesteps: np.ndarray, two_objects: np.ndarray, p_high: float, min_timestep: int, rng) -> np.ndarray:
    """The batch's timesteps with a share `p_high` of its two-object examples redrawn from
    [min_timestep, 1000): where sampling decides which object goes where, and where the mirrored
    examples leave only the words to say it. Uniform timesteps put only 40 % of them there."""
    redrawn = two_objects & (rng.random(len(timesteps)) < p_high)
    timesteps[redrawn] = rng.integers(min_timestep, 1000, int(redrawn.sum()))
    return timesteps

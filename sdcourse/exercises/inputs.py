"""Inputs the checks call the learners' functions with: seeded noise and small shapes-world images.

Checks must cost seconds on a CPU with any model, so their images are at most 128 px even
for a 512 px model: every VAE and UNet accepts any multiple of its latent cell.
"""

import torch
from PIL import Image

from .. import world
from ..latents import seeded_generator

MAX_CHECK_SIZE = 128


def seeded_randn(shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Standard normal numbers of `shape`, the same on every machine for the same seed."""
    return torch.randn(shape, generator=seeded_generator(seed), dtype=dtype)


def native_size(pipe) -> int:
    """The image side the model was trained at: latent grid × VAE factor."""
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def check_size(pipe) -> int:
    """The image side checks use: the model's own, capped at 128 px."""
    return min(native_size(pipe), MAX_CHECK_SIZE)


def check_image(pipe, seed: int = 0, size: int | None = None) -> Image.Image:
    """A shapes-world scene drawn at the check size."""
    scene = world.sample_scenes(1, seed=seed)[0]
    size = size or check_size(pipe)
    return world.render_pil(scene).resize((size, size), Image.BICUBIC)


def check_image_pixels(pipe, seed: int = 0) -> torch.Tensor:
    """`check_image` as the VAE's input: a (1, 3, H, W) tensor in [-1, 1] on the pipeline's device."""
    pixels = pipe.image_processor.preprocess(check_image(pipe, seed))
    return pixels.to(pipe.device, pipe.vae.dtype)

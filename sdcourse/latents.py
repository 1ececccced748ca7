"""Latent diffusion and the VAE (notebook 1).

Stable Diffusion does not denoise pixels: its VAE squeezes a 3×512×512 image into
4×64×64 latents (48× fewer numbers), the UNet works there, and the VAE decodes the
result. These helpers show each step: encode, decode, how much is lost, what the four
latent channels look like, what noise at a timestep does, and how to walk between latents.

Images go in as PIL images, uint8 (H, W, 3) arrays, float (H, W, 3) arrays in [0, 1] (the
pipelines' `output_type="np"`), or torch tensors already in the VAE's range [-1, 1],
shaped (3, H, W) or (B, 3, H, W). Latents come out scaled by `vae.config.scaling_factor`,
which is what the UNet sees.
"""

import math
import numbers

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from matplotlib.figure import Figure
from PIL import Image

from . import checks


def vae_scale_factor(vae) -> int:
    """How many pixels one latent covers per side: 2 ** (number of VAE blocks - 1).

    8 for SD's VAE (512 px → 64 latents), 4 for mini-SD and the x4 upscaler. `vae` may be
    an AutoencoderKL or just its config (a dict works too).
    """
    config = vae.config if hasattr(vae, "config") else vae
    block_out_channels = config["block_out_channels"]
    return 2 ** (len(block_out_channels) - 1)


def check_image_size(height: int, width: int, factor: int) -> None:
    """Raise a ValueError unless both sides are positive multiples of the VAE factor."""
    for name, size in (("height", height), ("width", width)):
        checks.whole(size, name, minimum=1)
        if size % factor != 0:
            lower, upper = size // factor * factor, (size // factor + 1) * factor
            raise ValueError(
                f"{name}={size} must be divisible by the VAE factor {factor} "
                f"(each latent covers {factor}×{factor} pixels); resize to {lower or factor} or {upper}."
            )


def _as_list(images) -> list:
    """One image or a list of images as a list (a 4-D array or tensor counts as a batch)."""
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("images is empty: pass at least one image.")
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


def _image_size(image) -> tuple[int, int]:
    """(height, width) of a PIL image, an (H, W, C) array or a (C, H, W) tensor."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    if isinstance(image, np.ndarray):
        return image.shape[0], image.shape[1]
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"images must be PIL images, numpy arrays or torch tensors, got {type(image).__name__}.")
    return image.shape[-2], image.shape[-1]


def images_to_tensor(images, vae) -> torch.Tensor:
    """Images as one (B, 3, H, W) float tensor in [-1, 1], the VAE's input.

    PIL images and arrays go through `VaeImageProcessor`, as in the pipelines; tensors are
    taken as already in [-1, 1].
    """
    images = _as_list(images)
    factor = vae_scale_factor(vae)
    sizes = {_image_size(image) for image in images}
    if len(sizes) > 1:
        raise ValueError(f"images must all have the same size to form a batch, got (height, width) {sorted(sizes)}.")
    height, width = sizes.pop()
    check_image_size(height, width, factor)

    if all(isinstance(image, torch.Tensor) for image in images):
        pixels = torch.cat([image.reshape(-1, *image.shape[-3:]) for image in images]).float()
        if pixels.shape[1] != 3:
            raise ValueError(f"images: tensors must be (3, H, W) or (B, 3, H, W), got channel size {pixels.shape[1]}.")
        if pixels.min() < -1.001 or pixels.max() > 1.001:
            raise ValueError(
                f"images: tensors must be in the VAE's range [-1, 1], got [{pixels.min():.3f}, {pixels.max():.3f}]; "
                "for a [0, 1] tensor pass `tensor * 2 - 1`."
            )
        return pixels

    arrays = []
    for image in images:
        if isinstance(image, Image.Image):  # any mode: 16-bit grey, palette, RGBA over white (checks.to_rgb)
            image = np.asarray(checks.to_rgb(image, "images"))
        if isinstance(image, torch.Tensor):
            raise TypeError("images mixes tensors with PIL images or arrays: pass one kind at a time.")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"images: arrays must be (H, W, 3) RGB, got shape {image.shape}.")
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / 255.0
        elif not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"images: arrays must be uint8 (0-255) or float (0-1), got dtype {image.dtype}.")
        elif not np.isfinite(image).all():
            raise ValueError("images contains NaN or infinite values.")
        elif image.min() < -0.001 or image.max() > 1.001:
            raise ValueError(f"images: float arrays must be in [0, 1], got [{image.min():.3f}, {image.max():.3f}].")
        arrays.append(image.astype(np.float32))
    processor = VaeImageProcessor(vae_scale_factor=factor)
    # numpy_to_pt leaves a channels-last memory layout; contiguous makes every input take the same conv kernels.
    return processor.preprocess(np.stack(arrays)).contiguous()  # (B, 3, H, W) in [-1, 1]


@torch.no_grad()
def encode(vae, images, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Encode images to latents of shape (B, 4, H/f, W/f), scaled by `vae.config.scaling_factor`.

    The VAE's encoder outputs a Gaussian per latent; `sample=False` takes its mean
    (deterministic), `sample=True` draws from it with `generator`, as training does.
    """
    pixels = images_to_tensor(images, vae).to(device=vae.device, dtype=vae.dtype)
    latent_dist = vae.encode(pixels).latent_dist
    latents = latent_dist.sample(generator=generator) if sample else latent_dist.mode()
    return latents * vae.config.scaling_factor


@torch.no_grad()
def decode_pixels(vae, latents: torch.Tensor) -> torch.Tensor:
    """Un-scale latents and run the VAE decoder: a (B, 3, H, W) tensor, roughly in [-1, 1]."""
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"latents must be a torch tensor (what encode returns), got {type(latents).__name__}.")
    if latents.ndim == 3:
        latents = latents[None]
    channels = vae.config.latent_channels
    if latents.ndim != 4 or latents.shape[1] != channels:
        raise ValueError(
            f"latents must be shaped (B, {channels}, h, w) or ({channels}, h, w), got {tuple(latents.shape)}."
        )
    latents = latents.to(device=vae.device, dtype=vae.dtype)
    return vae.decode(latents / vae.config.scaling_factor).sample.float().cpu()


def decode(vae, latents: torch.Tensor, output_type: str = "pil"):
    """Decode scaled latents to images: PIL images by default ("np" and "pt" as in the pipelines).

    `VaeImageProcessor.postprocess` maps the decoder's [-1, 1] to [0, 1] and clamps what
    overshoots.
    """
    processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor(vae))
    return processor.postprocess(decode_pixels(vae, latents), output_type=output_type)


def compression_factor(vae, height: int, width: int) -> dict:
    """How many numbers an image has in pixel space and in latent space, and the ratio.

    Works from the config alone (an AutoencoderKL, its `.config` or a dict), so the real SD
    numbers can be shown without building its VAE: 512×512 → 786 432 pixel values vs
    4×64×64 = 16 384 latent values, 48× fewer.
    """
    config = vae.config if hasattr(vae, "config") else vae
    factor = vae_scale_factor(config)
    check_image_size(height, width, factor)
    latent_shape = (config["latent_channels"], height // factor, width // factor)
    pixel_values = config["in_channels"] * height * width
    latent_values = math.prod(latent_shape)
    return {
        "pixel_shape": (config["in_channels"], height, width),
        "latent_shape": latent_shape,
        "pixels": pixel_values,
        "latents": latent_values,
        "ratio": pixel_values / latent_values,
        "vae_factor": factor,
    }


def reconstruction_error(vae, images) -> dict:
    """How much the VAE loses: encode (mean), decode, compare with the input in [0, 1].

    Returns {"mse", "psnr" (dB, over the batch), "psnr_per_image"} — PSNR = 10·log10(1 / MSE).
    """
    original = (images_to_tensor(images, vae) / 2 + 0.5).clamp(0, 1)
    reconstructed = decode(vae, encode(vae, images), output_type="pt")
    squared_error = (reconstructed - original) ** 2
    mse = squared_error.mean().item()
    mse_per_image = squared_error.flatten(1).mean(dim=1).tolist()
    return {
        "mse": mse,
        "psnr": psnr_from_mse(mse),
        "psnr_per_image": [psnr_from_mse(value) for value in mse_per_image],
    }


def psnr_from_mse(mse: float, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB from a mean squared error: images in [0, 1] (`peak=1`) or
    0-255 (`peak=255`); infinite for a perfect copy."""
    mse = checks.finite(mse, "mse", low=0)
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def show_channels(
    latents: torch.Tensor, shared_scale: bool = True, cmap: str = "gray", figsize_per: float = 2.0
) -> Figure:
    """The latent channels side by side, one panel each, with a colour bar.

    `shared_scale=True` puts every channel on the same colour scale (so their ranges can be
    compared); False scales each channel to its own range.
    """
    if latents.ndim == 4:
        if latents.shape[0] != 1:
            raise ValueError(f"show_channels shows one image's latents, got a batch of {len(latents)}: pass latents[i].")
        latents = latents[0]
    if latents.ndim != 3:
        raise ValueError(f"latents must be shaped (C, h, w) or (1, C, h, w), got {tuple(latents.shape)}.")
    channels = latents.detach().float().cpu().numpy()
    vmin, vmax = (channels.min(), channels.max()) if shared_scale else (None, None)

    n = len(channels)
    fig = Figure(figsize=(figsize_per * n + 0.8, figsize_per + 0.6), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)
    for index, (ax, channel) in enumerate(zip(axes[0], channels)):
        shown = ax.imshow(channel, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(f"channel {index}")
        ax.set_xticks([])
        ax.set_yticks([])
        if not shared_scale:
            fig.colorbar(shown, ax=ax, shrink=0.8)
    if shared_scale:
        fig.colorbar(shown, ax=axes[0].tolist(), shrink=0.8)
    scale = "one shared colour scale" if shared_scale else "each channel on its own colour scale"
    fig.suptitle(f"{n} latent channels, {channels.shape[1]}×{channels.shape[2]} ({scale})")
    return fig


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator: the same seed gives the same noise on every device. A list of them, one
    per image, gives image k of a batch the noise that seed k alone would give."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    return torch.Generator("cpu").manual_seed(int(seed))


def check_timesteps(timesteps, scheduler) -> torch.Tensor:
    """`timesteps` as a 1-D long tensor of the scheduler's training timesteps, or a ValueError."""
    num_train_timesteps = scheduler.config.num_train_timesteps
    if isinstance(timesteps, (int, float)) and not isinstance(timesteps, bool):
        timesteps = [timesteps]  # one timestep is fine here: it gives one noised image
    checks.number_list(timesteps, "timesteps", example=f"[0, 500, {num_train_timesteps - 1}]")
    timesteps = torch.as_tensor(timesteps, dtype=torch.long).reshape(-1)
    if timesteps.min() < 0 or timesteps.max() >= num_train_timesteps:
        raise ValueError(
            f"timesteps must be a non-empty list of integers in [0, {num_train_timesteps - 1}], "
            f"got {timesteps.tolist()}."
        )
    return timesteps


def noise_latents(
    latents: torch.Tensor, timesteps, scheduler, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One image's latents noised to each of `timesteps` with the same noise: (T, C, h, w).

    Uses `scheduler.add_noise`: x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 - ᾱ_t)·ε for DDPM-family
    schedulers (DDIM, DDPM, PNDM). Sigma-based schedulers (Euler, LMS) need
    `scheduler.set_timesteps(...)` first and only accept timesteps from that schedule.
    """
    if latents.ndim == 4:
        if latents.shape[0] != 1:
            raise ValueError(f"noise_latents takes one image's latents, got a batch of {len(latents)}: pass latents[i].")
        latents = latents[0]
    timesteps = check_timesteps(timesteps, scheduler)
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
    batch = len(timesteps)
    return scheduler.add_noise(
        latents.expand(batch, *latents.shape), noise.expand(batch, *noise.shape).to(latents.device), timesteps
    )


def noised_images(
    vae, image, timesteps, scheduler, generator: torch.Generator | None = None
) -> list[Image.Image]:
    """Encode `image`, noise its latents to each timestep (same noise), decode: the
    "what noise at timestep t looks like" figure."""
    check_timesteps(timesteps, scheduler)  # before the VAE runs
    latents = encode(vae, image)
    return decode(vae, noise_latents(latents, timesteps, scheduler, generator))


def slerp(latents_a: torch.Tensor, latents_b: torch.Tensor, t: float, dot_threshold: float = 0.9995) -> torch.Tensor:
    """Spherical interpolation between two latents (t=0 gives a, t=1 gives b).

    Gaussian noise in many dimensions lives near a sphere of radius sqrt(numel); a straight
    line between two such points cuts through the inside (at t=0.5 its norm is ~0.71×),
    which the UNet has never seen. Slerp follows the sphere. Nearly parallel inputs
    (|cos| > dot_threshold) fall back to a straight line, where slerp is numerically unstable.
    """
    t = checks.finite(t, "t", example=0.5)
    dot_threshold = checks.finite(dot_threshold, "dot_threshold", low=0, high=1)
    if latents_a.shape != latents_b.shape:
        raise ValueError(
            "latents_a and latents_b must have the same shape, "
            f"got {tuple(latents_a.shape)} and {tuple(latents_b.shape)}."
        )
    a, b = latents_a.double(), latents_b.double()
    cos_theta = (a.flatten() @ b.flatten()) / (a.norm() * b.norm())
    if cos_theta.abs() > dot_threshold:
        result = (1 - t) * a + t * b
    else:
        theta = torch.arccos(cos_theta)
        result = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    return result.to(latents_a.dtype)


def interpolate(latents_a: torch.Tensor, latents_b: torch.Tensor, n: int, method: str = "slerp") -> list[torch.Tensor]:
    """`n` latents from a to b (both included), by "slerp" or straight "lerp"."""
    n = checks.whole(n, "n", minimum=2)  # the two end points
    if method not in ("slerp", "lerp"):
        raise ValueError(f"method={method!r} must be 'slerp' or 'lerp'.")
    if latents_a.shape != latents_b.shape:
        raise ValueError(
            "latents_a and latents_b must have the same shape, "
            f"got {tuple(latents_a.shape)} and {tuple(latents_b.shape)}."
        )
    ts = np.linspace(0.0, 1.0, n)
    if method == "lerp":
        return [(1 - t) * latents_a + t * latents_b for t in ts]
    return [slerp(latents_a, latents_b, float(t)) for t in ts]


def _side_pair(size, name: str, vae_factor: int) -> tuple[int, int]:
    """A size in pixels (an int, or (height, width)) as two positive multiples of the VAE factor."""
    height, width = (size, size) if isinstance(size, numbers.Integral) else checks.as_list(size, name, "(512, 512)")
    return checks.size(height, name, vae_factor), checks.size(width, name, vae_factor)


def attention_cost_ratio(size_a, size_b, vae_factor: int = 8) -> dict:
    """Why diffusion runs on latents: self-attention compares every token with every other,
    so its cost grows with the square of the token count.

    Sizes are in pixels (an int for a square image, or (height, width)). Returns
    - "tokens_a", "tokens_b": pixel counts (one token per pixel in pixel space);
    - "ratio": attention cost of a over b (128 px vs 64 px: 4× the tokens, 16× the cost);
    - "latent_tokens_a": tokens of a in latent space (÷ vae_factor² per side);
    - "pixel_vs_latent": attention cost in pixel space over latent space, vae_factor⁴
      (4096 for SD's factor 8).
    """
    vae_factor = checks.positive_int(vae_factor, "vae_factor")
    height_a, width_a = _side_pair(size_a, "size_a", vae_factor)
    height_b, width_b = _side_pair(size_b, "size_b", vae_factor)
    tokens_a, tokens_b = height_a * width_a, height_b * width_b
    latent_tokens_a = (height_a // vae_factor) * (width_a // vae_factor)
    return {
        "tokens_a": tokens_a,
        "tokens_b": tokens_b,
        "ratio": (tokens_a / tokens_b) ** 2,
        "latent_tokens_a": latent_tokens_a,
        "pixel_vs_latent": (tokens_a / latent_tokens_a) ** 2,
    }

"""mini-SD's training data: the rendered shapes world, each step's batch and captions, and the
extra input channels of the inpaint, depth and x4-upscale variants."""

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from .. import world
from .config import MAX_NOISE_LEVEL, MiniTrainConfig, noise_scheduler_config


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], SD's pixel range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def build_dataset(config: MiniTrainConfig) -> dict:
    """Render the training scenes once (images, masks, depth, low-res views) and cache them."""
    cache = config.path / "data" / "scenes.npz"
    if cache.exists():
        data = dict(np.load(cache))
        data["scenes"] = world.sample_scenes(config.num_scenes, seed=config.seed)
        return data
    scenes = world.sample_scenes(config.num_scenes, seed=config.seed)
    images, first_masks, depths, low_res = [], [], [], []
    for scene in tqdm(scenes, desc="render scenes"):
        render = world.render(scene)
        images.append(render.image)
        first_masks.append(render.masks[0])
        depths.append(render.depth)
        low_res.append(render.low_res)
    data = dict(
        images=np.stack(images), masks=np.stack(first_masks), depths=np.stack(depths).astype(np.float16),
        low_res=np.stack(low_res),
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **data)
    data["scenes"] = scenes
    return data


def two_object_scenes(scenes) -> np.ndarray:
    """The indices of the scenes with two objects."""
    return np.array([i for i, scene in enumerate(scenes) if len(scene.objects) == 2])


# --------------------------------------------------------------------------- the VAE's images


def vae_batch(data: dict, batch_size: int, crop: bool, rng: np.random.Generator) -> torch.Tensor:
    """Training scenes plus ~10 % held-out stars: the VAE, like SD's, is a general image codec.

    With `crop`, four times as many 32×32 crops (the autoencoder is convolutional, so crops teach
    it edges and colours at a quarter of the cost); else whole 64×64 scenes, so that its middle
    attention sees the full grid.
    """
    batch_size = batch_size * (4 if crop else 1)
    n_star = int(rng.binomial(batch_size, 0.1))
    index = rng.integers(0, len(data["images"]), batch_size - n_star)
    stars = world.concept_scenes(n_star, seed=int(rng.integers(2**31))) if n_star else []
    images = np.stack(list(data["images"][index]) + [world.render(s).image for s in stars])
    if crop:
        corners = rng.integers(0, 9, size=(batch_size, 2)) * 4  # multiples of the VAE factor
        images = np.stack([im[y : y + 32, x : x + 32] for im, (y, x) in zip(images, corners)])
    return to_tensor(images)


# --------------------------------------------------------------------------- the UNet's scenes and captions


def more_two_object_scenes(index: np.ndarray, two_object_scenes: np.ndarray, p_two: float, rng) -> np.ndarray:
    """A batch's scene indices with a share `p_two` of them replaced by random two-object scenes."""
    replaced = rng.random(len(index)) < p_two
    index[replaced] = rng.choice(two_object_scenes, int(replaced.sum()))
    return index


def captions(scenes, index, rng, p_empty: float, p_size: float, p_position: float) -> list[str]:
    """A fresh caption for each drawn scene, saying its sizes and positions only sometimes, and
    empty in a share `p_empty` (the unconditional examples classifier-free guidance needs)."""
    return [
        "" if rng.random() < p_empty else world.caption(scenes[i], rng, p_size=p_size, p_position=p_position)
        for i in index
    ]


# --------------------------------------------------------------------------- the variants' extra channels
# Each returns (channels to concatenate to the noisy latents, class labels or None), as its diffusers pipeline
# builds them at inference.


def inpaint_inputs(data, index, vae, generator, rng):
    """Mask (1 = repaint) + the masked image's latents: half the masks grown by a margin around the
    object, a tenth the whole image (plain text-to-image, as SD's inpainting model trained)."""
    masks = torch.from_numpy(data["masks"][index]).float()[:, None]
    kind = rng.random(len(index))
    grown = F.max_pool2d(masks, 9, stride=1, padding=4)
    masks = torch.where(torch.from_numpy(kind < 0.5)[:, None, None, None], grown, masks)
    masks[torch.from_numpy(kind > 0.9)] = 1.0
    images = to_tensor(data["images"][index])
    masked_images = images * (masks < 0.5)
    with torch.no_grad():
        masked_latents = vae.encode(masked_images.to(vae.device)).latent_dist.mean.cpu() * vae.config.scaling_factor
    small_masks = F.interpolate(masks, size=masked_latents.shape[-2:])
    return torch.cat([small_masks, masked_latents], dim=1), None


def depth_inputs(data, index, vae, generator, rng):
    """The depth map at latent size, scaled to [-1, 1] per image as StableDiffusionDepth2ImgPipeline does."""
    depth = torch.from_numpy(data["depths"][index].astype(np.float32))[:, None]
    depth = F.interpolate(depth, size=(16, 16), mode="bicubic", align_corners=False)
    d_min = depth.amin(dim=[1, 2, 3], keepdim=True)
    d_max = depth.amax(dim=[1, 2, 3], keepdim=True)
    return 2.0 * (depth - d_min) / (d_max - d_min) - 1.0, None


def upscale_inputs(data, index, vae, generator, rng, p_low_noise: float, low_noise_max: int):
    """The 16×16 low-res image, noised to a random level that is also the class label."""
    low_res = to_tensor(data["low_res"][index])
    noise_level = torch.from_numpy(upscale_noise_levels(rng, len(index), p_low_noise, low_noise_max))
    noise = torch.randn(low_res.shape, generator=generator)
    low_res = DDPMScheduler(**noise_scheduler_config(), variance_type="fixed_small").add_noise(low_res, noise, noise_level)
    return low_res, noise_level


def upscale_noise_levels(rng, n: int, p_low_noise: float, low_noise_max: int) -> np.ndarray:
    """How much the upscaler's low-res images are noised (the pipeline's `noise_level`): uniform up to
    MAX_NOISE_LEVEL, but a share `p_low_noise` only up to `low_noise_max`. Only a clean low-res pixel
    says where an edge lies within its 4×4 block, and uniform draws make only 6 % of the examples as
    clean as the pipeline's default of 20."""
    levels = rng.integers(0, MAX_NOISE_LEVEL + 1, n)
    low = rng.random(n) < p_low_noise
    return np.where(low, rng.integers(0, low_noise_max + 1, n), levels)

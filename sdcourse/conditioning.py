"""Extra conditioning (notebook 4): img2img, inpainting, depth-to-image and x4 upscaling.

Text is not the only thing a diffusion model can be conditioned on. Each helper here is a
thin, checked call of a standard diffusers pipeline (from `load_pipeline(name, task=...)`):

- img2img (`strength_sweep`): start from a noised encoding of an image instead of pure noise.
  `strength` says how far down the noise schedule to start, so only the last
  int(num_inference_steps · strength) steps run.
- inpainting (`inpaint`): the UNet also sees a mask and the masked image (9 input channels:
  4 latents + 1 mask + 4 masked-image latents) and repaints where the mask is white.
- depth-to-image (`depth_to_image`): the UNet also sees a depth map (5 input channels), so the
  layout stays while the prompt chooses colours and textures.
- x4 upscaling (`upscale`): the UNet sees the low-resolution image itself (7 input channels:
  4 latents + 3 RGB), noised to `noise_level`, and paints the detail it lacks.

The helpers check their inputs and say what to fix (sizes, mask and depth formats) before
the pipeline is called, so a mistake gives one clear message instead of a deep traceback.
The same seed gives the same image (`torch.Generator("cpu").manual_seed(seed)`).
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from . import checks
from .latents import psnr_from_mse, seeded_generator
from .plotting import image_grid, to_pil

# --------------------------------------------------------------------------- shared checks


def require_pipeline_argument(pipe, argument: str, task: str) -> None:
    """Raise a TypeError unless `pipe` takes `argument`, i.e. is a pipeline for `task`.

    Pipelines accept unknown keyword arguments and ignore them, so without this check a
    text-to-image pipeline would silently ignore a mask or a depth map.
    """
    if argument not in inspect.signature(pipe.__call__).parameters:
        raise TypeError(
            f"pipe is a {type(pipe).__name__}, which takes no `{argument}`: "
            f"load a {task} pipeline, e.g. load_pipeline('mini', task='{task}')."
        )


def prepare_image(pipe, image, name: str = "image") -> Image.Image:
    """`image` (PIL in any mode, or a uint8 / float [0, 1] array) as an RGB PIL image whose sides
    are multiples of the VAE factor (`pipe.vae_scale_factor`); transparent pixels become white.

    The pipelines would otherwise crop or resize it silently to the nearest multiple below.
    """
    image = to_pil(image, name)
    factor = pipe.vae_scale_factor
    width, height = image.size
    if width % factor or height % factor:
        fitted = f"{max(factor, width // factor * factor)}×{max(factor, height // factor * factor)}"
        raise ValueError(
            f"{name} is {width}×{height} (width×height), but both sides must be multiples of {factor}, "
            f"the VAE factor (pipe.vae_scale_factor: each latent covers {factor}×{factor} pixels). "
            f"Resize or crop it, e.g. to {fitted}."
        )
    return image


def denoising_steps(num_inference_steps: int, strength: float) -> int:
    """How many denoising steps an img2img-style pipeline runs: int(num_inference_steps · strength).

    The schedule has `num_inference_steps` steps from pure noise to a clean image. Strength
    0.6 noises the image to the level 60 % of the way from clean to pure noise and starts
    there, so only the last 60 % of the steps run. The same formula as diffusers'
    `get_timesteps` (rounding down included).
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral):
        raise TypeError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps={num_inference_steps} must be at least 1.")
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise TypeError(f"strength must be a number in [0, 1], got {strength!r}")
    if not 0 <= strength <= 1:
        raise ValueError(
            f"strength={strength} must be in [0, 1]: 0 keeps the image, 1 starts from (almost) pure noise."
        )
    return min(int(num_inference_steps * strength), num_inference_steps)


def check_strength(strength: float, num_inference_steps: int) -> int:
    """`denoising_steps`, or a ValueError if that is 0 (the pipeline would have nothing to denoise)."""
    steps = denoising_steps(num_inference_steps, strength)
    if steps == 0:
        raise ValueError(
            f"strength={strength} with num_inference_steps={num_inference_steps} runs "
            f"int({num_inference_steps} · {strength}) = 0 denoising steps: raise strength to at least "
            f"1/{num_inference_steps} = {1 / num_inference_steps:.3g}, or use more steps."
        )
    return steps


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer.")
    return int(value)


def _silence(pipe, progress: bool) -> None:
    """progress=False also silences the pipeline's own progress bar (as guidance.cfg_grid does)."""
    if not progress:
        pipe.set_progress_bar_config(disable=True)


# --------------------------------------------------------------------------- img2img


@dataclass
class SweepResult:
    """What `strength_sweep` returns.

    - `images`: one PIL image per strength, all from the same seed;
    - `figure`: the input image, then one panel per strength;
    - `strengths`: the strengths, as floats;
    - `steps`: denoising steps run at each strength, int(num_inference_steps · strength).
    """

    images: list
    figure: Figure
    strengths: list
    steps: list


def strength_sweep(
    pipe,
    image,
    prompt: str,
    strengths=(0.2, 0.4, 0.6, 0.8, 1.0),
    seed: int = 0,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    callback_on_step_end=None,
    progress: bool = True,
) -> SweepResult:
    """img2img at each strength with the same seed: how much of the input survives.

    `strength` is a single number per pipeline call, so each strength is its own call.
    Low strengths keep the layout and colours of the input; at 1.0 the input is almost
    forgotten (only the faint trace left at the first timestep remains).
    `callback_on_step_end` is passed to every call (e.g. to count the steps that run).
    """
    require_pipeline_argument(pipe, "strength", "img2img")
    checks.prompt(prompt, "prompt", allow_list=False)
    image = prepare_image(pipe, image)
    strengths = checks.number_list(strengths, "strengths", example="(0.3, 0.6, 1.0)")
    steps = [check_strength(strength, num_inference_steps) for strength in strengths]
    seeded_generator(seed)
    checks.finite(guidance_scale, "guidance_scale", low=0, example=7.5)
    _silence(pipe, progress)

    images = []
    for strength in tqdm(strengths, desc="strengths", disable=not progress):
        output = pipe(
            prompt,
            image=image,
            strength=strength,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            generator=seeded_generator(seed),
            callback_on_step_end=callback_on_step_end,
        )
        images.append(output.images[0])

    titles = ["input"] + [
        f"strength {strength:g}\n{n} of {num_inference_steps} steps" for strength, n in zip(strengths, steps)
    ]
    figure = image_grid([image] + images, rows=1, titles=titles, figsize_per=2.0)
    figure.suptitle(prompt, fontsize="medium")
    return SweepResult(images=images, figure=figure, strengths=[float(s) for s in strengths], steps=steps)


# --------------------------------------------------------------------------- inpainting


def as_mask_image(mask, name: str = "mask") -> Image.Image:
    """A mask as the inpainting pipelines want it: an "L" PIL image, white (255) = repaint.

    Accepts a PIL image, or a 2-D numpy array / torch tensor that is
    - bool: True = repaint;
    - integer: 0/1, or 0–255;
    - float: in [0, 1].
    The pipeline binarises at one half: a soft mask becomes a hard one.
    """
    if isinstance(mask, Image.Image):  # RGBA: read from its alpha channel (checks.mask_image)
        return checks.mask_image(mask, name)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be a PIL image, a numpy array or a torch tensor, got {type(mask).__name__}")
    array = mask
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[2]):
        array = array.squeeze(0) if array.shape[0] == 1 else array.squeeze(2)
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (H, W), got shape {mask.shape}; for an RGB mask image use mask.convert('L')."
        )
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ValueError(
                f"{name} has integers in [{array.min()}, {array.max()}]; use 0/1 or 0–255 (255 = repaint)."
            )
        # A 0/1 integer mask (e.g. bool_mask.astype(np.uint8)) would be all but black as 0–255.
        array = array * 255 if array.max() <= 1 else array
    elif np.issubdtype(array.dtype, np.floating):
        if array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"{name} is a float array, so it must be in [0, 1] (1 = repaint), "
                f"got [{array.min():.3f}, {array.max():.3f}]."
            )
        array = np.round(array * 255)
    else:
        raise ValueError(f"{name} has dtype {array.dtype}; use bool, integers (0/1 or 0–255) or floats in [0, 1].")
    return Image.fromarray(array.astype(np.uint8))  # 2-D uint8: an "L" image


def mask_from_objects(render, index=0, grow: int = 3) -> np.ndarray:
    """A bool mask (True = repaint) covering object(s) `index` of a rendered shapes-world scene.

    `render` is what `sdcourse.world.render(scene)` returns; `index` one object index or a
    list of them. The mask is grown by `grow` pixels, so that the blurry rim of the old
    object is repainted too (the object masks only hold pixels at least half covered).
    """
    n_objects = len(render.masks)
    indices = [index] if isinstance(index, numbers.Integral) else list(index)
    if not indices:
        raise ValueError("index is empty: pass an object index or a list of them.")
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < n_objects:
            raise ValueError(
                f"index={i!r} is not an object of this scene: it has {n_objects} object(s), 0 to {n_objects - 1}."
            )
    if isinstance(grow, bool) or not isinstance(grow, numbers.Integral) or grow < 0:
        raise ValueError(f"grow={grow!r} must be a whole number of pixels, 0 or more.")
    mask = np.zeros_like(render.masks[0], dtype=bool)
    for i in indices:
        mask |= render.masks[i]
    if grow > 0:
        mask = ndimage.binary_dilation(mask, iterations=int(grow))
    return mask


def inpaint(
    pipe,
    image,
    mask,
    prompt: str,
    negative_prompt: str | None = None,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    strength: float = 1.0,
    seed: int = 0,
    num_images_per_prompt: int = 1,
    progress: bool = True,
) -> list[Image.Image]:
    """Repaint the white / True part of `mask` in `image` following `prompt`; a list of PIL images.

    The mask must have the image's size, and both sides must be multiples of the VAE
    factor. strength 1.0 repaints the masked part from pure noise; lower strengths start
    from the noised original and keep more of it.
    """
    require_pipeline_argument(pipe, "mask_image", "inpaint")
    checks.prompt(prompt, "prompt")
    checks.finite(guidance_scale, "guidance_scale", low=0, example=7.5)
    seeded_generator(seed)
    image = prepare_image(pipe, image)
    mask_image = as_mask_image(mask)
    if mask_image.size != image.size:
        raise ValueError(
            f"mask is {mask_image.width}×{mask_image.height} but image is {image.width}×{image.height} "
            "(width×height): they must have the same size."
        )
    check_strength(strength, num_inference_steps)
    num_images_per_prompt = _check_count("num_images_per_prompt", num_images_per_prompt)
    _silence(pipe, progress)
    output = pipe(
        prompt,
        image=image,
        mask_image=mask_image,
        height=image.height,  # else the pipeline falls back to the model's default size
        width=image.width,
        strength=strength,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        negative_prompt=negative_prompt,
        num_images_per_prompt=num_images_per_prompt,
        generator=seeded_generator(seed),
    )
    return output.images


# --------------------------------------------------------------------------- depth-to-image


def as_depth_map(depth_map, name: str = "depth_map") -> torch.Tensor:
    """A depth map as the (1, H, W) float tensor that the depth pipeline's `depth_map=` takes.

    Accepts a 2-D numpy array or torch tensor, a (1, H, W) one, or a one-channel PIL image
    ("L", "I", "F"). Larger means nearer, as in the shapes world and in DPT's predictions.
    The pipeline rescales each map to [-1, 1] by its own min and max, so only the relative
    depths matter, and a constant map (nothing to tell apart) is refused here.
    """
    if isinstance(depth_map, Image.Image):
        if depth_map.mode not in ("L", "I", "F", "I;16"):
            raise ValueError(
                f"{name} is a PIL image in mode {depth_map.mode!r}, but a depth map has one channel: "
                f"pass {name}.convert('L')."
            )
        depth_map = np.asarray(depth_map, dtype=np.float32)
    if isinstance(depth_map, np.ndarray):
        if not (np.issubdtype(depth_map.dtype, np.floating) or np.issubdtype(depth_map.dtype, np.integer)):
            raise ValueError(f"{name} must hold numbers, got dtype {depth_map.dtype}.")
        depth_map = torch.from_numpy(depth_map.astype(np.float32))
    if not isinstance(depth_map, torch.Tensor):
        raise TypeError(
            f"{name} must be a numpy array, a torch tensor or a one-channel PIL image, got {type(depth_map).__name__}"
        )
    depth = depth_map.detach().float().cpu()
    if depth.ndim == 3 and depth.shape[0] == 1:
        depth = depth[0]
    if depth.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (H, W) or (1, H, W), got shape {tuple(depth_map.shape)}; "
            "one map per image, e.g. render.depth from sdcourse.world."
        )
    if not torch.isfinite(depth).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    if depth.max() == depth.min():
        raise ValueError(
            f"{name} is constant ({depth.max().item():g} everywhere): the pipeline rescales depth by its "
            "min and max, so a flat map would divide by zero. Give the scene some depth."
        )
    return depth[None]


def depth_to_image(
    pipe,
    image,
    prompt: str,
    depth_map,
    strength: float = 1.0,
    negative_prompt: str | None = None,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    seed: int = 0,
    num_images_per_prompt: int = 1,
    progress: bool = True,
) -> list[Image.Image]:
    """Generate an image with the layout of `depth_map` and the content of `prompt`.

    `image` is the starting image, noised to `strength` as in img2img; at strength 1.0 it
    hardly matters and may be None (a plain gray start at the depth map's size). The depth
    map may have another size than the image (the pipeline resizes it to the latent grid),
    but not another aspect ratio.
    """
    require_pipeline_argument(pipe, "depth_map", "depth2img")
    checks.prompt(prompt, "prompt")
    checks.finite(guidance_scale, "guidance_scale", low=0, example=7.5)
    seeded_generator(seed)
    depth = as_depth_map(depth_map)
    height, width = depth.shape[-2:]
    if image is None:
        image = Image.new("RGB", (width, height), (128, 128, 128))
    image = prepare_image(pipe, image)
    if height * image.width != width * image.height:
        raise ValueError(
            f"depth_map is {width}×{height} but image is {image.width}×{image.height} (width×height): "
            "they must have the same aspect ratio (the pipeline resizes the depth map to the image's latent grid)."
        )
    check_strength(strength, num_inference_steps)
    num_images_per_prompt = _check_count("num_images_per_prompt", num_images_per_prompt)
    _silence(pipe, progress)
    output = pipe(
        prompt,
        image=image,
        depth_map=depth,
        strength=strength,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        negative_prompt=negative_prompt,
        num_images_per_prompt=num_images_per_prompt,
        generator=seeded_generator(seed),
    )
    return output.images


# --------------------------------------------------------------------------- x4 upscaling


def upscale(
    pipe,
    low_res_image,
    prompt: str,
    noise_level: int = 20,
    negative_prompt: str | None = None,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    seed: int = 0,
    num_images_per_prompt: int = 1,
    progress: bool = True,
) -> list[Image.Image]:
    """Upscale ×4 with `StableDiffusionUpscalePipeline`: 16×16 → 64×64 on mini-SD, 128 → 512 on SD.

    The low-res image is noised to `noise_level` (0 to `pipe.config.max_noise_level`) before
    the UNet sees it: a little noise hides compression artefacts and blur the model was not
    trained on; more noise lets it invent more detail and follow the input less.
    """
    require_pipeline_argument(pipe, "noise_level", "upscale")
    checks.prompt(prompt, "prompt")
    checks.positive_int(num_inference_steps, "num_inference_steps")
    checks.finite(guidance_scale, "guidance_scale", low=0, example=7.5)
    seeded_generator(seed)
    max_noise_level = pipe.config.max_noise_level
    if isinstance(noise_level, bool) or not isinstance(noise_level, numbers.Integral):
        raise TypeError(f"noise_level must be an integer, got {noise_level!r}")
    if not 0 <= noise_level <= max_noise_level:
        raise ValueError(f"noise_level={noise_level} must be in [0, {max_noise_level}] (pipe.config.max_noise_level).")
    low_res_image = prepare_image(pipe, low_res_image, name="low_res_image")
    num_images_per_prompt = _check_count("num_images_per_prompt", num_images_per_prompt)
    _silence(pipe, progress)
    output = pipe(
        prompt,
        image=low_res_image,
        noise_level=int(noise_level),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        negative_prompt=negative_prompt,
        num_images_per_prompt=num_images_per_prompt,
        generator=seeded_generator(seed),
    )
    return output.images


# ------------------------------------------------------------------------- photographs

# Photographs for the real-SD examples, shipped with scikit-image (skimage.data; each licence as its
# documentation states it). mini-SD never sees them: it knows only the shapes world.
PHOTOS = {
    "chelsea": "Chelsea the cat, CC0 by the photographer (Stefan van der Walt)",
    "coffee": "a cup of coffee, CC0 by the photographer (Rachel Michetti)",
    "astronaut": "the astronaut Eileen Collins, NASA, public domain",
}


def sample_photo(name: str = "chelsea", size: int = 512) -> Image.Image:
    """A scikit-image sample photograph (see `PHOTOS`), cropped to its centre square and resized to `size` px."""
    if name not in PHOTOS:
        raise ValueError(f"name={name!r} is not one of the photos: {', '.join(PHOTOS)}.")
    size = checks.positive_int(size, "size")
    try:
        from skimage import data
    except ImportError:
        raise ImportError("The photographs come with scikit-image: pip install scikit-image") from None
    pixels = getattr(data, name)()
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(pixels[top : top + side, left : left + side])
    return square.resize((size, size), Image.LANCZOS)


@torch.no_grad()
def estimate_depth(pipe, image) -> np.ndarray:
    """The depth map a depth-to-image pipeline makes for `image` when it is given none: its own depth
    estimator (SD 2 depth: DPT), as an (H, W) array scaled to [0, 1] (1 = near), at the estimator's size."""
    if getattr(pipe, "depth_estimator", None) is None:
        raise ValueError("this pipeline has no depth estimator: pass depth_map= instead (mini-SD's depth model has none).")
    pixel_values = pipe.feature_extractor(images=prepare_image(pipe, image), return_tensors="pt").pixel_values
    estimator = pipe.depth_estimator
    depth = estimator(pixel_values.to(estimator.device, estimator.dtype)).predicted_depth[0].float().cpu()
    return ((depth - depth.min()) / (depth.max() - depth.min()).clamp(min=1e-8)).numpy()


def image_psnr(image, truth) -> float:
    """PSNR in dB of `image` against `truth` (same size; PIL images or arrays); inf if identical."""
    image, truth = np.asarray(to_pil(image)), np.asarray(to_pil(truth, "truth"))
    if image.shape != truth.shape:
        raise ValueError(
            f"image is {image.shape[1]}×{image.shape[0]} but truth is {truth.shape[1]}×{truth.shape[0]} "
            "(width×height): compare images of the same size."
        )
    mse = np.mean(((image.astype(np.float64) - truth.astype(np.float64)) / 255) ** 2)
    return psnr_from_mse(float(mse))


def _decibels(value: float) -> str:
    return "identical" if math.isinf(value) else f"{value:.1f} dB"


def compare_upscale(low_res, upscaled, truth=None) -> Figure:
    """The low-res input, plain bicubic ×4, the model's upscale, and the truth if given.

    With `truth` the titles carry each upscale's PSNR against it (higher is closer). The
    input is shown with nearest-neighbour pixels so its real resolution is visible.
    """
    low_res, upscaled = to_pil(low_res, "low_res"), to_pil(upscaled, "upscaled")
    bicubic = low_res.resize(upscaled.size, Image.BICUBIC)
    images = [low_res.resize(upscaled.size, Image.NEAREST), bicubic, upscaled]
    titles = [f"input {low_res.width}×{low_res.height}", "bicubic", "upscaled"]
    if truth is not None:
        truth = to_pil(truth, "truth")
        titles[1] += f"\n{_decibels(image_psnr(bicubic, truth))}"
        titles[2] += f"\n{_decibels(image_psnr(upscaled, truth))}"
        images.append(truth)
        titles.append("truth")
    return image_grid(images, rows=1, titles=titles, figsize_per=2.2)


def compare_to_truth(images, truths, titles=None) -> Figure:
    """Generated images (top row) over their ground truth (bottom row), each one's PSNR in its title."""
    images, truths = list(images), list(truths)
    if len(images) != len(truths):
        raise ValueError(f"got {len(images)} images but {len(truths)} truths: give one truth per image.")
    if not images:
        raise ValueError("images is empty: pass at least one image.")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles has {len(titles)} entries but there are {len(images)} images.")
    scores = [image_psnr(image, truth) for image, truth in zip(images, truths)]
    col_titles = [
        (f"{titles[i]}\n" if titles is not None else "") + _decibels(score) for i, score in enumerate(scores)
    ]
    return image_grid(
        images + truths, rows=2, cols=len(images), row_titles=["generated", "truth"], col_titles=col_titles
    )

"""The Stable Diffusion sampling loop, written out step by step.

A diffusers pipeline does four things, and so does `text2img` here, in the same order
and with the same components, so that it makes the same image for the same seed:

1. encode the prompt, and the negative (or empty) prompt, with the text encoder;
2. draw Gaussian noise in latent space, scaled to the scheduler's first noise level;
3. at every timestep: predict the noise with the UNet, without and with the text in one
   batch; mix the two predictions with classifier-free guidance; let the scheduler take
   exactly one step (DPM-Solver++, PNDM and LMS remember earlier steps: a second call
   would corrupt their state);
4. decode the final latents with the VAE.

`img2img` starts part-way down the schedule from a noised encoding of an image;
`inpaint_by_blending` pastes the known part of an image back in after every step; the
`loss_fn` argument of `text2img` nudges the latents down the gradient of a loss on the
decoded image (loss guidance). `callback(step_index, timestep, latents, x0)` lets you look
inside the loop; `return_x0=True` keeps decoded frames for an animation.
"""

from __future__ import annotations

import inspect
import numbers
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tqdm.auto import tqdm

from . import checks
from .guidance import check_guidance_scale, classifier_free_guidance, rescale_guidance
from .plotting import to_pil


@dataclass
class SamplingResult:
    """What the sampling functions return.

    - `images`: the decoded images, PIL images (or a float array (batch, H, W, 3) in [0, 1]
      with `output_type="np"`);
    - `latents`: the final latents (batch, 4, H/f, W/f), before the VAE;
    - `xt_frames`, `x0_frames`: with `return_x0=True`, one entry per step, each a list of PIL
      images (one per batch item): the latents x_t after the step, and the prediction x0 of
      the clean image made at that step. Empty otherwise.
    """

    images: list | np.ndarray
    latents: torch.Tensor
    xt_frames: list = field(default_factory=list)
    x0_frames: list = field(default_factory=list)


# --------------------------------------------------------------------------- input checks


def _check_prompts(prompt, negative_prompt) -> tuple[list[str], list[str]]:
    """The prompts and negative prompts as two lists of the same length."""
    prompts = checks.prompt(prompt, "prompt")
    if not prompts:
        raise ValueError("prompt is an empty list: pass a string or a list of at least one prompt.")
    if negative_prompt is None:
        negative_prompts = [""] * len(prompts)
    elif isinstance(negative_prompt, str):
        negative_prompts = [negative_prompt] * len(prompts)
    else:
        negative_prompts = list(negative_prompt)
        if len(negative_prompts) != len(prompts):
            raise ValueError(
                f"negative_prompt has {len(negative_prompts)} entries but prompt has {len(prompts)}: "
                "pass one negative prompt per prompt, or a single string for all."
            )
    return prompts, negative_prompts


def _check_steps(num_inference_steps) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral):
        raise TypeError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps={num_inference_steps} must be at least 1.")
    return int(num_inference_steps)


def _check_rescale(guidance_rescale) -> float:
    guidance_rescale = checks.finite(guidance_rescale, "guidance_rescale", example=0.7)
    if not 0 <= guidance_rescale <= 1:
        raise ValueError(f"guidance_rescale={guidance_rescale} must be in [0, 1] (0 = off; the paper uses 0.7).")
    return float(guidance_rescale)


def _check_size(pipe, name: str, value: int) -> None:
    """Images must shrink to a whole number of latent cells."""
    factor = pipe.vae_scale_factor
    checks.size(value, name, factor, why=f"the VAE shrinks images {factor}× into latents, pipe.vae_scale_factor")


def _check_generator(generator, batch_size: int):
    """None, one torch.Generator, or a list of one per image (a seed alone is the usual slip)."""
    generators = generator if isinstance(generator, list) else [generator]
    if generator is not None and not all(isinstance(g, torch.Generator) for g in generators):
        raise TypeError(
            f"generator={generator!r} is not a torch.Generator: pass generator=torch.Generator('cpu').manual_seed(0) "
            "(a seed alone does not work), a list of one per prompt, or None."
        )
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(
            f"generator is a list of {len(generator)} generators but the batch has {batch_size} images: "
            "pass one generator per prompt, or a single generator."
        )


def _check_latents(latents) -> None:
    """None, or a finite tensor of starting latents (NaN there would give a black image, silently)."""
    if latents is not None and not (isinstance(latents, torch.Tensor) and torch.isfinite(latents).all()):
        raise ValueError("latents must be a finite torch tensor (e.g. from torch.randn), or None for fresh noise.")


def _as_mask_array(mask) -> np.ndarray:
    """A mask as a float (H, W) array in [0, 1]; white / 1 / True marks what to repaint."""
    if isinstance(mask, Image.Image):  # an RGBA mask is read from its alpha channel
        return np.asarray(checks.mask_image(mask), dtype=np.float32) / 255
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[2] in (1, 3):
        array = array.max(axis=2)
    if array.ndim != 2:
        raise ValueError(f"mask must be a PIL image or an (H, W) array, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError("mask contains NaN or infinite values: pass values in [0, 1] (1 = repaint).")
    if array.min() < 0 or array.max() > 1:
        raise ValueError(f"mask values must lie in [0, 1] (1 = repaint), got [{array.min()}, {array.max()}]")
    return array


# --------------------------------------------------------------------------- the pieces of the loop


def uses_guidance(guidance_scale: float) -> bool:
    """Whether the loop needs the unconditional prediction: always, except at scale 1.

    (diffusers' pipelines also skip it for scales below 1; here 0 is the unconditional model.)
    """
    return guidance_scale != 1.0


def encode_text(pipe, prompts, negative_prompts, guidance: bool) -> torch.Tensor:
    """The text encoder's hidden states for the UNet: [negative prompts, prompts] with guidance."""
    prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
        prompts,
        device=pipe.device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=guidance,
        negative_prompt=negative_prompts,
    )
    if guidance:
        return torch.cat([negative_prompt_embeds, prompt_embeds])
    return prompt_embeds


def initial_latents(pipe, batch_size, height, width, dtype, generator=None, latents=None) -> torch.Tensor:
    """Pure noise in latent space at the scheduler's first noise level (as the pipeline's `prepare_latents`).

    Call after `scheduler.set_timesteps`: Euler-type schedulers start at a large sigma, and
    `init_noise_sigma` depends on the timesteps they were set to.
    """
    shape = (
        batch_size,
        pipe.unet.config.in_channels,
        height // pipe.vae_scale_factor,
        width // pipe.vae_scale_factor,
    )
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=pipe.device, dtype=dtype)
    elif tuple(latents.shape) != shape:
        raise ValueError(f"latents has shape {tuple(latents.shape)}, expected {shape} for this size and batch")

    return latents.to(pipe.device) * pipe.scheduler.init_noise_sigma


def scheduler_step_kwargs(scheduler, generator) -> dict:
    """Only some schedulers take a generator (ancestral ones add fresh noise at every step)."""
    if "generator" in inspect.signature(scheduler.step).parameters:
        return {"generator": generator}
    return {}


def uses_sigma_latents(scheduler) -> bool:
    """True for Euler-type schedulers (Euler, Euler-ancestral, LMS), whose latents are x0 + σ·ε.

    They start at σ_max > 1, so `init_noise_sigma` > 1; DDIM, PNDM and DPM-Solver++ keep
    latents as √ᾱ·x0 + √(1−ᾱ)·ε and start at 1.
    """
    return float(scheduler.init_noise_sigma) > 1.0


def predict_x0(scheduler, latents, noise_pred, timestep) -> torch.Tensor:
    """The clean latents x0 that a noise prediction implies for `latents` at `timestep`.

    Euler-type schedulers: x0 = latents − σ·ε (σ of this timestep).
    The others:            x0 = (latents − √(1−ᾱ_t)·ε) / √ᾱ_t (ᾱ_t = alphas_cumprod[t]).
    For v-prediction models the UNet predicts v instead of ε, and for "sample" x0 itself.
    """
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "sample":
        return noise_pred
    if uses_sigma_latents(scheduler):
        sigma = scheduler.sigmas[scheduler.index_for_timestep(timestep)].to(latents.device, latents.dtype)
        if prediction_type == "epsilon":
            return latents - sigma * noise_pred
        if prediction_type == "v_prediction":
            return latents / (sigma**2 + 1) - noise_pred * sigma / (sigma**2 + 1) ** 0.5
    else:
        alpha_prod_t = scheduler.alphas_cumprod[int(timestep)].to(latents.device, latents.dtype)
        if prediction_type == "epsilon":
            return (latents - (1 - alpha_prod_t) ** 0.5 * noise_pred) / alpha_prod_t**0.5
        if prediction_type == "v_prediction":
            return alpha_prod_t**0.5 * latents - (1 - alpha_prod_t) ** 0.5 * noise_pred
    raise ValueError(f"prediction_type={prediction_type!r} is not one of 'epsilon', 'v_prediction', 'sample'")


def latents_to_images(pipe, latents, output_type: str = "pil"):
    """Decode latents with the VAE, as the pipelines do: undo the scaling factor, decode, map to [0, 1]."""
    latents = latents.to(pipe.vae.dtype)
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type=output_type)


def image_to_latents(pipe, image, generator=None, sample: bool = True) -> torch.Tensor:
    """Encode one image (PIL or (H, W, 3) array) to scaled latents (1, 4, H/f, W/f).

    `sample=True` draws from the VAE's latent distribution with `generator`, as diffusers'
    img2img does (a list of generators gives one draw each); `sample=False` takes its mean.
    """
    pixels = pipe.image_processor.preprocess(to_pil(image))
    pixels = pixels.to(device=pipe.device, dtype=pipe.vae.dtype)
    latent_dist = pipe.vae.encode(pixels).latent_dist
    if not sample:
        latents = latent_dist.mean
    elif isinstance(generator, list):
        latents = torch.cat([latent_dist.sample(g) for g in generator])
    else:
        latents = latent_dist.sample(generator)
    return latents * pipe.vae.config.scaling_factor


def colour_loss(target_rgb) -> Callable[[torch.Tensor], torch.Tensor]:
    """A loss that is 0 when every pixel has the colour `target_rgb`: mean |pixel − colour|.

    The fastai deep dive's "blue loss", for any colour. `target_rgb` is an (R, G, B) triple in
    0–255 (a shapes-world colour: `world.COLOURS["blue"]`). The loss takes decoded images
    (batch, 3, H, W) in [0, 1].
    """
    if isinstance(target_rgb, str):
        raise ValueError(f"target_rgb={target_rgb!r} is a name: pass its (R, G, B) values in 0–255, "
                         f"e.g. sdcourse.world.COLOURS[{target_rgb!r}] for a shapes-world colour.")
    rgb = tuple(float(value) for value in target_rgb)
    if len(rgb) != 3 or not all(0 <= value <= 255 for value in rgb):
        raise ValueError(f"target_rgb must be three values in 0–255, got {target_rgb!r}")
    target = torch.tensor(rgb).view(1, 3, 1, 1) / 255

    def loss(images: torch.Tensor) -> torch.Tensor:
        return (images - target.to(images)).abs().mean()

    return loss


def loss_guidance_step(pipe, latents, noise_pred, timestep, loss_fn, loss_scale: float) -> torch.Tensor:
    """Move the latents down the gradient of `loss_fn` on the image they are heading to.

    x0 is predicted from the latents with the noise prediction held fixed, decoded with the
    VAE to pixels in about [0, 1] (not clamped, so the gradient never vanishes), and
    scored by `loss_fn`; the gradient flows back through the decoder and the x0 formula to
    the latents: latents −= loss_scale · grad. Euler-type latents are x0 + σ·ε, so there the
    step is also multiplied by σ², as in the fastai deep dive.
    """
    loss_scale = checks.finite(loss_scale, "loss_scale", example=100)
    scheduler = pipe.scheduler
    with torch.enable_grad():
        latents = latents.detach().requires_grad_(True)
        x0 = predict_x0(scheduler, latents, noise_pred.detach(), timestep)
        decoded = pipe.vae.decode(x0.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor, return_dict=False)[0]
        images = decoded / 2 + 0.5
        loss = loss_fn(images)
        (grad,) = torch.autograd.grad(loss, latents)
    step = loss_scale * grad
    if uses_sigma_latents(scheduler):
        sigma = scheduler.sigmas[scheduler.index_for_timestep(timestep)].to(latents.device, latents.dtype)
        step = step * sigma**2
    return latents.detach() - step


def blend_known_region(scheduler, latents, image_latents, latent_mask, noise, next_timestep) -> torch.Tensor:
    """Keep the latents where the mask is 1; elsewhere put back the image's own latents.

    The image's latents are noised to the level the latents have just reached (the next
    timestep), with the same noise throughout; after the last step they go back clean.
    """
    if next_timestep is None:
        known = image_latents
    else:
        known = scheduler.add_noise(image_latents, noise, next_timestep.reshape(1))
    return latent_mask * latents + (1 - latent_mask) * known


@torch.no_grad()
def denoise(
    pipe,
    latents,
    timesteps,
    encoder_hidden_states,
    guidance_scale: float = 7.5,
    guidance_rescale: float = 0.0,
    generator=None,
    callback=None,
    return_x0: bool = False,
    progress: bool = True,
    loss_fn=None,
    loss_scale: float = 100.0,
    loss_every: int = 1,
    inpaint=None,
):
    """The denoising loop shared by text2img, img2img and inpaint_by_blending.

    `encoder_hidden_states` is [uncond, text] when guidance is on. `inpaint` is None or
    (image_latents, latent_mask, noise) for blending. Returns (latents, xt_frames, x0_frames).
    """
    scheduler = pipe.scheduler
    guidance = uses_guidance(guidance_scale)
    step_kwargs = scheduler_step_kwargs(scheduler, generator)
    xt_frames, x0_frames = [], []

    for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress)):
        # 1. The UNet sees the latents twice, without and with the text, as one batch.
        latent_model_input = torch.cat([latents] * 2) if guidance else latents
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)
        noise_pred = pipe.unet(latent_model_input, t, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

        # 2. Classifier-free guidance (and optionally its rescale).
        if guidance:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = classifier_free_guidance(noise_pred_uncond, noise_pred_text, guidance_scale)
            if guidance_rescale > 0:
                noise_pred = rescale_guidance(noise_pred, noise_pred_text, guidance_rescale)

        # 3. Loss guidance: nudge the latents before the step.
        if loss_fn is not None and i % loss_every == 0:
            latents = loss_guidance_step(pipe, latents, noise_pred, t, loss_fn, loss_scale)

        # 4. One scheduler step: x_t → x_{t−1}. Exactly once per timestep.
        step_output = scheduler.step(noise_pred, t, latents, **step_kwargs)
        x0 = getattr(step_output, "pred_original_sample", None)
        if x0 is None:  # DPM-Solver++ and PNDM do not return their x0 prediction
            x0 = predict_x0(scheduler, latents, noise_pred, t)
        x0 = x0.to(latents.dtype)  # Euler-type schedulers compute it in float32
        latents = step_output.prev_sample

        # 5. Inpainting: put the known part of the image back.
        if inpaint is not None:
            image_latents, latent_mask, noise = inpaint
            next_t = timesteps[i + 1] if i + 1 < len(timesteps) else None
            latents = blend_known_region(scheduler, latents, image_latents, latent_mask, noise, next_t)

        if callback is not None:
            callback(i, t, latents, x0)
        if return_x0:
            xt_frames.append(latents_to_images(pipe, latents))
            x0_frames.append(latents_to_images(pipe, x0))
    return latents, xt_frames, x0_frames


# --------------------------------------------------------------------------- the three samplers


def text2img(
    pipe,
    prompt,
    negative_prompt=None,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    guidance_rescale: float = 0.0,
    height: int | None = None,
    width: int | None = None,
    generator=None,
    latents=None,
    callback=None,
    return_x0: bool = False,
    progress: bool = True,
    loss_fn=None,
    loss_scale: float = 100.0,
    loss_every: int = 1,
    output_type: str = "pil",
) -> SamplingResult:
    """Text to image with the loop written out; the same image as `pipe(...)` for the same arguments.

    `prompt` is a string or a list (one image each); `generator` one torch.Generator or one
    per prompt. `callback(step_index, timestep, latents, x0)` runs after every step.
    `loss_fn(images) -> loss` (e.g. `colour_loss((220, 40, 40))`) turns on loss guidance every
    `loss_every` steps with strength `loss_scale`. Guidance: see `uses_guidance`.
    """
    prompts, negative_prompts = _check_prompts(prompt, negative_prompt)
    num_inference_steps = _check_steps(num_inference_steps)
    guidance_scale = check_guidance_scale(guidance_scale)
    guidance_rescale = _check_rescale(guidance_rescale)
    loss_scale = checks.finite(loss_scale, "loss_scale", example=100)
    loss_every = checks.positive_int(loss_every, "loss_every")
    default_size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height = default_size if height is None else height
    width = default_size if width is None else width
    _check_size(pipe, "height", height)
    _check_size(pipe, "width", width)
    _check_generator(generator, len(prompts))
    _check_latents(latents)

    with torch.no_grad():
        guidance = uses_guidance(guidance_scale)
        encoder_hidden_states = encode_text(pipe, prompts, negative_prompts, guidance)
        pipe.scheduler.set_timesteps(num_inference_steps, device=pipe.device)
        latents = initial_latents(
            pipe, len(prompts), height, width, encoder_hidden_states.dtype, generator=generator, latents=latents
        )
        latents, xt_frames, x0_frames = denoise(
            pipe,
            latents,
            pipe.scheduler.timesteps,
            encoder_hidden_states,
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            generator=generator,
            callback=callback,
            return_x0=return_x0,
            progress=progress,
            loss_fn=loss_fn,
            loss_scale=loss_scale,
            loss_every=loss_every,
        )
        images = latents_to_images(pipe, latents, output_type=output_type)
    return SamplingResult(images=images, latents=latents, xt_frames=xt_frames, x0_frames=x0_frames)


def img2img_timesteps(scheduler, num_inference_steps: int, strength: float, device=None) -> torch.Tensor:
    """The tail of the schedule that img2img runs, computed as diffusers' Img2Img `get_timesteps`.

    With 25 steps and strength 0.6 the first int(25 · (1 − 0.6)) = 10 timesteps are skipped;
    strength 1 runs them all (from pure noise), strength 0 none. Schedulers that count their
    steps are told where they start (`set_begin_index`).
    """
    num_inference_steps = _check_steps(num_inference_steps)
    strength = checks.finite(strength, "strength", low=0, high=1)
    scheduler.set_timesteps(num_inference_steps, device=device)
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps


def _image_size(pipe, image) -> tuple[int, int]:
    """(width, height) of an input image, checked against the VAE factor."""
    width, height = image.size
    for name, value in (("height", height), ("width", width)):
        if value % pipe.vae_scale_factor:
            raise ValueError(
                f"image is {width}×{height} (width×height); its {name} {value} must be a multiple of "
                f"{pipe.vae_scale_factor} (pipe.vae_scale_factor): resize or crop it first."
            )
    return width, height


def img2img(
    pipe,
    image,
    prompt,
    strength: float = 0.6,
    negative_prompt=None,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    guidance_rescale: float = 0.0,
    generator=None,
    callback=None,
    return_x0: bool = False,
    progress: bool = True,
    output_type: str = "pil",
) -> SamplingResult:
    """Image to image: noise the image's latents part-way, then denoise them with the prompt.

    `strength` in [0, 1] is how far down the schedule to start: 0 returns the image (through
    the VAE), 1 starts from pure noise. Same result as `StableDiffusionImg2ImgPipeline`.
    """
    prompts, negative_prompts = _check_prompts(prompt, negative_prompt)
    num_inference_steps = _check_steps(num_inference_steps)
    guidance_scale = check_guidance_scale(guidance_scale)
    guidance_rescale = _check_rescale(guidance_rescale)
    strength = checks.finite(strength, "strength", example=0.6)
    if not 0 <= strength <= 1:
        raise ValueError(f"strength={strength} must be in [0, 1]: 0 keeps the image, 1 ignores it.")
    image = to_pil(image)
    _image_size(pipe, image)
    batch_size = len(prompts)
    _check_generator(generator, batch_size)

    with torch.no_grad():
        guidance = uses_guidance(guidance_scale)
        encoder_hidden_states = encode_text(pipe, prompts, negative_prompts, guidance)
        timesteps = img2img_timesteps(pipe.scheduler, num_inference_steps, strength, device=pipe.device)

        image_latents = image_to_latents(pipe, image, generator=generator)
        if image_latents.shape[0] < batch_size:
            image_latents = image_latents.repeat(batch_size, 1, 1, 1)
        if len(timesteps) == 0:  # strength too small for a single step: nothing to denoise
            latents, xt_frames, x0_frames = image_latents, [], []
        else:
            noise = randn_tensor(image_latents.shape, generator=generator, device=pipe.device, dtype=image_latents.dtype)
            latents = pipe.scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(batch_size))
            latents, xt_frames, x0_frames = denoise(
                pipe,
                latents,
                timesteps,
                encoder_hidden_states,
                guidance_scale=guidance_scale,
                guidance_rescale=guidance_rescale,
                generator=generator,
                callback=callback,
                return_x0=return_x0,
                progress=progress,
            )
        images = latents_to_images(pipe, latents, output_type=output_type)
    return SamplingResult(images=images, latents=latents, xt_frames=xt_frames, x0_frames=x0_frames)


def mask_to_latent_grid(mask: np.ndarray, factor: int) -> torch.Tensor:
    """Shrink an (H, W) mask to the latent grid (1, 1, H/f, W/f): a latent cell is repainted
    (as much) as its most-repainted pixel, so the repainted region covers the whole hole."""
    mask = torch.from_numpy(mask)[None, None]
    return F.max_pool2d(mask, kernel_size=factor)


def inpaint_by_blending(
    pipe,
    image,
    mask,
    prompt,
    negative_prompt=None,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    guidance_rescale: float = 0.0,
    generator=None,
    callback=None,
    return_x0: bool = False,
    progress: bool = True,
    output_type: str = "pil",
) -> SamplingResult:
    """Inpainting with a plain text-to-image UNet, by blending latents after every step.

    Where `mask` is white / 1 the model paints freely; elsewhere the latents are replaced,
    after each step, by the image's own latents noised to the same level, so the loop
    only invents the masked part and fits it to what surrounds it (diffusers' convention:
    white = repaint). The mask must have the image's size. The known region of the final
    latents is exactly the image's latents (the mean of the VAE encoding).
    """
    prompts, negative_prompts = _check_prompts(prompt, negative_prompt)
    num_inference_steps = _check_steps(num_inference_steps)
    guidance_scale = check_guidance_scale(guidance_scale)
    guidance_rescale = _check_rescale(guidance_rescale)
    image = to_pil(image)
    width, height = _image_size(pipe, image)
    mask = _as_mask_array(mask)
    if mask.shape != (height, width):
        raise ValueError(
            f"mask is {mask.shape[1]}×{mask.shape[0]} but image is {width}×{height} (width×height): "
            "they must have the same size."
        )
    batch_size = len(prompts)
    _check_generator(generator, batch_size)

    with torch.no_grad():
        guidance = uses_guidance(guidance_scale)
        encoder_hidden_states = encode_text(pipe, prompts, negative_prompts, guidance)
        pipe.scheduler.set_timesteps(num_inference_steps, device=pipe.device)

        image_latents = image_to_latents(pipe, image, sample=False).repeat(batch_size, 1, 1, 1)
        latent_mask = mask_to_latent_grid(mask, pipe.vae_scale_factor).to(pipe.device, image_latents.dtype)
        # One noise draw: the starting latents, and the noise that re-noises the known region.
        noise = randn_tensor(image_latents.shape, generator=generator, device=pipe.device, dtype=image_latents.dtype)
        latents = noise * pipe.scheduler.init_noise_sigma

        latents, xt_frames, x0_frames = denoise(
            pipe,
            latents,
            pipe.scheduler.timesteps,
            encoder_hidden_states,
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            generator=generator,
            callback=callback,
            return_x0=return_x0,
            progress=progress,
            inpaint=(image_latents, latent_mask, noise),
        )
        images = latents_to_images(pipe, latents, output_type=output_type)
    return SamplingResult(images=images, latents=latents, xt_frames=xt_frames, x0_frames=x0_frames)

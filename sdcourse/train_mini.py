"""Train mini-SD, the tiny Stable Diffusion family shipped in `assets/mini-sd`.

Same classes and layout as SD, sized for two CPU cores:
- `AutoencoderKL`, 4 latent channels, 64×64 images -> 4×16×16 latents (factor 4; SD uses 8 on
  512 px, but 64 px at factor 8 leaves 8×8 latents that lose small objects and make coarse
  attention maps);
- `CLIPTextModel` (real CLIP tokenizer, 77 tokens), trained jointly with the UNet from scratch
  as in the latent-diffusion paper (SD itself froze a CLIP trained elsewhere);
- `UNet2DConditionModel` with cross-attention at every resolution that has it in SD
  (CrossAttnDown ×2 + Down, mirrored up, cross-attention mid block), epsilon prediction on
  SD's scaled-linear DDPM schedule;
- a refine stage that continues UNet and text encoder with captions that say sizes and
  positions more often and more loss weight on the noisiest steps (see `snr_weights`);
- from here on the text encoder is frozen, so that the whole family shares one;
- a layout stage that continues the UNet with captions that almost always say positions and
  pyramid noise (see `training_noise`), so that "on the left" moves the object, and learns the
  input embeddings of the five position words (with the text encoder frozen, position accuracy
  stayed at 0.36; captions without those words encode exactly as before, which the variants need);
  at the noisiest timesteps it is noised from mirrored images (`mirrored_signal`) and its position
  words' attention is grounded on their objects (`sdcourse.grounding`), and it draws many more
  two-object scenes at high noise (`more_two_object_scenes`, `more_high_noise`), so that the
  caption, not the starting noise, says which of two objects goes where;
- a settle stage that continues the layout stage's UNet on white noise (the noise sampling
  starts from), most of each batch two-object scenes: the text-to-image UNet that ships;
- variants in the real channel layouts, each started from the refine stage's UNet with
  zero-initialised extra input channels, as the real models were: inpaint (9), depth (5),
  x4 upscale (7; its low-res images often only lightly noised, see `upscale_noise_levels`).

Stages run in order and each is resumable: `train(config)` skips finished stages and resumes
an interrupted one from its last checkpoint (safetensors + JSON, written atomically). The data
order and noise of step `k` depend only on (seed, k), so a resumed run is the run that would
have happened without the interruption. The UNet stages also run on a GPU (`device="cuda"`):
the same recipe and noise (drawn on the CPU), not bit-identical arithmetic.
"""

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from . import grounding, world
from .text import learn_token_embeddings
from .tokenizer import TOKENIZER_DIR, load_tokenizer

STAGES = ("vae", "base", "refine", "layout", "settle", "inpaint", "depth", "upscale")
TEXT_STAGES = ("base", "refine")  # train the UNet and the text encoder together; later stages freeze it
STARTS_FROM = {"refine": "base", "layout": "refine", "settle": "layout", "inpaint": "refine", "depth": "refine", "upscale": "refine"}
VARIANT_IN_CHANNELS = {"inpaint": 9, "depth": 5, "upscale": 7}
UNET_FOLDER = {"settle": "unet", "inpaint": "unet_inpaint", "depth": "unet_depth", "upscale": "unet_upscale"}
MAX_NOISE_LEVEL = 350  # StableDiffusionUpscalePipeline's default max_noise_level
SCALING_FACTOR = 0.08333  # the x4 upscaler's VAE factor (SD 1.x/2.x use 0.18215): see set_latent_spread


def vae_config() -> dict:
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[16, 32, 64], layers_per_block=1, norm_num_groups=8,
    )


def text_encoder_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, hidden_size=64, intermediate_size=256,
        num_hidden_layers=3, num_attention_heads=4, projection_dim=64, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )


def unet_config(in_channels: int = 4, num_class_embeds=None) -> dict:
    return dict(
        sample_size=16, in_channels=in_channels, out_channels=4,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=[32, 64, 128], layers_per_block=1, norm_num_groups=16,
        cross_attention_dim=64, attention_head_dim=4, num_class_embeds=num_class_embeds,  # 4 heads
    )


def noise_scheduler_config() -> dict:
    """SD's training schedule (also the base of the DDIM sampling scheduler shipped with the model)."""
    return dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", clip_sample=False, steps_offset=1,
    )


@dataclass
class MiniTrainConfig:
    """Everything that defines a mini-SD training run (saved beside the checkpoints)."""

    run_dir: str = "runs/mini-sd"
    seed: int = 0
    num_scenes: int = 40000
    vae_steps: int = 4000
    vae_batch_size: int = 24
    vae_lr: float = 1e-3
    vae_crop_fraction: float = 0.7
    base_steps: int = 6000
    refine_steps: int = 3000  # the base continued with fuller captions and more weight on high noise
    layout_steps: int = 3000  # the refined model continued with positions said and pyramid noise
    # The layout UNet continued on white noise, with this share of each batch redrawn as two-object scenes. Both
    # objects right in 288 two-object images (48 captions × 6 seeds), after 2000 steps: 0.43 / 0.51 / 0.53 / 0.58 with
    # 0 / 50 / 80 / 100 % (at 100 % one-object captions got two objects: count 0.92); 80 % and 3000 steps: 0.59.
    # More steps alone did not do it: at 0 %, the tests' two objects went 0.25 / 0.41 / 0.34 after 1000 / 2000 / 3000.
    settle_steps: int = 3000
    settle_p_two_objects: float = 0.8
    # The upscaler's edges must land well within a pixel to beat bicubic's PSNR (its centroids: < 0.1 px).
    # With upscale_noise_levels, at 2500 steps they were 0.8 px off (held-out 27.4 dB, bicubic 28.2),
    # at 5000 0.55 px (29.5 dB).
    variant_steps: dict = field(default_factory=lambda: {"inpaint": 2500, "depth": 2500, "upscale": 5000})
    upscale_p_low_noise: float = 0.5  # how often the upscaler's low-res image is noised only up to ...
    upscale_low_noise_max: int = 50  # ... this level (the pipeline's default is 20); else up to MAX_NOISE_LEVEL
    batch_size: int = 32
    lr: float = 8e-4
    warmup_steps: int = 300
    ema_decay: float = 0.999
    p_empty_caption: float = 0.1
    base_p_mention_size: float = 0.4  # how often the base stage's captions say how large the objects are ...
    base_p_mention_position: float = 0.6  # ... and where they are
    p_mention_size: float = 0.7  # the same from the refine stage on
    p_mention_position: float = 0.8
    layout_p_mention_position: float = 0.9  # the layout stage's
    snr_gamma: float = 5.0
    base_snr_floor: float = 0.0
    snr_floor: float = 0.2  # from the refine stage on; see snr_weights: the layout-deciding noise levels
    offset_noise: float = 0.15  # see training_noise: SD's schedule leaks the image's mean at t = T on a 16×16 grid
    pyramid_noise_discount: float = 0.8  # the layout stage's; see training_noise and stage_settings
    layout_p_mirror: float = 0.5  # the layout stage's; see mirrored_signal
    layout_mirror_min_timestep: int = 800
    layout_grounding_weight: float = 0.05  # the layout stage's; see sdcourse.grounding
    # The layout stage draws this share of each batch from the two-object scenes (30 % of the data) ...
    layout_p_two_objects: float = 0.5
    # ... and trains this share of its two-object examples at t ≥ layout_high_noise_min_timestep, where sampling
    # decides which object goes where: with the mirrored examples, the words must then decide it (see
    # more_high_noise; measured on 96 two-object images, with a plain settle stage after it: both positions
    # right in 90, all right in 46; without it 64 and 25).
    layout_p_two_high_noise: float = 0.5
    layout_high_noise_min_timestep: int = 600
    checkpoint_every: int = 250
    num_threads: int = 0  # 0: torch's default
    device: str = "cpu"  # the UNet stages run the same recipe on "cuda" when one is at hand
    max_minutes: float | None = None  # end this sitting (with a checkpoint) after this long

    @property
    def path(self) -> Path:
        return Path(self.run_dir)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(folder: Path, step: int, modules: dict, optimizer, ema: dict | None, extra: dict | None = None):
    """Write models, EMA and optimizer state as safetensors + JSON; atomically (tmp dir, then rename)."""
    tensors = {}
    for name, module in modules.items():
        tensors.update({f"model.{name}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    if ema is not None:
        tensors.update({f"ema.{k}": v.cpu().contiguous() for k, v in ema.items()})
    state = optimizer.state_dict()
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            tensors[f"optim.{index}.{key}"] = value.cpu().contiguous() if torch.is_tensor(value) else torch.tensor(value)
    meta = dict(step=step, param_groups=state["param_groups"], **(extra or {}))
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, tmp / "state.safetensors")
    (tmp / "meta.json").write_text(json.dumps(meta))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, modules: dict, optimizer, ema: dict | None) -> dict:
    """Restore what `save_checkpoint` wrote; returns its JSON metadata (with "step")."""
    tensors = load_file(folder / "state.safetensors")
    meta = json.loads((folder / "meta.json").read_text())
    for name, module in modules.items():
        prefix = f"model.{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    if ema is not None:
        for k in ema:
            ema[k].copy_(tensors[f"ema.{k}"])
    state = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


class Sitting:
    """When to stop this sitting: after `max_minutes`, or after `max_steps` steps (tests)."""

    def __init__(self, max_minutes=None, max_steps=None):
        self.deadline = time.time() + 60 * max_minutes if max_minutes else None
        self.max_steps = max_steps
        self.steps = 0
        self.interrupted = False

    def over(self) -> bool:
        self.steps += 1
        done = (self.deadline is not None and time.time() > self.deadline) or self.steps == self.max_steps
        self.interrupted = self.interrupted or done
        return done


# --------------------------------------------------------------------------- data


def step_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    """The randomness of one training step depends only on (seed, stage, step): resumable."""
    return np.random.default_rng([seed, STAGES.index(stage), step])


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + STAGES.index(stage) * 100_000_007 + step)


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


def vae_batch(config: MiniTrainConfig, data: dict, step: int) -> torch.Tensor:
    """Training scenes plus ~10 % held-out stars: the VAE, like SD's, is a general image codec.

    The first `vae_crop_fraction` of the steps see four times as many 32×32 crops (the
    autoencoder is convolutional, so crops teach it edges and colours at a quarter of the
    cost); the rest see whole 64×64 scenes so that its middle attention sees the full grid.
    """
    rng = step_rng(config.seed, "vae", step)
    crop = step < config.vae_crop_fraction * config.vae_steps
    batch_size = config.vae_batch_size * (4 if crop else 1)
    n_star = int(rng.binomial(batch_size, 0.1))
    index = rng.integers(0, len(data["images"]), batch_size - n_star)
    stars = world.concept_scenes(n_star, seed=int(rng.integers(2**31))) if n_star else []
    images = np.stack(list(data["images"][index]) + [world.render(s).image for s in stars])
    if crop:
        corners = rng.integers(0, 9, size=(batch_size, 2)) * 4  # multiples of the VAE factor
        images = np.stack([im[y : y + 32, x : x + 32] for im, (y, x) in zip(images, corners)])
    return to_tensor(images)


# --------------------------------------------------------------------------- stage 1: VAE


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1]."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def train_vae(config: MiniTrainConfig, data: dict, sitting: Sitting) -> AutoencoderKL | None:
    stage_dir = config.path / "vae"
    final = stage_dir / "final"
    if (final / "config.json").exists():
        return AutoencoderKL.from_pretrained(final)
    torch.manual_seed(config.seed)
    vae = AutoencoderKL(**vae_config())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    start, seconds_before, t0 = 0, 0.0, time.time()
    if (stage_dir / "checkpoint").exists():
        meta = load_checkpoint(stage_dir / "checkpoint", {"vae": vae}, optimizer, None)
        start, seconds_before = meta["step"], meta["seconds"]
    vae.train()
    bar = tqdm(range(start, config.vae_steps), initial=start, total=config.vae_steps, desc="vae")
    for step in bar:
        lr = config.vae_lr * min(1.0, (step + 1) / 200) * (0.5 * (1 + math.cos(math.pi * step / config.vae_steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = vae_batch(config, data, step)
        posterior = vae.encode(images).latent_dist
        latents = posterior.sample(generator=step_generator(config.seed, "vae", step))
        reconstruction = vae.decode(latents).sample
        loss = F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images)
        loss = loss + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr(reconstruction.detach(), images):.1f}")
        stop = sitting.over()
        if step + 1 < config.vae_steps and (stop or (step + 1) % config.checkpoint_every == 0):
            seconds = dict(seconds=seconds_before + time.time() - t0)
            save_checkpoint(stage_dir / "checkpoint", step + 1, {"vae": vae}, optimizer, None, seconds)
            if stop:
                return None

    vae.eval()
    set_latent_spread(vae, encode_latents(vae, data["images"][:4000]).std().item())
    vae.save_pretrained(final)
    (final / "log.json").write_text(json.dumps({"steps": config.vae_steps, "seconds": seconds_before + time.time() - t0}))
    return vae


@torch.no_grad()
def set_latent_spread(vae: AutoencoderKL, latent_std: float):
    """Rescale the latent space so that `latents * SCALING_FACTOR` has unit spread.

    The 1×1 convolutions around the latents absorb a factor k (encoder means ×k, log-variances
    +2 log k, decoder input ÷k): the same autoencoder, with latents k times larger. Every mini
    pipeline then shares one VAE config with the x4 upscaler's scaling factor, which
    StableDiffusionUpscalePipeline insists on.
    """
    k = 1.0 / (SCALING_FACTOR * latent_std)
    c = vae.config.latent_channels
    vae.quant_conv.weight[:c] *= k
    vae.quant_conv.bias[:c] *= k
    vae.quant_conv.bias[c:] += 2 * math.log(k)
    vae.post_quant_conv.weight /= k
    vae.register_to_config(scaling_factor=SCALING_FACTOR)


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Posterior means of uint8 images (unscaled), in standard memory layout.

    The VAE may return channels-last tensors; the UNet then computes in a different order
    than it does on the same latents read back from disk, and a resumed run would drift.
    """
    out = [
        vae.encode(to_tensor(images[i : i + batch_size]).to(vae.device)).latent_dist.mean.cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).contiguous()


# --------------------------------------------------------------------------- stages 2-6: UNet (+ text encoder)


def snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, floor: float = 0.0) -> torch.Tensor:
    """Loss weights per example for the scheduler's prediction type (epsilon or v_prediction).

    An epsilon error at signal-to-noise ratio snr is an x0 error scaled by √snr, so plain
    epsilon MSE weighs x0 errors by snr: almost nothing at the high noise levels where the
    layout (where the objects go) is decided. Min-SNR-γ (Hang et al. 2023) caps the x0
    weight at `gamma` for the nearly clean timesteps; `floor` keeps it at least `floor` for
    the noisiest ones (EDM weighs x0 errors about 1 there). A v error is an x0 error scaled
    by √(snr + 1).
    """
    alphas_cumprod = scheduler.alphas_cumprod[timesteps.cpu()]
    snr = alphas_cumprod / (1 - alphas_cumprod)
    x0_weight = torch.clamp(snr, min=floor, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return (x0_weight / (snr + 1)).to(timesteps.device)
    return (x0_weight / snr).to(timesteps.device)


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
    return noise + offset * torch.randn(shape[:2] + (1, 1), generator=generator)


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
    starts from pure noise, whose random faint "copy" then decides which object goes where
    (measured before this: swapping the caption's positions moved the colours in 6 % of pairs; 14 % after). Built from a
    mirrored copy and trained to predict the unmirrored image, the model has to take the
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


def more_two_object_scenes(index: np.ndarray, two_object_scenes: np.ndarray, p_two: float, rng) -> np.ndarray:
    """A batch's scene indices with a share `p_two` of them replaced by random two-object scenes."""
    replaced = rng.random(len(index)) < p_two
    index[replaced] = rng.choice(two_object_scenes, int(replaced.sum()))
    return index


def more_high_noise(timesteps: np.ndarray, two_objects: np.ndarray, p_high: float, min_timestep: int, rng) -> np.ndarray:
    """The batch's timesteps with a share `p_high` of its two-object examples redrawn from
    [min_timestep, 1000): where sampling decides which object goes where, and where the mirrored
    examples leave only the words to say it. Uniform timesteps put only 40 % of them there."""
    redrawn = two_objects & (rng.random(len(timesteps)) < p_high)
    timesteps[redrawn] = rng.integers(min_timestep, 1000, int(redrawn.sum()))
    return timesteps


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """The captions' token ids, padded to CLIP's 77."""
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def encode_text(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    return text_encoder(input_ids.to(text_encoder.device))[0]


def expand_conv_in(unet: UNet2DConditionModel, in_channels: int, num_class_embeds=None) -> UNet2DConditionModel:
    """A variant UNet that starts as the base UNet: extra input channels (and class embedding) zeroed."""
    variant = UNet2DConditionModel(**unet_config(in_channels, num_class_embeds))
    state = unet.state_dict()
    weight = torch.zeros_like(variant.conv_in.weight)
    weight[:, : unet.config.in_channels] = state.pop("conv_in.weight")
    state["conv_in.weight"] = weight
    missing, unexpected = variant.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("class_embedding") for k in missing), (missing, unexpected)
    if num_class_embeds:
        torch.nn.init.zeros_(variant.class_embedding.weight)
    return variant


def upscale_noise_levels(config, rng, n: int) -> np.ndarray:
    """How much the upscaler's low-res images are noised (the pipeline's `noise_level`): uniform up to
    MAX_NOISE_LEVEL, but a share `upscale_p_low_noise` only up to `upscale_low_noise_max`. Only a clean
    low-res pixel says where an edge lies within its 4×4 block, and drawn uniformly only 6 % of the
    examples were as clean as the pipeline's default of 20 (half drawn low: 27.2 -> 27.4 dB held out)."""
    levels = rng.integers(0, MAX_NOISE_LEVEL + 1, n)
    low = rng.random(n) < config.upscale_p_low_noise
    return np.where(low, rng.integers(0, config.upscale_low_noise_max + 1, n), levels)


def variant_inputs(stage: str, config, data, index, vae, noise_scheduler, generator, rng):
    """The channels a variant concatenates to the noisy latents, as its diffusers pipeline builds them."""
    if stage == "inpaint":
        masks = torch.from_numpy(data["masks"][index]).float()[:, None]  # 1 = repaint
        kind = rng.random(len(index))
        grown = F.max_pool2d(masks, 9, stride=1, padding=4)  # the object plus a margin
        masks = torch.where(torch.from_numpy(kind < 0.5)[:, None, None, None], grown, masks)
        masks[torch.from_numpy(kind > 0.9)] = 1.0  # whole image: plain text-to-image, as SD's inpainting did
        images = to_tensor(data["images"][index])
        masked_images = images * (masks < 0.5)
        with torch.no_grad():
            masked_latents = vae.encode(masked_images.to(vae.device)).latent_dist.mean.cpu() * vae.config.scaling_factor
        small_masks = F.interpolate(masks, size=masked_latents.shape[-2:])
        return torch.cat([small_masks, masked_latents], dim=1), None
    if stage == "depth":
        depth = torch.from_numpy(data["depths"][index].astype(np.float32))[:, None]
        depth = F.interpolate(depth, size=(16, 16), mode="bicubic", align_corners=False)
        d_min = depth.amin(dim=[1, 2, 3], keepdim=True)
        d_max = depth.amax(dim=[1, 2, 3], keepdim=True)
        return 2.0 * (depth - d_min) / (d_max - d_min) - 1.0, None
    if stage == "upscale":
        low_res = to_tensor(data["low_res"][index])
        noise_level = torch.from_numpy(upscale_noise_levels(config, rng, len(index)))
        noise = torch.randn(low_res.shape, generator=generator)
        low_res = DDPMScheduler(**noise_scheduler_config(), variance_type="fixed_small").add_noise(
            low_res, noise, noise_level
        )
        return low_res, noise_level
    return None, None


def stage_settings(config: MiniTrainConfig, stage: str) -> dict:
    """The recipe of one UNet stage: steps, learning rate, how often captions say sizes and
    positions, the x0-weight floor (`snr_weights`), the pyramid-noise discount (`training_noise`),
    from which timestep how many noisy latents are mirrored (`mirrored_signal`), how much the position
    words' attention is grounded (`sdcourse.grounding`), and how many two-object scenes are drawn, how
    many of them at high noise (`more_two_object_scenes`, `more_high_noise`)."""
    later = dict(p_size=config.p_mention_size, p_position=config.p_mention_position, snr_floor=config.snr_floor,
                 pyramid_discount=0.0, p_mirror=0.0, grounding_weight=0.0, p_two_objects=0.0, p_two_high_noise=0.0)
    if stage == "base":
        return {**later, "steps": config.base_steps, "lr": config.lr, "p_size": config.base_p_mention_size,
                "p_position": config.base_p_mention_position, "snr_floor": config.base_snr_floor}
    if stage == "refine":
        return {**later, "steps": config.refine_steps, "lr": config.lr}
    if stage == "layout":
        return {**later, "steps": config.layout_steps, "lr": config.lr / 2, "text_words": world.POSITIONS,
                "p_position": config.layout_p_mention_position, "pyramid_discount": config.pyramid_noise_discount,
                "p_mirror": config.layout_p_mirror, "min_timestep": config.layout_mirror_min_timestep,
                "grounding_weight": config.layout_grounding_weight, "p_two_objects": config.layout_p_two_objects,
                "p_two_high_noise": config.layout_p_two_high_noise,
                "high_noise_min_timestep": config.layout_high_noise_min_timestep}
    # White noise from here on: trained on pyramid noise and sampled from white noise, the variants drifted in
    # low-frequency colour (measured: inpaint outside the mask 48 -> 41 dB, upscale 25.8 -> 23.0 dB), and
    # the layout UNet, settled on white noise, kept its positions (0.88 -> 0.87) and drew shapes better (0.83 -> 0.85).
    if stage == "settle":
        return {**later, "steps": config.settle_steps, "lr": config.lr / 4, "p_position": config.layout_p_mention_position,
                "p_two_objects": config.settle_p_two_objects}
    return {**later, "steps": config.variant_steps[stage], "lr": config.lr / 4}


def text_encoder_dir(config: MiniTrainConfig, stage: str | None = None) -> Path:
    """The text encoder `stage` trains with: the last one saved on the way to it (refine's, or
    layout's with its position words). Without `stage`: the family's, the last one saved."""
    stages = STAGES
    if stage is not None:  # the stages it descends from
        stages = []
        while stage in STARTS_FROM:
            stage = STARTS_FROM[stage]
            stages.insert(0, stage)
    saved = [s for s in stages if (config.path / s / "final" / "text_encoder").is_dir()]
    return config.path / saved[-1] / "final" / "text_encoder"


def word_token_ids(tokenizer, words) -> list[int]:
    """The token id of each of `words` (each must be a single CLIP token)."""
    ids = [tokenizer(word, add_special_tokens=False).input_ids for word in words]
    assert all(len(i) == 1 for i in ids), f"each of {words} must be one token"
    return [i[0] for i in ids]


def train_unet(config: MiniTrainConfig, stage: str, data, vae, latents, sitting: Sitting):
    """Stage "base" trains UNet + text encoder from scratch and "refine" continues both (see
    `stage_settings`). Later stages keep the text encoder frozen, so that the whole family
    shares one: "layout" continues the refined UNet on pyramid noise and learns only the
    embeddings of the position words, "settle" continues the layout UNet on white noise (mostly
    two-object scenes), and
    the variants fine-tune a copy of the refined UNet with extra input channels."""
    stage_dir = config.path / stage
    tokenizer = load_tokenizer()
    trains_text = stage in TEXT_STAGES
    if stage == "base":
        torch.manual_seed(config.seed)
        unet = UNet2DConditionModel(**unet_config())
        text_encoder = CLIPTextModel(text_encoder_config())
    else:
        start = config.path / STARTS_FROM[stage] / "final"
        if not (start / "unet").is_dir():
            raise ValueError(f"stages: {stage!r} starts from the finished {STARTS_FROM[stage]!r} stage, which is not in "
                             f"{config.path}; train {STARTS_FROM[stage]!r} first (include it in --stages)")
        unet = UNet2DConditionModel.from_pretrained(start / "unet")
        text_encoder = CLIPTextModel.from_pretrained(text_encoder_dir(config, stage))
    settings = stage_settings(config, stage)
    no_decay = []
    if trains_text:
        modules = {"unet": unet, "text_encoder": text_encoder}
    else:
        if stage in VARIANT_IN_CHANNELS:
            unet = expand_conv_in(unet, VARIANT_IN_CHANNELS[stage], 1000 if stage == "upscale" else None)
        text_encoder.requires_grad_(False)
        modules = {"unet": unet}
        if settings.get("text_words"):
            no_decay = [learn_token_embeddings(text_encoder, word_token_ids(tokenizer, settings["text_words"]))]
            modules["text_encoder"] = text_encoder
    steps, lr, p_size, p_position = settings["steps"], settings["lr"], settings["p_size"], settings["p_position"]
    snr_floor, pyramid_discount = settings["snr_floor"], settings["pyramid_discount"]
    device = torch.device(config.device)
    for m in modules.values():
        m.to(device)
    text_encoder.to(device)
    vae.to(device)
    trainable = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if all(p is not q for q in no_decay)]}]
    if no_decay:  # weight decay would shrink every word's embedding, not just the trained ones
        groups.append({"params": no_decay, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=0.01)
    ema = {f"{name}.{k}": v.detach().clone() for name, m in modules.items() for k, v in m.state_dict().items()}
    noise_scheduler = DDPMScheduler(**noise_scheduler_config())

    start, seconds_before, t0, losses = 0, 0.0, time.time(), []
    if (stage_dir / "checkpoint").exists():
        meta = load_checkpoint(stage_dir / "checkpoint", modules, optimizer, ema)
        start, seconds_before = meta["step"], meta["seconds"]
    for m in modules.values():
        m.train()
    grounding_weight = settings["grounding_weight"]
    if grounding_weight:
        processors = unet.attn_processors
        recorder = grounding.record_cross_attention(unet)
    grounding_losses = []
    two_object_scenes = np.array([i for i, scene in enumerate(data["scenes"]) if len(scene.objects) == 2])
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=stage)
    for step in bar:
        rng = step_rng(config.seed, stage, step)
        generator = step_generator(config.seed, stage, step)
        index = rng.integers(0, len(latents), config.batch_size)
        if settings["p_two_objects"]:
            index = more_two_object_scenes(index, two_object_scenes, settings["p_two_objects"], rng)
        captions = [
            "" if rng.random() < config.p_empty_caption else world.caption(
                data["scenes"][i], rng, p_size=p_size, p_position=p_position
            )
            for i in index
        ]
        clean = latents[index].to(device) * vae.config.scaling_factor
        noise = training_noise(clean.shape, generator, config.offset_noise, pyramid_discount)
        noise = noise.to(device)  # drawn on the CPU: the same noise on every device
        timesteps = rng.integers(0, 1000, config.batch_size)
        if settings["p_two_high_noise"]:
            timesteps = more_high_noise(timesteps, np.isin(index, two_object_scenes), settings["p_two_high_noise"],
                                        settings["high_noise_min_timestep"], rng)
        timesteps = torch.from_numpy(timesteps)
        weights = snr_weights(noise_scheduler, timesteps, config.snr_gamma, snr_floor).to(device)
        signal = clean
        if settings["p_mirror"] > 0:
            signal = mirrored_signal(clean, captions, timesteps, rng.random(config.batch_size), settings["p_mirror"],
                                     settings["min_timestep"])
        noisy = noise_scheduler.add_noise(signal, noise, timesteps.to(device))
        target = epsilon_target(noise_scheduler, noise, signal, clean, timesteps)  # the noise itself where signal is clean
        timesteps = timesteps.to(device)
        extra, class_labels = variant_inputs(stage, config, data, index, vae, noise_scheduler, generator, rng)
        if extra is not None:
            noisy = torch.cat([noisy, extra.to(device)], dim=1)
        if class_labels is not None:
            class_labels = class_labels.to(device)

        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / config.warmup_steps) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        input_ids = tokenize(tokenizer, captions)
        if "text_encoder" in modules:
            encoder_hidden_states = encode_text(text_encoder, input_ids)
        else:
            with torch.no_grad():
                encoder_hidden_states = encode_text(text_encoder, input_ids)
        if grounding_weight:
            recorder.maps.clear()
        prediction = unet(noisy, timesteps, encoder_hidden_states, class_labels=class_labels).sample
        per_sample = F.mse_loss(prediction, target, reduction="none").mean(dim=[1, 2, 3])
        loss = (per_sample * weights).mean()
        losses.append(loss.item())  # the denoising loss: comparable across stages
        if grounding_weight:
            attention_loss = grounding.grounding_loss(recorder.maps, tokenizer, input_ids, [data["scenes"][i] for i in index],
                                                      samples=timesteps.cpu() >= settings["min_timestep"],
                                                      words=grounding.POSITION_WORDS)
            loss = loss + grounding_weight * attention_loss
            grounding_losses.append(attention_loss.item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            for name, m in modules.items():
                for k, v in m.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[f"{name}.{k}"].lerp_(v, 1 - decay)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}",
                            **({"grounding": f"{np.mean(grounding_losses[-100:]):.3f}"} if grounding_losses else {}))
        stop = sitting.over()
        if step + 1 < steps and (stop or (step + 1) % config.checkpoint_every == 0):
            seconds = dict(seconds=seconds_before + time.time() - t0)
            save_checkpoint(stage_dir / "checkpoint", step + 1, modules, optimizer, ema, seconds)
            if stop:
                return None

    if grounding_weight:
        unet.set_attn_processor(processors)
    # The EMA weights are the model.
    for name, m in modules.items():
        m.load_state_dict({k: ema[f"{name}.{k}"] for k in m.state_dict()})
        m.eval()
    final = stage_dir / "final"
    unet.save_pretrained(final / "unet")
    if "text_encoder" in modules:
        text_encoder.save_pretrained(final / "text_encoder")
    log = {"steps": steps, "seconds": seconds_before + time.time() - t0, "final_loss": float(np.mean(losses[-200:])),
           "lr": lr, "snr_gamma": config.snr_gamma, "snr_floor": snr_floor, "p_mention_size": p_size,
           "p_mention_position": p_position, "pyramid_noise_discount": pyramid_discount,
           "p_mirror": settings["p_mirror"], "mirror_min_timestep": settings.get("min_timestep"),
           "grounding_weight": grounding_weight, "p_two_objects": settings["p_two_objects"],
           "p_two_high_noise": settings["p_two_high_noise"], "high_noise_min_timestep": settings.get("high_noise_min_timestep"),
           "final_grounding_loss": float(np.mean(grounding_losses[-200:])) if grounding_losses else None, "device": config.device,
           "text_words": list(settings.get("text_words", []))}
    if stage == "upscale":
        log.update(upscale_p_low_noise=config.upscale_p_low_noise, upscale_low_noise_max=config.upscale_low_noise_max)
    (final / "log.json").write_text(json.dumps(log))
    return unet


# --------------------------------------------------------------------------- export and the whole run


def export(config: MiniTrainConfig, assets_dir: Path, stages=STAGES):
    """Assemble the finished stages into the shipped folder (fp16 weights, diffusers layout)."""
    assets_dir = Path(assets_dir)
    half = dict(dtype=torch.float16)
    AutoencoderKL.from_pretrained(config.path / "vae" / "final", **half).save_pretrained(assets_dir / "vae")
    CLIPTextModel.from_pretrained(text_encoder_dir(config), **half).save_pretrained(
        assets_dir / "text_encoder")
    if (assets_dir / "tokenizer").resolve() != TOKENIZER_DIR.resolve():
        shutil.copytree(TOKENIZER_DIR, assets_dir / "tokenizer", dirs_exist_ok=True)
    for stage in stages:
        if stage not in UNET_FOLDER:
            continue
        unet = UNet2DConditionModel.from_pretrained(config.path / stage / "final" / "unet", **half)
        unet.save_pretrained(assets_dir / UNET_FOLDER[stage])
    DDIMScheduler(**noise_scheduler_config(), set_alpha_to_one=False).save_pretrained(assets_dir / "scheduler")
    DDPMScheduler(**noise_scheduler_config()).save_pretrained(assets_dir / "low_res_scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": __import__("diffusers").__version__,
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    (assets_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    training = {"config": asdict(config), "stages": {}}
    for stage in STAGES:
        log = config.path / stage / "final" / "log.json"
        if log.exists():
            training["stages"][stage] = json.loads(log.read_text())
    (assets_dir / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    write_model_card(assets_dir)


def count_parameters(folder: Path) -> int:
    return sum(t.numel() for f in folder.glob("*.safetensors") for t in load_file(f).values())


def write_model_card(assets_dir: Path, metrics: dict | None = None, bars: list | None = None):
    """Write `model_card` to README.md beside the weights."""
    (Path(assets_dir) / "README.md").write_text(model_card(assets_dir, metrics, bars))


def model_card(assets_dir: Path, metrics: dict | None = None, bars: list | None = None) -> str:
    """The family's model card: data, architecture, parameters, steps, time, metrics, and the bars
    (what, measured, needed, met, why not) they are held to."""
    assets_dir = Path(assets_dir)
    training = json.loads((assets_dir / "training.json").read_text())
    config, stages = training["config"], training["stages"]
    rows = []
    folders = [(stage, folder) for stage in STAGES for folder in (
        ("vae",) if stage == "vae" else ("text_encoder", "unet") if stage in TEXT_STAGES else (UNET_FOLDER.get(stage, "unet"),))]
    for stage, folder in folders:
        if not (assets_dir / folder).is_dir():
            continue
        log = stages.get(stage, {})
        minutes = f"{log['seconds'] / 60:.0f}" if "seconds" in log else "?"
        if log.get("device", "cpu") != "cpu":
            minutes += f" ({log['device']})"
        what = {"vae": "AutoencoderKL", "text_encoder": "CLIPTextModel"}.get(folder, "UNet2DConditionModel")
        weighting = ""
        if stage != "vae":
            weighting = f"min-SNR-{log.get('snr_gamma', config['snr_gamma']):g}"
            if log.get("snr_floor"):
                weighting += f", x0 weight ≥ {log['snr_floor']:g}"
            if log.get("pyramid_noise_discount"):
                weighting += f"; pyramid noise {log['pyramid_noise_discount']:g}"
            if log.get("p_mirror"):
                weighting += f"; {log['p_mirror']:.0%} mirrored at t ≥ {log['mirror_min_timestep']}"
            if log.get("grounding_weight"):
                weighting += f"; position grounding {log['grounding_weight']:g}"
            if log.get("p_two_objects"):
                weighting += f"; {log['p_two_objects']:.0%} of each batch redrawn as two-object scenes"
            if log.get("p_two_high_noise"):
                weighting += f", {log['p_two_high_noise']:.0%} of those at t ≥ {log['high_noise_min_timestep']}"
            if log.get("upscale_p_low_noise"):
                weighting += f"; low-res noise ≤ {log['upscale_low_noise_max']} in {log['upscale_p_low_noise']:.0%}"
        said = ""
        if "p_mention_size" in log:
            said = f"{log['p_mention_size']:.0%} / {log['p_mention_position']:.0%}"
        rows.append(f"| {stage} | `{folder}/` {what} | {count_parameters(assets_dir / folder) / 1e6:.2f} M "
                    f"| {log.get('steps', '?')} | {minutes} | {weighting} | {said} |")
    lines = [
        "---", "library_name: diffusers", "tags: [stable-diffusion, tiny, education]", "---", "",
        "# mini-SD", "",
        "A tiny Stable Diffusion family trained by `sdcourse train-mini` on the procedural shapes world",
        "(`sdcourse.world`: 64×64 scenes of one or two flat circles, squares and triangles on a plain",
        "background, captioned from templates; the star is held out for DreamBooth). It uses the same",
        "diffusers classes as SD and loads with `sdcourse.load_pipeline('mini', task=...)`.",
        "",
        "## Architecture (versus SD 1.5)",
        "- VAE: `AutoencoderKL`, 4 latent channels, factor 4 (64×64 → 4×16×16; SD: factor 8, 512 → 4×64×64).",
        "  A 16×16 grid keeps small objects and gives attention maps of useful resolution.",
        "  Latents are rescaled to unit spread with `scaling_factor` 0.08333 (the x4 upscaler's value,",
        "  which `StableDiffusionUpscalePipeline` requires; SD 1.5 uses 0.18215).",
        "- Text encoder: `CLIPTextModel` (hidden 64, 3 layers, 77 positions) with SD's real CLIP tokenizer,",
        "  trained jointly with the UNet from scratch, as in the latent-diffusion paper (SD froze OpenAI's CLIP).",
        "- UNet: `UNet2DConditionModel`, channels 32/64/128, cross-attention at 16×16 and 8×8 and in the",
        "  middle block (SD: at 64, 32, 16 and the middle), epsilon prediction, SD's scaled-linear DDPM schedule.",
        "- Variants in the real channel layouts, started from the refine stage's UNet with zeroed extra input channels:",
        "  inpaint (9 = latents + mask + masked-image latents), depth (5 = latents + depth),",
        "  x4 upscale (7 = latents + noised 16×16 RGB, noise level as class label).",
        "- Weights are stored in fp16 (safetensors); pipelines load them as fp32 on CPU.",
        "",
        "## Training",
        f"{config['num_scenes']} rendered scenes (seed {config['seed']}), captions re-drawn every step so that",
        "attributes are sometimes left unsaid (the last column: how often sizes / positions are said),",
        "then a refine stage that continues the base UNet and text encoder with fuller captions and more weight",
        "on the noisiest steps, where the layout is decided. From there the text encoder is frozen (the whole family",
        "shares it): a layout stage continues the UNet with captions that almost always say where the objects are",
        "and pyramid noise (coarse noise that hides the layout, so that the model must take it from the caption;",
        "`training_noise`), and learns only the input embeddings of the five position words (left, right, top,",
        f"bottom, center; captions without them encode as before). At t ≥ {config.get('layout_mirror_min_timestep')}, where sampling decides which object",
        f"goes where, {config.get('layout_p_mirror', 0):.0%} of the placed examples are noised from their mirror image but must still predict the",
        "unmirrored one (`mirrored_signal`: the faint copy of the image that SD's schedule leaves there must not",
        "decide the arrangement), and a grounding loss puts each position word's cross-attention on its object",
        f"(`sdcourse.grounding`). It redraws {config.get('layout_p_two_objects', 0):.0%} of each batch as two-object scenes and trains "
        f"{config.get('layout_p_two_high_noise', 0):.0%} of its two-object",
        f"examples at t ≥ {config.get('layout_high_noise_min_timestep')} (`more_two_object_scenes`, `more_high_noise`): the few examples "
        "where only the words say which object goes",
        "where were too rare to teach it. A settle stage continues that UNet on white noise (the noise sampling starts",
        "from)" + (f" and redraws {config['settle_p_two_objects']:.0%} of each batch as two-object scenes."
                   if config.get("settle_p_two_objects") else "."),
        f"All stages: {config['p_empty_caption']:.0%} empty captions (for classifier-free",
        f"guidance), batch {config['batch_size']}, AdamW lr {config['lr']}, EMA {config['ema_decay']},",
        f"min-SNR-γ loss weights (per stage below; `snr_weights` explains the x0-weight floor), offset noise {config.get('offset_noise', 0)} (on a 16×16",
        "grid SD's schedule leaves each latent channel's mean visible at t = T; without offset noise the",
        "model took the background colour from the noise instead of the prompt). Minutes are on a 2-core",
        "CPU machine shared with other work (upper bounds) unless a device is named beside them.",
        "",
        "| stage | component | parameters | steps | minutes | loss weighting; noise | sizes / positions said |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    missing = [s for s in VARIANT_IN_CHANNELS if not (assets_dir / UNET_FOLDER[s]).is_dir()]
    if missing:
        lines += [f"Not in this release yet: the {', '.join(missing)} variant(s).", ""]
    if metrics:
        lines += ["## Measured quality", "", "Judged by `sdcourse.judge` (independent image analysis); "
                  "produced by `benchmarks/mini_quality.py`.", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines.append("")
    if bars:
        lines += ["## Quality bars", "", "What `tests/test_mini_sd.py` asserts; a test whose bar is not met is "
                  "marked xfail with its measured number.", "", "| bar | measured | needed | met |", "|---|---|---|---|"]
        lines += [f"| {what} | {value:.3f} | {needed} | {'yes' if met else '**no**'} |" for what, value, needed, met, _ in bars]
        lines.append("")
        lines += [f"**{what}, not met.** {why}\n" for what, _, _, met, why in bars if not met]
    return "\n".join(lines)


def train(config: MiniTrainConfig, stages=STAGES, assets_dir: Path | None = None, max_steps=None) -> dict:
    """Run or resume `stages` in order; export to `assets_dir` once all of them are finished.

    Returns the seconds each stage took in this sitting and whether the sitting ended early
    (`config.max_minutes`, or `max_steps` steps of the current stage): run it again to go on.
    """
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    sitting = Sitting(config.max_minutes, max_steps)
    config.path.mkdir(parents=True, exist_ok=True)
    (config.path / "config.json").write_text(json.dumps(asdict(config), indent=2))
    data = build_dataset(config)
    timings = {}
    t0 = time.time()
    vae = train_vae(config, data, sitting)
    timings["vae"] = time.time() - t0
    if vae is None:
        return dict(seconds=timings, finished=False)
    vae.eval().requires_grad_(False).to(config.device)
    latents_file = config.path / "data" / "latents.safetensors"
    if latents_file.exists():
        latents = load_file(latents_file)["latents"]
    else:
        latents = encode_latents(vae, data["images"])
        save_file({"latents": latents.contiguous()}, latents_file)
    for stage in STAGES:  # in training order, whatever the order of `stages`
        if stage == "vae" or stage not in stages or (config.path / stage / "final" / "unet").exists():
            continue
        t0 = time.time()
        unet = train_unet(config, stage, data, vae, latents, sitting)
        timings[stage] = time.time() - t0
        if unet is None:
            return dict(seconds=timings, finished=False)
    if assets_dir is not None:
        export(config, assets_dir, stages)
    return dict(seconds=timings, finished=True)

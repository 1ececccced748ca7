"""mini-SD's autoencoder stage: train it, then rescale its latents to the x4 upscaler's scaling factor."""

import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ..latents import psnr_from_mse
from . import loop
from .config import SCALING_FACTOR, MiniTrainConfig, vae_config
from .data import to_tensor, vae_batch
from .recipes import VAERecipe, vae_recipe


def vae_loss(vae: AutoencoderKL, recipe: VAERecipe, data: dict, seed: int, step: int) -> tuple[torch.Tensor, dict]:
    """One step's reconstruction loss (L1 + MSE) plus the recipe's KL term; logs the batch's PSNR."""
    images = vae_batch(data, recipe.batch_size, recipe.crops(step), loop.stage_rng(seed, "vae", step))
    posterior = vae.encode(images).latent_dist
    latents = posterior.sample(generator=loop.stage_generator(seed, "vae", step))
    reconstruction = vae.decode(latents).sample
    loss = F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images)
    loss = loss + recipe.kl_weight * posterior.kl().mean()
    mse = ((reconstruction.detach().clamp(-1, 1) - images) / 2).pow(2).mean().item()
    return loss, {"loss": loss.item(), "psnr": psnr_from_mse(mse)}


def train_vae(config: MiniTrainConfig, data: dict, sitting: loop.Sitting) -> AutoencoderKL | None:
    """Train (or resume, or load the finished) autoencoder; None when the sitting ended first."""
    stage_dir = config.path / "vae"
    final = stage_dir / "final"
    if (final / "config.json").exists():
        return AutoencoderKL.from_pretrained(final)
    recipe = vae_recipe(config)
    torch.manual_seed(config.seed)
    vae = AutoencoderKL(**vae_config())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.lr, weight_decay=0.0)
    training = loop.Training(
        stage="vae", steps=recipe.steps, modules={"vae": vae}, optimizer=optimizer, learning_rate=recipe.learning_rate,
        loss=lambda step: vae_loss(vae, recipe, data, config.seed, step),
    )
    result = loop.run(training, stage_dir, sitting, config.checkpoint_every)
    if result is None:
        return None
    seconds, _ = result
    vae.eval()
    set_latent_spread(vae, encode_latents(vae, data["images"][:4000]).std().item())
    vae.save_pretrained(final)
    (final / "log.json").write_text(json.dumps({"steps": recipe.steps, "seconds": seconds}))
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

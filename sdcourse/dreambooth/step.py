"""One DreamBooth training step: the loss the loop minimises, in the notebook's words."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..training import offset_noise, snr_weights
from .config import DreamBoothConfig
from .data import encode_images


def training_loss(batch: dict, parts: dict, config: DreamBoothConfig, generator: torch.Generator) -> torch.Tensor:
    """One DreamBooth loss, in the notebook's words.

    `parts` holds unet, vae, noise_scheduler, and either cached prompt embeddings or the
    text encoder with prompt ids. The batch's instance examples come first and, with prior
    preservation, the class examples are concatenated after them.
    """
    unet, noise_scheduler = parts["unet"], parts["noise_scheduler"]
    examples = batch["instance"]
    if config.with_prior_preservation:
        examples = torch.cat([examples, batch["prior"]])
    n_instance = len(batch["instance"])

    # 1. Images → latents (unless the latents were cached).
    latents = examples if config.cache_latents else encode_images(parts["vae"], examples)
    latents = latents.float()  # autocast picks the compute precision under mixed precision

    # 2. Noise them at a random timestep of the training schedule.
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (len(latents),), generator=generator
    ).to(latents.device)
    if config.offset_noise:
        noise = noise + offset_noise(latents.shape, generator, config.offset_noise)
    noise = noise.to(latents.device, latents.dtype)
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)

    # 3. The prompt of each example: its instance prompt, then its class prompt.
    prior_prompt = batch["prior_prompt"] if config.with_prior_preservation else None
    encoder_hidden_states = batch_encoder_hidden_states(parts, batch["instance_prompt"], prior_prompt)

    # 4. Predict the noise (or velocity, for v-prediction models) and compare.
    noise_pred = unet(noisy_latents, timesteps, encoder_hidden_states).sample
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise

    per_example = F.mse_loss(noise_pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
    if config.snr_gamma is not None:
        per_example = per_example * snr_weights(noise_scheduler, timesteps, config.snr_gamma, config.snr_floor)
    if not config.with_prior_preservation:
        return per_example.mean()
    instance_loss, prior_loss = per_example[:n_instance].mean(), per_example[n_instance:].mean()
    return instance_loss + config.prior_loss_weight * prior_loss


def batch_encoder_hidden_states(parts: dict, instance_prompt: torch.Tensor, prior_prompt: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """encoder_hidden_states for a batch: each instance example's prompt, then each class
    example's (`instance_prompt`, `prior_prompt`: indices into the instance and class prompts)."""
    if "instance_embeddings" in parts:  # cached: nothing in the text encoder is trained
        instance, prior = parts["instance_embeddings"], parts.get("prior_embeddings")
    else:
        text_encoder, device = parts["text_encoder"], parts["device"]
        instance = text_encoder(parts["instance_ids"].to(device))[0]
        prior = text_encoder(parts["prior_ids"].to(device))[0] if prior_prompt is not None else None
    states = [instance[instance_prompt.to(instance.device)]]
    if prior_prompt is not None:
        states.append(prior[prior_prompt.to(prior.device)])
    return torch.cat(states)

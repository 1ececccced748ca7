"""mini-SD's UNet stages: the models a recipe starts from, the loss of one step, and the finished stage."""

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

from .. import grounding
from ..text import clip_text_transformer, learn_token_embeddings, word_token_ids
from ..tokenizer import load_tokenizer
from ..training import EMA, snr_weights
from . import loop
from .config import STAGES, STARTS_FROM, MiniTrainConfig, noise_scheduler_config, text_encoder_config, unet_config
from .data import captions, more_two_object_scenes, two_object_scenes
from .noise import epsilon_target, mirrored_signal, more_high_noise, training_noise
from .recipes import UNetRecipe, recipe


@dataclass
class UNetParts:
    """What a UNet stage's steps read: the models, the data, and the grounding recorder if any."""

    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: object
    vae: AutoencoderKL
    noise_scheduler: DDPMScheduler
    data: dict
    latents: torch.Tensor  # every scene's unscaled latents
    two_object_scenes: np.ndarray
    device: torch.device
    seed: int
    trains_text: bool
    recorder: grounding.AttentionRecorder | None = None


def train_unet(config: MiniTrainConfig, stage: str, data, vae, latents, sitting: loop.Sitting):
    """Train (or resume) the UNet stage `stage` by its recipe; returns its finished UNet (EMA
    weights, saved with its text encoder where the stage trains one), or None when the sitting ended first."""
    stage_recipe = recipe(config, stage)
    tokenizer = load_tokenizer()
    unet, text_encoder = starting_models(config, stage_recipe)
    modules, no_decay = trained_modules(stage_recipe, unet, text_encoder, tokenizer)
    unet = modules["unet"]
    device = torch.device(config.device)
    for m in modules.values():
        m.to(device)
    text_encoder.to(device)
    vae.to(device)
    optimizer = _make_optimizer(modules, no_decay, stage_recipe.lr)
    ema = EMA(modules, stage_recipe.ema_decay)
    parts = UNetParts(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae,
                      noise_scheduler=DDPMScheduler(**noise_scheduler_config()), data=data, latents=latents,
                      two_object_scenes=two_object_scenes(data["scenes"]), device=device, seed=config.seed,
                      trains_text="text_encoder" in modules)
    processors = unet.attn_processors  # restored once the stage is finished
    if stage_recipe.grounding_weight or stage_recipe.background_grounding_weight:
        parts.recorder = grounding.record_cross_attention(unet)
    training = loop.Training(stage=stage, steps=stage_recipe.steps, modules=modules, optimizer=optimizer, ema=ema,
                             learning_rate=stage_recipe.learning_rate, loss=partial(unet_loss, parts, stage_recipe))
    result = loop.run(training, config.path / stage, sitting, config.checkpoint_every)
    if result is None:
        return None
    if parts.recorder is not None:
        unet.set_attn_processor(processors)
    ema.copy_to(modules)  # the EMA weights are the model
    for m in modules.values():
        m.eval()
    final = config.path / stage / "final"
    unet.save_pretrained(final / "unet")
    if "text_encoder" in modules:
        text_encoder.save_pretrained(final / "text_encoder")
    (final / "log.json").write_text(json.dumps(stage_log(stage_recipe, config, *result)))
    return unet


def starting_models(config: MiniTrainConfig, stage_recipe: UNetRecipe) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """The UNet and text encoder a stage starts from: new ones for "base", else those of the stage it continues."""
    stage = stage_recipe.stage
    if stage not in STARTS_FROM:
        torch.manual_seed(config.seed)
        return UNet2DConditionModel(**unet_config()), CLIPTextModel(text_encoder_config())
    start = config.path / STARTS_FROM[stage] / "final"
    if not (start / "unet").is_dir():
        raise ValueError(f"stages: {stage!r} starts from the finished {STARTS_FROM[stage]!r} stage, which is not in "
                         f"{config.path}; train {STARTS_FROM[stage]!r} first (include it in --stages)")
    return UNet2DConditionModel.from_pretrained(start / "unet"), CLIPTextModel.from_pretrained(text_encoder_dir(config, stage))


def trained_modules(stage_recipe: UNetRecipe, unet, text_encoder, tokenizer) -> tuple[dict, list]:
    """The modules the stage trains (a variant's UNet widened first) and the parameters kept from weight decay."""
    if stage_recipe.trains_text_encoder:
        return {"unet": unet, "text_encoder": text_encoder}, []
    if stage_recipe.variant is not None:
        unet = expand_conv_in(unet, stage_recipe.variant.in_channels, stage_recipe.variant.num_class_embeds)
    text_encoder.requires_grad_(False)
    if stage_recipe.text_layers:
        transformer = clip_text_transformer(text_encoder)
        for module in [*transformer.encoder.layers[-stage_recipe.text_layers:], transformer.final_layer_norm]:
            module.requires_grad_(True)
        return {"unet": unet, "text_encoder": text_encoder}, []
    if not stage_recipe.learned_words:
        return {"unet": unet}, []
    embeddings = learn_token_embeddings(text_encoder, single_token_ids(tokenizer, stage_recipe.learned_words))
    return {"unet": unet, "text_encoder": text_encoder}, [embeddings]


def _make_optimizer(modules: dict, no_decay: list, lr: float) -> torch.optim.AdamW:
    """AdamW over every trainable parameter, with weight decay except on `no_decay` (the learned word
    embeddings: decay would shrink every word's embedding, not just the trained ones)."""
    trainable = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if all(p is not q for q in no_decay)]}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)


def unet_loss(parts: UNetParts, stage_recipe: UNetRecipe, step: int) -> tuple[torch.Tensor, dict]:
    """One step: draw scenes, captions, noise and timesteps by the recipe; the min-SNR-weighted
    denoising loss, plus the grounding loss where the recipe has one."""
    rng = loop.stage_rng(parts.seed, stage_recipe.stage, step)
    generator = loop.stage_generator(parts.seed, stage_recipe.stage, step)
    index, texts = draw_examples(parts, stage_recipe, rng)
    noisy, target, timesteps, weights = noised_latents(parts, stage_recipe, index, texts, generator, rng)
    class_labels = None
    if stage_recipe.variant is not None:
        extra, class_labels = stage_recipe.variant.inputs(parts.data, index, parts.vae, generator, rng)
        noisy = torch.cat([noisy, extra.to(parts.device)], dim=1)
        if class_labels is not None:
            class_labels = class_labels.to(parts.device)
    input_ids = caption_ids(parts.tokenizer, texts)
    with torch.set_grad_enabled(parts.trains_text):
        encoder_hidden_states = parts.text_encoder(input_ids.to(parts.device))[0]
    if parts.recorder is not None:
        parts.recorder.maps.clear()
    prediction = parts.unet(noisy, timesteps, encoder_hidden_states, class_labels=class_labels).sample
    per_sample = F.mse_loss(prediction, target, reduction="none").mean(dim=[1, 2, 3])
    loss = (per_sample * weights).mean()
    logged = {"loss": loss.item()}  # the denoising loss: comparable across stages
    grounded = [(stage_recipe.grounding_weight, stage_recipe.grounded_words, "grounding"),
                (stage_recipe.background_grounding_weight, frozenset({grounding.BACKGROUND_NOUN}), "background_grounding")]
    for weight, words, name in grounded:
        if weight:
            attention_loss = grounding.grounding_loss(
                parts.recorder.maps, parts.tokenizer, input_ids, [parts.data["scenes"][i] for i in index],
                samples=timesteps.cpu() >= stage_recipe.grounding_min_timestep, words=words,
                per_area=stage_recipe.grounding_per_area)
            loss = loss + weight * attention_loss
            logged[name] = attention_loss.item()
    return loss, logged


def draw_examples(parts: UNetParts, stage_recipe: UNetRecipe, rng) -> tuple[np.ndarray, list[str]]:
    """The batch's scene indices (more two-object scenes where the recipe asks) and fresh captions."""
    index = rng.integers(0, len(parts.latents), stage_recipe.batch_size)
    if stage_recipe.p_two_objects:
        index = more_two_object_scenes(index, parts.two_object_scenes, stage_recipe.p_two_objects, rng)
    texts = captions(parts.data["scenes"], index, rng, stage_recipe.p_empty_caption, stage_recipe.p_mention_size,
                     stage_recipe.p_mention_position)
    return index, texts


def noised_latents(parts: UNetParts, stage_recipe: UNetRecipe, index, texts, generator, rng):
    """The noisy latents, the noise to predict, the timesteps and their min-SNR loss weights.

    The noise is drawn on the CPU, so every device trains on the same noise.
    """
    clean = parts.latents[index].to(parts.device) * parts.vae.config.scaling_factor
    noise = training_noise(clean.shape, generator, stage_recipe.offset_noise, stage_recipe.pyramid_noise_discount)
    noise = noise.to(parts.device)
    timesteps = rng.integers(0, 1000, stage_recipe.batch_size)
    if stage_recipe.p_two_high_noise:
        timesteps = more_high_noise(timesteps, np.isin(index, parts.two_object_scenes), stage_recipe.p_two_high_noise,
                                    stage_recipe.high_noise_min_timestep, rng)
    timesteps = torch.from_numpy(timesteps)
    weights = snr_weights(parts.noise_scheduler, timesteps, stage_recipe.snr_gamma, stage_recipe.snr_floor)
    signal = clean
    if stage_recipe.p_mirror > 0:
        signal = mirrored_signal(clean, texts, timesteps, rng.random(stage_recipe.batch_size), stage_recipe.p_mirror,
                                 stage_recipe.mirror_min_timestep)
    noisy = parts.noise_scheduler.add_noise(signal, noise, timesteps.to(parts.device))
    target = epsilon_target(parts.noise_scheduler, noise, signal, clean, timesteps)  # the noise itself where unmirrored
    return noisy, target, timesteps.to(parts.device), weights.to(parts.device)


def stage_log(stage_recipe: UNetRecipe, config: MiniTrainConfig, seconds: float, history: dict) -> dict:
    """What the stage's log.json records (training.json and the model card read it)."""
    r = stage_recipe
    grounding_losses = history.get("grounding")
    log = {"steps": r.steps, "seconds": seconds, "final_loss": float(np.mean(history["loss"][-200:])), "lr": r.lr,
           "snr_gamma": r.snr_gamma, "snr_floor": r.snr_floor, "p_mention_size": r.p_mention_size,
           "p_mention_position": r.p_mention_position, "pyramid_noise_discount": r.pyramid_noise_discount,
           "p_mirror": r.p_mirror, "mirror_min_timestep": r.mirror_min_timestep, "grounding_weight": r.grounding_weight,
           "p_two_objects": r.p_two_objects, "p_two_high_noise": r.p_two_high_noise,
           "high_noise_min_timestep": r.high_noise_min_timestep,
           "grounded_words": sorted(r.grounded_words) if r.grounding_weight else [],
           "grounding_min_timestep": r.grounding_min_timestep if r.grounding_weight else None,
           "grounding_per_area": r.grounding_per_area, "background_grounding_weight": r.background_grounding_weight,
           "final_background_grounding_loss": float(np.mean(history["background_grounding"][-200:]))
           if history.get("background_grounding") else None,
           "final_grounding_loss": float(np.mean(grounding_losses[-200:])) if grounding_losses else None,
           "device": config.device, "text_words": list(r.learned_words), "text_layers": r.text_layers}
    return {**log, **(r.variant.log if r.variant is not None else {})}


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


def caption_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    """The captions' token ids, padded to CLIP's 77."""
    return tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def single_token_ids(tokenizer, words) -> list[int]:
    """The token id of each of `words`, each of which must be a single CLIP token."""
    ids = [word_token_ids(tokenizer, word) for word in words]
    if not all(len(i) == 1 for i in ids):
        raise ValueError(f"each of {words} must be one token")
    return [i[0] for i in ids]

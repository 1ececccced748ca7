"""The models DreamBooth trains: the base pipeline, LoRA, the identifier's token embeddings
(pivotal tuning), the optimizer, and a sampling pipeline from the modules being trained."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ..latents import seeded_generator
from ..text import learn_token_embeddings
from .checks import bitsandbytes_problem, check_8bit_adam
from .config import LORA_TEXT_ENCODER_TARGETS, DreamBoothConfig, DreamBoothWarning, identifier_words

if TYPE_CHECKING:
    from .loop import DreamBoothTraining

# The file diffusers' save_lora_weights writes (and load_lora_weights reads) in a LoRA output.
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
IDENTIFIER_EMBEDDINGS = "identifier_embeddings.safetensors"  # pivotal tuning's learned token embeddings


def load_base_pipeline(model):
    """The base model in float32 on the CPU. A pipeline object is deep-copied: training never changes it."""
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    from ..models import load_pipeline

    if isinstance(model, DiffusionPipeline):
        pipe = copy.deepcopy(model)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            place(module, "cpu", torch.float32)
        return pipe
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a name, hub id, folder or pipeline, got {type(model).__name__}.")
    # A saved pipeline folder; anything else is a name for load_pipeline, so that a folder which happens
    # to be called "mini" in the working directory does not hide the shipped model.
    if (Path(model) / "model_index.json").is_file():
        return StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32, use_safetensors=True)
    return load_pipeline(str(model), task="text2img", device="cpu", dtype=torch.float32)


def place(module, device, dtype) -> None:
    """module.to(device, dtype), casting only when the dtype differs (diffusers warns about every cast)."""
    module.to(device)
    if module.dtype != dtype:
        module.to(dtype=dtype)


def model_resolution(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def add_lora(unet, text_encoder, config: DreamBoothConfig) -> None:
    """Add trainable low-rank matrices (A, B) beside the attention projections: W x + B A x.

    B starts at zero, so the model starts exactly as the base model; A is Gaussian, drawn
    from `seed` without touching the global random state.
    """
    from peft import LoraConfig, inject_adapter_in_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        unet.add_adapter(LoraConfig(
            r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian",
            target_modules=list(config.lora_target_modules),
        ))
        if config.train_text_encoder:
            # What transformers' text_encoder.add_adapter does, without its minimum-peft-version check.
            inject_adapter_in_model(LoraConfig(
                r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian",
                target_modules=LORA_TEXT_ENCODER_TARGETS,
            ), text_encoder)


def prepare_models(base, config: DreamBoothConfig, device, weight_dtype) -> None:
    """Freeze what is not trained and add LoRA if asked. What is trained stays float32 (the
    optimizer needs the precision); what is frozen goes to weight_dtype (half the memory)."""
    from diffusers.training_utils import cast_training_params

    unet, vae, text_encoder = base.unet, base.vae, base.text_encoder
    trains_text = config.train_text_encoder
    vae.requires_grad_(False)
    unet.requires_grad_(not config.use_lora)
    text_encoder.requires_grad_(trains_text and not config.use_lora)
    if config.use_lora:
        add_lora(unet, text_encoder, config)
    place(vae, device, weight_dtype)
    place(unet, device, weight_dtype if config.use_lora else torch.float32)
    place(text_encoder, device, torch.float32 if trains_text and not config.use_lora else weight_dtype)
    if config.train_identifier_embedding:
        text_encoder.get_input_embeddings().to(torch.float32)
        learn_token_embeddings(text_encoder, identifier_token_ids(base.tokenizer, config))
    if config.use_lora and weight_dtype != torch.float32:
        cast_training_params([unet, text_encoder] if trains_text else [unet], dtype=torch.float32)
    if config.gradient_checkpointing:  # recompute activations in the backward pass: less memory, ~30 % slower
        unet.enable_gradient_checkpointing()
        if trains_text and hasattr(text_encoder, "activation_checkpointing_enable"):  # transformers ≥ 5
            text_encoder.activation_checkpointing_enable({"use_reentrant": False})
        elif trains_text:
            text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def identifier_token_ids(tokenizer, config: DreamBoothConfig) -> list[int]:
    """The token ids of the identifier words (every piece, when the tokenizer splits a word)."""
    ids = set()
    for word in identifier_words(config):
        ids.update(tokenizer(word, add_special_tokens=False).input_ids)
    return sorted(ids)


def param_groups(params: list, text_encoder, config: DreamBoothConfig) -> list:
    """The optimizer's parameter groups: the identifier's embeddings (when learned) get their
    own learning rate and no weight decay."""
    if not config.train_identifier_embedding:
        return [{"params": params}]
    table = text_encoder.get_input_embeddings().weight
    return [
        {"params": [p for p in params if p is not table]},
        {"params": [table], "lr": config.identifier_learning_rate, "weight_decay": 0.0},
    ]


def identifier_embeddings(text_encoder, tokenizer, config: DreamBoothConfig) -> dict:
    """{token: embedding vector} of the identifier's tokens, for saving."""
    table = text_encoder.get_input_embeddings().weight.detach()
    return {tokenizer.convert_ids_to_tokens(i): table[i].float().cpu().clone()
            for i in identifier_token_ids(tokenizer, config)}


def save_identifier_embeddings(text_encoder, tokenizer, config: DreamBoothConfig, folder) -> None:
    """Write the identifier's embeddings to `folder`/IDENTIFIER_EMBEDDINGS (LoRA outputs and checkpoints)."""
    from safetensors.torch import save_file

    save_file(identifier_embeddings(text_encoder, tokenizer, config), os.path.join(folder, IDENTIFIER_EMBEDDINGS))


def load_identifier_embeddings(text_encoder, tokenizer, folder) -> None:
    """Read `folder`/IDENTIFIER_EMBEDDINGS into the text encoder's token table."""
    from safetensors.torch import load_file

    set_identifier_embeddings(text_encoder, tokenizer, load_file(os.path.join(folder, IDENTIFIER_EMBEDDINGS)))


def set_identifier_embeddings(text_encoder, tokenizer, embeddings: dict) -> None:
    """Write saved identifier embeddings ({token: vector}) into the text encoder's table."""
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, vector in embeddings.items():
            table[tokenizer.convert_tokens_to_ids(token)] = vector.to(table.device, table.dtype)


def load_lora_output(pipe, folder) -> None:
    """Load a LoRA DreamBooth output into `pipe` (the base model it was trained from): the LoRA
    weights and, with pivotal tuning, the learned identifier embeddings."""
    folder = Path(folder)
    if not (folder / LORA_WEIGHTS).is_file():
        full = (folder / "model_index.json").is_file()
        raise ValueError(
            f"folder={str(folder)!r} holds no LoRA weights ({LORA_WEIGHTS})"
            + (": it is a full fine-tune, load it with StableDiffusionPipeline.from_pretrained(folder)." if full
               else ": give the output_dir of a LoRA DreamBooth run (use_lora=True).")
        )
    pipe.load_lora_weights(folder)
    if (Path(folder) / IDENTIFIER_EMBEDDINGS).is_file():
        load_identifier_embeddings(pipe.text_encoder, pipe.tokenizer, folder)


def make_optimizer(params, config: DreamBoothConfig):
    """AdamW over `params` (tensors or parameter groups); 8-bit AdamW from bitsandbytes when asked
    for (it stores the two Adam moments in 8 bits: ~5 GB less for SD 1.5's UNet). Without
    bitsandbytes a LoRA falls back to plain AdamW with a warning; full fine-tuning is refused."""
    optimizer_class = torch.optim.AdamW
    if config.use_8bit_adam:
        check_8bit_adam(config)
        problem = bitsandbytes_problem()
        if problem is None:
            import bitsandbytes as bnb

            optimizer_class = bnb.optim.AdamW8bit
        else:
            warnings.warn(
                f"use_8bit_adam=True but bitsandbytes cannot be used here ({problem}); the LoRA falls back "
                "to torch.optim.AdamW (its optimizer state is small). Install it with: pip install bitsandbytes",
                DreamBoothWarning, stacklevel=2,
            )
    return optimizer_class(
        params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
    )


def sampling_pipeline(base, unet, text_encoder):
    """A StableDiffusionPipeline from the modules being trained (for validation and export)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=base.vae, text_encoder=text_encoder, tokenizer=base.tokenizer, unet=unet,
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def validation_grid(pipe, config: DreamBoothConfig, resolution: int, autocast) -> Image.Image:
    """One row per validation prompt, `num_validation_images` seeds (0, 1, ...) per row."""
    from diffusers.utils import make_image_grid

    images = []
    for prompt in config.validation_prompts:
        generators = [seeded_generator(s) for s in range(config.num_validation_images)]
        with autocast():
            images += pipe(
                [prompt] * config.num_validation_images, height=resolution, width=resolution,
                num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                generator=generators,
            ).images
    return make_image_grid(images, rows=len(config.validation_prompts), cols=config.num_validation_images)


def trained_pipeline(training: DreamBoothTraining):
    """A sampling pipeline from the modules as they are now."""
    unwrap = training.accelerator.unwrap_model
    text_encoder = training.base.text_encoder
    if "text_encoder" in training.parts:  # trained, or frozen but not cached
        text_encoder = unwrap(training.parts["text_encoder"])
    return sampling_pipeline(training.base, unwrap(training.parts["unet"]), text_encoder)

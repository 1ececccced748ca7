"""The finished DreamBooth model: a diffusers folder or LoRA weights, its model card (how to load
it with plain diffusers), published by renames and pushed to the Hub when asked."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from ..training import replace_folder
from .checks import check_hub_reachable
from .config import CARD_TAG, DreamBoothConfig, identifier_words, model_name
from .model import (
    IDENTIFIER_EMBEDDINGS,
    identifier_embeddings,
    load_base_pipeline,
    place,
    sampling_pipeline,
    save_identifier_embeddings,
    set_identifier_embeddings,
    trained_pipeline,
    validation_grid,
)

if TYPE_CHECKING:
    from .loop import DreamBoothResult, DreamBoothTraining


def save_lora_output(folder: Path, unet, text_encoder) -> None:
    """LoRA weights in diffusers' format: `pipe.load_lora_weights(folder)` loads them."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet_layers = diffusers_lora_names(convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    text_layers = None
    if text_encoder is not None:
        text_layers = diffusers_lora_names(convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder)))
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=unet_layers, text_encoder_lora_layers=text_layers, safe_serialization=True
    )


def diffusers_lora_names(state: dict) -> dict:
    """Every key in diffusers' naming (A = lora.down, B = lora.up). convert_state_dict_to_diffusers
    renames the attention projections but leaves convolutions as PEFT's lora_A / lora_B, and a file
    with both namings loads wrongly: diffusers takes it for PEFT's and drops the attention layers."""
    return {key.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up."): value
            for key, value in state.items()}


def hub_base_model(model) -> str | None:
    """The hub id of the base model, when it has one (for the card's `base_model` and loading code)."""
    from ..models import REAL_MODELS

    name = model_name(model)
    if name in REAL_MODELS:
        return REAL_MODELS[name].repo_ids[0]
    if name.count("/") == 1 and not Path(name).exists():
        return name
    return None


def usage_code(config: DreamBoothConfig) -> str:
    """How to load the output with plain diffusers (the base model first, for LoRA)."""
    this = "'<this folder or repo>'"
    imports = "from diffusers import StableDiffusionPipeline\n\n"
    if not config.use_lora:
        return f"{imports}pipe = StableDiffusionPipeline.from_pretrained({this})"
    if config.model == "mini":
        base = "import sdcourse\n\npipe = sdcourse.load_pipeline('mini')"
    elif isinstance(config.model, (str, os.PathLike)):
        base_id = hub_base_model(config.model) or str(config.model)
        base = f"{imports}pipe = StableDiffusionPipeline.from_pretrained({base_id!r})"
    else:
        base = "pipe = base_pipeline  # the pipeline this was trained from"
    code = f"{base}\npipe.load_lora_weights({this})"
    if config.train_identifier_embedding:  # what sdcourse.dreambooth.load_lora_output does
        code += (
            "\n# the identifier's learned embeddings (pivotal tuning)\nfrom safetensors.torch import load_file\n"
            "table = pipe.text_encoder.get_input_embeddings().weight\n"
            f"for token, vector in load_file('<this folder>/{IDENTIFIER_EMBEDDINGS}').items():\n"
            "    table.data[pipe.tokenizer.convert_tokens_to_ids(token)] = vector.to(table.dtype)"
        )
    return code


def _identifier_rate(config: DreamBoothConfig) -> str:
    if not config.train_identifier_embedding:
        return "no"
    return f"yes, {', '.join(identifier_words(config))} at learning rate {config.identifier_learning_rate:g}"


def _loss_weighting(config: DreamBoothConfig) -> str:
    if config.snr_gamma is None:
        return "plain MSE"
    floor = f", x0 weight ≥ {config.snr_floor:g}" if config.snr_floor else ""
    return f"min-SNR-{config.snr_gamma:g}{floor}"


def model_card(config: DreamBoothConfig, resolution: int, n_instance: int, global_step: int,
               seconds: float, final_loss: float | None, has_grid: bool) -> str:
    """README.md for output_dir: what was trained, how, and how to load it with plain diffusers."""
    name = model_name(config.model)
    kind = f"LoRA rank {config.rank}" if config.use_lora else "full fine-tune"
    tags = ["text-to-image", "diffusers", "stable-diffusion", "dreambooth", CARD_TAG]
    front = {"library_name": "diffusers", "instance_prompt": config.instance_prompt,
             "tags": tags + (["lora"] if config.use_lora else [])}
    if hub_base_model(config.model):
        front["base_model"] = hub_base_model(config.model)
    usage = f"{usage_code(config)}\nimage = pipe({config.instance_prompt!r}).images[0]"
    prior = "off"
    if config.with_prior_preservation:
        prompts = " / ".join(repr(prompt) for prompt in config.class_prompts)
        prior = f"{config.num_class_images} images of {prompts}, weight {config.prior_loss_weight}"
    rows = [
        ("base model", name), ("method", f"DreamBooth, {kind}"), ("text encoder trained", config.train_text_encoder),
        ("identifier embedding learned", _identifier_rate(config)),
        ("instance images", n_instance),
        ("instance prompts", f"one caption per image (*{config.caption_extension})" if config.caption_extension
         else repr(config.instance_prompt)),
        ("prior preservation", prior), ("resolution", resolution),
        ("steps", global_step),
        ("batch size × accumulation", f"{config.train_batch_size} × {config.gradient_accumulation_steps}"),
        ("learning rate", f"{config.lr:g} ({config.schedule}"
                          + (")" if config.schedule == "constant" else f", warm-up {config.lr_warmup_steps})")),
        ("mixed precision", config.mixed_precision), ("8-bit Adam", config.use_8bit_adam),
        ("gradient checkpointing", config.gradient_checkpointing), ("loss weighting", _loss_weighting(config)),
        ("seed", config.seed),
        ("training time (last sitting)", f"{seconds:.0f} s"),
        ("final loss", f"{final_loss:.4f}" if final_loss is not None else "-"),
    ]
    table = "\n".join(["| setting | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows])
    grid = "\n## Validation\n\n![validation images](validation.png)\n" if has_grid else ""
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n"
        f"# DreamBooth ({kind}) of {name}\n\n"
        f"The subject is called `{config.instance_prompt}`. Trained with `sdcourse.dreambooth` "
        "(accelerate + peft), the trainer of the sdcourse Stable Diffusion workbook.\n\n"
        f"## Use it\n\n```python\n{usage}\n```\n\n## Training\n\n{table}\n{grid}"
    )


def push_to_hub(folder, repo_id: str, private: bool = False) -> str:
    """Upload a finished output folder to the Hugging Face Hub; returns the repo's URL."""
    check_hub_reachable()
    from huggingface_hub import create_repo, upload_folder

    url = create_repo(repo_id, private=private, exist_ok=True)
    upload_folder(repo_id=url.repo_id, folder_path=str(folder), commit_message="DreamBooth model (sdcourse)")
    return str(url)


def export_model(training: DreamBoothTraining, config: DreamBoothConfig, n_instance: int,
                 result: DreamBoothResult) -> Path:
    """Write the finished model (diffusers folder or LoRA weights), a validation grid and the
    model card to a temporary folder, then rename it to output_dir. A failed write removes the
    temporary folder (a killed one is removed by the next run: `checks.remove_interrupted_exports`)."""
    out = Path(config.output_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        write_model(tmp, training, config, n_instance, result)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_model(tmp: Path, training: DreamBoothTraining, config: DreamBoothConfig, n_instance: int,
                result: DreamBoothResult) -> None:
    """The finished model, its validation grid and its model card, written into the folder tmp."""
    pipe = trained_pipeline(training)
    for module in training.modules:
        module.eval()

    has_grid = bool(config.validation_prompts)
    if has_grid:
        validation_grid(pipe, config, training.resolution, training.accelerator.autocast).save(tmp / "validation.png")
    if config.use_lora:
        save_lora_output(tmp, pipe.unet, pipe.text_encoder if config.train_text_encoder else None)
        if config.train_identifier_embedding:
            save_identifier_embeddings(pipe.text_encoder, pipe.tokenizer, config, tmp)
    else:
        if training.accelerator.mixed_precision != "no":
            # Frozen parts are saved as they came: mixed precision rounded ours, so load them again.
            frozen = load_base_pipeline(config.model)
            text_encoder = pipe.text_encoder if config.train_text_encoder else frozen.text_encoder
            if config.train_identifier_embedding and not config.train_text_encoder:
                learned = identifier_embeddings(pipe.text_encoder, pipe.tokenizer, config)
                set_identifier_embeddings(text_encoder, pipe.tokenizer, learned)
            pipe = sampling_pipeline(frozen, pipe.unet, text_encoder)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            place(module, "cpu", torch.float32)
        pipe.save_pretrained(tmp, safe_serialization=True)
    final_loss = result.losses[-1] if result.losses else None
    card = model_card(config, training.resolution, n_instance, result.global_step, result.train_seconds,
                      final_loss, has_grid)
    (tmp / "README.md").write_text(card)

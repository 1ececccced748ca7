"""What is checked before a DreamBooth run loads or writes anything: settings, identifier, device,
8-bit Adam, resolution, the output folder and the Hub."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .config import (
    CARD_TAG,
    LR_SCHEDULERS,
    MIXED_PRECISION,
    DreamBoothConfig,
    DreamBoothWarning,
    _words,
    identifier_words,
)


def check_config(config: DreamBoothConfig) -> None:
    """Reject settings that cannot work, before anything is loaded or written."""
    if not isinstance(config, DreamBoothConfig):
        raise TypeError(f"config must be a DreamBoothConfig, got {type(config).__name__}.")
    positive = ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "rank",
                "checkpointing_steps", "validation_steps", "num_class_images", "sample_batch_size",
                "num_validation_images", "num_inference_steps")
    for name in positive:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a whole number of at least 1.")
    if config.lr <= 0:
        raise ValueError(f"learning_rate={config.learning_rate!r} must be positive.")
    if config.train_identifier_embedding and not config.identifier_learning_rate > 0:
        raise ValueError(f"identifier_learning_rate={config.identifier_learning_rate!r} must be positive.")
    if config.train_identifier_embedding and not (config.class_prompts and identifier_words(config)):
        raise ValueError(
            "train_identifier_embedding=True needs identifier words (the instance prompt's words that the "
            "class prompt lacks): set class_prompt, e.g. 'a dog' for instance_prompt 'a sks dog'."
        )
    if config.offset_noise < 0:
        raise ValueError(f"offset_noise={config.offset_noise!r} must be zero or positive (0 switches it off).")
    if config.snr_gamma is not None and not config.snr_gamma > 0:
        raise ValueError(f"snr_gamma={config.snr_gamma!r} must be positive (5 is usual), or None for plain MSE.")
    if config.snr_floor < 0 or (config.snr_floor and (config.snr_gamma is None or config.snr_floor > config.snr_gamma)):
        raise ValueError(f"snr_floor={config.snr_floor!r} needs snr_gamma set and 0 <= snr_floor <= snr_gamma "
                         f"(snr_gamma={config.snr_gamma!r}).")
    if config.prior_loss_weight < 0:
        raise ValueError(f"prior_loss_weight={config.prior_loss_weight!r} must be zero or positive.")
    if config.lr_warmup_steps < 0:
        raise ValueError(f"lr_warmup_steps={config.lr_warmup_steps!r} must be zero or positive.")
    if config.checkpoints_total_limit is not None and config.checkpoints_total_limit < 1:
        raise ValueError(f"checkpoints_total_limit={config.checkpoints_total_limit!r}: use None (keep all) or ≥ 1.")
    if config.lr_scheduler is not None and config.lr_scheduler not in LR_SCHEDULERS:
        raise ValueError(f"lr_scheduler={config.lr_scheduler!r} is not one of {', '.join(LR_SCHEDULERS)}.")
    if config.mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision={config.mixed_precision!r} is not one of {', '.join(MIXED_PRECISION)}.")
    if config.resolution is not None and (not isinstance(config.resolution, int) or config.resolution < 8):
        raise ValueError(f"resolution={config.resolution!r} must be a number of pixels (or None for the model's).")
    if not config.instance_prompt or not config.instance_prompt.strip():
        raise ValueError("instance_prompt is empty: name the subject with an identifier and a class noun, "
                         "e.g. 'a sks dog'.")
    if not isinstance(config.class_prompt, (str, list, tuple, type(None))) or not all(
        isinstance(prompt, str) and prompt.strip() for prompt in config.class_prompts
    ):
        raise ValueError(f"class_prompt={config.class_prompt!r} must be a prompt or a list of prompts, e.g. 'a dog'.")
    if config.with_prior_preservation and not config.class_prompts:
        raise ValueError("with_prior_preservation=True needs a class_prompt, e.g. 'a dog' "
                         "(or set with_prior_preservation=False).")
    for prompt in config.class_prompts:
        if _words(prompt) == _words(config.instance_prompt):
            raise ValueError(
                f"class_prompt={prompt!r} equals instance_prompt: the instance prompt must add an "
                f"identifier to the class, e.g. instance_prompt='a sks {_words(prompt)[-1]}'."
            )
    if config.class_prompts and not identifier_words(config):
        raise ValueError(
            f"instance_prompt={config.instance_prompt!r} has no word that class_prompt={config.class_prompt!r} "
            "lacks: add a rare identifier such as 'sks' (e.g. 'a sks dog' for the class 'a dog')."
        )
    if config.caption_extension is not None and not (
        isinstance(config.caption_extension, str) and config.caption_extension.startswith(".")
        and len(config.caption_extension) > 1
    ):
        raise ValueError(f"caption_extension={config.caption_extension!r} must be a file suffix such as '.txt' "
                         "(or None: every image uses instance_prompt).")
    if config.resume_from_checkpoint not in (None, "latest") and not Path(config.resume_from_checkpoint).is_dir():
        raise ValueError(
            f"resume_from_checkpoint={config.resume_from_checkpoint!r} is not a folder; "
            "use 'latest' or a checkpoint-<step> folder."
        )
    if config.push_to_hub:
        check_hub_reachable()


def check_identifier(tokenizer, config: DreamBoothConfig) -> list[str]:
    """Warn when the identifier is split into several tokens: a rare single token ("sks")
    carries little prior meaning and is learned fastest. Returns the warnings."""
    messages = []
    for word in identifier_words(config):
        pieces = tokenizer.tokenize(word)
        if len(pieces) > 1:
            messages.append(
                f"identifier {word!r} is split by the tokenizer into {len(pieces)} pieces {pieces}; "
                "DreamBooth works best with a rare word that is one token, such as 'sks'."
            )
    for message in messages:
        warnings.warn(message, DreamBoothWarning, stacklevel=3)
    return messages


def check_device(config: DreamBoothConfig, device: torch.device) -> None:
    """Settings this machine cannot run: fp16 and 8-bit Adam need a CUDA GPU."""
    if config.mixed_precision == "fp16" and device.type not in ("cuda", "mps"):
        raise ValueError(
            f"mixed_precision='fp16' needs a GPU, but training runs on {device.type}: "
            "use mixed_precision='no' (or 'bf16'), e.g. the 'cpu-mini' preset."
        )
    if config.use_8bit_adam and device.type != "cuda":
        raise ValueError(
            f"use_8bit_adam=True needs a CUDA GPU (bitsandbytes), but training runs on {device.type}: "
            "set use_8bit_adam=False (the 'cpu-mini' preset does)."
        )


def expected_device() -> torch.device:
    """The device accelerate will train on, found without starting accelerate (whose first
    start fixes mixed precision, and CPU or not, for the whole process)."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):  # accelerate launch --cpu
        return torch.device("cpu")
    from ..models import pick_device

    return pick_device()


def check_hub_reachable() -> None:
    """push_to_hub needs the Hugging Face Hub and a login: say so before training, not after."""
    from ..models import hub_offline

    if hub_offline():
        raise ValueError(
            "push_to_hub=True but the Hugging Face Hub is switched off (HF_HUB_OFFLINE=1): "
            "set push_to_hub=False and upload output_dir later with huggingface_hub.upload_folder."
        )
    from huggingface_hub import whoami

    try:
        whoami()
    except Exception as error:  # no token, no network, proxy: all mean "cannot push"
        raise ValueError(
            f"push_to_hub=True but the Hugging Face Hub cannot be used ({type(error).__name__}: {error}). "
            "Log in with `hf auth login` and check the connection, or set push_to_hub=False."
        ) from None


def bitsandbytes_problem() -> str | None:
    """Why bitsandbytes' 8-bit AdamW cannot be used here (not installed, no working CUDA library), or None."""
    try:
        import bitsandbytes as bnb

        bnb.optim.AdamW8bit  # noqa: B018  (the import alone succeeds on some broken installs)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def check_8bit_adam(config: DreamBoothConfig) -> None:
    """Full fine-tuning that asks for 8-bit Adam stops here when bitsandbytes cannot be used.

    Falling back to plain AdamW would need 16.6 GiB for SD 1.5 (benchmarks/results/dreambooth.json,
    full fine-tuning without 8-bit Adam): a 16 GB T4 would run out of memory after class images
    and models are made. A LoRA keeps only its small matrices in the optimizer, so it falls back."""
    if not config.use_8bit_adam or config.use_lora:
        return
    problem = bitsandbytes_problem()
    if problem is not None:
        raise ValueError(
            f"use_8bit_adam=True but bitsandbytes cannot be used here ({problem}). Full fine-tuning with "
            "plain AdamW needs about 17 GiB for SD 1.5, more than a 16 GB T4 has. Install it "
            "(pip install bitsandbytes, on an NVIDIA GPU), or train a LoRA (use_lora=True: 2.6 GiB), "
            "or set use_8bit_adam=False on a GPU with 24 GB or more."
        )


def check_resolution(pipe, resolution: int) -> None:
    """The latents must halve cleanly through every UNet down block."""
    multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    if resolution % multiple:
        lower = resolution // multiple * multiple
        raise ValueError(
            f"resolution={resolution} must be divisible by {multiple} for this model (VAE factor "
            f"{pipe.vae_scale_factor} × UNet downsampling); try {lower or multiple} or {lower + multiple}."
        )


def check_output_dir(config: DreamBoothConfig) -> None:
    """output_dir is replaced at the end only if it is empty or an earlier output of ours."""
    out = Path(config.output_dir)
    if out.exists() and not _replaceable(out):
        raise ValueError(
            f"output_dir={str(out)!r} exists and is not an earlier DreamBooth output of sdcourse; "
            "choose a new folder (it is created at the end of training)."
        )


def _replaceable(folder: Path) -> bool:
    if folder.is_file():
        return False
    if not any(folder.iterdir()):
        return True
    card = folder / "README.md"
    return card.is_file() and CARD_TAG in card.read_text(errors="replace")

"""What is checked before a DreamBooth run loads or writes anything: settings, identifier, device,
8-bit Adam, resolution, the output folder and the Hub."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import tempfile
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
    check_types(config)
    positive = ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "rank",
                "checkpointing_steps", "validation_steps", "num_class_images", "sample_batch_size",
                "num_validation_images", "num_inference_steps")
    for name in positive:
        value = getattr(config, name)
        if value < 1:
            raise ValueError(f"{name}={value!r} must be a whole number of at least 1.")
    if config.lr <= 0:
        raise ValueError(f"learning_rate={config.learning_rate!r} must be positive.")
    check_optimizer_numbers(config)
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
    check_folders(config)
    if config.resume_from_checkpoint not in (None, "latest") and not Path(config.resume_from_checkpoint).is_dir():
        raise ValueError(
            f"resume_from_checkpoint={config.resume_from_checkpoint!r} is not a folder; "
            "use 'latest' or a checkpoint-<step> folder."
        )
    if config.push_to_hub:
        check_hub_reachable()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_types(config: DreamBoothConfig) -> None:
    """Every number a finite number of the field's kind, every switch True or False, every list a list:
    a NaN, an infinity or a string ("1e-4" typed in Python) would otherwise fail deep inside torch,
    or worse, train and export NaN weights."""
    if not (isinstance(config.model, (str, os.PathLike)) and str(config.model)) and not hasattr(config.model, "unet"):
        raise ValueError(f"model={config.model!r} must be a model name ('mini', 'sd15'), a hub id, a folder "
                         "or a pipeline object.")
    for f in dataclasses.fields(config):
        value, kind = getattr(config, f.name), str(f.type)
        if value is None and "None" in kind:
            continue
        if kind.startswith("float"):
            if isinstance(value, str):
                raise ValueError(f"{f.name}={value!r} is a string: write the number itself, e.g. {f.name}=1e-4 "
                                 "(in YAML, 1.0e-4 is read as a number and 1e-4 as a string; both are accepted "
                                 "by DreamBoothConfig.from_file).")
            if not _is_number(value) or not math.isfinite(value):
                raise ValueError(f"{f.name}={value!r} must be a finite number.")
        elif kind.startswith("int"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{f.name}={value!r} must be a whole number.")
        elif kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"{f.name}={value!r} must be True or False.")
    if not isinstance(config.lora_target_modules, (list, tuple)) or not config.lora_target_modules or not all(
        isinstance(name, str) and name for name in config.lora_target_modules
    ):
        raise ValueError(f"lora_target_modules={config.lora_target_modules!r} must be a list of module names, "
                         "e.g. ['to_q', 'to_k', 'to_v', 'to_out.0'].")
    if not isinstance(config.validation_prompt, (str, list, tuple, type(None))) or not all(
        isinstance(prompt, str) for prompt in config.validation_prompts
    ):
        raise ValueError(f"validation_prompt={config.validation_prompt!r} must be a prompt or a list of prompts.")
    for name in ("instance_data_dir", "class_data_dir", "output_dir", "run_dir", "resume_from_checkpoint"):
        value = getattr(config, name)
        if not (value is None and name != "output_dir") and not (isinstance(value, (str, os.PathLike)) and str(value)):
            raise ValueError(f"{name}={value!r} must be a folder path.")


def check_optimizer_numbers(config: DreamBoothConfig) -> None:
    """The ranges torch's AdamW and the training loop accept, checked before class images are made."""
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(config, name) < 1:
            raise ValueError(f"{name}={getattr(config, name)!r} must be at least 0 and below 1 (0.9 and 0.999 are usual).")
    for name in ("adam_weight_decay", "adam_epsilon", "lr_warmup_steps", "seed"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name}={getattr(config, name)!r} must be zero or positive.")
    if not config.max_grad_norm > 0:
        raise ValueError(f"max_grad_norm={config.max_grad_norm!r} must be positive (1.0 is usual).")


def check_count(name: str, value) -> None:
    """A count (images, steps, scenes): a whole number of at least 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a whole number of at least 1.")


def check_finite(name: str, value) -> None:
    """A scale or weight: a finite number (NaN or infinity gives NaN or black images)."""
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number.")


def check_seeds(name: str, seeds) -> list[int]:
    """Seeds as a non-empty list of whole numbers (a single number is not a list: write [3] or range(3))."""
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"{name}={seeds!r} must be a list of seeds, e.g. range(3) or [{seeds!r}].")
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"{name}={seeds!r} must be a non-empty list of whole numbers, e.g. range(3).")
    return seeds


def check_stop_at_step(stop_at_step) -> None:
    """stop_at_step ends a sitting early: None, or a step of at least 1."""
    if stop_at_step is not None and (not isinstance(stop_at_step, int) or isinstance(stop_at_step, bool)
                                     or stop_at_step < 1):
        raise ValueError(f"stop_at_step={stop_at_step!r} must be a whole number of at least 1 (or None: "
                         "train to max_train_steps).")


def _overlap(a: Path, b: Path) -> str | None:
    """How folder a relates to folder b ("is", "is inside", "contains"), or None when they are apart."""
    a, b = a.resolve(), b.resolve()
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "contains"
    return None


def check_folders(config: DreamBoothConfig) -> None:
    """The folders a run writes stay apart from the learner's instance images (else generated class
    images land among them and the next run trains on them), and the model's replacement at the end
    never deletes the run folder or the class images."""
    written = [("run_dir", config.run_path), ("output_dir", Path(config.output_dir))]
    if config.with_prior_preservation:
        written.insert(0, ("class_data_dir", config.class_path))
    if config.instance_data_dir is not None:
        instance = Path(config.instance_data_dir)
        for name, folder in written:
            relation = _overlap(folder, instance)
            if relation:
                raise ValueError(
                    f"{name}={str(folder)!r} {relation} instance_data_dir={str(instance)!r}: the run writes "
                    f"there and would mix its files with your instance images. Give {name} a folder of its own "
                    "outside instance_data_dir."
                )
    out = Path(config.output_dir)
    for name, folder in written:
        if name != "output_dir" and _overlap(folder, out) in ("is", "is inside"):
            raise ValueError(f"{name}={str(folder)!r} {_overlap(folder, out)} output_dir={str(out)!r}, which is "
                             f"replaced by the finished model: give {name} a folder outside output_dir.")


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


def check_output_dir(config: DreamBoothConfig, resuming: bool = False) -> None:
    """output_dir is written at the end only if it is empty or missing, or (with overwrite=True) holds
    an earlier output of ours; a folder that is not ours is never replaced."""
    out = Path(config.output_dir)
    if out.exists() and not _ours(out) and not (out.is_dir() and not any(out.iterdir())):
        raise ValueError(
            f"output_dir={str(out)!r} exists and is not an earlier DreamBooth output of sdcourse; "
            "choose a new folder (it is created at the end of training)."
        )
    # replace_folder's rename pair, cut in the middle by a kill: the previous model waits in NAME.old
    old = out.with_name(out.name + ".old")
    finished = out if _ours(out) else old if not out.exists() and _ours(old) else None
    if finished is not None and not config.overwrite:
        how = ("to train it further from run_dir's checkpoints and replace it" if resuming else "to replace it")
        raise ValueError(
            f"output_dir={str(out)!r} already holds a finished DreamBooth model"
            + (f" (in {str(old)!r}, left there by an interrupted export)" if finished == old else "")
            + f". It is kept: choose another output_dir, or {how} set overwrite=True (CLI: --overwrite)."
        )


def _ours(folder: Path) -> bool:
    """Whether folder is a finished DreamBooth output of sdcourse (its model card carries our tag)."""
    card = folder / "README.md"
    return folder.is_dir() and card.is_file() and CARD_TAG in card.read_text(errors="replace")


def check_writable(config: DreamBoothConfig) -> None:
    """Create the folders the run writes (run_dir, class_data_dir while it lacks images, output_dir's
    parent) and write a probe file in each, so a read-only place is found before training, not after."""
    folders = [("run_dir", config.run_path), ("output_dir", Path(config.output_dir).parent)]
    if config.with_prior_preservation and not _class_images_complete(config):
        folders.append(("class_data_dir", config.class_path))
    for name, folder in folders:
        what = f"{name}={str(folder)!r}" if name != "output_dir" else (
            f"the folder of output_dir={str(config.output_dir)!r} ({str(folder)!r})")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle, probe = tempfile.mkstemp(prefix=".sdcourse-write-test-", dir=folder)
            os.close(handle)
            os.unlink(probe)
        except OSError as error:
            raise ValueError(
                f"{what} cannot be written ({type(error).__name__}: {error.strerror or error}): "
                f"choose a folder you can write to, or fix its permissions."
            ) from None


def _class_images_complete(config: DreamBoothConfig) -> bool:
    """Whether class_data_dir already holds every class image (a read-only, complete cache is fine)."""
    from .data import IMAGE_SUFFIXES

    folder = config.class_path
    if not (folder / "class_images.json").is_file():
        return False
    return sum(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()) >= config.num_class_images


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_interrupted_exports(config: DreamBoothConfig) -> list[Path]:
    """Remove the hidden `.NAME.tmp-PID` folders that a run killed during its final export left beside
    output_dir (for SD, gigabytes), with a warning; only folders of exactly that pattern whose process
    is gone (or is this one). Returns the removed folders."""
    out = Path(config.output_dir)
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(out.name)}\.tmp-(\d+)")
    removed = []
    for path in sorted(out.parent.iterdir()):
        match = pattern.fullmatch(path.name)
        if not match or path.is_symlink() or not path.is_dir():
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and _process_alive(pid):
            warnings.warn(f"{str(path)!r} looks like a half-written export, but process {pid} is running: "
                          "left alone (delete it yourself if no other run is exporting there).",
                          DreamBoothWarning, stacklevel=3)
            continue
        shutil.rmtree(path)
        removed.append(path)
        warnings.warn(f"removed {str(path)!r}, a half-written export left by an interrupted run.",
                      DreamBoothWarning, stacklevel=3)
    return removed

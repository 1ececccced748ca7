"""DreamBooth: teach a Stable Diffusion model a new subject from a handful of pictures.

The recipe (Ruiz et al., 2022), as the course notebook explains it:

1. Pick a rare word as the subject's *identifier* ("sks") and a *class noun* that says
   what the subject is ("shape", "dog"). The instance prompt names both: "a sks shape"; per-image
   captions may add what else each picture shows ("a sks shape on a black background").
2. Fine-tune the model on the instance images with the ordinary diffusion loss: encode each
   image to latents, add noise at a random timestep, let the UNet predict the noise from the
   noisy latents and the prompt, and take the mean squared error.
3. *Prior preservation*: with so few images the model soon forgets what the class looks
   like ("language drift": every shape becomes the subject). So we also generate class
   images with the base model ("a shape"), put them in the same batch, and add their loss,
   weighted by `prior_loss_weight`.

Either every UNet weight is trained ("full"), or only small low-rank matrices added to
its attention projections (LoRA, a few MB instead of GB). The text encoder can be trained
too. accelerate runs the loop (devices, mixed precision, gradient accumulation, several
GPUs, checkpoints), peft provides LoRA, bitsandbytes (optional) the 8-bit Adam optimizer.

    config = DreamBoothConfig.from_preset("cpu-mini", instance_data_dir="star", use_lora=True)
    result = train_dreambooth(config)          # or: sdcourse dreambooth --preset cpu-mini --use-lora ...
    pipe = load_pipeline("mini")               # the base model
    pipe.load_lora_weights(result.output_dir)  # diffusers' own loader; a full fine-tune loads
                                               # with StableDiffusionPipeline.from_pretrained

Files: `output_dir` holds only the finished model (a diffusers folder, or LoRA weights in
safetensors) and its model card; it appears in one rename at the end, so it is never
half-written. `run_dir` (default "<output_dir>-run") holds what training needs on the way:
checkpoints `checkpoint-<step>` (each written to a temporary folder and renamed when
complete) and validation grids. Class images are cached in `class_data_dir` and reused.

Resuming: the batch order of epoch e comes from (seed, e) and the noise and timesteps of
step k from (seed, k), so a run resumed from a checkpoint sees the batches and noise that
the uninterrupted run would have seen.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from . import world
from .text import learn_token_embeddings
from .train_mini import snr_weights

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
LORA_UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
# The transformer blocks' other projections and feed-forwards and the ResNet blocks' convolutions
# (LoRA on convolutions, as in LyCORIS' "LoCon"): where a new *outline* is drawn, not only attended to.
LORA_UNET_BLOCK_TARGETS = ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]
LORA_UNET_ALL_TARGETS = LORA_UNET_TARGETS + LORA_UNET_BLOCK_TARGETS
LORA_TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
IDENTIFIER_EMBEDDINGS = "identifier_embeddings.safetensors"  # pivotal tuning's learned token embeddings
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
MIXED_PRECISION = ("no", "fp16", "bf16")
# Tag in the model card that marks a folder as our output (only such a folder is replaced).
CARD_TAG = "sdcourse-dreambooth"
# The held-out concept of the shapes world, as the course teaches it.
IDENTIFIER = "sks"
CONCEPT_COLOUR = "yellow"


class DreamBoothWarning(UserWarning):
    """Something in the inputs is odd but training can go on (skipped files, a split identifier)."""


# --------------------------------------------------------------------------- configuration


@dataclass
class DreamBoothConfig:
    """Everything a DreamBooth run needs. Names follow diffusers' `train_dreambooth.py`.

    Load and save with `from_file(path)` / `save(path)` (YAML or JSON, by suffix), start
    from hardware presets with `from_preset(name, **changes)` (see `PRESETS`).
    """

    # base model: a `load_pipeline` name ("mini", "sd15", ...), a hub id, a local diffusers
    # folder, or a pipeline object (which is copied, never changed)
    model: object = "mini"
    # the subject
    instance_data_dir: str | None = None
    instance_prompt: str = f"a {IDENTIFIER} {world.CLASS_NOUN}"
    # per-image prompts: image NAME.png is trained with the text of NAME<caption_extension>
    # (e.g. ".txt", as kohya's sd-scripts read captions), which must contain the identifier;
    # None: every image is trained with instance_prompt
    caption_extension: str | None = None
    # prior preservation
    with_prior_preservation: bool = True
    # one prompt, or a list: class image i is made from prompt i % len(list) (and trained with it)
    class_prompt: str | list | None = f"a {world.CLASS_NOUN}"
    class_data_dir: str | None = None  # default: <run_dir>/class_images
    num_class_images: int = 100
    prior_loss_weight: float = 1.0
    sample_batch_size: int = 4  # batch size for generating class images
    # what to train
    use_lora: bool = False
    rank: int = 4
    lora_target_modules: list = field(default_factory=lambda: list(LORA_UNET_TARGETS))
    train_text_encoder: bool = False
    # pivotal tuning (textual inversion + DreamBooth): also learn the token embeddings of the
    # identifier words, at their own learning rate; the other tokens' embeddings stay as they
    # are. The only text-encoder change when train_text_encoder is off, so class prompts read
    # exactly as before (no language drift from the text side).
    train_identifier_embedding: bool = False
    identifier_learning_rate: float = 5e-3
    # data
    resolution: int | None = None  # default: the model's native size (64 for mini, 512 for SD 1.5)
    train_batch_size: int = 1
    cache_latents: bool = True  # encode the images once instead of every step
    cache_text_embeddings: bool = True  # encode the prompts once (only while the text encoder is frozen)
    # optimisation
    max_train_steps: int = 400
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None  # default: DEFAULT_LEARNING_RATES
    lr_scheduler: str | None = None  # default: DEFAULT_LR_SCHEDULERS
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    # a per-channel constant added to the noise (train_dreambooth.py's --offset_noise uses 0.1);
    # fine-tune with what the base model was trained with (mini-SD: 0.15, SD 1.5: 0)
    offset_noise: float = 0.0
    # min-SNR-γ loss weighting (train_dreambooth.py's --snr_gamma; 5 is the paper's value), and an
    # x0-weight floor for the noisiest steps, where a new object's outline is decided (see
    # train_mini.snr_weights); None and 0: plain MSE, as the diffusers script
    snr_gamma: float | None = None
    snr_floor: float = 0.0
    use_8bit_adam: bool = False
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    # validation
    validation_prompt: list | str | None = None
    num_validation_images: int = 4
    validation_steps: int = 100
    num_inference_steps: int = 25  # for class images and validation
    guidance_scale: float = 7.5
    # checkpoints and output
    checkpointing_steps: int = 100
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None  # None, "latest" or a checkpoint folder
    seed: int = 0
    output_dir: str = "dreambooth-model"
    run_dir: str | None = None  # default: <output_dir>-run
    push_to_hub: bool = False
    hub_model_id: str | None = None  # default: the output folder's name

    # ---- loading and saving

    @classmethod
    def from_dict(cls, values: dict) -> "DreamBoothConfig":
        """A config from a dict; a "preset" key starts from that preset. Unknown keys are an error."""
        values = dict(values)
        preset = values.pop("preset", None)
        base = dict(PRESETS[_check_preset(preset)]) if preset is not None else {}
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [key for key in values if key not in names]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, names, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"Unknown DreamBoothConfig field(s): {', '.join(hints)}.")
        merged = {**base, **values}
        return cls(**{key: _coerce(names[key], value) for key, value in merged.items()})

    @classmethod
    def from_file(cls, path, **changes) -> "DreamBoothConfig":
        """Read a config from a YAML (.yaml, .yml) or JSON file, with some fields changed."""
        return cls.from_dict({**read_config_file(path), **changes})

    @classmethod
    def from_preset(cls, name: str, **changes) -> "DreamBoothConfig":
        """A preset (see `PRESETS`) with some fields changed."""
        return cls.from_dict({"preset": name, **changes})

    def to_dict(self) -> dict:
        if not isinstance(self.model, (str, os.PathLike)):
            raise ValueError(
                "model is a pipeline object, which cannot be written to a file: save it with "
                "pipe.save_pretrained(folder) and set model=folder."
            )
        values = dataclasses.asdict(self)
        values["model"] = str(self.model)
        return values

    def save(self, path) -> Path:
        """Write the config as YAML (.yaml, .yml) or JSON (any other suffix)."""
        path = Path(path)
        values = self.to_dict()
        if path.suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(values, sort_keys=False)
        else:
            text = json.dumps(values, indent=2)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    # ---- derived values

    @property
    def defaults_for(self) -> str:
        """Which defaults apply: "mini" (mini-SD and mini-like models) or "sd"."""
        small = self.model == "mini" or (self.resolution is not None and self.resolution <= 128)
        return "mini" if small else "sd"

    @property
    def lr(self) -> float:
        """learning_rate, or the default for this model and method."""
        if self.learning_rate is not None:
            return self.learning_rate
        full, lora = DEFAULT_LEARNING_RATES[self.defaults_for]
        return lora if self.use_lora else full

    @property
    def schedule(self) -> str:
        """lr_scheduler, or the default for this model and method."""
        if self.lr_scheduler is not None:
            return self.lr_scheduler
        full, lora = DEFAULT_LR_SCHEDULERS[self.defaults_for]
        return lora if self.use_lora else full

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(f"{self.output_dir}-run")

    @property
    def class_path(self) -> Path:
        return Path(self.class_data_dir) if self.class_data_dir else self.run_path / "class_images"

    @property
    def class_prompts(self) -> list[str]:
        """class_prompt as a list (empty without one)."""
        if not self.class_prompt:
            return []
        return [self.class_prompt] if isinstance(self.class_prompt, str) else list(self.class_prompt)

    @property
    def validation_prompts(self) -> list[str]:
        if not self.validation_prompt:
            return []
        return [self.validation_prompt] if isinstance(self.validation_prompt, str) else list(self.validation_prompt)


# (full, LoRA) learning rates when learning_rate is None.
DEFAULT_LEARNING_RATES = {
    "sd": (5e-6, 1e-4),  # diffusers' train_dreambooth.py and train_dreambooth_lora.py
    "mini": (1.5e-4, 3e-3),  # mini-SD is small, was trained at 8e-4, and gets a few hundred steps
}

# (full, LoRA) learning-rate schedules when lr_scheduler is None. On mini-SD a LoRA at a constant
# rate ended wherever its last noisy steps left it (concept 0.47-0.93 and class drop 0.07-0.20 over
# seeds 0-2); decayed to zero along a cosine, all three seeds learned the star (0.70-0.73) within
# the class bar. Full fine-tuning under the cosine learned less of the star (0.47 at 1.5e-4).
DEFAULT_LR_SCHEDULERS = {
    "sd": ("constant", "constant"),  # diffusers' train_dreambooth.py and train_dreambooth_lora.py
    "mini": ("constant", "cosine"),
}

# Hardware presets. Each sets only what the hardware decides; the subject stays yours.
PRESETS = {
    # mini-SD on a laptop CPU: 64 px, small batches, a few hundred steps (a few minutes).
    # mini-SD's text encoder never saw "sks" (its embedding is still the random init): it reads
    # "a sks shape" almost as the class prompt "a shape" (distance 2 vs 18 for "a red shape"), so
    # prior preservation pulled the subject back to the class. Pivotal tuning learns the "sks"
    # embedding and leaves the rest of the text encoder alone (training all of it cost ~25 points
    # of class accuracy). LoRA rank 16 on the convolutions, feed-forwards and block projections:
    # on the attention projections alone it never drew the star (0 %); concept over 30 seeds
    # after 600 steps: attention + blocks 0.57, blocks 0.73, convolutions alone 0.83 (but class
    # accuracy 0.37 instead of 0.56). Offset noise as in mini-SD's
    # training. Not min-SNR weighting with an x0 floor (snr_gamma=5, snr_floor=0.2): it lifted the
    # concept of full fine-tuning to 20–60 % in three runs, but also the class drift.
    # With captions and class prompts that name colours and backgrounds (`concept_settings`),
    # prior_loss_weight 2 (1: class 0.74 LoRA; 3: concept 0.5) and the identifier at 1e-2 (5e-3:
    # full fine-tuning's concept 0.6) kept the class within ~10 points (chapter 5, section 8).
    # On the mini-SD with a layout stage, measured over training seeds 0-2, the identifier at 3e-2
    # (1e-2: LoRA concept 0.40 at seed 0) and the schedules of DEFAULT_LR_SCHEDULERS (warm-up 50).
    "cpu-mini": dict(
        model="mini", resolution=64, train_batch_size=4, max_train_steps=600, learning_rate=None, rank=16,
        lora_target_modules=LORA_UNET_BLOCK_TARGETS, train_identifier_embedding=True,
        identifier_learning_rate=3e-2, prior_loss_weight=2.0, lr_warmup_steps=50,
        mixed_precision="no", gradient_checkpointing=False, use_8bit_adam=False, train_text_encoder=False,
        offset_noise=0.15, cache_latents=True, cache_text_embeddings=True, num_class_images=64, sample_batch_size=16,
        checkpointing_steps=100, validation_steps=100, num_inference_steps=25,
    ),
    # SD 1.5 on a free Colab T4 (16 GB): fp16, gradient checkpointing and 8-bit Adam keep
    # full fine-tuning near 10 GB; LoRA (use_lora=True) needs less.
    "colab-t4": dict(
        model="sd15", resolution=512, train_batch_size=1, max_train_steps=400, learning_rate=None,
        mixed_precision="fp16", gradient_checkpointing=True, use_8bit_adam=True,
        cache_latents=True, cache_text_embeddings=True, num_class_images=200, sample_batch_size=4,
        checkpointing_steps=200, checkpoints_total_limit=1, validation_steps=200,
    ),
    # SD 1.5 on a 24 GB card: also train the text encoder (what helps most, per the HF blog).
    "24gb": dict(
        model="sd15", resolution=512, train_batch_size=1, max_train_steps=800, learning_rate=2e-6,
        mixed_precision="fp16", gradient_checkpointing=True, use_8bit_adam=True,
        train_text_encoder=True, cache_latents=True, num_class_images=200, sample_batch_size=4,
        checkpointing_steps=200, checkpoints_total_limit=2, validation_steps=200,
    ),
}


def read_config_file(path) -> dict:
    """The fields in a YAML or JSON config file, as a dict (a "preset" key included)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist.")
    text = path.read_text()
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"config file {str(path)!r} cannot be read: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of DreamBoothConfig fields.")
    return values


def _check_preset(name) -> str:
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not one of {', '.join(PRESETS)}.")
    return name


def _coerce(f: dataclasses.Field, value):
    """YAML reads 5e-6 as a string; turn numeric strings into the field's number type."""
    if isinstance(value, str) and f.type in ("float | None", "float", "int", "int | None"):
        try:
            return float(value) if "float" in f.type else int(value)
        except ValueError:
            raise ValueError(f"{f.name}={value!r} is not a number.") from None
    return value


# --------------------------------------------------------------------------- checks


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


def _words(prompt: str) -> list[str]:
    return prompt.lower().replace(",", " ").split()


def identifier_words(config: DreamBoothConfig) -> list[str]:
    """The words of the instance prompt that no class prompt has ("sks" in "a sks shape" vs "a shape")."""
    class_words = {word for prompt in config.class_prompts for word in _words(prompt)}
    if not class_words:
        return []
    return [word for word in _words(config.instance_prompt) if word not in class_words]


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
    from .models import pick_device

    return pick_device()


def check_hub_reachable() -> None:
    """push_to_hub needs the Hugging Face Hub and a login: say so before training, not after."""
    from .models import hub_offline

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


# --------------------------------------------------------------------------- images


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
        return image.convert("RGB")


def load_images(folder, resolution: int, what: str = "instance_data_dir", ignore=()) -> list[Image.Image]:
    """Read every image in `folder` (sorted by name; hidden files and names in `ignore` aside).
    Unreadable or non-image files are skipped with one warning that lists them; images
    smaller than `resolution` are an error."""
    return list(read_images(folder, resolution, what, ignore).values())


def read_images(folder, resolution: int, what: str = "instance_data_dir", ignore=(), ignore_suffix: str | None = None
                ) -> dict[Path, Image.Image]:
    """`load_images`, keyed by file path; files ending in `ignore_suffix` (captions) are not images."""
    if folder is None:
        raise ValueError(f"{what} is not set: give the folder that holds the images.")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{what}={str(folder)!r} is not a folder.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in ignore
                   and not (ignore_suffix and p.name.endswith(ignore_suffix)))
    if not files:
        raise ValueError(f"{what}={str(folder)!r} is empty: put the images there (png, jpg, webp, ...).")
    images, skipped, small = {}, [], []
    for path in files:
        try:
            image = _open_rgb(path)
        except (UnidentifiedImageError, OSError, ValueError):
            skipped.append(path.name)
            continue
        if min(image.size) < resolution:
            small.append(f"{path.name} ({image.size[0]}×{image.size[1]})")
        images[path] = image
    if skipped:
        warnings.warn(f"{what}: skipped {len(skipped)} file(s) that are not readable images: {', '.join(skipped)}",
                      DreamBoothWarning, stacklevel=2)
    if not images:
        raise ValueError(f"{what}={str(folder)!r} holds no readable image (skipped: {', '.join(skipped)}).")
    if small:
        raise ValueError(
            f"{what}: {len(small)} image(s) are smaller than resolution={resolution}: {', '.join(small)}. "
            "Use larger images or a smaller resolution."
        )
    return images


def load_instance_data(config: DreamBoothConfig, resolution: int) -> tuple[list[Image.Image], list[str]]:
    """The instance images and the prompts they are trained with: `instance_prompt` (one), or
    with `caption_extension` each image's caption file (one per image)."""
    ext = config.caption_extension
    images = read_images(config.instance_data_dir, resolution, ignore_suffix=ext)
    if ext is None:
        return list(images.values()), [config.instance_prompt]
    missing = [path.name for path in images if not path.with_suffix(ext).is_file()]
    if missing:
        raise ValueError(f"caption_extension={ext!r}: no caption file for {', '.join(missing)} "
                         f"(expected e.g. {Path(missing[0]).stem}{ext} with the image's prompt).")
    prompts = [path.with_suffix(ext).read_text(encoding="utf-8").strip() for path in images]
    need = identifier_words(config) or _words(config.instance_prompt)  # without class prompts: the whole prompt
    lacking = [path.with_suffix(ext).name for path, prompt in zip(images, prompts)
               if any(word not in _words(prompt) for word in need)]
    if lacking:
        raise ValueError(f"caption_extension={ext!r}: {', '.join(lacking)} must name the subject with its "
                         f"identifier {' '.join(need)!r}, e.g. {config.instance_prompt!r}.")
    return list(images.values()), prompts


def images_to_tensor(image_processor, images: list[Image.Image], resolution: int) -> torch.Tensor:
    """Resize (shorter side to `resolution`), centre-crop and scale to [-1, 1]: (N, 3, res, res)."""
    return image_processor.preprocess(images, height=resolution, width=resolution, resize_mode="crop")


def generate_class_images(pipe, config: DreamBoothConfig, resolution: int, progress: bool = True) -> Path:
    """Make sure `class_data_dir` holds `num_class_images` images of the class prompt(s).

    Missing ones are generated with the base model (image i from seed i and class prompt
    i % len(class_prompts), so the set does not depend on how often we were interrupted) and
    written atomically; existing ones are reused. A small `class_images.json` remembers the
    prompt(s), so a changed prompt is not mixed in.
    """
    folder = config.class_path
    folder.mkdir(parents=True, exist_ok=True)
    about = folder / "class_images.json"
    if about.is_file():
        made_for = json.loads(about.read_text())
        if made_for.get("class_prompt") != config.class_prompt:
            raise ValueError(
                f"class_data_dir={str(folder)!r} holds images made for class_prompt={made_for.get('class_prompt')!r}, "
                f"not {config.class_prompt!r}: choose another class_data_dir or empty this one."
            )
    else:
        about.write_text(json.dumps({"class_prompt": config.class_prompt, "model": model_name(config.model)}))
    existing = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    missing = list(range(len(existing), config.num_class_images))
    if not missing:
        return folder
    pipe.set_progress_bar_config(disable=True)
    batches = [missing[i : i + config.sample_batch_size] for i in range(0, len(missing), config.sample_batch_size)]
    for batch in tqdm(batches, desc="class images", disable=not progress):
        generators = [torch.Generator("cpu").manual_seed(i) for i in batch]
        images = pipe(
            [class_prompt_of(config, i) for i in batch], height=resolution, width=resolution,
            num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
            generator=generators,
        ).images
        for i, image in zip(batch, images):
            tmp = folder / f".class_{i:05d}.png.tmp"
            image.save(tmp, format="PNG")
            os.replace(tmp, folder / f"class_{i:05d}.png")
    return folder


def class_prompt_of(config: DreamBoothConfig, i: int) -> str:
    """The prompt of class image i."""
    return config.class_prompts[i % len(config.class_prompts)]


class DreamBoothDataset(torch.utils.data.Dataset):
    """Instance example i paired with class example i (each list cycled), as diffusers pairs them,
    and the indices of their prompts (one instance prompt for all, or one per image).

    Examples are pixel tensors, or latents when they are cached.
    """

    def __init__(self, instance: torch.Tensor, prior: torch.Tensor | None = None, n_class_prompts: int = 1,
                 n_instance_prompts: int = 1):
        self.instance = instance
        self.prior = prior
        self.n_class_prompts = n_class_prompts
        self.n_instance_prompts = n_instance_prompts

    def __len__(self) -> int:
        return max(len(self.instance), len(self.prior)) if self.prior is not None else len(self.instance)

    def __getitem__(self, i: int) -> dict:
        item = {"instance": self.instance[i % len(self.instance)],
                "instance_prompt": (i % len(self.instance)) % self.n_instance_prompts}
        if self.prior is not None:
            item["prior"] = self.prior[i % len(self.prior)]
            item["prior_prompt"] = (i % len(self.prior)) % self.n_class_prompts
        return item


@torch.no_grad()
def encode_images(vae, pixel_values: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Images in [-1, 1] → scaled latents (the posterior's mean, so cached and uncached runs agree)."""
    latents = []
    for start in range(0, len(pixel_values), batch_size):
        chunk = pixel_values[start : start + batch_size].to(vae.device, vae.dtype)
        latents.append(vae.encode(chunk).latent_dist.mode() * vae.config.scaling_factor)
    return torch.cat(latents)


def encode_prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    return tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


# --------------------------------------------------------------------------- models


def load_base_pipeline(model):
    """The base model in float32 on the CPU. A pipeline object is deep-copied: training never changes it."""
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    from .models import load_pipeline

    if isinstance(model, DiffusionPipeline):
        pipe = copy.deepcopy(model)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            place(module, "cpu", torch.float32)
        return pipe
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a name, hub id, folder or pipeline, got {type(model).__name__}.")
    if Path(model).is_dir():
        return StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32, use_safetensors=True)
    return load_pipeline(str(model), task="text2img", device="cpu", dtype=torch.float32)


def place(module, device, dtype) -> None:
    """module.to(device, dtype), casting only when the dtype differs (diffusers warns about every cast)."""
    module.to(device)
    if module.dtype != dtype:
        module.to(dtype=dtype)


def model_resolution(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def check_resolution(pipe, resolution: int) -> None:
    """The latents must halve cleanly through every UNet down block."""
    multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    if resolution % multiple:
        lower = resolution // multiple * multiple
        raise ValueError(
            f"resolution={resolution} must be divisible by {multiple} for this model (VAE factor "
            f"{pipe.vae_scale_factor} × UNet downsampling); try {lower or multiple} or {lower + multiple}."
        )


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


def trains_text(config: DreamBoothConfig) -> bool:
    """Whether anything in the text encoder is trained (so its outputs cannot be cached)."""
    return config.train_text_encoder or config.train_identifier_embedding


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
    pipe.load_lora_weights(folder)
    if (Path(folder) / IDENTIFIER_EMBEDDINGS).is_file():
        load_identifier_embeddings(pipe.text_encoder, pipe.tokenizer, folder)


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


# --------------------------------------------------------------------------- the training step


def step_generator(seed: int, step: int, micro_step: int, process_index: int) -> torch.Generator:
    """The random source of one (micro-)step: depends only on these numbers, so a resumed run
    draws the same noise and timesteps as an uninterrupted one."""
    entropy = np.random.SeedSequence([seed, step, micro_step, process_index]).generate_state(1)[0]
    return torch.Generator("cpu").manual_seed(int(entropy))


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
        noise = noise + config.offset_noise * torch.randn(latents.shape[:2] + (1, 1), generator=generator)
    noise = noise.to(latents.device, latents.dtype)
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)

    # 3. The prompt of each example: its instance prompt, then its class prompt.
    prior_prompt = batch["prior_prompt"] if config.with_prior_preservation else None
    encoder_hidden_states = prompt_embeddings(parts, batch["instance_prompt"], prior_prompt)

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


def prompt_embeddings(parts: dict, instance_prompt: torch.Tensor, prior_prompt: torch.Tensor | None = None
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


# --------------------------------------------------------------------------- checkpoints


def checkpoint_folders(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in run_dir as (step, folder), oldest first (temporary folders are not complete)."""
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        name = path.name
        if path.is_dir() and name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit():
            found.append((int(name[len("checkpoint-"):]), path))
    return sorted(found)


def checkpoint_step(folder: Path) -> int:
    state = folder / "training_state.json"
    if not state.is_file():
        raise ValueError(f"{str(folder)!r} is not a complete DreamBooth checkpoint (no training_state.json).")
    return int(json.loads(state.read_text())["global_step"])


def save_checkpoint(accelerator, run_dir: Path, step: int, config: DreamBoothConfig) -> Path:
    """accelerate's full state (weights in safetensors, optimizer, lr scheduler, sampler, RNG)
    written to a temporary folder and renamed when complete; the oldest are pruned."""
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f"tmp-checkpoint-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "training_state.json").write_text(json.dumps({"global_step": step, "config": _shape_fields(config)}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if config.checkpoints_total_limit is not None:
            for _, old in checkpoint_folders(run_dir)[: -config.checkpoints_total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def model_name(model) -> str:
    """How we write the base model down: its name or path, or a placeholder for a pipeline object."""
    return str(model) if isinstance(model, (str, os.PathLike)) else "<pipeline object>"


def _shape_fields(config: DreamBoothConfig) -> dict:
    """The settings a checkpoint's tensors depend on: resuming with others cannot work."""
    return {
        "model": model_name(config.model),
        "use_lora": config.use_lora, "rank": config.rank if config.use_lora else None,
        "lora_target_modules": list(config.lora_target_modules) if config.use_lora else None,
        "train_text_encoder": config.train_text_encoder, "use_8bit_adam": config.use_8bit_adam,
        "train_identifier_embedding": config.train_identifier_embedding,
    }


def find_resume_checkpoint(config: DreamBoothConfig) -> Path | None:
    """The checkpoint to resume from, or None to start at step 0.

    Starting afresh while run_dir holds checkpoints is refused: "latest" would later mix the two runs.
    """
    existing = checkpoint_folders(config.run_path)
    if config.resume_from_checkpoint is None:
        if existing:
            raise ValueError(
                f"run_dir={str(config.run_path)!r} already holds checkpoints (up to step {existing[-1][0]}): "
                "set resume_from_checkpoint='latest' to continue that run, or choose another output_dir/run_dir."
            )
        return None
    if config.resume_from_checkpoint == "latest":
        return existing[-1][1] if existing else None
    return Path(config.resume_from_checkpoint)


def check_checkpoint_matches(folder: Path, config: DreamBoothConfig) -> int:
    step = checkpoint_step(folder)
    saved = json.loads((folder / "training_state.json").read_text())["config"]
    now = _shape_fields(config)
    different = [f"{key}: {saved.get(key)!r} → {now[key]!r}" for key in now if saved.get(key) != now[key]]
    if different:
        raise ValueError(
            f"cannot resume from {str(folder)!r}: it was trained with other settings ({'; '.join(different)}). "
            "Use the settings of that run, or start a new run in another output_dir."
        )
    return step


def register_lora_checkpoint_hooks(accelerator, unet, text_encoder, tokenizer, config: DreamBoothConfig) -> None:
    """With LoRA, checkpoints hold only the LoRA matrices (MBs) instead of the whole frozen model
    (GBs), and the identifier's embeddings when they are learned."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    trained = {"unet": unet}
    if config.train_text_encoder:
        trained["text_encoder"] = text_encoder

    def save_lora(models, weights, output_dir):
        if accelerator.is_main_process:
            for name, module in trained.items():
                state = get_peft_model_state_dict(accelerator.unwrap_model(module))
                state = {key: value.contiguous() for key, value in state.items()}
                save_file(state, os.path.join(output_dir, f"{name}_lora.safetensors"))
            if config.train_identifier_embedding:
                save_identifier_embeddings(accelerator.unwrap_model(text_encoder), tokenizer, config, output_dir)
        weights.clear()  # accelerate must not save the full weights as well

    def load_lora(models, input_dir):
        for name, module in trained.items():
            state = load_file(os.path.join(input_dir, f"{name}_lora.safetensors"))
            set_peft_model_state_dict(accelerator.unwrap_model(module), state)
        if config.train_identifier_embedding:
            load_identifier_embeddings(accelerator.unwrap_model(text_encoder), tokenizer, input_dir)
        models.clear()  # loaded: accelerate must not look for full weights

    accelerator.register_save_state_pre_hook(save_lora)
    accelerator.register_load_state_pre_hook(load_lora)


# --------------------------------------------------------------------------- validation and export


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
        generators = [torch.Generator("cpu").manual_seed(s) for s in range(config.num_validation_images)]
        with autocast():
            images += pipe(
                [prompt] * config.num_validation_images, height=resolution, width=resolution,
                num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                generator=generators,
            ).images
    return make_image_grid(images, rows=len(config.validation_prompts), cols=config.num_validation_images)


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
    from .models import REAL_MODELS

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


def identifier_rate(config: DreamBoothConfig) -> str:
    if not config.train_identifier_embedding:
        return "no"
    return f"yes, {', '.join(identifier_words(config))} at learning rate {config.identifier_learning_rate:g}"


def loss_weighting(config: DreamBoothConfig) -> str:
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
        ("identifier embedding learned", identifier_rate(config)),
        ("instance images", n_instance),
        ("instance prompts", f"one caption per image (*{config.caption_extension})" if config.caption_extension
         else repr(config.instance_prompt)),
        ("prior preservation", prior), ("resolution", resolution),
        ("steps", global_step),
        ("batch size × accumulation", f"{config.train_batch_size} × {config.gradient_accumulation_steps}"),
        ("learning rate", f"{config.lr:g} ({config.schedule}"
                          + (")" if config.schedule == "constant" else f", warm-up {config.lr_warmup_steps})")),
        ("mixed precision", config.mixed_precision), ("8-bit Adam", config.use_8bit_adam),
        ("gradient checkpointing", config.gradient_checkpointing), ("loss weighting", loss_weighting(config)),
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


def _publish(tmp: Path, out: Path) -> None:
    """Put the finished tmp folder in place of out in (nearly) one step."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)


# --------------------------------------------------------------------------- training


@dataclass
class DreamBoothResult:
    """What a call of `train_dreambooth` did."""

    output_dir: Path | None  # the finished model; None when this sitting stopped early
    run_dir: Path
    global_step: int
    finished: bool
    resumed_from_step: int
    losses: list = field(default_factory=list)  # one per optimisation step of this sitting
    validation_grids: list = field(default_factory=list)
    train_seconds: float = 0.0  # the training loop of this sitting
    steps_per_second: float = 0.0
    peak_memory_bytes: int | None = None  # CUDA: torch.cuda.max_memory_allocated during the loop

    def summary(self) -> dict:
        return {
            "output_dir": str(self.output_dir) if self.output_dir else None, "run_dir": str(self.run_dir),
            "global_step": self.global_step, "finished": self.finished, "resumed_from_step": self.resumed_from_step,
            "final_loss": self.losses[-1] if self.losses else None, "train_seconds": round(self.train_seconds, 2),
            "steps_per_second": round(self.steps_per_second, 3), "peak_memory_bytes": self.peak_memory_bytes,
        }


@dataclass
class Training:
    """What the loop works with, as `setup_training` prepared it (models wrapped by accelerate)."""

    accelerator: object
    base: object  # the base pipeline; its unet (and text encoder) are the modules being trained
    modules: list  # the trained modules: [unet] or [unet, text_encoder]
    parts: dict  # what `training_loss` needs
    params: list  # the trainable parameters
    optimizer: object
    lr_scheduler: object
    dataloader: object
    resolution: int


def make_accelerator(config: DreamBoothConfig):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    try:
        return Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            # The shuffled order of epoch e is drawn from seed + e: resumable and the same on every process.
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        )
    except ValueError as error:
        if "already been initialized" in str(error):
            raise ValueError(
                f"mixed_precision={config.mixed_precision!r} differs from an earlier run in this Python process; "
                "accelerate fixes it once per process: restart the kernel (or process) to change it."
            ) from None
        raise


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


def prepare_data(base, config: DreamBoothConfig, instance_images, instance_prompts, class_images, resolution,
                 device) -> tuple:
    """The dataloader (pixels, or latents when cached) and the prompt part of `training_loss`'s
    inputs (prompt ids, or embeddings when cached)."""
    from diffusers import DDPMScheduler

    instance = images_to_tensor(base.image_processor, instance_images, resolution)
    prior = images_to_tensor(base.image_processor, class_images, resolution) if class_images else None
    if config.cache_latents:
        instance = encode_images(base.vae, instance).cpu()
        prior = encode_images(base.vae, prior).cpu() if prior is not None else None
    dataloader = torch.utils.data.DataLoader(
        DreamBoothDataset(instance, prior, len(config.class_prompts) or 1, len(instance_prompts)),
        batch_size=config.train_batch_size, shuffle=True,
    )

    parts = {"vae": base.vae, "device": device, "noise_scheduler": DDPMScheduler.from_config(base.scheduler.config)}
    instance_ids = torch.cat([encode_prompt_ids(base.tokenizer, prompt) for prompt in instance_prompts])
    prior_ids = None
    if config.with_prior_preservation:
        prior_ids = torch.cat([encode_prompt_ids(base.tokenizer, prompt) for prompt in config.class_prompts])
    if config.cache_text_embeddings and not trains_text(config):
        with torch.no_grad():
            parts["instance_embeddings"] = base.text_encoder(instance_ids.to(device))[0]
            if prior_ids is not None:
                parts["prior_embeddings"] = base.text_encoder(prior_ids.to(device))[0]
    else:
        parts.update(text_encoder=base.text_encoder, instance_ids=instance_ids, prior_ids=prior_ids)
    return dataloader, parts


def setup_training(base, config: DreamBoothConfig, accelerator, instance_images, instance_prompts, class_images,
                   resolution) -> Training:
    """Models, data, optimizer and learning-rate schedule, wrapped by accelerate."""
    from diffusers.optimization import get_scheduler

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    prepare_models(base, config, accelerator.device, weight_dtype)
    dataloader, parts = prepare_data(base, config, instance_images, instance_prompts, class_images, resolution,
                                     accelerator.device)

    modules = [base.unet, base.text_encoder] if trains_text(config) else [base.unet]
    params = [p for module in modules for p in module.parameters() if p.requires_grad]
    optimizer = make_optimizer(param_groups(params, base.text_encoder, config), config)
    lr_scheduler = get_scheduler(  # accelerate steps the schedule once per process
        config.schedule, optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_train_steps * accelerator.num_processes,
    )
    if config.use_lora:
        register_lora_checkpoint_hooks(accelerator, base.unet, base.text_encoder, base.tokenizer, config)
    *modules, optimizer, dataloader, lr_scheduler = accelerator.prepare(*modules, optimizer, dataloader, lr_scheduler)
    parts["unet"] = modules[0]
    if trains_text(config):
        parts["text_encoder"] = modules[1]
    return Training(accelerator, base, modules, parts, params, optimizer, lr_scheduler, dataloader, resolution)


def train_dreambooth(config: DreamBoothConfig, progress: bool = True, stop_at_step: int | None = None
                     ) -> DreamBoothResult:
    """Fine-tune `config.model` on the instance images; returns a `DreamBoothResult`.

    stop_at_step ends this sitting at that step (after saving a checkpoint): run again with
    resume_from_checkpoint="latest" to go on. Works the same under `accelerate launch`.
    """
    # 1. Check everything that can be checked before anything is written.
    check_config(config)
    check_output_dir(config)
    check_device(config, expected_device())  # before accelerate fixes mixed precision for the process
    check_8bit_adam(config)  # before the models, class images and training that plain AdamW would lose
    accelerator = make_accelerator(config)
    check_device(config, accelerator.device)
    resume_from = find_resume_checkpoint(config)
    base = load_base_pipeline(config.model)
    resolution = config.resolution or model_resolution(base)
    check_resolution(base, resolution)
    check_identifier(base.tokenizer, config)
    instance_images, instance_prompts = load_instance_data(config, resolution)
    if resume_from is not None:
        check_checkpoint_matches(resume_from, config)

    # 2. The run folder, and class images for prior preservation (made once, by the main process).
    config.run_path.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        for stale in config.run_path.glob("tmp-checkpoint-*"):  # a checkpoint cut off by a crash
            shutil.rmtree(stale)
    class_images = None
    if config.with_prior_preservation:
        if accelerator.is_main_process:
            for module in (base.unet, base.vae, base.text_encoder):
                module.to(accelerator.device)  # float32 weights, computed in mixed precision under autocast
            with accelerator.autocast():
                pipe = sampling_pipeline(base, base.unet, base.text_encoder)
                generate_class_images(pipe, config, resolution, progress)
        accelerator.wait_for_everyone()
        class_images = load_images(config.class_path, resolution, "class_data_dir", ignore=("class_images.json",))
        class_images = class_images[: config.num_class_images]

    # 3. Set up, resume, train.
    training = setup_training(base, config, accelerator, instance_images, instance_prompts, class_images, resolution)
    start = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        start = checkpoint_step(resume_from)
    stop = config.max_train_steps if stop_at_step is None else min(stop_at_step, config.max_train_steps)
    result = DreamBoothResult(output_dir=None, run_dir=config.run_path, global_step=start,
                              finished=False, resumed_from_step=start)
    train_loop(training, config, result, stop, progress)
    if result.global_step < config.max_train_steps:  # this sitting ends early
        if not (config.run_path / f"checkpoint-{result.global_step}").is_dir():
            save_checkpoint(accelerator, config.run_path, result.global_step, config)
        return result

    # 4. The finished model, written to a temporary folder and renamed into place.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        result.output_dir = export(training, config, len(instance_images), result)
    accelerator.wait_for_everyone()
    result.finished = True
    accelerator.end_training()
    return result


def train_loop(training: Training, config: DreamBoothConfig, result: DreamBoothResult, stop: int, progress: bool):
    """Optimisation steps from result.global_step to `stop`: loss, backward, step; then log,
    checkpoint and validate. Epoch e's batch order comes from (seed, e), so a resumed run
    skips into the epoch where it left off."""
    accelerator, accumulation = training.accelerator, config.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(training.dataloader) / accumulation)
    num_epochs = math.ceil(config.max_train_steps / steps_per_epoch)
    global_step = result.global_step
    bar = tqdm(total=config.max_train_steps, initial=global_step, desc="DreamBooth",
               disable=not progress or not accelerator.is_local_main_process)
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    started = time.perf_counter()

    for epoch in range(global_step // steps_per_epoch, num_epochs):
        if global_step >= stop:
            break
        for module in training.modules:
            module.train()
        training.dataloader.set_epoch(epoch)
        skip = (global_step % steps_per_epoch) * accumulation
        batches = accelerator.skip_first_batches(training.dataloader, skip) if skip else training.dataloader
        micro_losses = []
        for batch_index, batch in enumerate(batches, start=skip):
            generator = step_generator(config.seed, global_step, batch_index % accumulation,
                                       accelerator.process_index)
            with accelerator.accumulate(*training.modules):
                with accelerator.autocast():
                    loss = training_loss(batch, training.parts, config, generator)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(training.params, config.max_grad_norm)
                training.optimizer.step()
                training.lr_scheduler.step()
                training.optimizer.zero_grad(set_to_none=True)
            micro_losses.append(loss.detach().item())
            if not accelerator.sync_gradients:  # still accumulating gradients
                continue

            global_step += 1
            result.losses.append(float(np.mean(micro_losses)))
            micro_losses = []
            bar.update(1)
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}", lr=f"{training.lr_scheduler.get_last_lr()[0]:.2g}")
            if global_step % config.checkpointing_steps == 0 or global_step == stop < config.max_train_steps:
                save_checkpoint(accelerator, config.run_path, global_step, config)
            if config.validation_prompts and global_step % config.validation_steps == 0 and accelerator.is_main_process:
                result.validation_grids.append(save_validation_grid(training, config, global_step))
            if global_step >= stop:
                break
    bar.close()

    result.global_step = global_step
    result.train_seconds = time.perf_counter() - started
    steps = global_step - result.resumed_from_step
    result.steps_per_second = steps / result.train_seconds if steps else 0.0
    if accelerator.device.type == "cuda":
        result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(accelerator.device))


def trained_pipeline(training: Training):
    """A sampling pipeline from the modules as they are now."""
    unwrap = training.accelerator.unwrap_model
    text_encoder = training.base.text_encoder
    if "text_encoder" in training.parts:  # trained, or frozen but not cached
        text_encoder = unwrap(training.parts["text_encoder"])
    return sampling_pipeline(training.base, unwrap(training.parts["unet"]), text_encoder)


def save_validation_grid(training: Training, config: DreamBoothConfig, global_step: int) -> Path:
    for module in training.modules:
        module.eval()
    grid = validation_grid(trained_pipeline(training), config, training.resolution, training.accelerator.autocast)
    for module in training.modules:
        module.train()
    path = config.run_path / "validation" / f"step-{global_step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def export(training: Training, config: DreamBoothConfig, n_instance: int, result: DreamBoothResult) -> Path:
    """Write the finished model (diffusers folder or LoRA weights), a validation grid and the
    model card to a temporary folder, then rename it to output_dir; push it if asked."""
    out = Path(config.output_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
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
    _publish(tmp, out)
    if config.push_to_hub:
        push_to_hub(out, config.hub_model_id or out.name)
    return out


# --------------------------------------------------------------------------- the shapes-world concept


def concept_scenes(n: int = 8, seed: int = 0, colour: str = CONCEPT_COLOUR) -> list:
    """`n` scenes of ONE subject: the held-out star in one colour, at varied sizes, positions and
    backgrounds (never its own colour). A DreamBooth subject is one specific thing, so
    "a sks shape" comes to mean "a {colour} star", and prompts can still change its background."""
    if colour not in world.COLOURS:
        raise ValueError(f"colour={colour!r} is not one of {', '.join(world.COLOURS)}.")
    scenes, batch = [], 0
    while len(scenes) < n:
        for scene in world.concept_scenes(4 * n, seed=seed + 1000 * batch):
            if scene.background != colour and len(scenes) < n:
                scene.objects[0].colour = colour
                scenes.append(scene)
        batch += 1
    return scenes


def concept_caption(scene, identifier: str = IDENTIFIER) -> str:
    """What a person would write under a picture of the subject: its name and the background
    ("a sks shape on a black background"), not the colour, size or place the identifier stands for."""
    subject = [dataclasses.replace(obj, colour=None, size=None, position=None) for obj in scene.objects]
    return world.caption(dataclasses.replace(scene, objects=subject), identifier=identifier)


def write_concept_images(folder, n: int = 8, seed: int = 0, colour: str = CONCEPT_COLOUR,
                         caption_extension: str | None = None) -> Path:
    """Render `concept_scenes(n, seed, colour)` as PNG instance images into `folder`; with
    `caption_extension` (".txt") also each image's `concept_caption` beside it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(concept_scenes(n, seed, colour)):
        world.render(scene).pil().save(folder / f"instance_{i:02d}.png")
        if caption_extension:
            (folder / f"instance_{i:02d}{caption_extension}").write_text(concept_caption(scene) + "\n", encoding="utf-8")
    return folder


def concept_class_prompts(n: int = 64, seed: int = 0) -> list[str]:
    """`n` different class prompts that each name a colour and a background ("a red shape on a
    blue background"), for prior preservation on the shapes world.

    The class prompt "a shape" alone protects only itself: after training, "a red shape" and the
    other colours were right in about half of the images (0.56 LoRA, 0.48 full). Class images of every colour on every background keep those words
    meaning what they meant, and since the instance captions also name the background
    (`concept_caption`), "sks" is left as the one word that means "the star"."""
    pairs = [(colour, background) for colour in world.COLOURS for background in world.COLOURS if colour != background]
    if not 1 <= n <= len(pairs):
        raise ValueError(f"n={n!r} must be between 1 and {len(pairs)} (the colour-background pairs).")
    chosen = [pairs[i] for i in np.random.default_rng(seed).permutation(len(pairs))[:n]]
    return [world.caption(world.Scene(background, [world.SceneObject(shape=None, colour=colour)]))
            for colour, background in chosen]


def concept_settings() -> dict:
    """The subject's side of the course's DreamBooth recipe on the shapes world (the preset holds
    the hardware's): per-image captions that name the background, and `concept_class_prompts`."""
    return dict(caption_extension=".txt", class_prompt=concept_class_prompts())


def concept_prompts(identifier: str = IDENTIFIER, colour: str | None = CONCEPT_COLOUR) -> dict:
    """The three prompt sets of `concept_report`: the subject alone, the subject on other
    backgrounds, and the plain class in each colour (the language-drift check)."""
    noun = world.CLASS_NOUN
    backgrounds = [c for c in world.COLOURS if c != colour]
    return {
        "concept": [f"a {identifier} {noun}"],
        "composition": [f"a {identifier} {noun} on a {b} background" for b in backgrounds],
        "class": [f"a {c} {noun}" for c in world.COLOURS],
    }


@torch.no_grad()
def _judged(pipe, prompts, seeds, identifier, steps, guidance_scale) -> list:
    """Generate every prompt with every seed and judge each image against its prompt (16 images per
    call on mini-SD, as many as fit a 16 GB GPU at larger sizes)."""
    from . import judge
    from .models import images_per_batch

    batch_size = images_per_batch(pipe, most=16)
    pipe.set_progress_bar_config(disable=True)
    jobs = [(p, s) for p in prompts for s in seeds]
    verdicts = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        images = pipe(
            [p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(s) for _, s in chunk],
        ).images
        verdicts += [judge.judge(image, p, identifier=identifier) for image, (p, _) in zip(images, chunk)]
    return verdicts


def concept_scores(pipe, identifier: str = IDENTIFIER, colour: str | None = CONCEPT_COLOUR, seeds=range(30),
                   composition_seeds=range(3), class_seeds=range(1000, 1010), num_inference_steps: int = 25,
                   guidance_scale: float = 7.5) -> dict:
    """The fraction of images the judge finds fully right, for one pipeline:

    - concept: "a sks shape" shows the star (concept_colour: ... in `colour`);
    - composition: "a sks shape on a green background" gets both star and background right;
    - class: "a red shape" shows a red circle, square or triangle, not a star (language drift);
      its seeds are not those of the class images (0, 1, ...). Ten seeds per colour: the drift
      bar is 10 points, and with 3 seeds (27 images) one run's class score varied by ±7.
    """
    prompts = concept_prompts(identifier, colour)
    run = dict(identifier=identifier, steps=num_inference_steps, guidance_scale=guidance_scale)
    concept = _judged(pipe, prompts["concept"], seeds, **run)
    composition = _judged(pipe, prompts["composition"], composition_seeds, **run)
    classes = _judged(pipe, prompts["class"], class_seeds, **run)
    scores = {
        "concept": float(np.mean([v.correct for v in concept])),
        "composition": float(np.mean([v.correct for v in composition])),
        "class": float(np.mean([v.correct for v in classes])),
    }
    if colour is not None:
        scores["concept_colour"] = float(np.mean(
            [v.correct and any(o.colour == colour for o in v.found.objects) for v in concept]
        ))
    return scores


def concept_report(pipe_before, pipe_after, **settings) -> dict:
    """`concept_scores` before and after DreamBooth, and `class_drop` = class accuracy
    before − after (positive: the model forgot some of the class). `settings` go to concept_scores."""
    before, after = concept_scores(pipe_before, **settings), concept_scores(pipe_after, **settings)
    return {"before": before, "after": after, "class_drop": before["class"] - after["class"]}


if __name__ == "__main__":  # python -m sdcourse.dreambooth config.yaml
    if len(sys.argv) != 2:
        sys.exit("usage: python -m sdcourse.dreambooth CONFIG.yaml")
    print(json.dumps(train_dreambooth(DreamBoothConfig.from_file(sys.argv[1])).summary()))

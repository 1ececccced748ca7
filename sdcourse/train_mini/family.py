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
from ..tokenizer import TOKENIZER_DIR
from .config import STAGES, UNET_FOLDER, MiniTrainConfig, noise_scheduler_config
from .data import build_dataset
from .loop import Sitting
from .unet import text_encoder_dir, train_unet
from .vae import encode_latents, train_vae


def train(config: MiniTrainConfig, stages=STAGES, assets_dir: Path | None = None, max_steps=None) -> dict:
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


def export(config: MiniTrainConfig, assets_dir: Path, stages=STAGES):
    """Assemble the finished stages into the shipped folder (fp16 weights, diffusers layout),
    with training.json (the config and every stage's log) and a model card without measurements."""
    assets_dir = Path(assets_dir)
    half = dict(dtype=torch.float16)
    AutoencoderKL.from_pretrained(config.path / "vae" / "final", **half).save_pretrained(assets_dir / "vae")
    CLIPTextModel.from_pretrained(text_encoder_dir(config), **half).save_pretrained(assets_dir / "text_encoder")
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

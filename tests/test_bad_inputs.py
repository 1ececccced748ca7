"""Bad input is refused early and clearly, at every public entry point (issue 28).

`CASES` is the inventory: one row per (entry point, bad input), with the error it must raise and
the parameter its message must name. Every row is also checked to run no model (no UNet, VAE or
text-encoder call, no weights loaded): the refusal comes first. `NO_PROBE` lists the public
functions that take nothing a learner could get wrong in a way worth a row (tensors made by other
functions, internal steps called after their caller's checks), each with its reason, and
`test_every_public_function_is_in_the_inventory` fails when a new public function of a teaching
module is in neither. DreamBooth has its own tests.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sdcourse import (
    attention,
    checks,
    cli,
    conditioning,
    guidance,
    latents,
    models,
    plotting,
    quality,
    sampling,
    schedulers,
    text,
    widgets,
    world,
)
from sdcourse.testing import tiny_pipeline

NAN, INF = float("nan"), float("inf")
PROMPT = "a red circle on a blue background"
TEACHING_MODULES = (
    "checks", "latents", "text", "sampling", "schedulers", "guidance", "attention", "conditioning",
    "plotting", "widgets", "models", "tokenizer",
)


class Kit:
    """What the probes need, built once per module: tiny pipelines for every task (their UNet, VAE
    and text encoder count their calls), images, latents, a recorded attention trace, saved folders."""

    def __init__(self, folder):
        self.calls = 0
        self.t2i, self.i2i, self.inp, self.depth, self.up = (
            self._counted(tiny_pipeline(task)) for task in ("text2img", "img2img", "inpaint", "depth2img", "upscale")
        )
        self.image = Image.new("RGB", (64, 64), (40, 80, 220))
        self.small = Image.new("RGB", (16, 16), (40, 80, 220))
        self.odd = Image.new("RGB", (62, 62))
        self.mask = np.zeros((64, 64), dtype=bool)
        self.mask[16:48, 16:48] = True
        self.depth_map = torch.linspace(0, 1, 64).repeat(64, 1)
        self.lat = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        self.lat2 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
        self.render = world.render(world.sample_scenes(1, seed=0)[0])
        self.frames = [self.image, self.image]
        with attention.trace(self.t2i) as self.trace:
            self.t2i(PROMPT, num_inference_steps=1, height=64, width=64)
        self.saved = folder / "saved"
        tiny_pipeline("text2img").save_pretrained(self.saved)
        self.empty = folder / "empty"
        self.empty.mkdir()
        self.no_unet = self._copy_without(folder / "no-unet", "unet")
        self.no_weights = self._copy_without(folder / "no-weights", "vae/diffusion_pytorch_model.safetensors")
        self.calls = 0

    def _counted(self, pipe):
        def count(*_):
            self.calls += 1

        pipe.set_progress_bar_config(disable=True)
        for module in (pipe.unet, pipe.vae.encoder, pipe.vae.decoder, pipe.text_encoder):
            module.register_forward_pre_hook(count)
        return pipe

    def _copy_without(self, target, part):
        shutil.copytree(self.saved, target)
        path = target / part
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        return target


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return Kit(tmp_path_factory.mktemp("bad-inputs"))


def row(entry, error, param, call, why):
    """One inventory row: `call(kit)` must raise `error` with a message naming `param`."""
    return pytest.param(entry, error, param, call, id=f"{entry}:{why}")


def run_trace(pipe, **kwargs):
    with attention.trace(pipe, **kwargs):
        pass


# The bad float arrays and tensors, made once.
NAN_IMAGE = np.full((64, 64, 3), np.nan, dtype=np.float32)
OVER_IMAGE = np.full((64, 64, 3), 2.0, dtype=np.float32)

CASES = [
    # --- checks: the shared checks themselves ---------------------------------------------------
    row("checks.number", TypeError, "learning_rate", lambda k: checks.number("1e-4", "learning_rate"), "string"),
    row("checks.finite", ValueError, "guidance_scale", lambda k: checks.finite(NAN, "guidance_scale"), "nan"),
    row("checks.finite", ValueError, "strength", lambda k: checks.finite(1.5, "strength", 0, 1), "range"),
    row("checks.parse_number", ValueError, "learning_rate", lambda k: checks.parse_number("1e-4x", "learning_rate"), "typo"),
    row("checks.whole", TypeError, "n", lambda k: checks.whole(2.0, "n"), "float"),
    row("checks.positive_int", ValueError, "steps", lambda k: checks.positive_int(0, "steps"), "zero"),
    row("checks.size", ValueError, "height", lambda k: checks.size(-64, "height", 8), "negative"),
    row("checks.as_list", TypeError, "strengths", lambda k: checks.as_list(0.5, "strengths", "[0.5]"), "scalar"),
    row("checks.number_list", ValueError, "scales", lambda k: checks.number_list([1, INF], "scales", "[1]"), "inf"),
    row("checks.int_list", TypeError, "seeds", lambda k: checks.int_list([0.5], "seeds", "[0]"), "float"),
    row("checks.grey_levels", ValueError, "image", lambda k: checks.grey_levels(Image.new("F", (4, 4), 300.0)), "F-range"),
    row("checks.to_rgb", TypeError, "image", lambda k: checks.to_rgb(torch.zeros(3, 8, 8)), "tensor"),
    row("checks.to_rgb", ValueError, "image", lambda k: checks.to_rgb(np.zeros((8, 8, 5))), "channels"),
    row("checks.mask_image", TypeError, "mask", lambda k: checks.mask_image(np.zeros((8, 8))), "array"),
    row("checks.prompt", TypeError, "prompt", lambda k: checks.prompt(42), "number"),
    # --- models: load_pipeline refuses before any weights load --------------------------------------
    row("models.load_pipeline", TypeError, "name", lambda k: models.load_pipeline(None), "None"),
    row("models.load_pipeline", TypeError, "name", lambda k: models.load_pipeline(15), "number"),
    row("models.load_pipeline", ValueError, "task", lambda k: models.load_pipeline("mini", task="video"), "task"),
    row("models.load_pipeline", ValueError, "device", lambda k: models.load_pipeline("mini", device="cuda"), "cuda"),
    row("models.load_pipeline", ValueError, "device", lambda k: models.load_pipeline("mini", device="cuda:3"), "cuda3"),
    row("models.load_pipeline", ValueError, "device", lambda k: models.load_pipeline("mini", device="mps"), "mps"),
    row("models.load_pipeline", ValueError, "device", lambda k: models.load_pipeline("mini", device="gpu"), "unknown"),
    row("models.load_pipeline", ValueError, "dtype", lambda k: models.load_pipeline("mini", dtype="float8"), "dtype-str"),
    row("models.load_pipeline", ValueError, "dtype", lambda k: models.load_pipeline("mini", dtype=torch.int8), "dtype-int"),
    row("models.load_pipeline", ValueError, "name", lambda k: models.load_pipeline("./no-such-model"), "no-folder"),
    row("models.load_pipeline", ValueError, "name", lambda k: models.load_pipeline(str(k.empty)), "empty-folder"),
    row("models.load_pipeline", ValueError, "name", lambda k: models.load_pipeline(str(k.no_unet)), "no-unet"),
    row("models.load_pipeline", ValueError, "name", lambda k: models.load_pipeline(k.no_weights), "no-weights"),
    row("models.load_pipeline", ValueError, "task", lambda k: models.load_pipeline(str(k.saved), task="inpaint"), "t2i-folder"),
    row("models.pick_device", ValueError, "device", lambda k: models.pick_device("cuda"), "cuda"),
    row("models.check_device", TypeError, "device", lambda k: models.check_device(0.5), "number"),
    row("models.pick_dtype", ValueError, "dtype", lambda k: models.pick_dtype(torch.device("cpu"), "half-ish"), "str"),
    row("models.check_name", TypeError, "name", lambda k: models.check_name(""), "empty"),
    row("models.check_folder", ValueError, "name", lambda k: models.check_folder(k.empty, "text2img"), "empty"),
    row("models.resolve_repo", ValueError, "name", lambda k: models.resolve_repo("sd99", "text2img"), "unknown"),
    row("models.mini_available", ValueError, "task", lambda k: models.mini_available("video"), "task"),
    row("schedulers.make_scheduler", ValueError, "name", lambda k: schedulers.make_scheduler("ddpm++"), "unknown"),
    # --- latents -----------------------------------------------------------------------------------
    row("latents.check_image_size", ValueError, "height", lambda k: latents.check_image_size(0, 64, 4), "zero"),
    row("latents.check_image_size", ValueError, "height", lambda k: latents.check_image_size(-64, 64, 4), "negative"),
    row("latents.check_image_size", TypeError, "width", lambda k: latents.check_image_size(64, 64.0, 4), "float"),
    row("latents.compression_factor", ValueError, "width", lambda k: latents.compression_factor(k.t2i.vae, 64, 0), "zero"),
    row("latents.images_to_tensor", ValueError, "images", lambda k: latents.images_to_tensor([], k.t2i.vae), "empty"),
    row("latents.images_to_tensor", ValueError, "images", lambda k: latents.images_to_tensor(NAN_IMAGE, k.t2i.vae), "nan"),
    row("latents.encode", ValueError, "height", lambda k: latents.encode(k.t2i.vae, k.odd), "size"),
    row("latents.decode_pixels", ValueError, "latents", lambda k: latents.decode_pixels(k.t2i.vae, torch.zeros(1, 3, 4, 4)), "shape"),
    row("latents.encode", TypeError, "images", lambda k: latents.encode(k.t2i.vae, None), "None"),
    row("latents.decode", TypeError, "latents", lambda k: latents.decode(k.t2i.vae, np.zeros((1, 4, 16, 16))), "array"),
    row("latents.decode", ValueError, "latents", lambda k: latents.decode(k.t2i.vae, torch.zeros(4, 4)), "shape"),
    row("latents.reconstruction_error", ValueError, "images", lambda k: latents.reconstruction_error(k.t2i.vae, OVER_IMAGE), "range"),
    row("latents.psnr_from_mse", ValueError, "mse", lambda k: latents.psnr_from_mse(-1.0), "negative"),
    row("latents.psnr_from_mse", ValueError, "mse", lambda k: latents.psnr_from_mse(NAN), "nan"),
    row("latents.show_channels", ValueError, "latents", lambda k: latents.show_channels(torch.zeros(2, 4, 8, 8)), "batch"),
    row("latents.noise_latents", ValueError, "timesteps", lambda k: latents.noise_latents(k.lat, [1000], k.t2i.scheduler), "t"),
    row("latents.noise_latents", ValueError, "timesteps", lambda k: latents.noise_latents(k.lat, [], k.t2i.scheduler), "empty"),
    row("latents.check_timesteps", ValueError, "timesteps", lambda k: latents.check_timesteps([0, NAN], k.t2i.scheduler), "nan"),
    row("latents.check_timesteps", TypeError, "timesteps", lambda k: latents.check_timesteps("500", k.t2i.scheduler), "string"),
    row("latents.noised_images", ValueError, "timesteps", lambda k: latents.noised_images(k.t2i.vae, k.image, [-1], k.t2i.scheduler), "t"),
    row("latents.slerp", ValueError, "t", lambda k: latents.slerp(k.lat, k.lat2, NAN), "nan"),
    row("latents.slerp", ValueError, "t", lambda k: latents.slerp(k.lat, k.lat2, INF), "inf"),
    row("latents.slerp", TypeError, "t", lambda k: latents.slerp(k.lat, k.lat2, "0.5"), "string"),
    row("latents.slerp", ValueError, "latents_a", lambda k: latents.slerp(k.lat, k.lat[:, :2], 0.5), "shapes"),
    row("latents.interpolate", ValueError, "n", lambda k: latents.interpolate(k.lat, k.lat2, 1), "one"),
    row("latents.interpolate", TypeError, "n", lambda k: latents.interpolate(k.lat, k.lat2, 2.5), "float"),
    row("latents.interpolate", ValueError, "method", lambda k: latents.interpolate(k.lat, k.lat2, 3, "cubic"), "method"),
    row("latents.attention_cost_ratio", ValueError, "size_a", lambda k: latents.attention_cost_ratio(0, 64), "zero"),
    row("latents.attention_cost_ratio", ValueError, "size_b", lambda k: latents.attention_cost_ratio(64, (64, -8)), "negative"),
    row("latents.attention_cost_ratio", ValueError, "vae_factor", lambda k: latents.attention_cost_ratio(64, 64, 0), "factor"),
    # --- text --------------------------------------------------------------------------------------
    row("text.tokens_table", TypeError, "prompt", lambda k: text.tokens_table(k.t2i.tokenizer, 123), "number"),
    row("text.tokens_table", ValueError, "max_length", lambda k: text.tokens_table(k.t2i.tokenizer, PROMPT, 1), "short"),
    row("text.prompt_input_ids", TypeError, "prompt", lambda k: text.prompt_input_ids(k.t2i.tokenizer, None), "None"),
    row("text.word_token_ids", ValueError, "word", lambda k: text.word_token_ids(k.t2i.tokenizer, ""), "empty"),
    row("text.word_positions", ValueError, "word", lambda k: text.word_positions(k.t2i.tokenizer, [49406, 320, 49407], "zebra"), "absent"),
    row("text.word_embedding", ValueError, "word", lambda k: text.word_embedding(k.t2i, ""), "empty"),
    row("text.swap_token_embedding", ValueError, "word", lambda k: text.swap_token_embedding(k.t2i, PROMPT, "zebra", "square"), "absent"),
    row("text.swap_token_embedding", ValueError, "replacement", lambda k: text.swap_token_embedding(k.t2i, PROMPT, "circle", torch.zeros(3, k.t2i.text_encoder.config.hidden_size)), "count"),
    row("text.mix_token_embeddings", ValueError, "weight", lambda k: text.mix_token_embeddings(k.t2i, PROMPT, "circle", "square", NAN), "nan"),
    row("text.prompt_embeddings", ValueError, "guidance_scale", lambda k: text.prompt_embeddings(k.t2i, PROMPT, guidance_scale=INF), "inf"),
    row("text.interpolate_prompts", ValueError, "n", lambda k: text.interpolate_prompts(k.t2i, PROMPT, PROMPT, 1), "one"),
    row("text.save_textual_inversion", ValueError, "path", lambda k: text.save_textual_inversion(torch.zeros(32), "<x>", "x.bin"), "pickle"),
    row("text.save_textual_inversion", ValueError, "token", lambda k: text.save_textual_inversion(torch.zeros(32), " ", "x.safetensors"), "token"),
    row("text.load_textual_inversion", FileNotFoundError, "path", lambda k: text.load_textual_inversion(k.t2i, "missing.safetensors"), "missing"),
    # --- sampling ----------------------------------------------------------------------------------
    row("sampling.text2img", ValueError, "guidance_scale", lambda k: sampling.text2img(k.t2i, PROMPT, guidance_scale=NAN), "nan"),
    row("sampling.text2img", ValueError, "guidance_scale", lambda k: sampling.text2img(k.t2i, PROMPT, guidance_scale=INF), "inf"),
    row("sampling.text2img", TypeError, "guidance_scale", lambda k: sampling.text2img(k.t2i, PROMPT, guidance_scale="7.5"), "string"),
    row("sampling.text2img", ValueError, "guidance_scale", lambda k: sampling.text2img(k.t2i, PROMPT, guidance_scale=-1), "negative"),
    row("sampling.text2img", ValueError, "guidance_rescale", lambda k: sampling.text2img(k.t2i, PROMPT, guidance_rescale=NAN), "rescale"),
    row("sampling.text2img", ValueError, "num_inference_steps", lambda k: sampling.text2img(k.t2i, PROMPT, num_inference_steps=0), "zero"),
    row("sampling.text2img", ValueError, "num_inference_steps", lambda k: sampling.text2img(k.t2i, PROMPT, num_inference_steps=-2), "negative"),
    row("sampling.text2img", TypeError, "num_inference_steps", lambda k: sampling.text2img(k.t2i, PROMPT, num_inference_steps=2.5), "float"),
    row("sampling.text2img", ValueError, "height", lambda k: sampling.text2img(k.t2i, PROMPT, height=0), "zero"),
    row("sampling.text2img", ValueError, "width", lambda k: sampling.text2img(k.t2i, PROMPT, width=-64), "negative"),
    row("sampling.text2img", TypeError, "height", lambda k: sampling.text2img(k.t2i, PROMPT, height=NAN), "nan"),
    row("sampling.text2img", ValueError, "loss_scale", lambda k: sampling.text2img(k.t2i, PROMPT, loss_fn=abs, loss_scale=INF), "inf"),
    row("sampling.text2img", ValueError, "loss_every", lambda k: sampling.text2img(k.t2i, PROMPT, loss_fn=abs, loss_every=0), "zero"),
    row("sampling.text2img", TypeError, "prompt", lambda k: sampling.text2img(k.t2i, 42), "number"),
    row("sampling.text2img", ValueError, "prompt", lambda k: sampling.text2img(k.t2i, []), "empty"),
    row("sampling.text2img", TypeError, "generator", lambda k: sampling.text2img(k.t2i, PROMPT, generator=0), "seed"),
    row("sampling.text2img", ValueError, "latents", lambda k: sampling.text2img(k.t2i, PROMPT, latents=k.lat * NAN), "nan"),
    row("sampling.img2img", TypeError, "image", lambda k: sampling.img2img(k.t2i, None, PROMPT), "None"),
    row("sampling.img2img", ValueError, "strength", lambda k: sampling.img2img(k.t2i, k.image, PROMPT, strength=NAN), "nan"),
    row("sampling.img2img", ValueError, "strength", lambda k: sampling.img2img(k.t2i, k.image, PROMPT, strength=1.5), "range"),
    row("sampling.img2img", TypeError, "strength", lambda k: sampling.img2img(k.t2i, k.image, PROMPT, strength="0.5"), "string"),
    row("sampling.img2img", ValueError, "image", lambda k: sampling.img2img(k.t2i, k.odd, PROMPT), "size"),
    row("sampling.inpaint_by_blending", ValueError, "mask", lambda k: sampling.inpaint_by_blending(k.t2i, k.image, np.full((64, 64), NAN), PROMPT), "nan"),
    row("sampling.inpaint_by_blending", ValueError, "mask", lambda k: sampling.inpaint_by_blending(k.t2i, k.image, k.mask[:32], PROMPT), "size"),
    row("sampling.inpaint_by_blending", ValueError, "guidance_scale", lambda k: sampling.inpaint_by_blending(k.t2i, k.image, k.mask, PROMPT, guidance_scale=NAN), "nan"),
    row("sampling.img2img_timesteps", ValueError, "num_inference_steps", lambda k: sampling.img2img_timesteps(k.t2i.scheduler, 0, 0.5), "zero"),
    row("sampling.img2img_timesteps", ValueError, "strength", lambda k: sampling.img2img_timesteps(k.t2i.scheduler, 10, NAN), "nan"),
    row("sampling.colour_loss", ValueError, "target_rgb", lambda k: sampling.colour_loss((300, 0, 0)), "range"),
    row("sampling.loss_guidance_step", ValueError, "loss_scale", lambda k: sampling.loss_guidance_step(k.t2i, k.lat, k.lat, 1, abs, NAN), "nan"),
    row("sampling.initial_latents", ValueError, "latents", lambda k: sampling.initial_latents(k.t2i, 1, 64, 64, torch.float32, latents=k.lat[:, :, :8]), "shape"),
    row("sampling.image_to_latents", ValueError, "image", lambda k: sampling.image_to_latents(k.t2i, np.zeros((64, 64, 5))), "channels"),
    # --- guidance ----------------------------------------------------------------------------------
    row("guidance.check_guidance_scale", ValueError, "guidance_scale", lambda k: guidance.check_guidance_scale(NAN), "nan"),
    row("guidance.check_guidance_scale", ValueError, "guidance_scale", lambda k: guidance.check_guidance_scale(-INF), "inf"),
    row("guidance.check_guidance_scale", TypeError, "guidance_scale", lambda k: guidance.check_guidance_scale("7"), "string"),
    row("guidance.cfg_grid", TypeError, "scales", lambda k: guidance.cfg_grid(k.t2i, PROMPT, 7.5, [0]), "scalar"),
    row("guidance.cfg_grid", ValueError, "scales", lambda k: guidance.cfg_grid(k.t2i, PROMPT, [1, NAN], [0]), "nan"),
    row("guidance.cfg_grid", ValueError, "scales", lambda k: guidance.cfg_grid(k.t2i, PROMPT, [INF], [0]), "inf"),
    row("guidance.cfg_grid", TypeError, "seeds", lambda k: guidance.cfg_grid(k.t2i, PROMPT, [7.5], 0), "scalar"),
    row("guidance.cfg_grid", TypeError, "seeds", lambda k: guidance.cfg_grid(k.t2i, PROMPT, [7.5], [0.5]), "float"),
    row("guidance.cfg_grid", ValueError, "num_inference_steps", lambda k: guidance.cfg_grid(k.t2i, PROMPT, [7.5], [0], num_inference_steps=0), "zero"),
    row("guidance.cfg_grid", ValueError, "height", lambda k: guidance.cfg_grid(k.t2i, PROMPT, [7.5], [0], height=0), "zero"),
    row("guidance.cfg_grid", TypeError, "prompt", lambda k: guidance.cfg_grid(k.t2i, [PROMPT], [7.5], [0]), "list"),
    row("latents.seeded_generator", TypeError, "seed", lambda k: latents.seeded_generator(1.5), "float"),
    row("quality.adherence_curve", TypeError, "scales", lambda k: quality.adherence_curve(k.t2i, [PROMPT], 7.5, [0]), "scalar"),
    row("quality.adherence_curve", ValueError, "steps", lambda k: quality.adherence_curve(k.t2i, [PROMPT], [7.5], [0], steps=0), "zero"),
    row("quality.adherence_curve", ValueError, "batch_size", lambda k: quality.adherence_curve(k.t2i, [PROMPT], [7.5], [0], batch_size=0), "zero"),
    row("quality.adherence_curve", ValueError, "prompts", lambda k: quality.adherence_curve(k.t2i, [], [7.5], [0]), "empty"),
    row("quality.plot_adherence", ValueError, "curve", lambda k: quality.plot_adherence({}), "empty"),
    # --- attention ---------------------------------------------------------------------------------
    row("attention.trace", TypeError, "timesteps", lambda k: run_trace(k.t2i, timesteps=500), "scalar"),
    row("attention.trace", ValueError, "timesteps", lambda k: run_trace(k.t2i, timesteps=(NAN, 999)), "nan"),
    row("attention.trace", ValueError, "heads", lambda k: run_trace(k.t2i, heads=[99]), "head"),
    row("attention.trace", ValueError, "resolutions", lambda k: run_trace(k.t2i, resolutions=[0]), "zero"),
    row("attention.trace", ValueError, "layers", lambda k: run_trace(k.t2i, layers="no.such.layer"), "layer"),
    row("attention.AttentionTrace", ValueError, "size", lambda k: k.trace.word_heatmap("circle", size=0), "size"),
    row("attention.AttentionTrace", ValueError, "word", lambda k: k.trace.word_heatmap("zebra"), "word"),
    row("attention.AttentionTrace", ValueError, "prompt_index", lambda k: k.trace.token_heatmaps(prompt_index=3), "index"),
    row("attention.overlay", ValueError, "heatmap", lambda k: attention.overlay(k.image, np.full((8, 8), NAN)), "nan"),
    row("attention.overlay", ValueError, "alpha", lambda k: attention.overlay(k.image, np.zeros((8, 8)), alpha=NAN), "nan"),
    # --- conditioning ------------------------------------------------------------------------------
    row("conditioning.require_pipeline_argument", TypeError, "pipe", lambda k: conditioning.require_pipeline_argument(k.t2i, "strength", "img2img"), "task"),
    row("conditioning.prepare_image", ValueError, "image", lambda k: conditioning.prepare_image(k.t2i, k.odd), "size"),
    row("conditioning.denoising_steps", ValueError, "num_inference_steps", lambda k: conditioning.denoising_steps(0, 0.5), "zero"),
    row("conditioning.denoising_steps", ValueError, "strength", lambda k: conditioning.denoising_steps(10, NAN), "nan"),
    row("conditioning.check_strength", ValueError, "strength", lambda k: conditioning.check_strength(0.01, 10), "no-steps"),
    row("conditioning.strength_sweep", TypeError, "strengths", lambda k: conditioning.strength_sweep(k.i2i, k.image, PROMPT, strengths=0.5), "scalar"),
    row("conditioning.strength_sweep", ValueError, "strengths", lambda k: conditioning.strength_sweep(k.i2i, k.image, PROMPT, strengths=[0.5, NAN]), "nan"),
    row("conditioning.strength_sweep", ValueError, "guidance_scale", lambda k: conditioning.strength_sweep(k.i2i, k.image, PROMPT, guidance_scale=NAN), "nan"),
    row("conditioning.strength_sweep", TypeError, "seed", lambda k: conditioning.strength_sweep(k.i2i, k.image, PROMPT, seed="0"), "string"),
    row("conditioning.as_mask_image", ValueError, "mask", lambda k: conditioning.as_mask_image(np.full((8, 8), 2.0)), "range"),
    row("conditioning.as_mask_image", ValueError, "mask", lambda k: conditioning.as_mask_image(np.zeros((8, 8, 3))), "rgb"),
    row("conditioning.mask_from_objects", ValueError, "index", lambda k: conditioning.mask_from_objects(k.render, index=5), "index"),
    row("conditioning.mask_from_objects", ValueError, "grow", lambda k: conditioning.mask_from_objects(k.render, grow=-1), "grow"),
    row("conditioning.inpaint", TypeError, "image", lambda k: conditioning.inpaint(k.inp, None, k.mask, PROMPT), "None"),
    row("conditioning.inpaint", ValueError, "guidance_scale", lambda k: conditioning.inpaint(k.inp, k.image, k.mask, PROMPT, guidance_scale=INF), "inf"),
    row("conditioning.inpaint", ValueError, "strength", lambda k: conditioning.inpaint(k.inp, k.image, k.mask, PROMPT, strength=NAN), "nan"),
    row("conditioning.inpaint", ValueError, "mask", lambda k: conditioning.inpaint(k.inp, k.image, k.mask[:32], PROMPT), "size"),
    row("conditioning.inpaint", ValueError, "num_images_per_prompt", lambda k: conditioning.inpaint(k.inp, k.image, k.mask, PROMPT, num_images_per_prompt=0), "zero"),
    row("conditioning.as_depth_map", ValueError, "depth_map", lambda k: conditioning.as_depth_map(torch.ones(8, 8)), "flat"),
    row("conditioning.as_depth_map", ValueError, "depth_map", lambda k: conditioning.as_depth_map(torch.full((8, 8), NAN)), "nan"),
    row("conditioning.depth_to_image", ValueError, "guidance_scale", lambda k: conditioning.depth_to_image(k.depth, k.image, PROMPT, k.depth_map, guidance_scale=NAN), "nan"),
    row("conditioning.depth_to_image", ValueError, "depth_map", lambda k: conditioning.depth_to_image(k.depth, k.image, PROMPT, k.depth_map[:32]), "aspect"),
    row("conditioning.depth_to_image", ValueError, "num_images_per_prompt", lambda k: conditioning.depth_to_image(k.depth, k.image, PROMPT, k.depth_map, num_images_per_prompt=-1), "negative"),
    row("conditioning.upscale", ValueError, "noise_level", lambda k: conditioning.upscale(k.up, k.small, PROMPT, noise_level=999), "range"),
    row("conditioning.upscale", TypeError, "noise_level", lambda k: conditioning.upscale(k.up, k.small, PROMPT, noise_level=20.5), "float"),
    row("conditioning.upscale", ValueError, "num_inference_steps", lambda k: conditioning.upscale(k.up, k.small, PROMPT, num_inference_steps=0), "zero"),
    row("conditioning.upscale", ValueError, "guidance_scale", lambda k: conditioning.upscale(k.up, k.small, PROMPT, guidance_scale=NAN), "nan"),
    row("conditioning.sample_photo", ValueError, "name", lambda k: conditioning.sample_photo("dog"), "name"),
    row("conditioning.sample_photo", ValueError, "size", lambda k: conditioning.sample_photo(size=0), "size"),
    row("conditioning.image_psnr", ValueError, "truth", lambda k: conditioning.image_psnr(k.image, k.small), "size"),
    row("conditioning.compare_upscale", ValueError, "truth", lambda k: conditioning.compare_upscale(k.small, k.image, NAN_IMAGE), "nan"),
    row("conditioning.compare_to_truth", ValueError, "truths", lambda k: conditioning.compare_to_truth([k.image], [k.image, k.image]), "count"),
    # --- plotting ----------------------------------------------------------------------------------
    row("plotting.as_array", TypeError, "image", lambda k: plotting.as_array(torch.zeros(3, 8, 8)), "tensor"),
    row("plotting.as_array", ValueError, "image", lambda k: plotting.as_array(NAN_IMAGE), "nan"),
    row("plotting.to_pil", ValueError, "image", lambda k: plotting.to_pil(OVER_IMAGE), "range"),
    row("plotting.image_grid", ValueError, "rows", lambda k: plotting.image_grid(k.frames, rows=0), "zero"),
    row("plotting.image_grid", ValueError, "cols", lambda k: plotting.image_grid(k.frames, cols=-1), "negative"),
    row("plotting.image_grid", ValueError, "figsize_per", lambda k: plotting.image_grid(k.frames, figsize_per=NAN), "nan"),
    row("plotting.image_grid", TypeError, "images", lambda k: plotting.image_grid(k.image), "one-image"),
    row("plotting.image_grid", TypeError, "titles", lambda k: plotting.image_grid(k.frames, titles="ab"), "string"),
    row("plotting.image_grid", ValueError, "titles", lambda k: plotting.image_grid(k.frames, titles=["one"]), "titles"),
    row("plotting.side_by_side", ValueError, "images", lambda k: plotting.side_by_side([]), "empty"),
    row("plotting.overlay_heatmap", ValueError, "heatmap", lambda k: plotting.overlay_heatmap(k.image, np.full((8, 8), INF)), "inf"),
    row("plotting.overlay_heatmap", ValueError, "alpha", lambda k: plotting.overlay_heatmap(k.image, np.zeros((8, 8)), alpha=2), "range"),
    row("plotting.plot_schedule", TypeError, "scheduler", lambda k: plotting.plot_schedule(object()), "type"),
    row("plotting.gif_bytes", ValueError, "fps", lambda k: plotting.gif_bytes(k.frames, fps=NAN), "nan"),
    row("plotting.gif_bytes", ValueError, "fps", lambda k: plotting.gif_bytes(k.frames, fps=0), "zero"),
    row("plotting.gif_bytes", ValueError, "loop", lambda k: plotting.gif_bytes(k.frames, loop=-1), "loop"),
    row("plotting.gif_bytes", ValueError, "frames", lambda k: plotting.gif_bytes([]), "empty"),
    row("plotting.save_gif", ValueError, "fps", lambda k: plotting.save_gif(k.frames, "x.gif", fps=INF), "inf"),
    row("plotting.animate", ValueError, "fps", lambda k: plotting.animate(k.frames, fps=-1), "negative"),
    row("plotting.side_by_side_frames", ValueError, "gap", lambda k: plotting.side_by_side_frames(k.frames, k.frames, gap=-1), "gap"),
    row("plotting.side_by_side_frames", ValueError, "xt_frames", lambda k: plotting.side_by_side_frames(k.frames, k.frames[:1]), "count"),
    row("plotting.denoising_animation", ValueError, "fps", lambda k: plotting.denoising_animation(k.frames, k.frames, fps=NAN), "nan"),
    # --- widgets -----------------------------------------------------------------------------------
    row("widgets.png_bytes", ValueError, "display_size", lambda k: widgets.png_bytes(k.image, 0), "zero"),
    row("widgets.guidance_explorer", TypeError, "scales", lambda k: widgets.guidance_explorer(k.t2i, PROMPT, scales=7.5), "scalar"),
    row("widgets.guidance_explorer", ValueError, "scales", lambda k: widgets.guidance_explorer(k.t2i, PROMPT, scales=[1, NAN]), "nan"),
    row("widgets.guidance_explorer", ValueError, "steps", lambda k: widgets.guidance_explorer(k.t2i, PROMPT, steps=0), "zero"),
    row("widgets.guidance_explorer", TypeError, "prompt", lambda k: widgets.guidance_explorer(k.t2i, [PROMPT]), "list"),
    row("widgets.noising_explorer", TypeError, "timesteps", lambda k: widgets.noising_explorer(k.t2i, k.image, timesteps=500), "scalar"),
    row("widgets.noising_explorer", ValueError, "timesteps", lambda k: widgets.noising_explorer(k.t2i, k.image, timesteps=[2000]), "range"),
    row("widgets.attention_explorer", ValueError, "guidance_scale", lambda k: widgets.attention_explorer(k.t2i, PROMPT, guidance_scale=NAN), "nan"),
    row("widgets.attention_explorer", ValueError, "steps", lambda k: widgets.attention_explorer(k.t2i, PROMPT, steps=-1), "negative"),
    row("widgets.attention_explorer", ValueError, "alpha", lambda k: widgets.attention_explorer(k.t2i, PROMPT, alpha=2), "range"),
    row("widgets.strength_explorer", TypeError, "strengths", lambda k: widgets.strength_explorer(k.i2i, k.image, PROMPT, strengths=0.5), "scalar"),
    row("widgets.strength_explorer", ValueError, "strengths", lambda k: widgets.strength_explorer(k.i2i, k.image, PROMPT, strengths=[NAN]), "nan"),
    row("widgets.strength_explorer", ValueError, "guidance_scale", lambda k: widgets.strength_explorer(k.i2i, k.image, PROMPT, guidance_scale=INF), "inf"),
]

# Public functions that get no row, and why.
NO_PROBE = {
    "models.RealModel": "registry data", "models.ModelNotAvailableError": "an exception",
    "models.images_per_batch": "reads a loaded pipeline's own size", "models.hub_offline": "no arguments",
    "models.check_repo": "asks the hub about a resolved id", "models.family_member": "maps known names, passes others on",
    "models.hub_answers": "no arguments", "models.uses_mini": "resolves a name, loads nothing",
    "models.choose_auto": "called with a checked task", "models.looks_like_folder": "a predicate on any string",
    "models.load_mini": "called by load_pipeline after its checks", "models.load_mini_text_encoder": "idem",
    "models.load_real": "idem", "models.load_folder": "idem (after check_folder)", "models.load_by_name": "idem",
    "models.check_unet_channels": "a check itself (probed through load_pipeline)",
    "models.check_unet_channels_count": "idem", "models.keep_vae_in_fp32": "takes a loaded pipeline",
    "tokenizer.load_tokenizer": "no arguments",
    "latents.vae_scale_factor": "reads a VAE's config",
    "text.TokenRow": "a record", "text.TokensTable": "made by tokens_table", "text.format_tokens_table": "idem",
    "text.learn_token_embeddings": "training internals (ids from word_token_ids)",
    "text.clip_text_transformer": "takes a loaded text encoder",
    "text.token_and_position_embeddings": "token ids from prompt_input_ids",
    "text.causal_attention_mask": "a length and dtype from a tensor", "text.encode_from_embeddings": "a tensor",
    "text.prompt_words": "token ids from prompt_input_ids",
    "sampling.SamplingResult": "a record", "sampling.uses_guidance": "a predicate on a checked scale",
    "sampling.encode_text": "called by the samplers after their checks",
    "sampling.scheduler_step_kwargs": "reads a scheduler", "sampling.uses_sigma_latents": "idem",
    "sampling.latents_to_images": "latents from the loop", "sampling.blend_known_region": "tensors from the loop",
    "sampling.denoise": "the loop: called by text2img, img2img and inpaint_by_blending after their checks",
    "sampling.mask_to_latent_grid": "a mask from _as_mask_array",
    "sampling.predict_x0": "reads the scheduler's own prediction_type",
    "guidance.classifier_free_guidance": "the formula on tensors (the scale may be a tensor)",
    "guidance.rescale_guidance": "idem", "guidance.GridResult": "a record",
    "guidance.cfg_grid_figure": "images from cfg_grid",
    "attention.RecordingProcessor": "installed by trace", "attention.normalise": "a tensor from a trace",
    "attention.cross_attention_layers": "takes a loaded UNet",
    "conditioning.SweepResult": "a record",
    "conditioning.estimate_depth": "a pipeline and an image, both checked by prepare_image; its refusal is in test_conditioning",
    "widgets.ImageExplorer": "takes callables; the explorers build it after their checks",
}


def names_parameter(message: str, param: str) -> bool:
    """The message names `param` as such: `param=…`, `param[i]…`, `param is …`, `--param …`."""
    return re.search(rf"(?<![\w.'-]){re.escape(param)}(?=[=\[ :,'`])", message) is not None


@pytest.fixture
def no_weights_load(monkeypatch):
    """Any weights loading during a probe fails the test: refusals come before loading."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the bad input was refused")

    for loader in ("load_mini", "load_real", "load_folder"):
        monkeypatch.setattr(models, loader, refuse)


@pytest.mark.parametrize("entry, error, param, call", CASES)
def test_bad_input_is_refused_before_model_work_naming_the_parameter(kit, no_weights_load, monkeypatch, entry, error, param, call):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same verdicts on a GPU machine
    before = kit.calls
    with pytest.raises(error) as info:
        call(kit)
    assert names_parameter(str(info.value), param), f"{entry}: the message does not name {param!r}: {info.value}"
    assert kit.calls == before, f"{entry}: the model ran before the input was refused"


def _public_names() -> set[str]:
    names = set()
    for module_name in TEACHING_MODULES:
        module = importlib.import_module(f"sdcourse.{module_name}")
        for name, value in vars(module).items():
            defined_here = getattr(value, "__module__", None) == module.__name__
            if not name.startswith("_") and (inspect.isfunction(value) or inspect.isclass(value)) and defined_here:
                names.add(f"{module_name}.{name}")
    return names


def test_every_public_function_is_in_the_inventory():
    """A new public function of a teaching module needs a row in CASES, or a reason in NO_PROBE."""
    probed = {case.values[0] for case in CASES}
    public = _public_names()
    listed = probed | set(NO_PROBE)
    assert not public - listed, f"add rows (or a NO_PROBE reason) for: {sorted(public - listed)}"
    stale = {name for name in listed if not _exists(name)}
    assert not stale, f"the inventory names functions that no longer exist: {sorted(stale)}"


def _exists(name: str) -> bool:
    """Whether `module.function` names something in sdcourse (rows may probe modules beyond the teaching ones)."""
    module_name, _, attribute = name.partition(".")
    module = importlib.import_module(f"sdcourse.{module_name}")
    return getattr(getattr(module, attribute, None), "__module__", None) == module.__name__


# --------------------------------------------------------------------------- load_pipeline accepts


def test_dtype_given_as_a_string_applies_to_every_component(kit):
    pipe = models.load_pipeline(str(kit.saved), dtype="float16", device="cpu")
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float16}


# --------------------------------------------------------------------------- the CLI

CLI_CASES = [
    (["--steps", "-2"], "--steps"),
    (["--steps", "0"], "--steps"),
    (["--size", "0"], "--size"),
    (["--size", "-64"], "--size"),
    (["--size", "60"], "--size"),
    (["--num-images", "0"], "--num-images"),
    (["--guidance-scale", "nan"], "--guidance-scale"),
    (["--guidance-scale", "inf"], "--guidance-scale"),
    (["--guidance-scale", "-1"], "--guidance-scale"),
    (["--device", "cuda"], "device"),
    (["--seed", str(2**64)], "--seed"),
    (["--model", "./no-such-model"], "name"),
    (["-o", "{tmp}"], "-o"),
    (["-o", "{tmp}/missing/out.png"], "-o"),
    (["-o", "{tmp}/out.txt"], "-o"),
    (["-o", "{tmp}/out"], "-o"),
]


@pytest.mark.parametrize("args, option", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_generate_refuses_bad_options_in_one_line_before_loading(tmp_path, capsys, monkeypatch, no_weights_load, args, option):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    default_output = [] if "-o" in args else ["-o", str(tmp_path / "out.png")]
    status = cli.main(["generate", PROMPT, "--model", "mini", "-q", *default_output, *args])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("sdcourse: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert names_parameter(err.removeprefix("sdcourse: error: "), option), err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_generate_refuses_negative_steps_as_a_process_exit_2(tmp_path):
    """`--steps -2` wrote noise and exited 0; now a one-line error and exit status 2, from the real entry point."""
    result = subprocess.run(
        [sys.executable, "-m", "sdcourse.cli", "generate", PROMPT, "--steps", "-2", "-o", str(tmp_path / "x.png")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "sdcourse: error: --steps -2: must be at least 1."


def test_generate_says_what_the_model_sees_of_a_japanese_prompt(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models, "load_pipeline", lambda name, task, device: tiny_pipeline(task))
    assert cli.main(["generate", "赤い円", "-o", str(tmp_path / "x.png"), "--steps", "1", "-q"]) == 0
    err = capsys.readouterr().err
    assert "sdcourse: warning: prompt='赤い円' holds characters CLIP's English vocabulary cannot read" in err
    assert "about an empty prompt" in err


# --------------------------------------------------------------------------- numbers from text


def test_numeric_strings_are_parsed_where_text_is_expected_and_refused_with_the_fix_elsewhere():
    assert checks.parse_number("1e-4", "learning_rate") == 1e-4
    assert checks.parse_number(3, "learning_rate") == 3.0
    with pytest.raises(TypeError, match=r"learning_rate='1e-4' is a string: pass a number, e\.g\. learning_rate=1e-4"):
        checks.finite("1e-4", "learning_rate")
    with pytest.raises(ValueError, match="learning_rate=inf is not a finite number"):
        checks.parse_number("inf", "learning_rate")


# --------------------------------------------------------------------------- images: the converted pixels

LEVELS = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)  # 0, 257, …, 65535: grey levels 0–255


def test_a_16_bit_grey_image_becomes_its_grey_levels_not_white(tmp_path):
    Image.fromarray(LEVELS).save(tmp_path / "grey16.png")
    image = Image.open(tmp_path / "grey16.png")
    assert image.mode in ("I;16", "I")  # a 16-bit PNG (older Pillow opens it as 32-bit "I")
    rgb = np.asarray(checks.to_rgb(image))
    expected = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(rgb, np.repeat(expected[..., None], 3, axis=2))
    assert np.array_equal(np.asarray(plotting.to_pil(image)), rgb)  # through the public helpers too
    assert np.array_equal(plotting.as_array(image), expected)  # grey stays grey for imshow


@pytest.mark.parametrize(
    "image, grey",
    [
        (Image.fromarray(LEVELS.astype(np.int32)), np.arange(256).reshape(16, 16)),  # "I" holding 16-bit levels
        (Image.fromarray(np.arange(256, dtype=np.int32).reshape(16, 16)), np.arange(256).reshape(16, 16)),  # "I", 8-bit
        (Image.fromarray(np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)), np.arange(256).reshape(16, 16)),
    ],
    ids=["I-16bit", "I-8bit", "F-0-1"],
)
def test_int_and_float_grey_modes_are_scaled(image, grey):
    assert np.array_equal(np.asarray(checks.to_rgb(image))[..., 0], grey)


def test_transparent_pixels_are_composited_on_the_stated_colour():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (220, 40, 40, 255)  # opaque red
    rgba[0, 1] = (220, 40, 40, 0)  # fully transparent: the background shows
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black over white: mid grey
    image = Image.fromarray(rgba)
    on_white = np.asarray(checks.to_rgb(image)).astype(int)
    assert on_white[0, 0].tolist() == [220, 40, 40]
    assert on_white[0, 1].tolist() == [255, 255, 255]
    assert abs(on_white[1, 0] - 127).max() <= 1
    on_grey = np.asarray(checks.to_rgb(image, background=(128, 128, 128)))
    assert on_grey[0, 1].tolist() == [128, 128, 128]
    assert np.array_equal(np.asarray(checks.to_rgb(rgba)), np.asarray(checks.to_rgb(image)))  # an RGBA array too
    la = Image.merge("LA", [Image.fromarray(rgba[..., 0]), Image.fromarray(rgba[..., 3])])
    assert np.asarray(checks.to_rgb(la))[0, 1].tolist() == [255, 255, 255]


def test_palette_cmyk_and_arrays_convert_to_the_colours_they_show():
    palette = Image.new("P", (2, 1))
    palette.putpalette([220, 40, 40, 40, 80, 220] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0  # index 0 (red) is transparent
    assert np.asarray(checks.to_rgb(palette)).tolist() == [[[255, 255, 255], [40, 80, 220]]]
    cyan = Image.new("CMYK", (1, 1), (255, 0, 0, 0))
    assert np.asarray(checks.to_rgb(cyan)).tolist() == [[[0, 255, 255]]]
    assert np.asarray(checks.to_rgb(np.full((1, 1, 3), 65535, dtype=np.uint16))).tolist() == [[[255, 255, 255]]]
    assert np.asarray(checks.to_rgb(np.array([[True, False]]))).tolist() == [[[255] * 3, [0] * 3]]
    assert np.asarray(checks.to_rgb(np.full((1, 1, 3), 0.5))).tolist() == [[[128, 128, 128]]]


def test_a_16_bit_image_encodes_like_its_8_bit_version(kit):
    eight = Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8))
    sixteen = Image.fromarray(np.asarray(eight).astype(np.uint16) * 257)
    assert torch.equal(latents.images_to_tensor(sixteen, kit.t2i.vae), latents.images_to_tensor(eight, kit.t2i.vae))
    assert np.array_equal(np.asarray(conditioning.prepare_image(kit.t2i, sixteen)), np.asarray(eight.convert("RGB")))


def painted_mask(colour=(0, 0, 0)) -> Image.Image:
    """Strokes drawn on a transparent layer: the square (16–47) painted opaque in `colour`."""
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[16:48, 16:48] = (*colour, 255)
    return Image.fromarray(rgba)


def test_an_rgba_mask_is_read_from_its_alpha_channel(kit):
    expected = np.zeros((64, 64), dtype=np.uint8)
    expected[16:48, 16:48] = 255
    for colour in ((0, 0, 0), (255, 255, 255)):  # black strokes were read as "keep everything" before
        assert np.array_equal(np.asarray(conditioning.as_mask_image(painted_mask(colour))), expected)
    opaque = Image.fromarray(np.dstack([expected] * 3 + [np.full((64, 64), 255, np.uint8)]))
    assert np.array_equal(np.asarray(checks.mask_image(opaque)), expected)  # fully opaque: its brightness
    sixteen = Image.fromarray(expected.astype(np.uint16) * 257)
    assert np.array_equal(np.asarray(checks.mask_image(sixteen)), expected)


def test_inpaint_by_blending_repaints_where_an_rgba_mask_is_painted(kit):
    """The blended loop keeps the image's own latents exactly where the mask says keep."""
    result = sampling.inpaint_by_blending(
        kit.t2i, kit.image, painted_mask(), PROMPT, num_inference_steps=2, progress=False,
        generator=torch.Generator().manual_seed(0),
    )
    image_latents = sampling.image_to_latents(kit.t2i, kit.image, sample=False)
    keep = torch.ones(16, 16, dtype=torch.bool)
    keep[4:12, 4:12] = False  # the painted square on the 16×16 latent grid
    assert torch.allclose(result.latents[0][:, keep], image_latents[0][:, keep], atol=1e-5)
    assert not torch.allclose(result.latents[0][:, ~keep], image_latents[0][:, ~keep], atol=1e-2)


# --------------------------------------------------------------------------- prompts CLIP cannot read


@pytest.mark.parametrize(
    "prompt, sees",
    [("猫の写真", "about an empty prompt"), ("a red circle 🐱", "only 'a red circle'"), ("赤い circle", "only 'circle'")],
)
def test_unreadable_prompts_warn_and_say_what_the_model_sees(kit, prompt, sees):
    with pytest.warns(UserWarning, match="CLIP's English vocabulary cannot read") as caught:
        sampling.text2img(kit.t2i, prompt, num_inference_steps=1, progress=False)
    assert sees in str(caught[0].message) and "prompt=" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the learner's line, not at sdcourse


def test_english_and_accented_prompts_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checks.prompt(["a café au lait — “quoted”", PROMPT]) == ["a café au lait — “quoted”", PROMPT]


def test_the_saved_folder_fixture_is_a_complete_pipeline(kit):
    """The folder probes above fail for the reason they name: the intact folder passes the check."""
    assert models.check_folder(kit.saved, "text2img") == kit.saved
    assert json.loads((kit.saved / "model_index.json").read_text())["unet"][0] == "diffusers"

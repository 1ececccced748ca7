"""Tests for sdcourse.testing: tiny random pipelines (fast) and the real SD layouts (slow)."""

import gc

import numpy as np
import pytest
import torch
from sdcourse.testing import (
    PIPELINE_CLASSES,
    SCHEDULERS,
    TASKS,
    UNET_IN_CHANNELS,
    make_scheduler,
    real_pipeline,
    real_text_encoder,
    real_tokenizer,
    real_unet,
    real_vae,
    tiny_components,
    tiny_pipeline,
    tiny_task_inputs,
)
from sdcourse.tokenizer import load_tokenizer

PROMPT = "a red circle on a blue background"


def generate(pipe, task: str, steps: int = 3, seed: int = 0) -> np.ndarray:
    """Run `pipe` with classifier-free guidance and return the images as a float array."""
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    result = pipe(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=7.5,
        generator=generator,
        output_type="np",
        **tiny_task_inputs(task),
    )
    return result.images


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --- tiny pipelines ------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_tiny_pipeline_runs_end_to_end(task):
    pipe = tiny_pipeline(task)
    assert isinstance(pipe, PIPELINE_CLASSES[task])
    images = generate(pipe, task)
    assert images.shape == (1, 64, 64, 3)
    assert np.isfinite(images).all()


@pytest.mark.parametrize("task", TASKS)
def test_tiny_unet_in_channels(task):
    assert tiny_components(task)["unet"].config.in_channels == UNET_IN_CHANNELS[task]


def test_unet_in_channels_per_task():
    assert UNET_IN_CHANNELS == {"text2img": 4, "img2img": 4, "inpaint": 9, "depth2img": 5, "upscale": 7}


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_images_other_seed_other_images(task):
    first = generate(tiny_pipeline(task, seed=0), task)
    again = generate(tiny_pipeline(task, seed=0), task)
    other_weights = generate(tiny_pipeline(task, seed=1), task)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other_weights).max() > 1e-3


def test_same_seed_same_weights():
    first, again = tiny_components(seed=3), tiny_components(seed=3)
    for name in ("unet", "vae", "text_encoder"):
        for (key, a), b in zip(first[name].state_dict().items(), again[name].state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key}"


def test_building_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_components("inpaint")
    assert torch.equal(torch.rand(3), expected)


def test_generator_seed_changes_the_image():
    pipe = tiny_pipeline()
    assert np.abs(generate(pipe, "text2img", seed=0) - generate(pipe, "text2img", seed=1)).max() > 1e-3


def test_tiny_vae_shrinks_images_by_four():
    vae = tiny_components("text2img")["vae"]
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
        decoded = vae.decode(latents).sample
    assert latents.shape == (1, 4, 16, 16)
    assert decoded.shape == (1, 3, 64, 64)


def test_tiny_text_encoder_uses_the_real_tokenizer():
    components = tiny_components()
    tokenizer, text_encoder = components["tokenizer"], components["text_encoder"]
    assert len(tokenizer) == text_encoder.config.vocab_size == 49408
    ids = tokenizer(PROMPT, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(ids).last_hidden_state
    assert hidden.shape == (1, 77, components["unet"].config.cross_attention_dim)


def test_tiny_unet_has_sd_attention_layout():
    unet = tiny_components()["unet"]
    names = list(unet.attn_processors)
    for part in ("down_blocks", "mid_block", "up_blocks"):
        assert any(n.startswith(part) and n.endswith("attn1.processor") for n in names), part
        assert any(n.startswith(part) and n.endswith("attn2.processor") for n in names), part
    assert unet.down_blocks[-1].__class__.__name__ == "DownBlock2D"
    assert unet.up_blocks[0].__class__.__name__ == "UpBlock2D"


def test_components_are_the_pipeline_constructor_arguments():
    for task in TASKS:
        pipe = PIPELINE_CLASSES[task](**tiny_components(task))
        assert pipe.vae_scale_factor == 4
        assert getattr(pipe, "safety_checker", None) is None
    depth = tiny_components("depth2img")
    assert depth["depth_estimator"] is None and depth["feature_extractor"] is None
    upscale = tiny_components("upscale")
    assert upscale["low_res_scheduler"].__class__.__name__ == "DDPMScheduler"
    assert upscale["unet"].config.num_class_embeds == 1000
    assert upscale["vae"].config.scaling_factor == 0.08333


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_each_scheduler_runs_text2img(name):
    pipe = tiny_pipeline("text2img", scheduler=name)
    assert isinstance(pipe.scheduler, SCHEDULERS[name])
    config = pipe.scheduler.config
    assert (config.beta_start, config.beta_end, config.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert config.num_train_timesteps == 1000 and config.steps_offset == 1
    assert config.prediction_type == "epsilon"
    images = generate(pipe, "text2img")
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_ddim_keeps_sd_settings():
    config = make_scheduler("ddim").config
    assert config.set_alpha_to_one is False and config.clip_sample is False


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="task"):
        tiny_pipeline("outpaint")
    with pytest.raises(ValueError, match="scheduler"):
        make_scheduler("heun")
    with pytest.raises(ValueError, match="layout"):
        real_unet("sdxl")
    with pytest.raises(ValueError, match="sd21"):
        real_unet("sd15", "upscale")


# --- real layouts, random weights (slow) ------------------------------------------------------

# Public parameter counts of the published checkpoints' diffusers / transformers models.
UNET_PARAMETERS = {"sd15": 859.52e6, "sd21": 865.91e6}
SD_VAE_PARAMETERS = 83.65e6
TEXT_ENCODER_PARAMETERS = {"sd15": 123.06e6, "sd21": 340.39e6}  # CLIP ViT-L/14, OpenCLIP ViT-H/14 (23 layers)
TEXT_HIDDEN_SIZE = {"sd15": 768, "sd21": 1024}


@pytest.fixture
def free_memory():
    """Collect the ~3.5 GB a real UNet holds before the next test builds another."""
    yield
    gc.collect()


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout, task",
    [("sd15", "text2img"), ("sd21", "text2img"), ("sd15", "inpaint"), ("sd21", "depth2img"), ("sd21", "upscale")],
)
def test_real_unet_one_step(layout, task, free_memory):
    unet = real_unet(layout, task)
    cross_attention_dim = TEXT_HIDDEN_SIZE[layout]
    assert unet.config.in_channels == UNET_IN_CHANNELS[task]
    assert unet.config.cross_attention_dim == cross_attention_dim
    if task != "upscale":
        # A wider conv_in (inpaint, depth) adds only a few thousand parameters.
        assert count_parameters(unet) == pytest.approx(UNET_PARAMETERS[layout], rel=0.01)
    # SD's 16 transformer blocks, each with self- (attn1) and cross-attention (attn2).
    assert sum(name.endswith("attn2.processor") for name in unet.attn_processors) == 16

    sample = torch.randn(1, unet.config.in_channels, 8, 8)
    text = torch.randn(1, 77, cross_attention_dim)
    class_labels = torch.tensor([20]) if task == "upscale" else None
    with torch.no_grad():
        noise_pred = unet(sample, 500, encoder_hidden_states=text, class_labels=class_labels).sample
    assert noise_pred.shape == (1, 4, 8, 8)
    assert torch.isfinite(noise_pred).all()
    del unet


@pytest.mark.slow
@pytest.mark.parametrize("layout, task, factor", [("sd15", "text2img", 8), ("sd21", "upscale", 4)])
def test_real_vae(layout, task, factor, free_memory):
    vae = real_vae(layout, task)
    if task != "upscale":
        assert count_parameters(vae) == pytest.approx(SD_VAE_PARAMETERS, rel=0.01)
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
        decoded = vae.decode(latents).sample
    assert latents.shape == (1, 4, 64 // factor, 64 // factor)
    assert decoded.shape == (1, 3, 64, 64)
    del vae


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["sd15", "sd21"])
def test_real_text_encoder(layout, free_memory):
    text_encoder = real_text_encoder(layout)
    assert count_parameters(text_encoder) == pytest.approx(TEXT_ENCODER_PARAMETERS[layout], rel=0.01)
    tokenizer = real_tokenizer(layout)
    ids = tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(ids).last_hidden_state
    assert hidden.shape == (1, 77, TEXT_HIDDEN_SIZE[layout])
    del text_encoder


def test_real_tokenizers_pad_like_sd():
    # SD 1.x pads with <|endoftext|> (49407), SD 2.x with "!" (0).
    assert real_tokenizer("sd15").pad_token_id == load_tokenizer().pad_token_id == 49407
    assert real_tokenizer("sd21").pad_token_id == 0


@pytest.mark.slow
@pytest.mark.parametrize("layout, task", [("sd15", "text2img"), ("sd21", "upscale")])
def test_real_pipeline_runs(layout, task, free_memory):
    pipe = real_pipeline(layout, task)
    images = generate(pipe, task, steps=1)
    assert images.shape == (1, 64, 64, 3)
    del pipe


# --- tiny-random-sd2: the second model the notebooks run on -----------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_tiny_random_sd2_loads_offline_for_every_task_in_sd2_proportions(task):
    from sdcourse import load_pipeline

    pipe = load_pipeline("tiny-random-sd2", task=task)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, PIPELINE_CLASSES[task])
    assert pipe.unet.config.in_channels == UNET_IN_CHANNELS[task]
    assert pipe.tokenizer.pad_token == "!" and pipe.tokenizer.pad_token_id == 0  # SD 2's padding
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim == 48
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert size == 128  # neither mini-SD's 64 px nor SD's 512: a cell that hard-codes either shows up
    assert pipe.vae_scale_factor == (4 if task == "upscale" else 8)
    from PIL import Image

    image = Image.new("RGB", (128, 128), (40, 80, 220))
    inputs = {"text2img": {}, "img2img": {"image": image, "strength": 0.5},
              "inpaint": {"image": image, "mask_image": Image.new("L", (128, 128), 255)},
              "depth2img": {"image": image, "depth_map": torch.rand(1, 128, 128)},
              "upscale": {"image": image.resize((32, 32)), "noise_level": 20}}[task]
    images = pipe(PROMPT, num_inference_steps=2, output_type="np", **inputs).images
    assert images.shape == (1, 128, 128, 3) and np.isfinite(images).all()

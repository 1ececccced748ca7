"""mini-SD, the shipped model family: loads offline, is deterministic, and meets its quality bars.

Bars from the mini-SD issue, measured with the independent judge (25 DDIM steps). The
measured numbers are in sdcourse/assets/mini-sd/README.md (benchmarks/mini_quality.py).
"""

import time

import numpy as np
import pytest
import torch

from sdcourse import models, quality, world

pytestmark = pytest.mark.skipif(not models.mini_available(), reason="mini-SD weights not shipped yet")


@pytest.fixture(scope="module")
def text2img():
    pipe = models.load_pipeline("mini", task="text2img", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def prompts():
    scenes = quality.eval_scenes(48, two_objects=False) + quality.eval_scenes(16, two_objects=True)
    return [world.caption(scene) for scene in scenes]


def test_mini_loads_offline_fast_in_every_task(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for task in [t for t in models.TASKS if models.mini_available(t)]:
        start = time.perf_counter()
        pipe = models.load_pipeline("mini", task=task, device="cpu")
        assert time.perf_counter() - start < 10
        assert pipe.unet.config.in_channels == models.UNET_IN_CHANNELS[task]
        assert pipe.vae.config.scaling_factor == 0.08333
        assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_plain_diffusers_loads_the_shipped_folder(text2img):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(models.MINI_DIR, use_safetensors=True, dtype=torch.float32)
    assert pipe.unet.config.in_channels == 4 and pipe.vae.config.latent_channels == 4
    assert pipe.tokenizer.model_max_length == 77
    prompt = "a green square on a white background"
    ours = text2img(prompt, num_inference_steps=5, generator=torch.Generator("cpu").manual_seed(0), output_type="np")
    plain = pipe(prompt, num_inference_steps=5, generator=torch.Generator("cpu").manual_seed(0), output_type="np")
    assert np.abs(ours.images[0] - plain.images[0]).max() < 1e-2  # fp16 weights read as fp32 by both


def test_same_seed_same_image_different_seed_different(text2img):
    def make(seed):
        out = text2img("a red circle on a blue background", num_inference_steps=10,
                       generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
        return out.images[0]

    assert np.array_equal(make(3), make(3))
    assert not np.array_equal(make(3), make(4))


@pytest.fixture(scope="module")
def quality_at_7_5(text2img, prompts):
    result = quality.text2img_quality(text2img, prompts, seeds=(0, 1), guidance_scale=7.5)
    print(result)
    return result


def not_yet(measured: str):
    return pytest.mark.xfail(reason=f"bar not met by the shipped model yet: {measured} (see the model card)")


@pytest.mark.parametrize(
    "attribute, bar",
    [
        ("background", 0.90),
        ("colour", 0.90),
        ("shape", 0.85),
        ("position", 0.70),
        ("two_objects_all_right", 0.50),  # 16 prompts × 2 seeds; measured 0.531, one image above the bar
    ],
)
@pytest.mark.quality
def test_text2img_quality_at_guidance_7_5(quality_at_7_5, attribute, bar):
    assert quality_at_7_5[attribute] >= bar


def test_swapping_positions_moves_the_objects_within_the_image_and_changes_the_caption():
    for scene in quality.eval_scenes(32, two_objects=True):
        swapped = quality.swapped_positions(scene)
        assert [o.position for o in swapped.objects] == [o.position for o in reversed(scene.objects)]
        assert [(o.colour, o.shape, o.size) for o in swapped.objects] == [
            (o.colour, o.shape, o.size) for o in scene.objects]
        assert world.caption(swapped) != world.caption(scene)
        for mask in world.render(swapped).masks:  # each object keeps world.MARGIN from the border
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    with pytest.raises(ValueError, match="needs two"):
        quality.swapped_positions(quality.eval_scenes(1, two_objects=False)[0])


@pytest.mark.quality
def test_the_caption_decides_which_of_two_objects_goes_where(text2img):
    """What notebook 6 shows: with the positions in the caption swapped and the same seed, the
    colours swap too (measured on these 16 scenes: 0.94 follow the words, none stay put)."""
    result = quality.arrangement_quality(text2img, quality.eval_scenes(16, two_objects=True), seeds=(0,))
    print(result)
    assert result["follows_prompt"] > 0.6 and result["stays_put"] < 0.2


@pytest.mark.quality
@not_yet("colour 0.984 at guidance 1.0, 1.000 at 7.5 on these prompts: +1.6 points, bar +20")
def test_guidance_makes_the_difference(text2img, prompts):
    """The lesson of chapter 3, measured: guidance 7.5 gets object colours right far more often than 1.0."""
    high = quality.text2img_quality(text2img, prompts[:32], seeds=(0, 1), guidance_scale=7.5)
    low = quality.text2img_quality(text2img, prompts[:32], seeds=(0, 1), guidance_scale=1.0)
    print({"7.5": high, "1.0": low})
    assert high["colour"] - low["colour"] >= 0.20


@pytest.mark.quality
def test_vae_reconstructs_held_out_renders():
    pipe = models.load_pipeline("mini", task="text2img", device="cpu")
    assert quality.vae_psnr(pipe.vae, quality.eval_scenes(128)) >= 28.0


@pytest.mark.quality
@pytest.mark.skipif(not models.mini_available("inpaint"), reason="mini-SD inpaint model not trained yet")
def test_inpaint_keeps_the_outside_and_paints_the_prompt():
    pipe = models.load_pipeline("mini", task="inpaint", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    result = quality.inpaint_quality(pipe, quality.eval_scenes(32, two_objects=False))
    print(result)
    assert result["psnr_outside_mask"] >= 30.0
    assert result["prompt_right"] >= 0.80


@pytest.mark.quality
@pytest.mark.skipif(not models.mini_available("depth2img"), reason="mini-SD depth2img model not trained yet")
def test_depth2img_follows_the_depth_map():
    pipe = models.load_pipeline("mini", task="depth2img", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    result = quality.depth2img_quality(pipe, quality.eval_scenes(32, two_objects=False))
    print(result)
    assert result["silhouette_iou"] >= 0.6


@pytest.fixture(scope="module")
def upscale_result():
    if not models.mini_available("upscale"):
        pytest.skip("mini-SD upscale model not trained yet")
    pipe = models.load_pipeline("mini", task="upscale", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    # Held-out scenes: UPSCALE_GUIDANCE was chosen on other scenes (see its comment). Measured: 30.0 dB,
    # bicubic 28.9, judged right 0.97.
    result = quality.upscale_quality(pipe, quality.eval_scenes(32, seed=quality.HELDOUT_SEED))
    print(result)
    return result


@pytest.mark.quality
def test_upscaler_beats_bicubic(upscale_result):
    """At quality.UPSCALE_GUIDANCE, on scenes no setting was chosen on."""
    assert upscale_result["psnr"] > upscale_result["psnr_bicubic"]


@pytest.mark.quality
def test_upscaler_keeps_the_content(upscale_result):
    assert upscale_result["judged_right"] >= 0.90

"""Classifier-free guidance: arithmetic, batched grids, adherence curves (sdcourse.guidance)."""

import types

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from matplotlib.figure import Figure
from PIL import Image

import sdcourse.models
from sdcourse import guidance, quality, world

PROMPT = "a red circle on a blue background"
STEPS = 4


class CountingPipe:
    """Forwards everything to a pipeline and records the batch size of every call."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.batch_sizes = []

    def __call__(self, prompt, **kwargs):
        n_prompts = 1 if isinstance(prompt, str) else len(prompt)
        self.batch_sizes.append(n_prompts * kwargs.get("num_images_per_prompt", 1))
        return self.pipe(prompt, **kwargs)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


def as_array(image):
    return np.asarray(image, dtype=np.float32) / 255


# --------------------------------------------------------------------------- arithmetic


def test_classifier_free_guidance_interpolates_and_extrapolates():
    generator = torch.Generator().manual_seed(0)
    uncond, text = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    torch.testing.assert_close(guidance.classifier_free_guidance(uncond, text, 0.0), uncond)
    torch.testing.assert_close(guidance.classifier_free_guidance(uncond, text, 1.0), text)
    torch.testing.assert_close(guidance.classifier_free_guidance(uncond, text, 0.5), (uncond + text) / 2)
    torch.testing.assert_close(guidance.classifier_free_guidance(uncond, text, 7.5), text + 6.5 * (text - uncond))


@pytest.mark.parametrize("guidance_rescale", [0.0, 0.3, 0.7, 1.0])
def test_rescale_guidance_matches_diffusers(guidance_rescale):
    generator = torch.Generator().manual_seed(1)
    noise_pred_text = torch.randn(3, 4, 8, 8, generator=generator)
    # A guided prediction with a much larger spread than the text one, as at high scales.
    noise_cfg = 6 * torch.randn(3, 4, 8, 8, generator=generator) + 0.5
    ours = guidance.rescale_guidance(noise_cfg, noise_pred_text, guidance_rescale)
    expected = rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale=guidance_rescale)
    torch.testing.assert_close(ours, expected)


def test_full_rescale_gives_each_image_the_spread_of_the_text_prediction():
    generator = torch.Generator().manual_seed(2)
    noise_pred_text = torch.randn(3, 4, 8, 8, generator=generator) * torch.tensor([1.0, 2.0, 0.5]).view(3, 1, 1, 1)
    noise_cfg = 5 * torch.randn(3, 4, 8, 8, generator=generator)
    rescaled = guidance.rescale_guidance(noise_cfg, noise_pred_text, 1.0)
    torch.testing.assert_close(rescaled.std(dim=(1, 2, 3)), noise_pred_text.std(dim=(1, 2, 3)))


# --------------------------------------------------------------------------- grids


def test_cfg_grid_batches_one_call_per_scale_and_labels_the_figure(pipe):
    counting = CountingPipe(pipe)
    scales, seeds = [1.0, 7.5, 15.0], [3, 5]
    grid = guidance.cfg_grid(counting, PROMPT, scales, seeds, num_inference_steps=STEPS, progress=False)

    assert counting.batch_sizes == [2, 2, 2]  # one call per scale, all seeds in one batch
    assert len(grid.images) == 3 and all(len(row) == 2 for row in grid.images)
    assert all(isinstance(image, Image.Image) and image.size == (64, 64) for row in grid.images for image in row)
    assert grid.scales == scales and grid.seeds == seeds

    assert isinstance(grid.figure, Figure)
    axes = grid.figure.axes
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes[:2]] == ["seed 3", "seed 5"]
    assert [axes[r * 2].get_ylabel() for r in range(3)] == ["scale 1", "scale 7.5", "scale 15"]


def test_cfg_grid_image_equals_an_unbatched_pipeline_call(pipe):
    scales, seeds = [1.0, 7.5], [3, 5, 11]
    grid = guidance.cfg_grid(pipe, PROMPT, scales, seeds, num_inference_steps=STEPS, progress=False)
    for i, scale in enumerate(scales):
        for j, seed in enumerate(seeds):
            alone = pipe(
                PROMPT,
                guidance_scale=scale,
                num_inference_steps=STEPS,
                generator=torch.Generator("cpu").manual_seed(seed),
            ).images[0]
            # Batching may change float rounding inside the UNet; after 8-bit quantisation
            # that is at most one grey level (measured: float images differ by ~1e-6).
            assert np.abs(as_array(grid.images[i][j]) - as_array(alone)).max() <= 1 / 255 + 1e-6
    # The grid is not degenerate: seeds and scales change the picture.
    assert np.abs(as_array(grid.images[1][0]) - as_array(grid.images[1][1])).max() > 0.1
    assert np.abs(as_array(grid.images[0][0]) - as_array(grid.images[1][0])).max() > 0.1


def test_cfg_grid_passes_negative_prompt_and_size(pipe):
    kwargs = dict(num_inference_steps=STEPS, progress=False)
    plain = guidance.cfg_grid(pipe, PROMPT, [7.5], [0], **kwargs)
    negative = guidance.cfg_grid(pipe, PROMPT, [7.5], [0], negative_prompt="a green square", **kwargs)
    # the negative prompt reached the pipeline (tiny random weights: its effect is small, not zero)
    assert np.abs(as_array(plain.images[0][0]) - as_array(negative.images[0][0])).max() > 0.02
    small = guidance.cfg_grid(pipe, PROMPT, [7.5], [0], height=32, width=48, **kwargs)
    assert small.images[0][0].size == (48, 32)


def test_pipeline_scales_zero_and_one_give_the_same_image(pipe):
    """diffusers switches guidance off for scales ≤ 1 (what cfg_grid's docstring warns about)."""
    grid = guidance.cfg_grid(pipe, PROMPT, [0.0, 1.0], [2], num_inference_steps=STEPS, progress=False)
    assert np.array_equal(as_array(grid.images[0][0]), as_array(grid.images[1][0]))


@pytest.mark.parametrize(
    "scales, seeds, kwargs, error, message",
    [
        ([], [0], {}, ValueError, "scales is empty"),
        ([1.0], [], {}, ValueError, "seeds is empty"),
        ([7.5, -1.0], [0], {}, ValueError, r"scales\[1\]=-1.0 is negative"),
        ([7.5], [0.5], {}, TypeError, r"seeds\[0\] must be a whole number"),
        ([7.5], [0], {"height": 70}, ValueError, "height=70 must be a positive multiple of 8"),
    ],
)
def test_cfg_grid_rejects_bad_input(pipe, scales, seeds, kwargs, error, message):
    counting = CountingPipe(pipe)
    with pytest.raises(error, match=message):
        guidance.cfg_grid(counting, PROMPT, scales, seeds, progress=False, **kwargs)
    assert counting.batch_sizes == []  # checked before any rendering


# --------------------------------------------------------------------------- adherence


def test_adherence_curve_renders_every_prompt_and_seed_per_scale(pipe):
    prompts = [world.caption(scene) for scene in world.sample_scenes(3, seed=12345)]
    seen = []

    def judge_fn(images, judged_prompts):
        seen.append((list(images), list(judged_prompts)))
        return {"n": len(images), "colour": 0.5}

    counting = CountingPipe(pipe)
    curve = quality.adherence_curve(
        counting, prompts, [1.0, 7.5], [0, 1], judge_fn=judge_fn, steps=STEPS, batch_size=4, progress=False
    )
    assert list(curve) == [1.0, 7.5]
    assert counting.batch_sizes == [4, 2, 4, 2]  # 6 images per scale in batches of at most 4
    for images, judged_prompts in seen:
        assert judged_prompts == [prompts[0], prompts[0], prompts[1], prompts[1], prompts[2], prompts[2]]
        assert len(images) == 6 and all(isinstance(image, Image.Image) for image in images)
    # Same prompt, same seed, same scale: the image of a batch equals the one rendered alone.
    alone = pipe(prompts[1], generator=torch.Generator("cpu").manual_seed(1), num_inference_steps=STEPS).images[0]
    assert np.abs(as_array(seen[1][0][3]) - as_array(alone)).max() <= 1 / 255 + 1e-6


def test_adherence_curve_with_the_judge_and_its_plot(pipe):
    prompts = [world.caption(scene) for scene in world.sample_scenes(4, seed=12345)]
    curve = quality.adherence_curve(pipe, prompts, [1.0, 7.5], [0], steps=2, progress=False)
    for scale in (1.0, 7.5):
        summary = curve[scale]
        assert summary["n"] == 4
        for attribute in ("background", "colour", "shape", "accuracy"):
            assert 0.0 <= summary[attribute] <= 1.0

    figure = quality.plot_adherence(curve)
    assert isinstance(figure, Figure)
    ax = figure.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert {"background", "colour", "shape", "accuracy"} <= set(labels)
    assert "n" not in labels
    colour_line = ax.get_lines()[labels.index("colour")]
    assert list(colour_line.get_xdata()) == [1.0, 7.5]
    assert list(colour_line.get_ydata()) == [100 * curve[1.0]["colour"], 100 * curve[7.5]["colour"]]


def test_adherence_curve_and_plot_reject_bad_input(pipe):
    with pytest.raises(ValueError, match="prompts is empty"):
        quality.adherence_curve(pipe, [], [1.0], [0], progress=False)
    with pytest.raises(ValueError, match=r"scales\[0\]=-2.0 is negative"):
        quality.adherence_curve(pipe, [PROMPT], [-2], [0], progress=False)
    with pytest.raises(ValueError, match="curve is empty"):
        quality.plot_adherence({})


@pytest.mark.parametrize("side, expected", [(64, 32), (128, 32), (512, 4), (768, 1)])
def test_images_per_batch_by_image_size_so_512_px_fits_a_t4(side, expected):
    """SD 1.5 at 512 px peaks at 4.0 GiB with four images per call: 32 there would not fit a T4."""
    fake = types.SimpleNamespace(unet=types.SimpleNamespace(config=types.SimpleNamespace(sample_size=side // 8)),
                                 vae_scale_factor=8)
    assert sdcourse.models.images_per_batch(fake) == expected


def test_adherence_curve_batches_by_image_size_by_default(pipe, monkeypatch):
    counting = CountingPipe(pipe)
    monkeypatch.setattr(quality, "images_per_batch", lambda p: 3)
    quality.adherence_curve(counting, ["a red circle"] * 4, [7.5], [0, 1], judge_fn=lambda images, prompts: {},
                             steps=1, progress=False)
    assert counting.batch_sizes == [3, 3, 2]

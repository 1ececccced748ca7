"""Extra conditioning helpers (sdcourse.conditioning) on the tiny pipelines; real behaviour on mini-SD."""

import numpy as np
import pytest
import torch
from PIL import Image

from sdcourse import conditioning, judge, models, quality, world
from sdcourse.testing import tiny_pipeline

PROMPT = "a red circle on a blue background"
STEPS = 10


def quiet(task):
    pipe = tiny_pipeline(task)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def img2img_pipe():
    return quiet("img2img")


@pytest.fixture(scope="module")
def inpaint_pipe():
    return quiet("inpaint")


@pytest.fixture(scope="module")
def depth_pipe():
    return quiet("depth2img")


@pytest.fixture(scope="module")
def upscale_pipe():
    return quiet("upscale")


@pytest.fixture(scope="module")
def render():
    """A two-object scene: image, masks, depth, low-res view."""
    scene = next(s for s in world.sample_scenes(20, seed=1) if len(s.objects) == 2)
    return world.render(scene)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def distance(a, b) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


# --------------------------------------------------------------------------- img2img strength sweep


def test_strength_sets_the_number_of_denoising_steps(img2img_pipe, render):
    runs = []  # one list of step indices per pipeline call

    def count_steps(pipe, step_index, timestep, callback_kwargs):
        if step_index == 0:
            runs.append([])
        runs[-1].append(step_index)
        return callback_kwargs

    result = conditioning.strength_sweep(
        img2img_pipe, render.image, PROMPT, num_inference_steps=STEPS, callback_on_step_end=count_steps,
        progress=False,
    )
    counted = [len(run) for run in runs]
    assert counted == [2, 4, 6, 8, 10]  # int(10 · strength) for 0.2 … 1.0
    assert result.steps == counted
    assert result.strengths == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert len(result.images) == 5 and all(image.size == (64, 64) for image in result.images)
    titles = [ax.get_title() for ax in result.figure.axes]
    assert titles[0] == "input"
    assert "strength 0.6" in titles[3] and "6 of 10 steps" in titles[3]


def test_steps_follow_diffusers_rounding():
    assert conditioning.denoising_steps(25, 0.6) == 15
    assert conditioning.denoising_steps(25, 0.3) == 7  # int(7.5): rounded down
    assert conditioning.denoising_steps(25, 1.0) == 25
    assert conditioning.denoising_steps(25, 0.0) == 0


def test_sweep_is_deterministic_and_the_seed_matters(img2img_pipe, render):
    def run(seed):
        return conditioning.strength_sweep(
            img2img_pipe, render.image, PROMPT, strengths=[0.6], seed=seed, num_inference_steps=STEPS, progress=False
        ).images[0]

    first, again, other = run(0), run(0), run(1)
    assert np.array_equal(pixels(first), pixels(again))
    assert distance(first, other) > 1.0


def test_sweep_image_is_the_pipeline_image_at_that_strength(img2img_pipe, render):
    result = conditioning.strength_sweep(
        img2img_pipe, render.image, PROMPT, strengths=[0.4, 0.8], num_inference_steps=STEPS, progress=False
    )
    direct = img2img_pipe(
        PROMPT, image=Image.fromarray(render.image), strength=0.8, num_inference_steps=STEPS,
        generator=torch.Generator("cpu").manual_seed(0),
    ).images[0]
    assert np.array_equal(pixels(result.images[1]), pixels(direct))
    assert distance(result.images[0], result.images[1]) > 1.0  # strength reached the pipeline


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_strength_out_of_range_is_refused(img2img_pipe, render, strength):
    with pytest.raises(ValueError, match=r"strength=.* must be in \[0, 1\]"):
        conditioning.strength_sweep(img2img_pipe, render.image, PROMPT, strengths=[0.5, strength], progress=False)


def test_strength_too_small_for_one_step_is_refused(img2img_pipe, render):
    with pytest.raises(ValueError, match=r"0 denoising steps.*1/10"):
        conditioning.strength_sweep(
            img2img_pipe, render.image, PROMPT, strengths=[0.05], num_inference_steps=10, progress=False
        )


def test_sweep_refuses_sizes_not_divisible_by_the_vae_factor(img2img_pipe):
    image = Image.new("RGB", (66, 64), "red")
    with pytest.raises(ValueError, match=r"66×64.*multiples of 4"):
        conditioning.strength_sweep(img2img_pipe, image, PROMPT, progress=False)


def test_sweep_needs_an_img2img_pipeline(render):
    pipe = quiet("text2img")
    with pytest.raises(TypeError, match="takes no `strength`.*task='img2img'"):
        conditioning.strength_sweep(pipe, render.image, PROMPT, progress=False)


def test_empty_strengths_are_refused(img2img_pipe, render):
    with pytest.raises(ValueError, match="strengths is empty"):
        conditioning.strength_sweep(img2img_pipe, render.image, PROMPT, strengths=[], progress=False)


# --------------------------------------------------------------------------- inpainting


def test_mask_formats_all_become_the_same_white_is_repaint_image():
    region = np.zeros((64, 64), dtype=bool)
    region[16:40, 8:30] = True
    expected = region.astype(np.uint8) * 255
    pil = Image.fromarray(expected)
    for mask in (
        region,
        region.astype(np.uint8),  # 0/1
        expected,  # 0/255
        region.astype(np.float32),
        torch.from_numpy(region),
        region[None],  # (1, H, W)
        region[..., None],  # (H, W, 1)
        pil,
        pil.convert("RGB"),
    ):
        converted = conditioning.as_mask_image(mask)
        assert converted.mode == "L"
        assert np.array_equal(np.asarray(converted), expected), type(mask)


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.zeros((64, 64, 3), dtype=np.uint8), r"2-D \(H, W\).*convert\('L'\)"),
        (np.full((64, 64), 1.5, dtype=np.float32), r"must be in \[0, 1\]"),
        (np.full((64, 64), 300, dtype=np.int64), "0/1 or 0–255"),
        ([[0, 1], [1, 0]], "PIL image, a numpy array or a torch tensor"),
    ],
)
def test_bad_masks_are_refused(mask, message):
    with pytest.raises((ValueError, TypeError), match=message):
        conditioning.as_mask_image(mask)


def test_mask_from_objects(render):
    exact = conditioning.mask_from_objects(render, 0, grow=0)
    assert np.array_equal(exact, render.masks[0])
    grown = conditioning.mask_from_objects(render, 0, grow=3)
    assert grown.dtype == bool and grown.shape == (64, 64)
    assert grown[exact].all() and grown.sum() > exact.sum()  # contains the object, and more
    both = conditioning.mask_from_objects(render, [0, 1], grow=0)
    assert np.array_equal(both, render.masks[0] | render.masks[1])
    with pytest.raises(ValueError, match="has 2 object"):
        conditioning.mask_from_objects(render, 2)
    with pytest.raises(ValueError, match="grow"):
        conditioning.mask_from_objects(render, 0, grow=-1)


def test_inpaint_is_deterministic_and_follows_the_mask(inpaint_pipe, render):
    mask = conditioning.mask_from_objects(render, 0)
    kwargs = dict(num_inference_steps=STEPS, progress=False)
    first = conditioning.inpaint(inpaint_pipe, render.image, mask, PROMPT, **kwargs)
    white_on_black = Image.fromarray(mask.astype(np.uint8) * 255)
    again = conditioning.inpaint(inpaint_pipe, render.pil(), white_on_black, PROMPT, **kwargs)
    other_mask = conditioning.inpaint(inpaint_pipe, render.image, ~mask, PROMPT, **kwargs)
    assert len(first) == 1 and first[0].size == (64, 64)
    assert np.array_equal(pixels(first[0]), pixels(again[0]))  # bool mask == its white-on-black image
    assert distance(first[0], other_mask[0]) > 1.0  # the mask reached the UNet


def test_inpaint_makes_several_images(inpaint_pipe, render):
    mask = conditioning.mask_from_objects(render, 0)
    images = conditioning.inpaint(
        inpaint_pipe, render.image, mask, PROMPT, num_images_per_prompt=2, num_inference_steps=3, progress=False
    )
    assert len(images) == 2 and distance(images[0], images[1]) > 1.0


def test_inpaint_refuses_a_mask_of_another_size(inpaint_pipe, render):
    with pytest.raises(ValueError, match=r"mask is 32×32 but image is 64×64"):
        conditioning.inpaint(inpaint_pipe, render.image, np.ones((32, 32), dtype=bool), PROMPT, progress=False)


def test_inpaint_refuses_sizes_not_divisible_by_the_vae_factor(inpaint_pipe):
    image = Image.new("RGB", (64, 70), "blue")
    with pytest.raises(ValueError, match=r"64×70.*multiples of 4"):
        conditioning.inpaint(inpaint_pipe, image, np.ones((70, 64), dtype=bool), PROMPT, progress=False)


def test_inpaint_needs_an_inpainting_pipeline(img2img_pipe, render):
    with pytest.raises(TypeError, match="takes no `mask_image`"):
        conditioning.inpaint(img2img_pipe, render.image, render.masks[0], PROMPT, progress=False)


# --------------------------------------------------------------------------- depth-to-image


def test_depth_map_formats_give_the_same_tensor(render):
    depth = (render.depth * 255).round().astype(np.uint8)
    expected = torch.from_numpy(depth.astype(np.float32))[None]
    for depth_map in (depth, torch.from_numpy(depth), depth[None], Image.fromarray(depth)):
        tensor = conditioning.as_depth_map(depth_map)
        assert tensor.shape == (1, 64, 64) and tensor.dtype == torch.float32
        assert torch.equal(tensor, expected), type(depth_map)


@pytest.mark.parametrize(
    "depth_map, message",
    [
        (np.zeros((64, 64, 3), dtype=np.float32) + np.arange(3), r"\(H, W\) or \(1, H, W\), got shape \(64, 64, 3\)"),
        (torch.rand(2, 64, 64), r"got shape \(2, 64, 64\)"),
        (Image.new("RGB", (64, 64)), r"mode 'RGB'.*convert\('L'\)"),
        (np.full((64, 64), 0.5, dtype=np.float32), "constant"),
        (np.array([[0.0, np.nan], [1.0, 0.5]]), "NaN"),
    ],
)
def test_bad_depth_maps_are_refused(depth_map, message):
    with pytest.raises(ValueError, match=message):
        conditioning.as_depth_map(depth_map)


def test_depth_to_image_follows_the_depth_map(depth_pipe, render):
    kwargs = dict(num_inference_steps=STEPS, progress=False)
    first = conditioning.depth_to_image(depth_pipe, render.image, PROMPT, render.depth, **kwargs)[0]
    as_tensor = torch.from_numpy(render.depth)[None]
    again = conditioning.depth_to_image(depth_pipe, render.image, PROMPT, as_tensor, **kwargs)[0]
    flipped = conditioning.depth_to_image(depth_pipe, render.image, PROMPT, render.depth[:, ::-1].copy(), **kwargs)[0]
    assert first.size == (64, 64)
    assert np.array_equal(pixels(first), pixels(again))
    assert distance(first, flipped) > 1.0  # the depth map reached the UNet


def test_depth_to_image_without_a_start_image(depth_pipe, render):
    images = conditioning.depth_to_image(depth_pipe, None, PROMPT, render.depth, num_inference_steps=3, progress=False)
    assert images[0].size == (64, 64)


def test_depth_to_image_refuses_another_aspect_ratio_and_bad_sizes(depth_pipe, render):
    with pytest.raises(ValueError, match=r"depth_map is 32×64 but image is 64×64.*aspect ratio"):
        conditioning.depth_to_image(depth_pipe, render.image, PROMPT, render.depth[:, :32], progress=False)
    with pytest.raises(ValueError, match=r"62×62.*multiples of 4"):
        conditioning.depth_to_image(depth_pipe, render.image[:62, :62], PROMPT, render.depth[:62, :62], progress=False)
    with pytest.raises(ValueError, match="strength"):
        conditioning.depth_to_image(depth_pipe, render.image, PROMPT, render.depth, strength=2.0, progress=False)


def test_depth_to_image_needs_a_depth_pipeline(img2img_pipe, render):
    with pytest.raises(TypeError, match="takes no `depth_map`"):
        conditioning.depth_to_image(img2img_pipe, render.image, PROMPT, render.depth, progress=False)


# --------------------------------------------------------------------------- x4 upscaling


def test_upscale_makes_4x_and_follows_noise_level(upscale_pipe, render):
    kwargs = dict(num_inference_steps=STEPS, progress=False)
    first = conditioning.upscale(upscale_pipe, render.low_res, PROMPT, **kwargs)[0]
    again = conditioning.upscale(upscale_pipe, Image.fromarray(render.low_res), PROMPT, **kwargs)[0]
    noisier = conditioning.upscale(upscale_pipe, render.low_res, PROMPT, noise_level=300, **kwargs)[0]
    assert render.low_res.shape[:2] == (16, 16) and first.size == (64, 64)
    assert np.array_equal(pixels(first), pixels(again))
    assert distance(first, noisier) > 1.0


@pytest.mark.parametrize("noise_level, error", [(-1, ValueError), (351, ValueError), (20.5, TypeError)])
def test_upscale_refuses_bad_noise_levels(upscale_pipe, render, noise_level, error):
    with pytest.raises(error, match="noise_level"):
        conditioning.upscale(upscale_pipe, render.low_res, PROMPT, noise_level=noise_level, progress=False)


def test_upscale_refuses_sizes_the_pipeline_would_crop(upscale_pipe, render):
    # The pipeline itself would silently crop 15×15 to 12×12 and return 48×48.
    with pytest.raises(ValueError, match=r"low_res_image is 15×15.*multiples of 4"):
        conditioning.upscale(upscale_pipe, render.low_res[:15, :15], PROMPT, progress=False)


def test_compare_upscale_reports_psnr_against_the_truth(render):
    low = Image.fromarray(render.low_res)
    upscaled = low.resize((64, 64), Image.NEAREST)
    figure = conditioning.compare_upscale(low, upscaled, truth=render.image)
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[0] == "input 16×16" and titles[3] == "truth"
    bicubic_db = conditioning.image_psnr(low.resize((64, 64), Image.BICUBIC), render.image)
    nearest_db = conditioning.image_psnr(upscaled, render.image)
    assert f"{bicubic_db:.1f} dB" in titles[1] and f"{nearest_db:.1f} dB" in titles[2]
    assert nearest_db != pytest.approx(bicubic_db)

    without_truth = conditioning.compare_upscale(low, upscaled)
    assert len(without_truth.axes) == 3 and "dB" not in without_truth.axes[1].get_title()
    with pytest.raises(ValueError, match="same size"):
        conditioning.compare_upscale(low, upscaled, truth=render.low_res)


def test_compare_to_truth(render):
    noisy = np.clip(render.image.astype(int) + 40, 0, 255).astype(np.uint8)
    figure = conditioning.compare_to_truth([render.image, noisy], [render.image, render.image], titles=["same", "off"])
    titles = [ax.get_title() for ax in figure.axes[:2]]
    assert titles[0] == "same\nidentical"  # PSNR is infinite
    assert titles[1] == f"off\n{quality.psnr(noisy, render.image):.1f} dB"
    with pytest.raises(ValueError, match="one truth per image"):
        conditioning.compare_to_truth([render.image], [])


# --------------------------------------------------------------------------- real behaviour on mini-SD

needs_mini = pytest.mark.skipif(not models.mini_available(), reason="mini-SD not trained yet")


@pytest.fixture(scope="module")
def mini_img2img():
    pipe = models.load_pipeline("mini", task="img2img")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.quality
@needs_mini
def test_low_strength_keeps_the_scene_and_high_strength_forgets_it(mini_img2img):
    scenes = quality.eval_scenes(16)
    strengths = (0.3, 0.6, 1.0)
    kept, distances = [], {strength: [] for strength in strengths}
    for i, scene in enumerate(scenes):
        render = world.render(scene)
        prompt = world.caption(scene)
        result = conditioning.strength_sweep(
            mini_img2img, render.image, prompt, strengths=strengths, seed=i, num_inference_steps=20, progress=False
        )
        verdict_in = judge.judge(render.image, prompt).correct
        verdict_out = judge.judge(result.images[0], prompt).correct
        kept.append(verdict_in == verdict_out)
        for strength, image in zip(strengths, result.images):
            distances[strength].append(distance(image, render.pil()))
    assert np.mean(kept) >= 0.8, f"strength 0.3 kept the judge's verdict in only {np.mean(kept):.0%} of scenes"
    mean_distance = [np.mean(distances[strength]) for strength in strengths]
    assert mean_distance[0] < mean_distance[1] < mean_distance[2], mean_distance


# --------------------------------------------------------------------------- photographs (real SD)


@pytest.mark.parametrize("name", list(conditioning.PHOTOS))
def test_sample_photos_are_square_at_the_asked_size(name):
    photo = conditioning.sample_photo(name, 96)
    assert photo.size == (96, 96) and photo.mode == "RGB"
    assert np.asarray(photo).std() > 20  # a photograph, not a blank


def test_an_unknown_photo_is_refused_with_the_names():
    with pytest.raises(ValueError, match="chelsea"):
        conditioning.sample_photo("lena")


def test_estimate_depth_runs_the_pipelines_own_depth_estimator():
    """Without depth_map= the depth model estimates depth from the photo (SD 2 depth: DPT)."""
    from sdcourse import load_pipeline

    pipe = load_pipeline("tiny-random-sd2", task="depth2img", device="cpu")
    depth = conditioning.estimate_depth(pipe, conditioning.sample_photo("chelsea", 128))
    assert depth.ndim == 2 and depth.min() == 0 and depth.max() == pytest.approx(1)
    with pytest.raises(ValueError, match="no depth estimator"):
        conditioning.estimate_depth(quiet("depth2img"), conditioning.sample_photo("chelsea", 64))

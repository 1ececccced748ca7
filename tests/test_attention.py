"""Cross-attention recording (sdcourse.attention): exact outputs, running sums, filters, maps, restoring."""

import functools
import gc

import numpy as np
import pytest
import torch
from PIL import Image

from sdcourse import models, world
from sdcourse.attention import RecordingProcessor, cross_attention_layers, normalise, overlay, trace
from sdcourse.testing import real_pipeline, tiny_pipeline, tiny_task_inputs

PROMPT = "a red zigzag on the left and a yellow square on the right"
# Tiny UNet: three cross-attention layers at 16×16 (64×64 images), one at 8×8 (mid block).
TINY_GRIDS = {(16, 16): 3, (8, 8): 1}


def task_inputs(task: str) -> dict:
    return tiny_task_inputs(task, strength=0.8)


def generate(pipe, prompt=PROMPT, steps=3, seed=0, task="text2img", **kwargs):
    """Run `pipe` with classifier-free guidance; the images as a float array."""
    inputs = {"guidance_scale": 7.5, **task_inputs(task), **kwargs}
    return pipe(prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed),
                output_type="np", **inputs).images


def same_processors(before: dict, after: dict) -> bool:
    return before.keys() == after.keys() and all(after[name] is before[name] for name in before)


# --- recording does not change the image, on every task ------------------------------------


@pytest.mark.parametrize("task", ["text2img", "img2img", "inpaint", "depth2img"])
def test_traced_run_gives_the_same_image_and_maps_for_every_task(task):
    pipe = tiny_pipeline(task)
    pipe.set_progress_bar_config(disable=True)
    plain = generate(pipe, task=task)
    with trace(pipe) as tc:
        traced = generate(pipe, task=task)
    assert np.abs(traced - plain).max() < 1e-5
    assert set(tc.sums) == set(TINY_GRIDS)
    heatmap = tc.word_heatmap("zigzag")
    assert heatmap.shape == (64, 64) and heatmap.dtype == np.float32
    assert heatmap.min() == 0 and heatmap.max() == pytest.approx(1)


def test_only_the_recorded_cross_attention_layers_get_the_recorder(pipe):
    before = pipe.unet.attn_processors
    layers = cross_attention_layers(pipe.unet)
    assert all(name.endswith("attn2") for name in layers) and len(layers) == sum(TINY_GRIDS.values())
    chosen = next(iter(layers))
    with trace(pipe, layers=[chosen]):
        inside = pipe.unet.attn_processors
        for name, processor in inside.items():
            if name == f"{chosen}.processor":
                assert isinstance(processor, RecordingProcessor)
                assert processor.original is before[name]
            else:
                assert processor is before[name]  # attn1 and the other attn2 keep SDPA
    assert same_processors(before, pipe.unet.attn_processors)


# --- restoring ----------------------------------------------------------------------------


class Boom(Exception):
    pass


def stop_at_step_one(pipe, step, timestep, callback_kwargs):
    raise Boom("stopped inside the pipeline")


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_processors_restored_after_an_error_in_the_block(pipe, error):
    before = pipe.unet.attn_processors
    with pytest.raises(error):
        with trace(pipe):
            generate(pipe, steps=2)
            raise error()
    assert same_processors(before, pipe.unet.attn_processors)


def test_processors_and_hooks_removed_after_an_error_inside_the_pipeline(pipe):
    before = pipe.unet.attn_processors
    with pytest.raises(Boom):
        with trace(pipe) as tc:
            generate(pipe, steps=3, callback_on_step_end=stop_at_step_one)
    assert same_processors(before, pipe.unet.attn_processors)
    recorded = dict(tc.counts)
    generate(pipe, steps=3)  # no hook left: the trace no longer changes
    assert tc.counts == recorded and len(tc.timesteps_recorded) == 1


def test_bad_options_raise_before_anything_is_installed(pipe):
    before = pipe.unet.attn_processors
    with pytest.raises(ValueError, match="heads"):
        with trace(pipe, heads=[4]):  # the tiny UNet has 4 heads: 0..3
            pass
    assert same_processors(before, pipe.unet.attn_processors)


# --- what is recorded ----------------------------------------------------------------------


@pytest.mark.parametrize("steps", [2, 6])
def test_running_sums_do_not_grow_with_steps(pipe, steps):
    with trace(pipe) as tc:
        generate(pipe, steps=steps)
    assert {grid: tuple(sums.shape) for grid, sums in tc.sums.items()} == {
        (16, 16): (1, 256, 77), (8, 8): (1, 64, 77)
    }
    assert tc.counts == {grid: layers * steps for grid, layers in TINY_GRIDS.items()}
    for grid, sums in tc.sums.items():
        # Each pixel's attention over the 77 tokens is a probability distribution.
        assert torch.allclose(sums.sum(dim=-1), torch.full_like(sums[..., 0], tc.counts[grid]), atol=1e-4)


def test_only_the_conditional_half_of_the_guidance_batch_is_recorded(pipe):
    """First step, same latents: guided (batch [uncond, cond]) == unguided (batch [cond])."""
    first_t = 901  # DDIM, 10 steps, steps_offset 1
    with trace(pipe, timesteps=(first_t, first_t)) as guided:
        generate(pipe, steps=10, guidance_scale=7.5)
    with trace(pipe, timesteps=(first_t, first_t)) as unguided:
        generate(pipe, steps=10, guidance_scale=1.0)
    assert guided.timesteps_recorded == unguided.timesteps_recorded == [first_t]
    with trace(pipe, timesteps=(first_t, first_t)) as uncond:
        generate(pipe, prompt="", steps=10, guidance_scale=1.0)
    for grid in TINY_GRIDS:
        assert guided.sums[grid].shape[0] == 1
        assert torch.allclose(guided.sums[grid], unguided.sums[grid], atol=1e-5)
        assert not torch.allclose(guided.sums[grid], uncond.sums[grid], atol=1e-3)


def test_heads_are_averaged(pipe):
    with trace(pipe) as all_heads:
        generate(pipe, steps=2)
    per_head = []
    for head in range(4):
        with trace(pipe, heads=[head]) as one:
            generate(pipe, steps=2)
        per_head.append(one.sums[(16, 16)])
    assert not torch.allclose(per_head[0], per_head[1], atol=1e-4)
    assert torch.allclose(torch.stack(per_head).mean(dim=0), all_heads.sums[(16, 16)], atol=1e-5)


@pytest.mark.parametrize(
    "resolutions, grids", [({16}, {(16, 16)}), ({8}, {(8, 8)}), (8, {(8, 8)}), (None, set(TINY_GRIDS))]
)
def test_resolutions_filter(pipe, resolutions, grids):
    with trace(pipe, resolutions=resolutions) as tc:
        generate(pipe, steps=2)
    assert set(tc.sums) == grids
    assert tc.word_heatmap("square").shape == (64, 64)


def test_timesteps_filter_keeps_the_early_steps(pipe):
    with trace(pipe, timesteps=(999, 500)) as tc:  # either order
        generate(pipe, steps=10)
    assert tc.timesteps_recorded == [901, 801, 701, 601, 501]
    assert tc.counts[(16, 16)] == 3 * 5


def test_layers_by_name_and_by_filter(pipe):
    names = list(cross_attention_layers(pipe.unet))
    up_layers = [name for name in names if name.startswith("up_blocks")]
    with trace(pipe, layers=lambda name: name.startswith("up_blocks")) as by_filter:
        generate(pipe, steps=2)
    with trace(pipe, layers=[f"{name}.processor" for name in up_layers]) as by_name:
        generate(pipe, steps=2)
    assert len(up_layers) == 2
    assert by_filter.counts == by_name.counts == {(16, 16): 2 * 2}
    assert torch.equal(by_filter.sums[(16, 16)], by_name.sums[(16, 16)])


def test_bad_layer_names_are_named_in_the_error(pipe):
    with pytest.raises(ValueError, match=r"up_blocks\.9.*choose from.*attn2"):
        with trace(pipe, layers=["up_blocks.9.attn2"]):
            pass
    self_attention = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    with pytest.raises(ValueError, match="not cross-attention"):
        with trace(pipe, layers=[self_attention]):
            pass
    with pytest.raises(ValueError, match="selects no layer"):
        with trace(pipe, layers=lambda name: False):
            pass


@pytest.mark.parametrize(
    "options, match",
    [
        ({"heads": [-1]}, "heads"),
        ({"heads": []}, "heads"),
        ({"resolutions": {0}}, "resolutions"),
        ({"timesteps": (1, 2, 3)}, "timesteps"),
    ],
)
def test_bad_options(pipe, options, match):
    with pytest.raises(ValueError, match=match):
        with trace(pipe, **options):
            pass


def test_pipeline_without_guidance_flag_is_refused():
    upscaler = tiny_pipeline("upscale")
    with pytest.raises(TypeError, match="do_classifier_free_guidance"):
        with trace(upscaler):
            pass


# --- tokens, words and heat maps ------------------------------------------------------------


def test_tokens_words_and_start_end_maps(pipe):
    with trace(pipe) as tc:
        generate(pipe)
    pieces = tc.tokens()
    assert pieces[:5] == ["<|startoftext|>", "a</w>", "red</w>", "zig", "zag</w>"]
    assert pieces[-1] == "<|endoftext|>"
    assert tc.words() == PROMPT.split()
    maps = tc.token_heatmaps(size=32)
    assert [piece for piece, _ in maps] == pieces
    assert all(m.shape == (32, 32) and m.min() >= 0 and m.max() <= 1 for _, m in maps)
    np.testing.assert_allclose(tc.word_heatmap("<|startoftext|>", size=32), maps[0][1])
    np.testing.assert_allclose(tc.word_heatmap("<|endoftext|>", size=32), maps[-1][1])


def test_word_heatmap_merges_sub_word_tokens_and_phrases(pipe):
    with trace(pipe) as tc:
        generate(pipe)
    raw = tc.token_maps()  # (tokens, 64, 64), not normalised
    assert raw.shape == (len(tc.tokens()), 64, 64)
    np.testing.assert_allclose(tc.word_heatmap("zigzag"), normalise(raw[3:5].mean(dim=0)), atol=1e-6)
    np.testing.assert_allclose(tc.word_heatmap("Red Zigzag"), normalise(raw[2:5].mean(dim=0)), atol=1e-6)
    assert not np.allclose(tc.word_heatmap("zigzag"), tc.token_heatmaps()[3][1], atol=1e-3)
    # "a" occurs twice: both occurrences count.
    np.testing.assert_allclose(tc.word_heatmap("a"), normalise(raw[[1, 9]].mean(dim=0)), atol=1e-6)


def test_unknown_word_names_the_word_and_the_prompt_words(pipe):
    with trace(pipe) as tc:
        generate(pipe)
    with pytest.raises(ValueError, match=r"word='circle'.*'zigzag', 'on'"):
        tc.word_heatmap("circle")
    with pytest.raises(ValueError, match="word='zig'"):  # a piece of a word is not a word
        tc.word_heatmap("zig")


def test_long_prompt_truncated_word_raises(pipe):
    long_prompt = "a red circle " + "and a blue square " * 20 + "and a green triangle"
    with trace(pipe) as tc:
        generate(pipe, prompt=long_prompt, steps=2)
    assert len(tc.tokens()) == 77
    assert tc.word_heatmap("circle").shape == (64, 64)
    with pytest.raises(ValueError, match="truncated"):
        tc.word_heatmap("triangle")


def test_batched_prompts_with_several_images_each(pipe):
    prompts = [PROMPT, "a small green circle at the top, on a gray background"]
    latents = torch.randn(4, 4, 16, 16, generator=torch.Generator("cpu").manual_seed(1))
    with trace(pipe) as batch:
        pipe(prompts, num_images_per_prompt=2, latents=latents, num_inference_steps=2, output_type="np")
    with trace(pipe) as single:
        pipe(prompts[1], num_images_per_prompt=2, latents=latents[2:], num_inference_steps=2, output_type="np")
    assert batch.sums[(16, 16)].shape[0] == 4
    assert batch.words(1) == single.words(0) == ["a", "small", "green", "circle", "at", "the", "top", ",", "on",
                                                  "a", "gray", "background"]
    np.testing.assert_allclose(batch.word_heatmap("circle", prompt_index=1), single.word_heatmap("circle"), atol=1e-4)
    assert not np.allclose(batch.word_heatmap("a", prompt_index=0), batch.word_heatmap("a", prompt_index=1), atol=1e-3)
    with pytest.raises(ValueError, match="word='circle' is not in prompt 0"):
        batch.word_heatmap("circle", prompt_index=0)
    with pytest.raises(ValueError, match="prompt_index=2"):
        batch.word_heatmap("circle", prompt_index=2)


def test_runs_of_the_same_prompt_accumulate_another_prompt_is_refused(pipe):
    before = pipe.unet.attn_processors
    with trace(pipe) as tc:
        generate(pipe, steps=2, seed=0)
        generate(pipe, steps=2, seed=1)
        assert tc.counts[(8, 8)] == 4
        with pytest.raises(ValueError, match="another prompt"):
            generate(pipe, prompt="a blue circle", steps=2)
    assert same_processors(before, pipe.unet.attn_processors)


def test_prompt_embeds_need_the_prompt(pipe):
    embeds, negative = pipe.encode_prompt(PROMPT, "cpu", 1, True)
    with trace(pipe, prompt=PROMPT) as tc:
        pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=2, output_type="np")
    assert tc.words() == PROMPT.split() and tc.word_heatmap("square").shape == (64, 64)
    with trace(pipe) as tc:
        pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=2, output_type="np")
    with pytest.raises(ValueError, match="prompt="):
        tc.word_heatmap("square")


def test_nothing_recorded_is_an_error(pipe):
    with trace(pipe, timesteps=(0, 0)) as tc:
        generate(pipe, steps=3)
    with pytest.raises(ValueError, match="Nothing was recorded"):
        tc.word_heatmap("square")


def test_sizes_default_to_the_image_and_follow_non_square_images(pipe):
    with trace(pipe) as tc:
        generate(pipe, height=64, width=96)
    assert set(tc.sums) == {(16, 24), (8, 12)}
    assert tc.word_heatmap("square").shape == (64, 96)
    assert tc.word_heatmap("square", size=32).shape == (32, 32)
    assert tc.word_heatmap("square", size=(20, 30)).shape == (20, 30)
    with pytest.raises(ValueError, match="size="):
        tc.word_heatmap("square", size=0)


def test_heatmaps_are_clamped_and_min_max_normalised():
    assert np.array_equal(normalise(torch.tensor([[1.0, 3.0], [2.0, 1.0]])), np.array([[0, 1], [0.5, 0]], np.float32))
    assert np.array_equal(normalise(torch.full((2, 2), 0.3)), np.zeros((2, 2), np.float32))


# --- overlay ---------------------------------------------------------------------------------


def test_overlay_blends_a_colour_map_over_the_image():
    image = np.full((64, 64, 3), 0.5, dtype=np.float32)
    heatmap = np.zeros((16, 16), dtype=np.float32)
    heatmap[:, 8:] = 1.0
    blended = overlay(image, heatmap, alpha=0.5)
    assert blended.mode == "RGB" and blended.size == (64, 64)
    pixels = np.asarray(blended, dtype=int)
    assert pixels[32, 60, 0] > pixels[32, 4, 0]  # hot (red) on the right in "jet"
    assert pixels[32, 4, 2] > pixels[32, 60, 2]  # cold (blue) on the left
    untouched = overlay(Image.new("RGB", (64, 64), (10, 200, 30)), heatmap, alpha=0.0)
    assert np.all(np.asarray(untouched) == (10, 200, 30))
    with pytest.raises(ValueError, match="heatmap must be 2-D"):
        overlay(image, np.zeros((1, 16, 16)))
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, heatmap, alpha=2)


# --- the real SD layouts (random weights) ------------------------------------------------------


@pytest.fixture(scope="module", params=["sd15", "sd21"])
def real(request):
    pipe = real_pipeline(request.param)
    pipe.set_progress_bar_config(disable=True)
    yield request.param, pipe
    del pipe
    gc.collect()


@pytest.mark.slow
def test_real_layouts_trace_exactly_with_their_head_counts(real):
    layout, pipe = real
    layers = cross_attention_layers(pipe.unet)
    assert len(layers) == 16
    heads = {layer.heads for layer in layers.values()}
    assert heads == ({8} if layout == "sd15" else {5, 10, 20})  # SD 2.x: 64 channels per head
    assert {layer.cross_attention_dim for layer in layers.values()} == {768 if layout == "sd15" else 1024}

    def run():
        return pipe(PROMPT, num_inference_steps=1, height=64, width=64, output_type="latent",
                    generator=torch.Generator("cpu").manual_seed(0)).images

    plain = run()
    with trace(pipe) as tc:
        traced = run()
    assert (traced - plain).abs().max() < 1e-5
    assert set(tc.sums) == {(8, 8), (4, 4), (2, 2), (1, 1)}  # 64 px → 8×8 latents, three downsamplings
    assert tc.word_heatmap("zigzag", size=64).shape == (64, 64)
    with pytest.raises(ValueError, match="heads"):
        with trace(pipe, heads=[min(heads)]):
            pass


# --- mini-SD: maps land on the objects ----------------------------------------------------


@functools.cache
def mini_word_map_ious() -> tuple[np.ndarray, np.ndarray]:
    """img2img (strength 0.6) on rendered two-object scenes, whose masks are known: the IoU of each
    object's word map with that object's mask and with the other object's mask.

    The map of "<colour> <shape>" (unique in the caption: the two colours differ), thresholded
    at 0.5, over all cross-attention layers.
    """
    pipe = models.load_pipeline("mini", task="img2img", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    scenes = world.sample_scenes(32, seed=7, p_two=1.0)
    assert all(len(scene.objects) == 2 for scene in scenes)
    own, other = [], []
    for start in range(0, len(scenes), 8):
        batch = scenes[start : start + 8]
        renders = [world.render(scene) for scene in batch]
        with trace(pipe) as tc:
            pipe([world.caption(scene) for scene in batch], image=[r.pil() for r in renders], strength=0.6,
                 num_inference_steps=25, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(start))
        for i, (scene, rendered) in enumerate(zip(batch, renders)):
            for k, obj in enumerate(scene.objects):
                heatmap = tc.word_heatmap(f"{obj.colour} {obj.shape}", size=64, prompt_index=i) > 0.5
                own.append(iou(heatmap, rendered.masks[k]))
                other.append(iou(heatmap, rendered.masks[1 - k]))
    own, other = np.array(own), np.array(other)
    print(f"mini-SD attention: mean IoU own object {own.mean():.3f}, other object {other.mean():.3f}, "
          f"own > other in {np.mean(own > other):.0%} of {len(own)} object maps")
    return own, other


@pytest.mark.quality
@pytest.mark.skipif(not models.mini_available(), reason="mini-SD not trained yet")
def test_mini_word_maps_overlap_their_objects():
    """Each object word's map lies on its own object, well above the swapped word's (measured: mean
    IoU 0.48 with the own object, 0.12 with the other)."""
    own, other = mini_word_map_ious()
    assert own.mean() > 0.3
    assert own.mean() > other.mean() + 0.15


@pytest.mark.quality
@pytest.mark.skipif(not models.mini_available(), reason="mini-SD not trained yet")
def test_mini_word_maps_beat_the_swapped_word_for_most_objects():
    """The own map wins for most objects (measured: 51 of 64 maps, 80 %)."""
    own, other = mini_word_map_ious()
    assert np.mean(own > other) > 0.75


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


# --- mini-SD: each word's map sits on the region the word is about -------------------------


@functools.cache
def mini_word_map_regions() -> dict:
    """Chapter 2's maps (text-to-image, every layer, 20 steps, CFG 7.5) on prompts that no setting was
    chosen on: 24 one-object prompts in chapter 2's form and 24 two-object captions (held-out scenes)."""
    from sdcourse import quality

    pipe = models.load_pipeline("mini", task="text2img", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    prompts = quality.one_object_prompts(24, seed=quality.HELDOUT_SEED)
    prompts += [world.caption(s) for s in quality.eval_scenes(24, two_objects=True, seed=quality.HELDOUT_SEED)]
    result = quality.word_map_regions(pipe, prompts, seeds=[100 + i for i in range(len(prompts))])
    print("mini-SD word maps:", {role: v["on_its_region"] for role, v in result["all"].items() if "on_its_region" in v})
    return result


def not_yet(measured: float):
    return pytest.mark.xfail(strict=True, reason=f"bar not met by the shipped mini-SD: {measured:.2f} of the maps "
                                                 "(benchmarks/results/word_maps.json)")


@pytest.mark.quality
@pytest.mark.skipif(not models.mini_available(), reason="mini-SD not trained yet")
@pytest.mark.parametrize("role, bar", [
    pytest.param("colour", 0.90, marks=not_yet(0.79)),
    ("shape", 0.90),
    pytest.param("background", 0.75, marks=not_yet(0.14)),
    pytest.param("background_colour", 0.75, marks=not_yet(0.36)),
])
def test_mini_word_maps_sit_on_their_region(role, bar):
    """Object colour and shape words on their object (≥ 90 % of maps), "background" and its colour on
    the background, not the objects (≥ 75 %), over one- and two-object prompts together."""
    result = mini_word_map_regions()
    assert result["unjudged"] <= 0.2 * result["images"]
    assert result["all"][role]["maps"] >= 24
    assert result["all"][role]["on_its_region"] >= bar


@pytest.mark.quality
@pytest.mark.skipif(not models.mini_available(), reason="mini-SD not trained yet")
def test_mini_position_words_stay_on_their_object():
    assert mini_word_map_regions()["two_objects"]["position"]["on_its_region"] >= 0.9

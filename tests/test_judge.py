"""The judge: measured accuracy on rendered scenes, and verdicts that can be wrong."""

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from sdcourse import judge as judge_module
from sdcourse.judge import describe, detect, judge, judge_many
from sdcourse.world import (
    HELDOUT_SHAPE,
    Scene,
    SceneObject,
    caption,
    concept_scenes,
    render,
    sample_scenes,
)

OBJECT_ATTRIBUTES = ("colour", "shape", "size", "position")


def degrade(image: np.ndarray, rng: np.random.Generator, blur: float = 1.0, noise: float = 8.0) -> np.ndarray:
    """Blur and noise, roughly what a small autoencoder and generator do to an image."""
    x = ndimage.gaussian_filter(image.astype(np.float32), sigma=(blur, blur, 0))
    x = x + rng.normal(0.0, noise, x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scenes():
    # Mixed one- and two-object scenes, plus stars so that the star is judged too.
    return sample_scenes(500, seed=2024) + concept_scenes(100, seed=7)


@pytest.fixture(scope="module")
def images(scenes):
    return [render(scene).image for scene in scenes]


def test_clean_accuracy(images, scenes):
    result = judge_many(images, scenes)
    print("\nclean renders:", {k: round(v, 4) for k, v in result.items()})
    assert result["n"] == 600
    for attribute in ("background", "count", *OBJECT_ATTRIBUTES):
        assert result[attribute] >= 0.98, (attribute, result)
    assert result["all_correct"] >= 0.95


def test_clean_accuracy_from_captions(images, scenes):
    rng = np.random.default_rng(3)
    prompts = [caption(scene, rng, identifier="sks") for scene in scenes[:300]]
    result = judge_many(images[:300], prompts, identifier="sks")
    print("\nclean renders, random captions:", {k: round(v, 4) for k, v in result.items()})
    assert result["all_correct"] >= 0.98


def test_degraded_accuracy(images, scenes):
    rng = np.random.default_rng(0)
    degraded = [degrade(image, rng) for image in images]
    result = judge_many(degraded, scenes)
    print("\nblur 1.0 + noise 8:", {k: round(v, 4) for k, v in result.items()})
    assert result["background"] >= 0.97 and result["colour"] >= 0.95
    for attribute in ("count", "shape", "size", "position"):
        assert result[attribute] >= 0.9, (attribute, result)


def test_describe_reads_a_scene(images, scenes):
    for image, scene in zip(images[:50], scenes[:50]):
        found = describe(image)
        assert found.background == scene.background
        want = sorted((o.colour, o.shape, o.size, o.position) for o in scene.objects)
        assert sorted((o.colour, o.shape, o.size, o.position) for o in found.objects) == want


def _single(scenes, images, n=40):
    pairs = [(s, i) for s, i in zip(scenes, images) if len(s.objects) == 1 and s.objects[0].shape != HELDOUT_SHAPE]
    return pairs[:n]


def test_wrong_colour_or_shape_is_judged_wrong(images, scenes):
    for scene, image in _single(scenes, images):
        obj = scene.objects[0]
        right = f"a {obj.colour} {obj.shape} on a {scene.background} background"
        assert judge(image, right).correct, judge(image, right)

        other_colour = next(c for c in ("red", "green", "blue") if c not in (obj.colour, scene.background))
        verdict = judge(image, f"a {other_colour} {obj.shape} on a {scene.background} background")
        assert verdict.attributes == {"background": True, "count": True, "colour": False, "shape": True}
        assert not verdict.correct and verdict.accuracy == 0.75

        other_shape = next(s for s in ("circle", "square") if s != obj.shape)
        verdict = judge(image, f"a {obj.colour} {other_shape}")
        assert verdict.attributes == {"count": True, "colour": True, "shape": False}

        verdict = judge(image, f"a {obj.colour} {obj.shape} on a {obj.colour} background")
        assert verdict.attributes["background"] is False


def test_wrong_size_position_and_count(images, scenes):
    for scene, image in _single(scenes, images, n=20):
        obj = scene.objects[0]
        other_size = "small" if obj.size == "large" else "large"
        other_position = "left" if obj.position != "left" else "right"
        verdict = judge(image, f"a {other_size} {obj.colour} {obj.shape} on the {other_position}")
        assert verdict.attributes == {"count": True, "colour": True, "shape": True, "size": False, "position": False}
        verdict = judge(image, f"a {obj.colour} {obj.shape} and a {obj.colour} {obj.shape}")
        assert verdict.attributes["count"] is False and not verdict.all_objects_right


def test_two_object_prompts_are_matched_in_any_order():
    scene = Scene(
        "gray",
        [
            SceneObject("circle", "red", "large", "left", depth=0.5),
            SceneObject("square", "yellow", "small", "right", depth=0.8),
        ],
    )
    image = render(scene).image
    prompt = "a red circle on the left and a yellow square on the right, on a gray background"
    reversed_prompt = "a small yellow square on the right and a large red circle on the left"
    assert judge(image, prompt).correct and judge(image, reversed_prompt).correct
    swapped = judge(image, "a red circle on the right and a yellow square on the left")
    assert not swapped.correct
    assert [c.correct for c in swapped.checks_for("position")] == [False, False]
    assert all(c.correct for c in swapped.checks_for("colour") + swapped.checks_for("shape"))
    # Only one of two objects right.
    half = judge(image, "a red circle and a blue triangle")
    assert half.attributes["count"] and not half.all_objects_right
    assert [c.correct for c in half.checks if c.object_index == 0] == [True, True]
    assert [c.correct for c in half.checks if c.object_index == 1] == [False, False]


def test_star_and_triangle_are_told_apart(images, scenes):
    stars = [(s, i) for s, i in zip(scenes, images) if s.objects[0].shape == HELDOUT_SHAPE]
    triangles = [(s, i) for s, i in zip(scenes, images) if len(s.objects) == 1 and s.objects[0].shape == "triangle"]
    assert len(stars) >= 50 and len(triangles) >= 50
    rng = np.random.default_rng(1)
    for scene, image in stars + triangles:
        truth = scene.objects[0].shape
        for picture in (image, degrade(image, rng)):
            assert describe(picture).objects[0].shape == truth


def test_generic_noun_and_identifier(images, scenes):
    star_scene, star_image = next((s, i) for s, i in zip(scenes, images) if s.objects[0].shape == HELDOUT_SHAPE)
    circle_image = next(i for s, i in zip(scenes, images) if len(s.objects) == 1 and s.objects[0].shape == "circle")
    # "a shape" means a pre-training shape: a circle is one, the star is not.
    assert judge(circle_image, "a shape").correct
    assert not judge(star_image, "a shape").correct
    # "a sks shape" is the star, but only when "sks" is the identifier.
    assert judge(star_image, "a sks shape", identifier="sks").correct
    assert not judge(circle_image, "a sks shape", identifier="sks").correct
    colour = star_scene.objects[0].colour
    prompt = f"a {colour} sks shape on a {star_scene.background} background"
    assert judge(star_image, prompt, identifier="sks").correct


def test_image_formats(images, scenes):
    image, scene = images[0], scenes[0]
    expected = judge(image, scene)
    assert expected.correct
    big = Image.fromarray(image).resize((512, 512), Image.BICUBIC)
    assert judge(big, scene).correct
    small = Image.fromarray(image).resize((48, 48), Image.BOX)
    assert judge(small, scene).attributes["colour"]
    assert judge(image.astype(np.float32) / 255, scene).correct
    assert judge(Image.fromarray(image).convert("RGBA"), scene).correct


@pytest.mark.parametrize(
    "bad",
    [np.zeros((64, 64), np.uint8), np.zeros((64, 64, 4), np.uint8), np.zeros((3, 64, 64), np.uint8)],
    ids=["gray", "rgba-array", "channels-first"],
)
def test_bad_image_shapes_raise(bad):
    with pytest.raises(ValueError, match=r"image must be .*\(H, W, 3\)"):
        judge(bad, "a red circle")


def test_bad_image_values_raise():
    with pytest.raises(ValueError, match="image"):
        judge(np.full((64, 64, 3), 255.0), "a red circle")
    with pytest.raises(ValueError, match="dtype"):
        judge(np.zeros((64, 64, 3), np.int16), "a red circle")
    with pytest.raises(ValueError, match="prompts"):
        judge_many([np.zeros((64, 64, 3), np.uint8)], [])


def test_plain_background_has_no_objects():
    blank = np.broadcast_to(np.array([40, 80, 220], np.uint8), (64, 64, 3)).copy()
    assert describe(blank) == Scene("blue", [])
    verdict = judge(blank, "a red circle on a blue background")
    assert verdict.attributes == {"background": True, "count": False, "colour": False, "shape": False}
    assert verdict.checks_for("colour")[0].found is None


def test_noise_alone_finds_nothing():
    rng = np.random.default_rng(0)
    gray = np.full((64, 64, 3), 128.0) + rng.normal(0, 12, (64, 64, 3))
    assert detect(np.clip(gray, 0, 255).astype(np.uint8)).objects == []


def test_verdict_reads_well(images, scenes):
    scene, image = _single(scenes, images, n=1)[0]
    verdict = judge(image, f"a purple star on a {scene.background} background")
    text = repr(verdict)
    assert text.startswith("Verdict(correct=False")
    assert "prompt='a purple star" in text
    assert f"background: expected {scene.background}, found {scene.background} [ok]" in text
    assert f"object 1 shape: expected star, found {scene.objects[0].shape} [WRONG]" in text


def test_judge_many_only_counts_specified_attributes(images, scenes):
    result = judge_many(images[:10], ["a red circle"] * 10)
    assert set(result) == {"n", "all_correct", "accuracy", "count", "colour", "shape"}
    assert judge_module.ATTRIBUTES[0] == "background"


def test_a_blob_that_no_shape_fits_is_unknown():
    canvas = Image.new("RGB", (256, 256), (40, 80, 220))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([64, 112, 191, 143], fill=(220, 40, 40))  # a plus sign
    draw.rectangle([112, 64, 143, 191], fill=(220, 40, 40))
    plus = canvas.resize((64, 64), Image.BOX)
    found = detect(plus).objects
    assert len(found) == 1 and found[0].shape == judge_module.UNKNOWN_SHAPE
    assert max(found[0].fit.scores.values()) < judge_module.MIN_SHAPE_FIT
    verdict = judge(plus, "a red shape on a blue background")
    assert verdict.attributes == {"background": True, "count": True, "colour": True, "shape": False}

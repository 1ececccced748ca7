"""The shapes world: sampling, rendering, captions and their parsing."""

import numpy as np
import pytest
from scipy import ndimage

from sdcourse import world
from sdcourse.world import (
    CLASS_NOUN,
    COLOURS,
    HELDOUT_SHAPE,
    SHAPES,
    Scene,
    SceneObject,
    caption,
    concept_scenes,
    parse_caption,
    render,
    render_pil,
    sample_scenes,
)


@pytest.fixture(scope="module")
def scenes():
    return sample_scenes(500, seed=11)


@pytest.fixture(scope="module")
def renders(scenes):
    return [render(scene) for scene in scenes]


def test_same_seed_same_scenes_and_pixels():
    first, second = sample_scenes(40, seed=3), sample_scenes(40, seed=3)
    assert first == second
    for a, b in zip(first, second):
        assert np.array_equal(render(a).image, render(b).image)


def test_different_seed_different_scenes():
    first, second = sample_scenes(40, seed=3), sample_scenes(40, seed=4)
    assert first != second
    differing = sum(not np.array_equal(render(a).image, render(b).image) for a, b in zip(first, second))
    assert differing >= 35


def test_scenes_use_the_vocabulary(scenes):
    n_two = 0
    for scene in scenes:
        assert scene.background in COLOURS
        assert 1 <= len(scene.objects) <= 2
        colours = [obj.colour for obj in scene.objects]
        assert scene.background not in colours
        assert len(set(colours)) == len(colours)
        for obj in scene.objects:
            assert obj.shape in SHAPES
            assert obj.size in world.SIZES and obj.position in world.POSITIONS
            assert 0 < obj.depth <= 1
            assert abs(obj.dx) <= world.JITTER and abs(obj.dy) <= world.JITTER
        if len(scene.objects) == 2:
            n_two += 1
            assert {obj.position for obj in scene.objects} in ({"left", "right"}, {"top", "bottom"})
            assert scene.objects[0].depth != scene.objects[1].depth
    assert 0.2 < n_two / len(scenes) < 0.4  # p_two = 0.3


def test_held_out_star_never_in_pretraining_scenes():
    assert all(obj.shape != HELDOUT_SHAPE for scene in sample_scenes(2000, seed=0) for obj in scene.objects)


def test_concept_scenes_are_single_stars_of_varied_colour():
    scenes = concept_scenes(40, seed=5)
    assert all(len(s.objects) == 1 and s.objects[0].shape == HELDOUT_SHAPE for s in scenes)
    assert len({s.objects[0].colour for s in scenes}) >= 5
    assert all(s.objects[0].colour != s.background for s in scenes)


def test_sampling_options():
    assert all(len(s.objects) == 1 for s in sample_scenes(50, seed=1, max_objects=1))
    assert all(len(s.objects) == 2 for s in sample_scenes(50, seed=1, p_two=1.0))
    squares = sample_scenes(20, seed=1, shapes=("square",))
    assert {obj.shape for s in squares for obj in s.objects} == {"square"}
    with pytest.raises(ValueError, match="hexagon"):
        sample_scenes(2, seed=0, shapes=("hexagon",))
    with pytest.raises(ValueError, match="max_objects"):
        sample_scenes(2, seed=0, max_objects=3)


def test_render_outputs(renders, scenes):
    r = renders[0]
    assert r.image.shape == (64, 64, 3) and r.image.dtype == np.uint8
    assert r.low_res.shape == (16, 16, 3) and r.low_res.dtype == np.uint8
    assert r.depth.shape == (64, 64) and r.depth.dtype == np.float32
    assert len(r.masks) == len(scenes[0].objects)
    assert all(m.shape == (64, 64) and m.dtype == bool for m in r.masks)
    assert render_pil(scenes[0]).size == (64, 64)
    assert np.array_equal(np.asarray(r.pil()), r.image)
    # The 16×16 view is the image averaged over 4×4 blocks.
    blocks = r.image.astype(float).reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
    assert np.abs(blocks - r.low_res).max() <= 1


def test_flat_colours_come_from_the_palette(renders, scenes):
    for scene, r in zip(scenes[:200], renders[:200]):
        anywhere = np.logical_or.reduce(r.masks)
        far_from_objects = ~ndimage.binary_dilation(anywhere, iterations=2)
        assert (r.image[far_from_objects] == COLOURS[scene.background]).all()
        for obj, mask in zip(scene.objects, r.masks):
            interior = ndimage.binary_erosion(mask, iterations=1)
            assert interior.sum() > 20
            assert (r.image[interior] == COLOURS[obj.colour]).all()


def test_masks_match_object_pixels(renders, scenes):
    for scene, r in zip(scenes, renders):
        if len(scene.objects) != 1:
            continue
        obj_colour = np.array(COLOURS[scene.objects[0].colour], float)
        background = np.array(COLOURS[scene.background], float)
        pixels = r.image.astype(float)
        to_object = np.linalg.norm(pixels - obj_colour, axis=-1)
        to_background = np.linalg.norm(pixels - background, axis=-1)
        # They may disagree only on pixels half object, half background.
        disagree = (to_object < to_background) != r.masks[0]
        assert (np.abs(to_object - to_background)[disagree] <= 3).all()
        assert r.masks[0].sum() > 100
        # Objects stay inside the image.
        mask = r.masks[0]
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_sizes_are_distinct(renders, scenes):
    widths = {"small": [], "large": []}
    for scene, r in zip(scenes, renders):
        if len(scene.objects) == 1:
            columns = np.flatnonzero(r.masks[0].any(axis=0))
            widths[scene.objects[0].size].append(columns[-1] - columns[0] + 1)
    assert max(widths["small"]) < 21 and min(widths["large"]) > 27


def test_nearer_object_occludes_and_has_larger_depth():
    far = SceneObject("square", "red", "large", "center", depth=0.3)
    near = SceneObject("circle", "blue", "small", "center", depth=0.9)
    for objects in ([far, near], [near, far]):  # depth decides, not the order in the list
        r = render(Scene("white", objects))
        i_far, i_near = objects.index(far), objects.index(near)
        assert tuple(r.image[32, 32]) == COLOURS["blue"]
        assert r.masks[i_near][32, 32] and not r.masks[i_far][32, 32]
        assert r.masks[i_far][32, 18]  # the square shows around the circle
        assert not (r.masks[i_far] & r.masks[i_near]).any()
        assert r.depth[32, 32] == pytest.approx(0.9)
        assert r.depth[32, 18] == pytest.approx(0.3)
        assert r.depth[2, 2] == 0.0
        assert 0.0 <= r.depth.min() and r.depth.max() <= 1.0
        # The square's visible part is its full area minus the circle's.
        assert r.masks[i_far].sum() == pytest.approx(30 * 30 - np.pi * 9**2, rel=0.03)


def test_render_rejects_open_attributes():
    with pytest.raises(ValueError):
        render(parse_caption("a red circle on a blue background"))
    with pytest.raises(ValueError):
        render(Scene(None, [SceneObject("circle", "red", "large", "left")]))


def test_caption_examples():
    assert caption(Scene("blue", [SceneObject("circle", "red")])) == "a red circle on a blue background"
    top = Scene(None, [SceneObject("triangle", "green", "small", "top")])
    assert caption(top) == "a small green triangle at the top"
    left = SceneObject("circle", "red", position="left")
    right = SceneObject("square", "yellow", position="right")
    two = Scene("gray", [left, right])
    assert caption(two) == "a red circle on the left and a yellow square on the right, on a gray background"
    full = Scene("purple", [SceneObject("square", "orange", "large", "center")])
    assert caption(full) == "a large orange square in the center, on a purple background"
    star = Scene("green", [SceneObject("star", "red", "small", "left")])
    assert caption(star) == "a small red star on the left, on a green background"
    assert caption(star, identifier="sks") == "a small red sks shape on the left, on a green background"


def test_random_captions_vary_which_attributes_they_mention(scenes):
    rng = np.random.default_rng(0)
    texts = [caption(scene, rng) for scene in scenes]
    assert all(text == text.lower() and not text.endswith(".") for text in texts)
    n = len(texts)
    def near(rate, p):
        return abs(rate - p) < 0.1

    assert near(sum("background" in t for t in texts) / n, world.P_MENTION_BACKGROUND)
    assert near(sum(any(p in t for p in world.POSITION_PHRASES.values()) for t in texts) / n, world.P_MENTION_POSITION)
    assert 0.15 < sum(("small" in t or "large" in t) for t in texts) / n < 0.7
    generic = sum(t.count(f" {CLASS_NOUN}") for t in texts) / sum(len(s.objects) for s in scenes)
    assert 0.05 < generic < 0.16
    # Same rng seed, same captions.
    again = np.random.default_rng(0)
    assert texts == [caption(scene, again) for scene in scenes]


def test_caption_rates_can_be_set_for_training(scenes):
    rng = np.random.default_rng(0)
    said = [caption(scene, rng, p_size=1.0, p_position=1.0) for scene in scenes]
    assert all(any(p in t for p in world.POSITION_PHRASES.values()) for t in said)
    assert all(t.count("small") + t.count("large") == len(s.objects) for t, s in zip(said, scenes))
    unsaid = [caption(scene, rng, p_size=0.0, p_position=0.0) for scene in scenes]
    assert not any(w in t for t in unsaid for w in ("small", "large", "left", "right", "top", "bottom", "center"))


def _agrees(parsed: SceneObject, truth: SceneObject) -> bool:
    shape_ok = parsed.shape in (truth.shape, CLASS_NOUN)
    return shape_ok and all(
        getattr(parsed, a) in (None, getattr(truth, a)) for a in ("colour", "size", "position")
    )


def test_parse_caption_round_trips_500_random_captions(scenes):
    rng = np.random.default_rng(1)
    for scene in scenes:
        text = caption(scene, rng)
        parsed = parse_caption(text)
        assert parsed.background in (None, scene.background)
        assert ("background" in text) == (parsed.background is not None)
        assert len(parsed.objects) == len(scene.objects)
        assert all(_agrees(p, t) for p, t in zip(parsed.objects, scene.objects)), text
        # Every mentioned attribute is recovered: writing the parse out gives the same text.
        assert caption(parsed) == text
        # The full caption names everything.
        full = parse_caption(caption(scene))
        assert full.background == scene.background
        for p, t in zip(full.objects, scene.objects):
            assert (p.shape, p.colour, p.size, p.position) == (t.shape, t.colour, t.size, t.position)


def test_parse_caption_identifier_and_generic_noun():
    star = parse_caption("a red sks shape on a green background", identifier="sks")
    assert star.background == "green"
    assert (star.objects[0].shape, star.objects[0].colour) == (HELDOUT_SHAPE, "red")
    assert parse_caption("a sks shape", identifier="sks").objects[0].shape == HELDOUT_SHAPE
    # Without the identifier "sks" is just an unknown word and "shape" stays generic.
    assert parse_caption("a sks shape").objects[0].shape == CLASS_NOUN
    generic = parse_caption("a red shape on a blue background")
    assert generic.objects[0].shape == CLASS_NOUN and generic.objects[0].size is None


def test_parse_caption_is_lenient_but_needs_an_object():
    scene = parse_caption("A photo of an orange circle in the middle, on a plain grey background.")
    assert scene.background == "gray"
    obj = scene.objects[0]
    assert (obj.shape, obj.colour, obj.position) == ("circle", "orange", "center")
    two = parse_caption("a blue background with a small white square at the bottom")
    assert two.background == "blue" and two.objects[0].size == "small"
    with pytest.raises(ValueError, match="no object"):
        parse_caption("a photo on a blue background")
    with pytest.raises(ValueError, match="no object"):
        parse_caption("hello world")

"""The grounding loss: which tokens name which object, and attention inside versus outside it."""

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from sdcourse import grounding, world
from sdcourse.tokenizer import load_tokenizer
from sdcourse.train_mini import unet_config


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def ids_of(tokenizer, captions):
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def words(tokenizer, caption):
    ids = ids_of(tokenizer, [caption])[0].tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return [[tokens[i].removesuffix("</w>") for i in positions] for positions in grounding.object_tokens(tokenizer, ids)]


def test_each_object_gets_its_own_words_and_the_background_colour_none(tokenizer):
    caption = "a small red circle on the left and a blue shape on the right, on a green background"
    assert words(tokenizer, caption) == [["small", "red", "circle", "left"], ["blue", "shape", "right"]]
    assert words(tokenizer, "a yellow triangle on a gray background") == [["yellow", "triangle"]]
    assert words(tokenizer, "") == []
    ids = ids_of(tokenizer, [caption])[0].tolist()
    positions_only = grounding.object_tokens(tokenizer, ids, words=frozenset(world.POSITIONS))
    assert [[tokenizer.convert_ids_to_tokens(ids[i]) for i in object_] for object_ in positions_only] == [
        ["left</w>"], ["right</w>"]]
    # An object whose position is not said keeps its place in the list, with no words.
    assert grounding.object_tokens(tokenizer, ids_of(tokenizer, ["a red circle"])[0].tolist(),
                                   words=frozenset(world.POSITIONS)) == [[]]


def two_object_scene():
    return world.Scene(background="green", objects=[
        world.SceneObject(shape="circle", colour="red", size="large", position="left", depth=0.5),
        world.SceneObject(shape="square", colour="blue", size="large", position="right", depth=0.9),
    ])


def test_attention_on_the_object_costs_nothing_and_on_the_other_object_almost_everything(tokenizer):
    scene = two_object_scene()
    caption = world.caption(scene)
    input_ids = ids_of(tokenizer, [caption])
    masks = grounding.token_masks(tokenizer, input_ids, [scene])
    objects = grounding.object_tokens(tokenizer, input_ids[0].tolist())
    cells = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(np.stack(world.render(scene).masks)).float(), 16)
    cells = cells.flatten(1)  # (objects, 256)

    def attention(own: bool) -> torch.Tensor:
        probs = torch.full((1, 256, 77), 1e-6)
        for k, positions in enumerate(objects):
            probs[0][:, positions] = cells[k if own else 1 - k][:, None] + 1e-6
        return probs

    assert masks.shape == (1, 77, 64, 64) and masks[0, objects[0][0]].sum() == world.render(scene).masks[0].sum()
    right = grounding.grounding_loss([attention(True)], tokenizer, input_ids, [scene])
    swapped = grounding.grounding_loss([attention(False)], tokenizer, input_ids, [scene])
    assert right < 0.15 and swapped > 0.9


def test_a_caption_that_names_another_number_of_objects_is_refused(tokenizer):
    scene = two_object_scene()
    input_ids = ids_of(tokenizer, ["a red circle on a green background"])
    with pytest.raises(ValueError, match="names 1 objects, its scene has 2"):
        grounding.token_masks(tokenizer, input_ids, [scene])


def test_the_recorded_attention_carries_gradients_to_the_cross_attention_weights(tokenizer):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config())
    recorder = grounding.record_cross_attention(unet)
    scene = two_object_scene()
    input_ids = ids_of(tokenizer, [world.caption(scene)])
    unet(torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, unet.config.cross_attention_dim))
    assert sorted({m.shape[1] for m in recorder.maps}) == [16, 64, 256]  # 4×4 middle, 8×8 and 16×16
    loss = grounding.grounding_loss(recorder.maps, tokenizer, input_ids, [scene])
    loss.backward()
    to_k = [layer.to_k.weight.grad for layer in grounding.cross_attention_layers(unet).values()]
    assert 0 < loss.item() < 1 and all(g is not None and g.abs().sum() > 0 for g in to_k)


def test_background_words_are_grounded_on_everything_outside_the_objects_only_when_asked(tokenizer):
    scene = two_object_scene()
    caption = world.caption(scene)  # "... on the right, on a green background"
    input_ids = ids_of(tokenizer, [caption])
    tokens = tokenizer.convert_ids_to_tokens(input_ids[0].tolist())
    background = grounding.background_tokens(tokenizer, input_ids[0].tolist())
    assert [tokens[i] for i in background] == ["green</w>", "background</w>"]
    assert grounding.background_tokens(tokenizer, ids_of(tokenizer, ["a red circle"])[0].tolist()) == []
    rendered = world.render(scene).masks
    outside = 1 - torch.from_numpy(np.stack(rendered)).float().amax(dim=0)
    with_background = grounding.token_masks(tokenizer, input_ids, [scene], words=grounding.CONTENT_WORDS)
    assert all(torch.equal(with_background[0, i], outside) for i in background)
    # The colour words of the objects still go to their objects, and "a", "on", "the" to nothing.
    objects = grounding.object_tokens(tokenizer, input_ids[0].tolist())
    for k, positions in enumerate(objects):
        assert all(torch.equal(with_background[0, i], torch.from_numpy(rendered[k]).float()) for i in positions)
    named = set(background) | {i for positions in objects for i in positions}
    assert all(with_background[0, i].sum() == 0 for i in range(77) if i not in named)
    without = grounding.token_masks(tokenizer, input_ids, [scene])
    assert all(without[0, i].sum() == 0 for i in background)


def test_a_background_word_on_the_object_costs_almost_everything(tokenizer):
    scene = world.Scene(background="blue", objects=[two_object_scene().objects[0]])
    input_ids = ids_of(tokenizer, [world.caption(scene)])
    mask = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(world.render(scene).masks[0]).float()[None], 16)
    background = grounding.background_tokens(tokenizer, input_ids[0].tolist())
    for on_object, expected in ((True, lambda loss: loss > 0.9), (False, lambda loss: loss < 0.1)):
        probs = torch.full((1, 256, 77), 1e-6)
        probs[0][:, background] = (mask if on_object else 1 - mask).flatten()[:, None] + 1e-6
        loss = grounding.grounding_loss([probs], tokenizer, input_ids, [scene], words=frozenset({grounding.BACKGROUND}))
        assert expected(loss.item()), (on_object, loss.item())


def test_word_roles_name_each_token_and_its_object(tokenizer):
    from sdcourse.quality import word_roles

    caption = "a small red circle on the left and a blue shape on the right, on a green background"
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(caption).input_ids)
    roles = {tokens[i].removesuffix("</w>") + f"@{i}": (role, obj) for i, role, obj in word_roles(tokenizer, caption)}
    assert len(roles) == len(tokens)
    assert [(r, o) for r, o in roles.values() if r not in ("function",)] == [
        ("start", None), ("size", 0), ("colour", 0), ("shape", 0), ("position", 0), ("colour", 1), ("shape", 1),
        ("position", 1), ("background_colour", None), ("background", None), ("end", None)]
    assert {key.split("@")[0] for key, (role, _) in roles.items() if role == "function"} == {"a", "on", "the", "and", ","}


def test_per_area_the_background_word_must_be_heavier_on_the_background_not_just_mostly_there(tokenizer):
    """A map twice as heavy on the object as on the background still puts most of its attention on the
    large background: the share-of-attention loss calls that good, the per-pixel loss does not."""
    scene = world.Scene(background="blue", objects=[two_object_scene().objects[0]])
    input_ids = ids_of(tokenizer, [world.caption(scene)])
    mask = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(world.render(scene).masks[0]).float()[None], 16)
    assert 0.1 < mask.mean() < 0.3  # the object covers a small part of the image
    background = grounding.background_tokens(tokenizer, input_ids[0].tolist())
    words = frozenset({grounding.BACKGROUND})

    def loss(object_weight: float, per_area: bool) -> float:
        probs = torch.full((1, 256, 77), 1e-6)
        probs[0][:, background] = (1 + (object_weight - 1) * mask).flatten()[:, None]
        return grounding.grounding_loss([probs], tokenizer, input_ids, [scene], words=words, per_area=per_area).item()

    assert loss(2.0, per_area=False) < 0.5 < loss(2.0, per_area=True)  # heavier on the object
    assert loss(1.0, per_area=True) == pytest.approx(0.5, abs=0.02)  # flat
    assert loss(0.1, per_area=True) < 0.2  # on the background (cells on the edge count on both sides)


def test_per_area_an_object_word_on_both_objects_has_not_said_which(tokenizer):
    """The second object's noun as heavy on the first object as on its own: against everything outside
    its object (mostly background) that looked almost right; region by region it is a coin toss against
    the other object (a share of 0.5) and right against the background, a loss of about 0.25."""
    scene = two_object_scene()
    scene.objects[0].size = scene.objects[1].size = "small"
    input_ids = ids_of(tokenizer, [world.caption(scene)])
    noun = grounding.object_tokens(tokenizer, input_ids[0].tolist(), words=frozenset({"square"}))[1]
    cells = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(np.stack(world.render(scene).masks)).float(), 16)
    cells = cells.flatten(1)

    def loss(on_first: float) -> float:
        probs = torch.full((1, 256, 77), 1e-6)
        probs[0][:, noun] = (cells[1] + on_first * cells[0] + 1e-6)[:, None]
        return grounding.grounding_loss([probs], tokenizer, input_ids, [scene], words=frozenset({"square"}),
                                        per_area=True).item()

    assert loss(0.0) < 0.05
    assert loss(1.0) == pytest.approx(0.25, abs=0.03)
    regions, owner = grounding.token_regions(tokenizer, input_ids, [scene], words=frozenset({"square"}))
    assert regions.shape == (1, 3, 64, 64) and owner[0, noun].tolist() == [1]
    assert (owner[0] >= 0).sum() == 1

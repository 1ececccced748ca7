"""Grounding loss: teach cross-attention which object each word of a caption is about.

With two objects, a text-to-image model tends to draw both things the caption names, in the
two places it names, but pairs them up at random ("a red circle on the left and a blue square
on the right" comes out swapped as often as not; SD has the same attribute-binding
failure). The text side is not the problem: mini-SD's causal text encoder carries each object's
colour and shape into the state of its position word. The denoising loss just gives the UNet
little reason to read it there.

The shapes world knows every object's mask, so training can say it directly, as TokenCompose
(Wang et al., 2024) does for SD with segmentation masks: the attention that an object's words
receive should lie on that object. For each such token and cross-attention layer the loss is
1 − (attention inside the object's mask) / (all its attention), averaged; it is added to the
denoising loss with a small weight. mini-SD's layout stage grounds only the position words, and
only at the noisiest timesteps: a colour word comes before "on the left" and cannot know where
its object goes, and where the noisy latents still show the objects, attention finds them
without reading the caption (grounding every word at every timestep moved the attention, not
the arrangement). It works together with mirrored noisy latents and many more two-object
examples at high noise (`train_mini.more_high_noise`); CHANGELOG.md has the measurements.

An optional words stage (`train-mini --stages words`, not shipped; CHANGELOG.md says why) grounds every
content word at every timestep: each object's colour, shape, size and position words on its object, and
"background" with its colour word on the background (everything outside the objects). It compares a
word's attention region by region, as `quality.word_map_regions` judges the maps: its own region against
each other object and against the background.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from .attention import RecordingProcessor, cross_attention_layers

OBJECT_WORDS = frozenset([*world.COLOURS, *world.ALL_SHAPES, world.CLASS_NOUN, *world.SIZES, *world.POSITIONS])
POSITION_WORDS = frozenset(world.POSITIONS)  # what mini-SD's layout stage grounds
BACKGROUND = "background"  # among `words`: ground "background" and its colour word on the background
BACKGROUND_NOUN = "background:noun"  # among `words`: ground the word "background" alone there
CONTENT_WORDS = OBJECT_WORDS | {BACKGROUND}  # what mini-SD's words stage grounds


def object_tokens(tokenizer, input_ids, words=OBJECT_WORDS) -> list[list[int]]:
    """For one tokenised caption: the token positions of each object's words, in caption order.

    Objects are separated by "and"; the colour just before "background" is the background's.
    """
    tokens = [token.removesuffix("</w>") for token in tokenizer.convert_ids_to_tokens(list(input_ids))]
    objects = [[]]
    for i, token in enumerate(tokens):
        if token == "and":
            objects.append([])
        elif token == "background" and objects[-1] and objects[-1][-1] == i - 1:
            objects[-1].pop()
        elif token in OBJECT_WORDS:
            objects[-1].append(i)
    return [[i for i in positions if tokens[i] in words] for positions in objects if positions]


def background_tokens(tokenizer, input_ids, with_colour: bool = True) -> list[int]:
    """The token positions of "background" and (`with_colour`) of the colour word just before it."""
    tokens = [token.removesuffix("</w>") for token in tokenizer.convert_ids_to_tokens(list(input_ids))]
    positions = []
    for i, token in enumerate(tokens):
        if token == BACKGROUND:
            positions += [i - 1, i] if with_colour and i > 0 and tokens[i - 1] in world.COLOURS else [i]
    return positions


def token_regions(tokenizer, input_ids: torch.Tensor, scenes, words=OBJECT_WORDS) -> tuple[torch.Tensor, torch.Tensor]:
    """The regions of each scene and which one each token is about.

    Returns (regions, owner): regions (batch, objects + 1, 64, 64) holds each object's mask, then the
    background (everything outside the objects), empty where a scene has fewer objects; owner (batch,
    tokens) is the region index of each grounded word (the background's words only when `words` has
    BACKGROUND or BACKGROUND_NOUN), −1 for every other token and for empty captions.
    """
    batch, n_tokens = input_ids.shape
    n_objects = max((len(scene.objects) for scene in scenes), default=0)
    regions = torch.zeros(batch, n_objects + 1, world.IMAGE_SIZE, world.IMAGE_SIZE)
    owner = torch.full((batch, n_tokens), -1, dtype=torch.long)
    for b, (ids, scene) in enumerate(zip(input_ids, scenes)):
        objects = object_tokens(tokenizer, ids.tolist(), words)
        background = []
        if BACKGROUND in words or BACKGROUND_NOUN in words:
            background = background_tokens(tokenizer, ids.tolist(), with_colour=BACKGROUND in words)
        if not objects and not background:
            continue
        object_masks = torch.from_numpy(np.stack(world.render(scene).masks)).float()
        if objects and len(objects) != len(scene.objects):
            raise ValueError(f"caption {b} names {len(objects)} objects, its scene has {len(scene.objects)}")
        regions[b, : len(object_masks)] = object_masks
        regions[b, -1] = 1 - object_masks.amax(dim=0)
        for k, positions in enumerate(objects):
            owner[b, positions] = k
        owner[b, background] = n_objects
    return regions, owner


def token_masks(tokenizer, input_ids: torch.Tensor, scenes, words=OBJECT_WORDS) -> torch.Tensor:
    """(batch, tokens, 64, 64): each object word's object mask, the background's words (when `words`
    has BACKGROUND) everything outside the objects, zero for every other token and empty caption."""
    regions, owner = token_regions(tokenizer, input_ids, scenes, words)
    masks = torch.gather(regions, 1, owner.clamp(min=0)[:, :, None, None].expand(-1, -1, *regions.shape[2:]))
    return masks * (owner >= 0)[:, :, None, None]


class AttentionRecorder:
    """Collects every cross-attention layer's probabilities, with their gradients, during one forward."""

    def __init__(self):
        self.maps: list[torch.Tensor] = []

    def wants(self, pixels: int) -> bool:
        return True

    def record(self, attention_probs: torch.Tensor) -> None:
        self.maps.append(attention_probs.mean(dim=1))  # (batch, pixels, tokens), mean over heads


def record_cross_attention(unet) -> AttentionRecorder:
    """Give every cross-attention layer of `unet` a processor that hands its probabilities to the recorder."""
    recorder = AttentionRecorder()
    for layer in cross_attention_layers(unet).values():
        layer.set_processor(RecordingProcessor(recorder, layer.processor))
    return recorder


def grounding_loss(maps: list[torch.Tensor], tokenizer, input_ids: torch.Tensor, scenes, samples=None, words=OBJECT_WORDS,
                   per_area: bool = False) -> torch.Tensor:
    """Mean over layers and grounded words of 1 − (the word's attention inside its region) / (all of it),
    over the batch or over the examples that `samples` (bool, per example) selects.

    per_area: compare attention per pixel instead, region by region: the word's mean attention on its own
    region against its mean on each other region (each other object, the background), the share
    inside / (inside + other) averaged over them. A word's share of attention on a large region (the
    background) is high even when its map is heavier on the object; and a word heavier on both objects
    than on the background has still not said which object it is about.
    """
    losses = []
    full_regions, owner = token_regions(tokenizer, input_ids, scenes, words)
    grounded = (owner >= 0) & (full_regions.sum(dim=(2, 3)).gather(1, owner.clamp(min=0)) > 0)  # (batch, tokens)
    regions_by_grid = {}
    for attention in maps:
        grid = int(round(attention.shape[1] ** 0.5))
        if grid not in regions_by_grid:  # the coverage of each latent cell
            regions_by_grid[grid] = F.adaptive_avg_pool2d(full_regions, grid).flatten(2).to(attention.device)
        regions = regions_by_grid[grid]  # (batch, regions, pixels)
        named = grounded.to(attention.device)
        if samples is not None:
            named = named & samples[:, None].to(named.device)
        if not named.any():
            continue
        on_region = torch.einsum("bpt,brp->brt", attention, regions)  # attention of each token on each region
        own = owner.clamp(min=0).to(attention.device)[:, None, :]
        if per_area:
            area = regions.sum(dim=2)  # (batch, regions)
            means = on_region / area.clamp(min=1e-3)[:, :, None]
            inside = means.gather(1, own)  # (batch, 1, tokens)
            others = (area > 0)[:, :, None] & (torch.arange(regions.shape[1], device=own.device)[None, :, None] != own)
            pairwise = inside / (inside + means + 1e-8)
            share = (pairwise * others).sum(dim=1) / others.sum(dim=1).clamp(min=1)
        else:
            share = on_region.gather(1, own)[:, 0] / (attention.sum(dim=1) + 1e-8)
        losses.append((1 - share)[named].mean())
    if not losses:
        return torch.zeros((), device=maps[0].device if maps else "cpu")
    return torch.stack(losses).mean()

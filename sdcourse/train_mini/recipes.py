"""Each stage of mini-SD as a recipe: its data, noise, loss terms and steps, as plain values.

`recipe(config, stage)` reads a `MiniTrainConfig` into the stage's recipe; `loop.run` trains any of
them the same way. The stage functions below are the place to read what makes each stage differ.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from .. import grounding, world
from .config import VARIANT_IN_CHANNELS, MiniTrainConfig
from .data import depth_inputs, inpaint_inputs, upscale_inputs


@dataclass(frozen=True, kw_only=True)
class VAERecipe:
    """The autoencoder: L1 + MSE reconstruction and a tiny KL term, from scratch."""

    stage: str = "vae"
    steps: int
    batch_size: int
    lr: float
    crop_fraction: float  # this share of the steps sees 32×32 crops (see data.vae_batch)
    warmup_steps: int = 200
    kl_weight: float = 1e-6  # a codec, not a generative prior: the KL term only keeps latents bounded

    def learning_rate(self, step: int) -> float:
        """Linear warm-up, then a cosine down to zero."""
        return self.lr * min(1.0, (step + 1) / self.warmup_steps) * (0.5 * (1 + math.cos(math.pi * step / self.steps)))

    def crops(self, step: int) -> bool:
        return step < self.crop_fraction * self.steps


@dataclass(frozen=True, kw_only=True)
class Variant:
    """A UNet with extra input channels beside the noisy latents, laid out as the real SD variant's."""

    in_channels: int
    inputs: Callable  # (data, index, vae, generator, rng) -> (extra channels, class labels or None)
    num_class_embeds: int | None = None
    log: dict = field(default_factory=dict)  # its settings, for the stage's log and the model card


@dataclass(frozen=True, kw_only=True)
class UNetRecipe:
    """One UNet stage: epsilon prediction on SD's schedule, min-SNR-weighted, EMA weights shipped."""

    stage: str
    # steps
    steps: int
    lr: float
    warmup_steps: int
    batch_size: int
    ema_decay: float
    # what trains: the UNet, and the text encoder (wholly, or only some words' input embeddings)
    trains_text_encoder: bool = False
    learned_words: tuple[str, ...] = ()
    text_layers: int = 0  # train the text encoder's last layers (and its final norm), its embeddings frozen
    variant: Variant | None = None
    # data: how captions are drawn, and how many two-object scenes
    p_empty_caption: float
    p_mention_size: float
    p_mention_position: float
    p_two_objects: float = 0.0
    # noise: offset and pyramid noise, mirrored signals, high-noise timesteps for two-object scenes
    offset_noise: float
    pyramid_noise_discount: float = 0.0
    p_mirror: float = 0.0
    mirror_min_timestep: int | None = None
    p_two_high_noise: float = 0.0
    high_noise_min_timestep: int | None = None
    # loss terms: the weighted denoising loss, plus grounding of some words' cross-attention (sdcourse.grounding)
    snr_gamma: float
    snr_floor: float
    grounding_weight: float = 0.0
    grounding_min_timestep: int = 0
    grounded_words: frozenset[str] = frozenset()
    grounding_per_area: bool = False  # see grounding.grounding_loss
    background_grounding_weight: float = 0.0  # the word "background" once more, on everything but the objects

    def learning_rate(self, step: int) -> float:
        """Linear warm-up, then a cosine down to 10 % of `lr`."""
        return self.lr * min(1.0, (step + 1) / self.warmup_steps) * (0.55 + 0.45 * math.cos(math.pi * step / self.steps))


def vae_recipe(config: MiniTrainConfig) -> VAERecipe:
    return VAERecipe(steps=config.vae_steps, batch_size=config.vae_batch_size, lr=config.vae_lr,
                     crop_fraction=config.vae_crop_fraction)


def family(config: MiniTrainConfig) -> dict:
    """What every UNet stage shares: batch, warm-up, EMA, empty captions, offset noise, min-SNR γ."""
    return dict(batch_size=config.batch_size, warmup_steps=config.warmup_steps, ema_decay=config.ema_decay,
                p_empty_caption=config.p_empty_caption, offset_noise=config.offset_noise, snr_gamma=config.snr_gamma)


def base_recipe(config: MiniTrainConfig) -> UNetRecipe:
    """UNet and text encoder from scratch; captions often leave sizes and positions unsaid."""
    return UNetRecipe(**family(config), stage="base", steps=config.base_steps, lr=config.lr, trains_text_encoder=True,
                      p_mention_size=config.base_p_mention_size, p_mention_position=config.base_p_mention_position,
                      snr_floor=config.base_snr_floor)


def refine_recipe(config: MiniTrainConfig) -> UNetRecipe:
    """The base continued, text encoder too, with fuller captions and an x0-weight floor: more weight
    on the noisiest steps, where the layout is decided."""
    return UNetRecipe(**family(config), stage="refine", steps=config.refine_steps, lr=config.lr, trains_text_encoder=True,
                      p_mention_size=config.p_mention_size, p_mention_position=config.p_mention_position,
                      snr_floor=config.snr_floor)


def layout_recipe(config: MiniTrainConfig) -> UNetRecipe:
    """The refined UNet continued so that the caption, not the noise, says where each object goes.

    Positions almost always said; pyramid noise hides the layout; at the noisiest timesteps, mirrored
    signals and a grounding loss on the position words; many more two-object scenes, many of them at
    high noise. The text encoder is frozen but for the position words' input embeddings, so captions
    without them encode as before (which the variants, trained on refine's, need).
    """
    return UNetRecipe(
        **family(config), stage="layout", steps=config.layout_steps, lr=config.lr / 2, learned_words=world.POSITIONS,
        p_mention_size=config.p_mention_size, p_mention_position=config.layout_p_mention_position,
        p_two_objects=config.layout_p_two_objects,
        pyramid_noise_discount=config.pyramid_noise_discount,
        p_mirror=config.layout_p_mirror, mirror_min_timestep=config.layout_mirror_min_timestep,
        p_two_high_noise=config.layout_p_two_high_noise, high_noise_min_timestep=config.layout_high_noise_min_timestep,
        snr_floor=config.snr_floor,
        grounding_weight=config.layout_grounding_weight, grounding_min_timestep=config.layout_mirror_min_timestep,
        grounded_words=grounding.POSITION_WORDS,
    )


# From here on white noise: it is what sampling starts from, and the variants drifted in low-frequency
# colour when trained on pyramid noise.


def settle_recipe(config: MiniTrainConfig) -> UNetRecipe:
    """The layout UNet continued on white noise, mostly on two-object scenes."""
    return UNetRecipe(**family(config), stage="settle", steps=config.settle_steps, lr=config.lr / 4,
                      p_mention_size=config.p_mention_size, p_mention_position=config.layout_p_mention_position,
                      p_two_objects=config.settle_p_two_objects, snr_floor=config.snr_floor)


def words_recipe(config: MiniTrainConfig) -> UNetRecipe:
    """The settle UNet continued on white noise, with every content word's cross-attention grounded on its
    region at every timestep, region by region: each object's words on its object, "background" and (with
    `words_background_colour`) its colour on the background, and the word "background" once more with a
    weight of its own (without it its map sat on the object, as every word's does in the shipped model).
    With `words_text_layers`, the text encoder's last layers train too: a causal encoder has not yet seen
    "background" when it encodes the colour word before it. Not part of the shipped family.
    """
    return UNetRecipe(**family(config), stage="words", steps=config.words_steps, lr=config.lr / 4,
                      p_mention_size=config.p_mention_size, p_mention_position=config.p_mention_position,
                      p_two_objects=config.words_p_two_objects, snr_floor=config.snr_floor,
                      grounding_weight=config.words_grounding_weight,
                      grounded_words=grounding.CONTENT_WORDS if config.words_background_colour else grounding.OBJECT_WORDS,
                      background_grounding_weight=config.words_background_weight, grounding_per_area=True,
                      text_layers=config.words_text_layers)


def variant_recipe(config: MiniTrainConfig, stage: str, variant: Variant) -> UNetRecipe:
    """A variant: refine's UNet with zeroed extra input channels, fine-tuned as the real variants were."""
    return UNetRecipe(**family(config), stage=stage, steps=config.variant_steps[stage], lr=config.lr / 4, variant=variant,
                      p_mention_size=config.p_mention_size, p_mention_position=config.p_mention_position,
                      snr_floor=config.snr_floor)


def inpaint_recipe(config: MiniTrainConfig) -> UNetRecipe:
    return variant_recipe(config, "inpaint", Variant(in_channels=VARIANT_IN_CHANNELS["inpaint"], inputs=inpaint_inputs))


def depth_recipe(config: MiniTrainConfig) -> UNetRecipe:
    return variant_recipe(config, "depth", Variant(in_channels=VARIANT_IN_CHANNELS["depth"], inputs=depth_inputs))


def upscale_recipe(config: MiniTrainConfig) -> UNetRecipe:
    """The x4 upscaler: the noise level is a class label, and its low-res images are often only
    lightly noised (see data.upscale_noise_levels)."""
    low_noise = dict(p_low_noise=config.upscale_p_low_noise, low_noise_max=config.upscale_low_noise_max)
    variant = Variant(in_channels=VARIANT_IN_CHANNELS["upscale"], inputs=partial(upscale_inputs, **low_noise),
                      num_class_embeds=1000, log={f"upscale_{k}": v for k, v in low_noise.items()})
    return variant_recipe(config, "upscale", variant)


RECIPES = {"vae": vae_recipe, "base": base_recipe, "refine": refine_recipe, "layout": layout_recipe,
           "settle": settle_recipe, "inpaint": inpaint_recipe, "depth": depth_recipe, "upscale": upscale_recipe,
           "words": words_recipe}


def recipe(config: MiniTrainConfig, stage: str) -> VAERecipe | UNetRecipe:
    """The recipe of `stage` under `config`."""
    return RECIPES[stage](config)

"""The mini-SD family's shape: its stages, the models' configs, and the settings of a training run."""

from dataclasses import dataclass, field
from pathlib import Path

from transformers import CLIPTextConfig

# In training order; a stage's place in this tuple seeds its randomness.
STAGES = ("vae", "base", "refine", "layout", "settle", "inpaint", "depth", "upscale", "words")
# The shipped family. "words" continues it (`train-mini --stages words --from-shipped`) but is not shipped:
# CHANGELOG.md measures what it gains and costs.
FAMILY_STAGES = STAGES[:-1]
TEXT_STAGES = ("base", "refine")  # train the UNet and the whole text encoder together; later stages freeze most of it
STARTS_FROM = {"refine": "base", "layout": "refine", "settle": "layout", "inpaint": "refine", "depth": "refine",
               "upscale": "refine", "words": "settle"}
VARIANT_IN_CHANNELS = {"inpaint": 9, "depth": 5, "upscale": 7}
UNET_FOLDER = {"settle": "unet", "inpaint": "unet_inpaint", "depth": "unet_depth", "upscale": "unet_upscale",
               "words": "unet"}  # exported there
MAX_NOISE_LEVEL = 350  # StableDiffusionUpscalePipeline's default max_noise_level
SCALING_FACTOR = 0.08333  # the x4 upscaler's VAE factor (SD 1.x/2.x use 0.18215): see vae.set_latent_spread


def vae_config() -> dict:
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[16, 32, 64], layers_per_block=1, norm_num_groups=8,
    )


def text_encoder_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, hidden_size=64, intermediate_size=256,
        num_hidden_layers=3, num_attention_heads=4, projection_dim=64, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )


def unet_config(in_channels: int = 4, num_class_embeds=None) -> dict:
    return dict(
        sample_size=16, in_channels=in_channels, out_channels=4,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=[32, 64, 128], layers_per_block=1, norm_num_groups=16,
        cross_attention_dim=64, attention_head_dim=4, num_class_embeds=num_class_embeds,  # 4 heads
    )


def noise_scheduler_config() -> dict:
    """SD's training schedule (also the base of the DDIM sampling scheduler shipped with the model)."""
    return dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", clip_sample=False, steps_offset=1,
    )


@dataclass
class MiniTrainConfig:
    """Everything that defines a mini-SD training run (saved beside the checkpoints).

    `recipes.recipe(config, stage)` turns these numbers into each stage's recipe; CHANGELOG.md says
    how each value was chosen.
    """

    run_dir: str = "runs/mini-sd"
    seed: int = 0
    num_scenes: int = 40000
    vae_steps: int = 4000
    vae_batch_size: int = 24
    vae_lr: float = 1e-3
    vae_crop_fraction: float = 0.7
    base_steps: int = 6000
    refine_steps: int = 3000  # the base continued with fuller captions and more weight on high noise
    layout_steps: int = 3000  # the refined model continued with positions said and pyramid noise
    # The layout UNet continued on white noise with this share of each batch redrawn as two-object scenes;
    # more settle steps alone did not teach it two objects.
    settle_steps: int = 3000
    settle_p_two_objects: float = 0.8
    # The upscaler trains longest: its edges must land well within a pixel to beat bicubic's PSNR.
    variant_steps: dict = field(default_factory=lambda: {"inpaint": 2500, "depth": 2500, "upscale": 5000})
    upscale_p_low_noise: float = 0.5  # how often the upscaler's low-res image is noised only up to ...
    upscale_low_noise_max: int = 50  # ... this level (the pipeline's default is 20); else up to MAX_NOISE_LEVEL
    batch_size: int = 32
    lr: float = 8e-4
    warmup_steps: int = 300
    ema_decay: float = 0.999
    p_empty_caption: float = 0.1
    base_p_mention_size: float = 0.4  # how often the base stage's captions say how large the objects are ...
    base_p_mention_position: float = 0.6  # ... and where they are
    p_mention_size: float = 0.7  # the same from the refine stage on
    p_mention_position: float = 0.8
    layout_p_mention_position: float = 0.9  # the layout and settle stages'
    snr_gamma: float = 5.0
    base_snr_floor: float = 0.0
    snr_floor: float = 0.2  # from the refine stage on; see snr_weights: the layout-deciding noise levels
    offset_noise: float = 0.15  # see noise.training_noise: SD's schedule leaks the image's mean at t = T on a 16×16 grid
    pyramid_noise_discount: float = 0.8  # the layout stage's; see noise.training_noise
    layout_p_mirror: float = 0.5  # the layout stage's; see noise.mirrored_signal
    layout_mirror_min_timestep: int = 800  # mirrored examples and grounding from here on
    layout_grounding_weight: float = 0.05  # the layout stage's; see sdcourse.grounding
    # The layout stage draws this share of each batch from the two-object scenes (30 % of the data) ...
    layout_p_two_objects: float = 0.5
    # ... and trains this share of its two-object examples at t ≥ layout_high_noise_min_timestep, where sampling
    # decides which object goes where: with the mirrored examples, the words must then decide it.
    layout_p_two_high_noise: float = 0.5
    layout_high_noise_min_timestep: int = 600
    # The settle UNet continued with every content word's cross-attention grounded on its region (see
    # sdcourse.grounding).
    words_steps: int = 1500
    words_grounding_weight: float = 0.1  # the objects' words
    words_background_weight: float = 0.15  # the word "background" once more: its map resisted most
    words_background_colour: bool = True  # ground the background's colour word too, with the objects' words
    words_p_two_objects: float = 0.6
    # Train the text encoder's last layers too: in the frozen one, a colour word's state hardly differs
    # between "... and a yellow" (an object's) and "..., on a yellow" (the background's).
    words_text_layers: int = 3
    checkpoint_every: int = 250
    num_threads: int = 0  # 0: torch's default
    device: str = "cpu"  # the UNet stages run the same recipe on "cuda" when one is at hand
    max_minutes: float | None = None  # end this sitting (with a checkpoint) after this long

    @property
    def path(self) -> Path:
        return Path(self.run_dir)

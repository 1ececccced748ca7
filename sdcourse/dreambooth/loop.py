"""The DreamBooth run: check, load, make class images, set up accelerate, then the training loop
(`train_loop`: loss, backward, step; log, checkpoint, validate) and the export."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..training import step_generator
from .checkpoints import (
    check_checkpoint_matches,
    checkpoint_step,
    find_resume_checkpoint,
    register_lora_checkpoint_hooks,
    save_run_checkpoint,
)
from .checks import (
    check_8bit_adam,
    check_config,
    check_device,
    check_identifier,
    check_output_dir,
    check_resolution,
    check_stop_at_step,
    check_writable,
    expected_device,
    remove_interrupted_exports,
)
from .config import DreamBoothConfig, trains_text
from .data import generate_class_images, load_images, load_instance_data, prepare_data
from .export import export_model, push_to_hub
from .model import (
    load_base_pipeline,
    make_optimizer,
    model_resolution,
    param_groups,
    prepare_models,
    sampling_pipeline,
    trained_pipeline,
    validation_grid,
)
from .step import training_loss

EXPORT_FAILED = "export-failed.json"  # the main process's verdict on the export, read by every process


@dataclass
class DreamBoothResult:
    """What a call of `train_dreambooth` did."""

    output_dir: Path | None  # the finished model; None when this sitting stopped early
    run_dir: Path
    global_step: int
    finished: bool
    resumed_from_step: int
    losses: list = field(default_factory=list)  # one per optimisation step of this sitting
    validation_grids: list = field(default_factory=list)
    train_seconds: float = 0.0  # the training loop of this sitting
    steps_per_second: float = 0.0
    peak_memory_bytes: int | None = None  # CUDA: torch.cuda.max_memory_allocated during the loop

    def summary(self) -> dict:
        return {
            "output_dir": str(self.output_dir) if self.output_dir else None, "run_dir": str(self.run_dir),
            "global_step": self.global_step, "finished": self.finished, "resumed_from_step": self.resumed_from_step,
            "final_loss": self.losses[-1] if self.losses else None, "train_seconds": round(self.train_seconds, 2),
            "steps_per_second": round(self.steps_per_second, 3), "peak_memory_bytes": self.peak_memory_bytes,
        }


@dataclass
class DreamBoothTraining:
    """What the loop works with, as `setup_training` prepared it (models wrapped by accelerate)."""

    accelerator: object
    base: object  # the base pipeline; its unet (and text encoder) are the modules being trained
    modules: list  # the trained modules: [unet] or [unet, text_encoder]
    parts: dict  # what `training_loss` needs
    params: list  # the trainable parameters
    optimizer: object
    lr_scheduler: object
    dataloader: object
    resolution: int


def make_accelerator(config: DreamBoothConfig):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    try:
        return Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            # The shuffled order of epoch e is drawn from seed + e: resumable and the same on every process.
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        )
    except ValueError as error:
        if "already been initialized" in str(error):
            raise ValueError(
                f"mixed_precision={config.mixed_precision!r} differs from an earlier run in this Python process; "
                "accelerate fixes it once per process: restart the kernel (or process) to change it."
            ) from None
        raise


def setup_training(base, config: DreamBoothConfig, accelerator, instance_images, instance_prompts, class_images,
                   resolution) -> DreamBoothTraining:
    """Models, data, optimizer and learning-rate schedule, wrapped by accelerate."""
    from diffusers.optimization import get_scheduler

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    prepare_models(base, config, accelerator.device, weight_dtype)
    dataloader, parts = prepare_data(base, config, instance_images, instance_prompts, class_images, resolution,
                                     accelerator.device)

    modules = [base.unet, base.text_encoder] if trains_text(config) else [base.unet]
    params = [p for module in modules for p in module.parameters() if p.requires_grad]
    optimizer = make_optimizer(param_groups(params, base.text_encoder, config), config)
    lr_scheduler = get_scheduler(  # accelerate steps the schedule once per process
        config.schedule, optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_train_steps * accelerator.num_processes,
    )
    if config.use_lora:
        register_lora_checkpoint_hooks(accelerator, base.unet, base.text_encoder, base.tokenizer, config)
    *modules, optimizer, dataloader, lr_scheduler = accelerator.prepare(*modules, optimizer, dataloader, lr_scheduler)
    parts["unet"] = modules[0]
    if trains_text(config):
        parts["text_encoder"] = modules[1]
    return DreamBoothTraining(accelerator, base, modules, parts, params, optimizer, lr_scheduler, dataloader,
                              resolution)


def train_dreambooth(config: DreamBoothConfig, progress: bool = True, stop_at_step: int | None = None
                     ) -> DreamBoothResult:
    """Fine-tune `config.model` on the instance images; returns a `DreamBoothResult`.

    stop_at_step ends this sitting at that step (after saving a checkpoint): run again with
    resume_from_checkpoint="latest" to go on. Works the same under `accelerate launch`.
    """
    # 1. Check everything that can be checked before anything is written.
    check_config(config)
    check_stop_at_step(stop_at_step)
    resume_from = find_resume_checkpoint(config)
    if resume_from is not None:
        check_checkpoint_matches(resume_from, config)
    check_output_dir(config, resuming=resume_from is not None)
    check_device(config, expected_device())  # before accelerate fixes mixed precision for the process
    check_8bit_adam(config)  # before the models, class images and training that plain AdamW would lose
    accelerator = make_accelerator(config)
    check_device(config, accelerator.device)
    base = load_base_pipeline(config.model)
    resolution = config.resolution or model_resolution(base)
    check_resolution(base, resolution)
    check_identifier(base.tokenizer, config)
    instance_images, instance_prompts = load_instance_data(config, resolution)

    # 2. The folders (made and test-written by every process, so all stop together), leftovers of
    # interrupted runs removed, and class images for prior preservation (made once, by the main process).
    check_writable(config)
    if accelerator.is_main_process:
        remove_interrupted_exports(config)
        # a checkpoint cut off by a crash, or one a crash kept from being replaced
        for stale in [*config.run_path.glob("tmp-checkpoint-*"), *config.run_path.glob("checkpoint-*.old")]:
            shutil.rmtree(stale)
    class_images = prior_class_images(base, config, accelerator, resolution, progress)

    # 3. Set up, resume, train.
    training = setup_training(base, config, accelerator, instance_images, instance_prompts, class_images, resolution)
    start = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        start = checkpoint_step(resume_from)
    stop = config.max_train_steps if stop_at_step is None else min(stop_at_step, config.max_train_steps)
    result = DreamBoothResult(output_dir=None, run_dir=config.run_path, global_step=start,
                              finished=False, resumed_from_step=start)
    train_loop(training, config, result, stop, progress)
    if result.global_step < config.max_train_steps:  # this sitting ends early
        if not (config.run_path / f"checkpoint-{result.global_step}").is_dir():
            save_run_checkpoint(accelerator, config.run_path, result.global_step, config)
        return result

    # 4. The finished model, written to a temporary folder and renamed into place.
    check_trained_weights(training, config, result)
    finish_export(training, config, len(instance_images), result)
    result.finished = True
    accelerator.end_training()
    return result


def finish_export(training: DreamBoothTraining, config: DreamBoothConfig, n_instance: int,
                  result: DreamBoothResult) -> None:
    """Export the model on the main process (and push it when asked); when that fails every process
    raises, after keeping the trained weights in run_dir. The main process leaves its verdict in
    run_dir for the others, so that only barriers synchronise the processes, as during training."""
    accelerator = training.accelerator
    verdict = config.run_path / EXPORT_FAILED
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        verdict.unlink(missing_ok=True)
        try:
            result.output_dir = export_model(training, config, n_instance, result)
            if config.push_to_hub:
                push_to_hub(result.output_dir, config.hub_model_id or result.output_dir.name)
        except Exception as error:  # a full disk, a folder made read-only since the start: keep the weights
            problem = {"exported": result.output_dir is not None, "problem": f"{type(error).__name__}: {error}"}
            verdict.write_text(json.dumps(problem))
    accelerator.wait_for_everyone()
    if verdict.is_file():
        failure = json.loads(verdict.read_text())
        if failure["exported"]:
            raise OSError(f"the model is in output_dir={str(config.output_dir)!r}, but pushing it to the Hub failed "
                          f"({failure['problem']}): upload it later with "
                          "sdcourse.dreambooth.push_to_hub(output_dir, repo_id).")
        keep_trained_weights(training, config, result, failure["problem"])


def check_trained_weights(training: DreamBoothTraining, config: DreamBoothConfig, result: DreamBoothResult) -> None:
    """Non-finite weights after training are an error, not an export: the steps were too large."""
    bad = sum(int((~torch.isfinite(param.detach())).sum()) for param in training.params)
    if not bad:
        return
    first = next((step for step, loss in enumerate(result.losses, start=result.resumed_from_step + 1)
                  if not math.isfinite(loss)), None)
    when = f"; the loss first became NaN or infinite at step {first}" if first else ""
    raise ValueError(
        f"training diverged: {bad} trained weights are NaN or infinite after step {result.global_step}{when}. "
        f"The learning rate ({config.lr:g}) is probably too high for this model and method: lower it (the "
        f"default here is {dataclasses.replace(config, learning_rate=None).lr:g}) and start again in a new run_dir. "
        "Nothing was exported."
    )


def keep_trained_weights(training: DreamBoothTraining, config: DreamBoothConfig, result: DreamBoothResult,
                         problem: str) -> None:
    """The export failed: keep the trained weights as a checkpoint in run_dir (all processes take part)
    and say where they are and how to export them."""
    checkpoint = config.run_path / f"checkpoint-{result.global_step}"
    saved = checkpoint.is_dir()
    training.accelerator.wait_for_everyone()  # every process has looked before any of them saves
    if not saved:
        save_run_checkpoint(training.accelerator, config.run_path, result.global_step, config)
    raise OSError(
        f"the finished model could not be written to output_dir={str(config.output_dir)!r} ({problem}). "
        f"The trained weights are kept in {str(checkpoint)!r}: fix the folder (or choose another output_dir) "
        "and run again with resume_from_checkpoint='latest', which exports without training again."
    )


def prior_class_images(base, config: DreamBoothConfig, accelerator, resolution: int, progress: bool) -> list | None:
    """The class images for prior preservation (None without it), made by the base model on the
    main process when `class_data_dir` is short of them."""
    if not config.with_prior_preservation:
        return None
    if accelerator.is_main_process:
        for module in (base.unet, base.vae, base.text_encoder):
            module.to(accelerator.device)  # float32 weights, computed in mixed precision under autocast
        with accelerator.autocast():
            pipe = sampling_pipeline(base, base.unet, base.text_encoder)
            generate_class_images(pipe, config, resolution, progress)
    accelerator.wait_for_everyone()
    class_images = load_images(config.class_path, resolution, "class_data_dir", ignore=("class_images.json",))
    return class_images[: config.num_class_images]


def train_loop(training: DreamBoothTraining, config: DreamBoothConfig, result: DreamBoothResult, stop: int,
               progress: bool):
    """Optimisation steps from result.global_step to `stop`: loss, backward, step; then log,
    checkpoint and validate. Epoch e's batch order comes from (seed, e), so a resumed run
    skips into the epoch where it left off."""
    accelerator, accumulation = training.accelerator, config.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(training.dataloader) / accumulation)
    num_epochs = math.ceil(config.max_train_steps / steps_per_epoch)
    global_step = result.global_step
    bar = tqdm(total=config.max_train_steps, initial=global_step, desc="DreamBooth",
               disable=not progress or not accelerator.is_local_main_process)
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    started = time.perf_counter()

    for epoch in range(global_step // steps_per_epoch, num_epochs):
        if global_step >= stop:
            break
        for module in training.modules:
            module.train()
        training.dataloader.set_epoch(epoch)
        skip = (global_step % steps_per_epoch) * accumulation
        batches = accelerator.skip_first_batches(training.dataloader, skip) if skip else training.dataloader
        micro_losses = []
        for batch_index, batch in enumerate(batches, start=skip):
            generator = step_generator(config.seed, global_step, batch_index % accumulation,
                                       accelerator.process_index)
            with accelerator.accumulate(*training.modules):
                with accelerator.autocast():
                    loss = training_loss(batch, training.parts, config, generator)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(training.params, config.max_grad_norm)
                training.optimizer.step()
                training.lr_scheduler.step()
                training.optimizer.zero_grad(set_to_none=True)
            micro_losses.append(loss.detach().item())
            if not accelerator.sync_gradients:  # still accumulating gradients
                continue

            global_step += 1
            result.losses.append(float(np.mean(micro_losses)))
            micro_losses = []
            bar.update(1)
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}", lr=f"{training.lr_scheduler.get_last_lr()[0]:.2g}",
                            refresh=False)  # shown at the bar's next timed redraw, not one redraw per step
            if global_step % config.checkpointing_steps == 0 or global_step == stop < config.max_train_steps:
                save_run_checkpoint(accelerator, config.run_path, global_step, config)
            if config.validation_prompts and global_step % config.validation_steps == 0 and accelerator.is_main_process:
                result.validation_grids.append(save_validation_grid(training, config, global_step))
            if global_step >= stop:
                break
    bar.close()

    result.global_step = global_step
    result.train_seconds = time.perf_counter() - started
    steps = global_step - result.resumed_from_step
    result.steps_per_second = steps / result.train_seconds if steps else 0.0
    if accelerator.device.type == "cuda":
        result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(accelerator.device))


def save_validation_grid(training: DreamBoothTraining, config: DreamBoothConfig, global_step: int) -> Path:
    for module in training.modules:
        module.eval()
    grid = validation_grid(trained_pipeline(training), config, training.resolution, training.accelerator.autocast)
    for module in training.modules:
        module.train()
    path = config.run_path / "validation" / f"step-{global_step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path

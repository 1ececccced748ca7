"""DreamBooth checkpoints: accelerate's full state, written atomically and pruned, and the
checks that let a run resume only with the settings its tensors were made with."""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

from ..training import replace_folder
from .config import DreamBoothConfig, DreamBoothWarning, model_name
from .model import load_identifier_embeddings, save_identifier_embeddings


def checkpoint_folders(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in run_dir as (step, folder), oldest first (temporary folders are not complete)."""
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        name = path.name
        if path.is_dir() and name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit():
            found.append((int(name[len("checkpoint-"):]), path))
    return sorted(found)


def checkpoint_step(folder: Path) -> int:
    state = folder / "training_state.json"
    if not state.is_file():
        raise ValueError(f"{str(folder)!r} is not a complete DreamBooth checkpoint (no training_state.json).")
    return int(json.loads(state.read_text())["global_step"])


def save_run_checkpoint(accelerator, run_dir: Path, step: int, config: DreamBoothConfig) -> Path:
    """accelerate's full state (weights in safetensors, optimizer, lr scheduler, sampler, RNG)
    written to a temporary folder and renamed when complete; the oldest are pruned."""
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f"tmp-checkpoint-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "training_state.json").write_text(json.dumps({"global_step": step, "config": _shape_fields(config)}))
        replace_folder(tmp, final)
        if config.checkpoints_total_limit is not None:
            for _, old in checkpoint_folders(run_dir)[: -config.checkpoints_total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _shape_fields(config: DreamBoothConfig) -> dict:
    """The settings a checkpoint's tensors depend on: resuming with others cannot work."""
    return {
        "model": model_name(config.model),
        "use_lora": config.use_lora, "rank": config.rank if config.use_lora else None,
        "lora_target_modules": list(config.lora_target_modules) if config.use_lora else None,
        "train_text_encoder": config.train_text_encoder, "use_8bit_adam": config.use_8bit_adam,
        "train_identifier_embedding": config.train_identifier_embedding,
    }


def find_resume_checkpoint(config: DreamBoothConfig) -> Path | None:
    """The checkpoint to resume from, or None to start at step 0.

    Starting afresh while run_dir holds checkpoints is refused: "latest" would later mix the two runs.
    """
    existing = checkpoint_folders(config.run_path)
    if config.resume_from_checkpoint is None:
        if existing:
            raise ValueError(
                f"run_dir={str(config.run_path)!r} already holds checkpoints (up to step {existing[-1][0]}): "
                "set resume_from_checkpoint='latest' to continue that run, or choose another output_dir/run_dir."
            )
        return None
    if config.resume_from_checkpoint == "latest":
        broken = []
        for _, folder in reversed(existing):
            problem = checkpoint_problem(folder)
            if problem is None:
                if broken:
                    warnings.warn(
                        f"checkpoint {'; '.join(broken)} is damaged: resuming from {str(folder)!r} instead "
                        "(the damaged one is replaced when training passes its step again).",
                        DreamBoothWarning, stacklevel=3)
                return folder
            broken.append(f"{str(folder)!r} ({problem})")
        if broken:
            raise ValueError(
                f"resume_from_checkpoint='latest': every checkpoint in run_dir={str(config.run_path)!r} is damaged: "
                f"{'; '.join(broken)}. Delete them and start over (resume_from_checkpoint=None), or restore one "
                "from a backup."
            )
        return None
    folder = Path(config.resume_from_checkpoint)
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise ValueError(f"resume_from_checkpoint={str(folder)!r} is damaged ({problem}): choose another "
                         "checkpoint-<step> folder, or 'latest' to take the newest whole one.")
    return folder


def checkpoint_problem(folder: Path) -> str | None:
    """What makes a checkpoint unusable (a file cut short by a full disk or a copy, its state missing),
    or None when every file is whole. Reads only headers and zip directories, not the tensors."""
    from safetensors import SafetensorError, safe_open

    state = folder / "training_state.json"
    try:
        json.loads(state.read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return "training_state.json is missing or unreadable"
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt"):
                pass
        except (SafetensorError, OSError) as error:
            return f"{path.name} is cut short or unreadable: {error}"
    for path in sorted(folder.glob("*.bin")):  # torch.save writes zip archives
        try:
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError):
            return f"{path.name} is cut short or unreadable"
    return None


def check_checkpoint_matches(folder: Path, config: DreamBoothConfig) -> int:
    step = checkpoint_step(folder)
    saved = json.loads((folder / "training_state.json").read_text())["config"]
    now = _shape_fields(config)
    different = [f"{key}: {saved.get(key)!r} → {now[key]!r}" for key in now if saved.get(key) != now[key]]
    if different:
        raise ValueError(
            f"cannot resume from {str(folder)!r}: it was trained with other settings ({'; '.join(different)}). "
            "Use the settings of that run, or start a new run in another output_dir."
        )
    return step


def register_lora_checkpoint_hooks(accelerator, unet, text_encoder, tokenizer, config: DreamBoothConfig) -> None:
    """With LoRA, checkpoints hold only the LoRA matrices (MBs) instead of the whole frozen model
    (GBs), and the identifier's embeddings when they are learned."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    trained = {"unet": unet}
    if config.train_text_encoder:
        trained["text_encoder"] = text_encoder

    def save_lora(models, weights, output_dir):
        if accelerator.is_main_process:
            for name, module in trained.items():
                state = get_peft_model_state_dict(accelerator.unwrap_model(module))
                state = {key: value.contiguous() for key, value in state.items()}
                save_file(state, os.path.join(output_dir, f"{name}_lora.safetensors"))
            if config.train_identifier_embedding:
                save_identifier_embeddings(accelerator.unwrap_model(text_encoder), tokenizer, config, output_dir)
        weights.clear()  # accelerate must not save the full weights as well

    def load_lora(models, input_dir):
        for name, module in trained.items():
            state = load_file(os.path.join(input_dir, f"{name}_lora.safetensors"))
            set_peft_model_state_dict(accelerator.unwrap_model(module), state)
        if config.train_identifier_embedding:
            load_identifier_embeddings(accelerator.unwrap_model(text_encoder), tokenizer, input_dir)
        models.clear()  # loaded: accelerate must not look for full weights

    accelerator.register_save_state_pre_hook(save_lora)
    accelerator.register_load_state_pre_hook(load_lora)

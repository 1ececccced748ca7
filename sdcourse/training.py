"""What every trainer in sdcourse needs: loss weighting, per-step seeding, noise offsets, EMA and checkpoints.

The mini-SD trainer (`sdcourse.train_mini`) uses all of it; DreamBooth uses the loss weighting, the
seeding, the offset noise and the atomic folder swap. Each helper is a few lines over torch, so a
learner can read it next to the loop that calls it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

# --------------------------------------------------------------------------- loss weighting


def snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, floor: float = 0.0) -> torch.Tensor:
    """Loss weights per example for the scheduler's prediction type (epsilon or v_prediction).

    An epsilon error at signal-to-noise ratio snr is an x0 error scaled by √snr, so plain
    epsilon MSE weighs x0 errors by snr: almost nothing at the high noise levels where the
    layout (where the objects go) is decided. Min-SNR-γ (Hang et al. 2023) caps the x0
    weight at `gamma` for the nearly clean timesteps; `floor` keeps it at least `floor` for
    the noisiest ones (EDM weighs x0 errors about 1 there). A v error is an x0 error scaled
    by √(snr + 1).
    """
    alphas_cumprod = scheduler.alphas_cumprod[timesteps.cpu()]
    snr = alphas_cumprod / (1 - alphas_cumprod)
    x0_weight = torch.clamp(snr, min=floor, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return (x0_weight / (snr + 1)).to(timesteps.device)
    return (x0_weight / snr).to(timesteps.device)


# --------------------------------------------------------------------------- seeding and noise


def step_rng(*key: int) -> np.random.Generator:
    """numpy randomness of one training step, from integers only (e.g. seed, stage, step), so that
    a resumed run draws what the uninterrupted run would have drawn."""
    return np.random.default_rng(list(key))


def step_generator(*key: int) -> torch.Generator:
    """torch randomness of one training step (a CPU generator), seeded from a hash of the integers
    in `key` (e.g. seed, step, micro-step, process index): resumable, and distinct per process."""
    entropy = np.random.SeedSequence(list(key)).generate_state(1)[0]
    return torch.Generator("cpu").manual_seed(int(entropy))


def offset_noise(shape, generator: torch.Generator, strength: float) -> torch.Tensor:
    """A constant per example and channel, added to the training noise (offset noise): the noise
    then also hides each channel's mean, which SD's schedule otherwise leaves visible at t = T."""
    return strength * torch.randn(tuple(shape[:2]) + (1, 1), generator=generator)


# --------------------------------------------------------------------------- EMA


class EMA:
    """Exponential moving average of modules' weights, the weights a trainer ships.

    The decay warms up as (1 + step) / (10 + step), so the first steps' weights do not linger.
    Keys are "<module name>.<state-dict key>"; integer buffers are kept as they started.
    """

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float):
        self.decay = decay
        self.weights = {f"{name}.{k}": v.detach().clone() for name, m in modules.items() for k, v in m.state_dict().items()}

    @torch.no_grad()
    def update(self, modules: dict[str, torch.nn.Module], step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, m in modules.items():
            for k, v in m.state_dict().items():
                if v.dtype.is_floating_point:
                    self.weights[f"{name}.{k}"].lerp_(v, 1 - decay)

    def copy_to(self, modules: dict[str, torch.nn.Module]) -> None:
        """Load the averaged weights into the modules."""
        for name, m in modules.items():
            m.load_state_dict({k: self.weights[f"{name}.{k}"] for k in m.state_dict()})


# --------------------------------------------------------------------------- checkpoints


def temporary_folder(folder: Path) -> Path:
    """An empty folder beside `folder` to write a checkpoint into before `replace_folder` publishes it."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_folder(tmp: Path, folder: Path) -> None:
    """Put the finished `tmp` in the place of `folder` by renames, so that an interrupted write
    never leaves a half-written checkpoint under the final name."""
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(folder: Path, step: int, modules: dict, optimizer, ema: dict | None, extra: dict | None = None):
    """Write models, EMA weights and optimizer state as safetensors + JSON, atomically."""
    tensors = {}
    for name, module in modules.items():
        tensors.update({f"model.{name}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    if ema is not None:
        tensors.update({f"ema.{k}": v.cpu().contiguous() for k, v in ema.items()})
    state = optimizer.state_dict()
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            tensors[f"optim.{index}.{key}"] = value.cpu().contiguous() if torch.is_tensor(value) else torch.tensor(value)
    meta = dict(step=step, param_groups=state["param_groups"], **(extra or {}))
    tmp = temporary_folder(folder)
    save_file(tensors, tmp / "state.safetensors")
    (tmp / "meta.json").write_text(json.dumps(meta))
    replace_folder(tmp, folder)


def load_checkpoint(folder: Path, modules: dict, optimizer, ema: dict | None) -> dict:
    """Restore what `save_checkpoint` wrote; returns its JSON metadata (with "step")."""
    tensors = load_file(folder / "state.safetensors")
    meta = json.loads((folder / "meta.json").read_text())
    for name, module in modules.items():
        prefix = f"model.{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    if ema is not None:
        for k in ema:
            ema[k].copy_(tensors[f"ema.{k}"])
    state = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta

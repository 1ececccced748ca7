"""The one training loop every mini-SD stage runs, resumable from its last checkpoint."""

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..training import EMA, load_checkpoint, save_checkpoint, step_rng
from .config import STAGES


def stage_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    """The numpy randomness of one step of `stage` (data, captions, timesteps): depends only on
    (seed, stage, step), so a resumed run is the run that would have happened without the interruption."""
    return step_rng(seed, STAGES.index(stage), step)


def stage_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The torch randomness of one step of `stage` (noise). A plain linear mix of the three numbers,
    not `training.step_generator`'s hash: the shipped weights were drawn with it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + STAGES.index(stage) * 100_000_007 + step)


class Sitting:
    """When to stop this sitting: after `max_minutes`, or after `max_steps` steps (tests)."""

    def __init__(self, max_minutes=None, max_steps=None):
        self.deadline = time.time() + 60 * max_minutes if max_minutes else None
        self.max_steps = max_steps
        self.steps = 0
        self.interrupted = False

    def over(self) -> bool:
        self.steps += 1
        done = (self.deadline is not None and time.time() > self.deadline) or self.steps == self.max_steps
        self.interrupted = self.interrupted or done
        return done


@dataclass
class Training:
    """One stage as the loop runs it: the modules it trains, their optimizer (and EMA), the learning
    rate of each step, and each step's loss with the numbers to log."""

    stage: str
    steps: int
    modules: dict[str, torch.nn.Module]
    optimizer: torch.optim.Optimizer
    learning_rate: Callable[[int], float]
    loss: Callable[[int], tuple[torch.Tensor, dict[str, float]]]
    ema: EMA | None = None


def run(training: Training, stage_dir: Path, sitting: Sitting, checkpoint_every: int) -> tuple[float, dict] | None:
    """Train from the stage's last checkpoint to its last step.

    Returns the seconds the stage took over all sittings and this sitting's logged values per step,
    or None when the sitting ended first (after writing a checkpoint to resume from).
    """
    modules, optimizer, ema = training.modules, training.optimizer, training.ema
    trainable = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    ema_weights = ema.weights if ema is not None else None
    checkpoint = stage_dir / "checkpoint"
    start, seconds_before, t0 = 0, 0.0, time.time()
    if checkpoint.exists():
        meta = load_checkpoint(checkpoint, modules, optimizer, ema_weights)
        start, seconds_before = meta["step"], meta["seconds"]
    for m in modules.values():
        m.train()
    history = defaultdict(list)
    bar = tqdm(range(start, training.steps), initial=start, total=training.steps, desc=training.stage)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = training.learning_rate(step)
        loss, logged = training.loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        if ema is not None:
            ema.update(modules, step)
        for name, value in logged.items():
            history[name].append(value)
        if step % 20 == 0:
            bar.set_postfix({name: f"{np.mean(values[-100:]):.4f}" for name, values in history.items()})
        stop = sitting.over()
        if step + 1 < training.steps and (stop or (step + 1) % checkpoint_every == 0):
            seconds = dict(seconds=seconds_before + time.time() - t0)
            save_checkpoint(checkpoint, step + 1, modules, optimizer, ema_weights, seconds)
            if stop:
                return None
    return seconds_before + time.time() - t0, history

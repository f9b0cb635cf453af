"""What a run spends, and a compute budget turned into a number of optimiser steps.

Every run records its training MACs (see :data:`~transkd.profile.TRAINING_MACS_CONVENTION`),
its wall time and the time of its optimiser steps. ``train.budget`` fixes the length of a run by
what it spends rather than by epochs, so methods that cost more per step train fewer steps:

- ``steps:N``: N optimiser steps, whatever the method.
- ``macs:X``: ``floor(X / training MACs per step)`` steps, the per-step cost measured before
  training on one training image (student + adapters forward ×3, teacher forward ×1).
- ``seconds:S``: ``floor(S / seconds per step)`` steps, the per-step time measured before training
  by timing forward+backward passes on one training batch (three, the first discarded as warm-up;
  data loading and the optimiser update are not in it). The number of steps is fixed once, so
  the learning-rate schedule spans it and a resumed run keeps it; the seconds actually spent
  are recorded next to the budget.

The length replaces ``train.epochs``/``train.iterations``; the schedule's decay horizon (when
``schedule.horizon`` is null) is the budgeted length.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..config import Budget
from ..profile import TRAINING_MACS_CONVENTION, training_macs
from .checkpoint import capture_rng_state, restore_rng_state

CALIBRATION_STEPS = 3


def first_batch(dataset, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` transformed training samples as (images, labels)."""
    samples = [dataset[i] for i in range(min(size, len(dataset)))]
    images = torch.stack([s["image"] for s in samples])
    deferred = getattr(dataset.transform, "deferred", None)
    if deferred is not None:  # a uint8 pipeline: normalised as the trainer does on the device
        images = deferred.batch(images)
    return images, torch.stack([torch.as_tensor(s["label"]) for s in samples]).long()


def measure_training_macs(distiller, dataset, device: torch.device) -> dict[str, Any]:
    """Forward MACs per image of each part and the training MACs per image (one sample)."""
    images, labels = first_batch(dataset, 1)
    rng = capture_rng_state()
    try:
        counts = training_macs(distiller, images.to(device), labels.to(device))
    finally:
        restore_rng_state(rng)
    return {**counts, "input_size": list(images.shape[-2:]), "convention": TRAINING_MACS_CONVENTION}


def calibrate_step_seconds(distiller, dataset, batch_size: int, accum: int,
                           device: torch.device) -> float:
    """Seconds of one optimiser step's forward+backward passes, measured on one training batch.

    Weights are not updated; gradients, BatchNorm statistics and every RNG are put back."""
    images, labels = first_batch(dataset, batch_size)
    images, labels = images.to(device), labels.to(device)
    buffers = {name: b.detach().clone() for name, b in distiller.named_buffers()}
    rng = capture_rng_state()
    was_training = distiller.training
    distiller.train()
    times = []
    try:
        for _ in range(CALIBRATION_STEPS):
            start = time.perf_counter()
            distiller(images, labels)["loss"].backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    finally:
        distiller.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, buffer in distiller.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
        restore_rng_state(rng)
        distiller.train(was_training)
    return min(times[1:]) * accum


def budget_steps(budget: Budget, macs_per_step: int | None, step_seconds: float | None) -> int:
    """Optimiser steps a budget allows (at least one)."""
    if budget.kind == "steps":
        return int(budget.amount)
    per_step = macs_per_step if budget.kind == "macs" else step_seconds
    if not per_step:
        raise ValueError(f"the cost per step of a {budget.kind} budget is unknown")
    return max(1, math.floor(budget.amount / per_step))

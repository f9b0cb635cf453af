"""Learning-rate schedules as pure functions of the optimiser step, so resuming is exact.

Two recipes:

- ``"paper"``: polynomial decay stepped once per *epoch*, ``lr = base · (1 − e / horizon)^power``
  with ``e`` the 0-based epoch. The paper's code uses a 1500-epoch horizon for 1000 epochs of
  training, so the rate never reaches zero (a defect); ``horizon=None`` means "the training
  length", the faithful setting is ``horizon=1500``.
- ``"standard"``: polynomial decay per *iteration* with a linear warm-up (mmsegmentation's
  ``PolyLR`` + linear warm-up: ``warmup_iters`` 1500, ratio 1e-6, power 1, ``min_lr`` 0).
- ``"constant"``: the base rate throughout (useful for tests and ablations).

The schedule keeps no state but the step count; :meth:`LRSchedule.apply` sets every parameter
group's ``lr`` from its ``initial_lr``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScheduleSpec:
    """Everything that fixes the curve: the kind, its knobs and the run's length in steps."""

    kind: str
    total_steps: int
    steps_per_epoch: int
    power: float = 1.0
    horizon: int | None = None
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6
    min_lr_ratio: float = 0.0


def lr_factor(spec: ScheduleSpec, step: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    if spec.kind == "constant":
        return 1.0
    if spec.kind == "paper":
        epoch = step // max(1, spec.steps_per_epoch)
        total_epochs = -(-spec.total_steps // max(1, spec.steps_per_epoch))
        horizon = spec.horizon if spec.horizon is not None else total_epochs
        return _poly(epoch, horizon, spec.power, spec.min_lr_ratio)
    if spec.kind == "standard":
        horizon = spec.horizon if spec.horizon is not None else spec.total_steps
        factor = _poly(step, horizon, spec.power, spec.min_lr_ratio)
        if step < spec.warmup_iters:
            k = (1.0 - step / spec.warmup_iters) * (1.0 - spec.warmup_ratio)
            factor *= 1.0 - k
        return factor
    raise ValueError(f"unknown schedule kind {spec.kind!r}; use paper, standard or constant")


def _poly(position: int, horizon: int, power: float, min_ratio: float) -> float:
    progress = min(position, horizon) / max(1, horizon)
    return (1.0 - progress) ** power * (1.0 - min_ratio) + min_ratio


class LRSchedule:
    """Sets the learning rate of an optimiser for a given step; state is the step alone."""

    def __init__(self, optimizer: torch.optim.Optimizer, spec: ScheduleSpec) -> None:
        self.optimizer = optimizer
        self.spec = spec
        self.step_count = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.apply(0)

    def apply(self, step: int) -> float:
        """Set each group's lr for ``step``; return the first group's lr."""
        self.step_count = step
        factor = lr_factor(self.spec, step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step_count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.apply(int(state["step"]))

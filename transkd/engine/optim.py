"""The optimiser's parameter groups: SegFormer's recipe as two config keys.

SegFormer (and mmsegmentation's configs for it) train the decode head at ten times the encoder's
learning rate and exempt normalisation layers and position embeddings from weight decay. One
AdamW group cannot say that, so the parameters are split into up to four groups, decay/no-decay
× backbone/head, each with its own ``lr`` and ``weight_decay``. The schedule scales each group's
own base rate (``initial_lr``), and the groups travel in the optimiser's ``state_dict``, so a
resumed run continues each group where it stopped. With the defaults (``head_lr_mult`` 1, no
exemptions) there is one group holding every parameter in its usual order: older runs resume.

The backbone side holds everything that is not the student's decode head, the training-only
distillation adapters included: they learn at the base rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch import nn

from ..errors import ConfigError

#: ``optim.no_decay`` entries that name a kind of parameter rather than a name pattern.
NO_DECAY_KINDS = ("norm", "bias", "pos_embed")
#: Name components of a position embedding (transkd, timm and transformers spellings).
POS_EMBED_NAMES = ("pos_embed", "pos_embeds", "pos_block", "position_embedding",
                   "position_embeddings", "absolute_pos_embed", "cls_pos_embed")
#: Name components of a student's decode head (transkd, timm: and hf: segmentors).
HEAD_NAMES = ("decode_head", "head", "auxiliary_head")
#: Module types whose parameters are a normalisation layer's scale and shift.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm,
    nn.GroupNorm, nn.LocalResponseNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
#: Group names in the order the groups are built (the first non-empty one is the logged ``lr``).
GROUP_NAMES = ("backbone", "backbone_no_decay", "head", "head_no_decay")


@dataclass(frozen=True)
class GroupRule:
    """What decides a parameter's group: the head's rate multiplier and the decay exemptions."""

    head_lr_mult: float = 1.0
    no_decay: tuple[str, ...] = ()

    @property
    def patterns(self) -> tuple[str, ...]:
        """The ``no_decay`` entries that are name patterns (fnmatch), not kinds."""
        return tuple(p for p in self.no_decay if p not in NO_DECAY_KINDS)


def _components(name: str) -> list[str]:
    return name.split(".")


def is_head(name: str, student_prefix: str) -> bool:
    """Whether parameter ``name`` (of the whole trained module) belongs to the student's head."""
    if not name.startswith(student_prefix):
        return False
    return any(part in HEAD_NAMES for part in _components(name[len(student_prefix):]))


def _norm_parameters(module: nn.Module) -> set[int]:
    return {id(p) for m in module.modules() if isinstance(m, NORM_TYPES)
            for p in m.parameters(recurse=False)}


def _exempt(name: str, param: torch.Tensor, rule: GroupRule, norms: set[int]) -> bool:
    kinds = set(rule.no_decay)
    if "norm" in kinds and id(param) in norms:
        return True
    if "bias" in kinds and _components(name)[-1] == "bias":
        return True
    if "pos_embed" in kinds and any(part in POS_EMBED_NAMES for part in _components(name)):
        return True
    return any(fnmatchcase(name, pattern) for pattern in rule.patterns)


def parameter_groups(module: nn.Module, lr: float, weight_decay: float, rule: GroupRule,
                     student_prefix: str = "student.") -> list[dict]:
    """AdamW parameter groups of ``module``'s trainable parameters, each a dict with ``name``,
    ``params``, ``lr`` and ``weight_decay``; empty groups are left out.

    ``student_prefix`` is where the student sits in ``module`` (the Distiller's ``student.``;
    ``""`` for a bare segmentor). A name pattern of ``rule.no_decay`` that matches no trainable
    parameter raises ConfigError: a typo would otherwise silently decay everything.
    """
    norms = _norm_parameters(module)
    buckets: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_NAMES}
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    for name, param in named:
        side = "head" if rule.head_lr_mult != 1.0 and is_head(name, student_prefix) else "backbone"
        exempt = _exempt(name, param, rule, norms)
        buckets[f"{side}_no_decay" if exempt else side].append(param)
    _check_patterns(rule.patterns, (n for n, _ in named))
    if rule.head_lr_mult != 1.0 and not (buckets["head"] or buckets["head_no_decay"]):
        raise ConfigError(f"config key 'optim.head_lr_mult' is {rule.head_lr_mult:g}, but the "
                          f"network has no decode-head parameter (a name with one of "
                          f"{', '.join(HEAD_NAMES)}); leave it at 1")
    groups = []
    for name in GROUP_NAMES:
        if not buckets[name]:
            continue
        mult = rule.head_lr_mult if name.startswith("head") else 1.0
        decay = 0.0 if name.endswith("no_decay") else weight_decay
        groups.append({"name": name, "params": buckets[name], "lr": lr * mult, "weight_decay": decay})
    return groups


def _check_patterns(patterns: Sequence[str], names: Iterable[str]) -> None:
    names = list(names)
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) for n in names):
            raise ConfigError(f"config key 'optim.no_decay' entry {pattern!r} is neither a kind "
                              f"({', '.join(NO_DECAY_KINDS)}) nor a pattern matching a trainable "
                              f"parameter name (e.g. 'student.encoder.*.norm*.weight')")


def check_resumable(saved_groups: Sequence[dict], groups: Sequence[dict], path: str) -> None:
    """Refuse a checkpoint whose optimiser was split into other groups than this run's."""
    saved = [g.get("name", "backbone") for g in saved_groups]
    current = [g.get("name", "backbone") for g in groups]
    sizes_saved = [len(g["params"]) for g in saved_groups]
    sizes = [len(g["params"]) for g in groups]
    if saved != current or sizes_saved != sizes:
        raise ConfigError(f"--resume {path}: the checkpoint's optimiser has the parameter groups "
                          f"{_describe(saved, sizes_saved)}, this run's optim.head_lr_mult and "
                          f"optim.no_decay make {_describe(current, sizes)}; resume with the "
                          "settings the run was started with")


def _describe(names: Sequence[str], sizes: Sequence[int]) -> str:
    return "[" + ", ".join(f"{n} ({s} tensors)" for n, s in zip(names, sizes, strict=True)) + "]"


def adamw(groups: Sequence[dict], *, lr: float, betas: tuple[float, float], eps: float,
          weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``groups``, with the fused kernel (one pass over all parameters instead of a
    dozen elementwise ops per tensor; 5 % of a TransKD-Base CPU step) where this torch and the
    parameters' device and dtype support it, else the per-tensor implementation. The update
    is the same formula either way; only float rounding may differ."""
    options = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
    try:
        return torch.optim.AdamW(groups, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):  # an unsupported device, dtype or torch
        return torch.optim.AdamW(groups, **options)

"""Pin the loss values of distillation methods on fixed seeds.

    python tests/distill/make_fixtures.py              # every method in list_methods()
    python tests/distill/make_fixtures.py --method kd  # one (or several) methods

Writes ``tests/distill/fixtures/<method>.json`` with every loss term of three AdamW steps on a
tiny random case (SegFormer-B2 teacher, B0 student, 64×64, batch 2, 5 classes, no dropout or
stochastic depth). ``test_all_methods.py`` builds the same case and compares. Regenerate a
method's file only when a change of its numbers is intended. The pinned values come from the
code itself, so they catch a change, not a wrong formula: each formula is checked against an
independent computation in ``test_independent_losses.py``.

The case runs in float64, weights and inputs drawn in float64. In float32 the
summation order of a reduction (which differs between CPUs: AVX-512, AVX2, ARM, and with the
thread count) moves results by ~1e-7 relative per operation, and losses that cancel, such as a KL
divergence of two nearly equal distributions, turn that into 1e-5 or more; in float64 the same
differences stay below 1e-12, so one file holds on every CPU with a tolerance derived from
float64 rounding (see ``PINNED_REL``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from pathlib import Path

import torch

from transkd import create_distiller, create_model, list_methods

FIXTURE_DIR = Path(__file__).with_name("fixtures")
TEACHER, STUDENT = "segformer_b2", "segformer_b0"
BATCH, SIZE, CLASSES = 2, 64, 5
STEPS = 3
#: Precision of the pinned case.
DTYPE = torch.float64
#: Relative tolerance of a pinned term: float64 rounding (eps 1.1e-16) accumulated over the
#: ~1e6 operations behind one term (worst-case linear growth: 1e-10), amplified by at most 10x by
#: cancellation in the smallest terms and by three Adam steps: 1e-9. A change of formula, default or
#: initialisation moves a term by far more (1e-4 at least in practice).
PINNED_REL = 1e-9
#: Absolute floor for terms that are (near) zero, e.g. a loss on identical maps.
PINNED_ABS = 1e-12
LEARNING_RATE = 1e-3
SEED = 0


def teacher_model(seed: int = SEED, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The frozen teacher of the case (built once per process and precision; methods must never
    change it)."""
    return _cached_teacher(int(seed), dtype)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Create parameters and random draws directly in ``dtype``: a float32 draw that is widened
    afterwards would carry the CPU's float32 rounding (e.g. of ``erfinv`` in truncated-normal
    initialisation, which differs by an ulp between vectorised and scalar kernels)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@functools.lru_cache(maxsize=4)
def _cached_teacher(seed: int, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(seed)
    with default_dtype(dtype):
        return create_model(TEACHER, num_classes=CLASSES, drop_path_rate=0.0, dropout=0.0)


def build_case(method: str, seed: int = SEED, dtype: torch.dtype = torch.float32, **options):
    """(distiller, images, targets) of the pinned case in ``dtype``; every random draw has its own
    seed."""
    teacher = teacher_model(seed, dtype)
    with default_dtype(dtype):
        torch.manual_seed(seed + 1)
        student = create_model(STUDENT, num_classes=CLASSES, drop_path_rate=0.0, dropout=0.0)
        torch.manual_seed(seed + 2)
        distiller = create_distiller(method, teacher, student, **options)
        generator = torch.Generator().manual_seed(seed + 3)
        images = torch.rand(BATCH, 3, SIZE, SIZE, generator=generator)
    targets = torch.randint(0, CLASSES, (BATCH, SIZE // 4, SIZE // 4), generator=generator)
    targets[:, :2, :2] = 255  # a few ignored pixels, as real labels have
    torch.manual_seed(seed + 4)
    return distiller.train(), images, targets


def make_optimizer(distiller: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the student and the adapters (never the teacher), as training does."""
    params = [*distiller.student.parameters(), *distiller.extra_parameters()]
    return torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.01)


def run_steps(distiller, images, targets, steps: int = STEPS) -> list[dict[str, float]]:
    """Loss terms (as floats) of ``steps`` consecutive training steps."""
    optimizer = make_optimizer(distiller)
    history = []
    for _ in range(steps):
        out = distiller(images, targets)
        history.append({k: v.item() for k, v in out.items() if k != "logits"})
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
    return history


def fixture_path(method: str) -> Path:
    return FIXTURE_DIR / f"{method}.json"


def make_fixture(method: str) -> Path:
    distiller, images, targets = build_case(method, dtype=DTYPE)
    record = {
        "method": method, "teacher": TEACHER, "student": STUDENT, "batch": BATCH, "size": SIZE,
        "classes": CLASSES, "seed": SEED, "learning_rate": LEARNING_RATE, "torch": torch.__version__,
        "dtype": str(DTYPE).removeprefix("torch."),
        "steps": run_steps(distiller, images, targets),
    }
    path = fixture_path(method)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", action="append", choices=list_methods(),
                        help="method to pin (repeatable); default: every method")
    args = parser.parse_args(argv)
    for method in args.method or list_methods():
        print(f"{method}: {make_fixture(method)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

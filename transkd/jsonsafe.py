"""One rule for writing numbers as JSON: a non-finite float (NaN, ±inf) becomes ``null``.

Strict JSON has no NaN or Infinity, and a missing metric (a class never seen, a run that never
validated) is best read back as "no value". Every JSON file and ``--json`` output of transkd goes
through :func:`json_safe`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None, tuples as lists and paths as strings, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def is_finite_number(value: Any) -> bool:
    """True for an int or float that is neither NaN nor infinite (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

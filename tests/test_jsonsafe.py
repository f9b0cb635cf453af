import json
import math
from pathlib import Path

from transkd.jsonsafe import is_finite_number, json_safe


def test_non_finite_floats_become_null_everywhere():
    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": (2, Path("x/y")), "d": {"e": "inf"}}
    cleaned = json_safe(value)
    assert cleaned == {"a": None, "b": [None, None, 1.5], "c": [2, "x/y"], "d": {"e": "inf"}}
    json.dumps(cleaned, allow_nan=False)


def test_finite_number():
    assert is_finite_number(1) and is_finite_number(0.5)
    assert not any(is_finite_number(v) for v in (True, math.nan, math.inf, "1", None))

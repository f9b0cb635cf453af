"""The package's layers: every import between top-level parts of transkd runs downwards.

Function-level imports count too, so a deferred import cannot hide a dependency that runs up.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "transkd"

#: Lowest first. A part imports only parts of lower layers (never its own layer's other parts).
LAYERS = [
    {"errors", "jsonsafe", "inference", "progress", "host_memory"},
    {"options"},
    {"models"},
    {"data", "profile"},
    {"weights", "distill"},
    {"config"},
    {"engine", "deploy", "profile_report"},
    {"report", "recipes"},
    {"cli"},
    {"__main__"},
]
LAYER = {part: index for index, parts in enumerate(LAYERS) for part in parts}


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[str]:
    """Top-level parts of transkd that ``path`` imports (``transkd.__version__`` aside)."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            target, names = [], [a.name for a in node.names]
            for name in names:
                if name.startswith("transkd."):
                    parts.add(name.split(".")[1])
            continue
        else:
            continue
        if target[:1] != ["transkd"]:
            continue
        if len(target) > 1:
            parts.add(target[1])
        else:
            parts.update(n for n in names if n != "__version__")
    return parts


def test_every_part_has_a_layer():
    parts = {part_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert parts <= set(LAYER), f"no layer for {sorted(parts - set(LAYER))}"


def test_imports_run_downwards():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = part_of(path)
        if own == "__init__":  # the public API gathers from every layer
            continue
        for part in imported_parts(path) - {own}:
            if part in LAYER and LAYER[part] >= LAYER[own]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)} imports transkd.{part}")
    assert not wrong, "imports that run up or sideways: " + "; ".join(wrong)

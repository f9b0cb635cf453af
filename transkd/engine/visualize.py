"""Pictures of a run: predictions beside the ground truth (masks, overlays, a grid with the colour
legend) and loss and mIoU curves."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data.colours import colorize, legend_entries, legend_image, overlay


@torch.no_grad()
def predict_label(model: nn.Module, image: torch.Tensor, out_size: tuple[int, int],
                  num_classes: int) -> np.ndarray:
    """Class ids at ``out_size`` for one transformed image (3, H, W); extra outputs (void) ignored."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        logits = model(image.unsqueeze(0).to(device))
        logits = F.interpolate(logits[:, :num_classes].float(), size=out_size, mode="bilinear",
                               align_corners=False)
    finally:
        model.train(was_training)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def save_predictions(models: Mapping[str, nn.Module], raw_dataset, transformed_dataset,
                     indices: Sequence[int], out_dir: str | Path, palette, num_classes: int,
                     ignore_index: int = 255, class_names: Sequence[str] | None = None) -> list[Path]:
    """For each sample: the image, its ground truth and every model's prediction as colour masks
    and overlays (``<sample>_<model>_mask.png``/``_overlay.png``), plus one ``grid.png``; with
    ``class_names``, the grid carries the colour legend and ``legend.png`` holds it alone."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows = []
    for index in indices:
        sample = raw_dataset[index]
        image, size = sample.image, sample.label.shape[:2]
        tensor = transformed_dataset[index]["image"]
        truth = colorize(sample.label, palette, ignore_index)
        row = [("image", image), ("ground truth", truth)]
        for label, path in ((f"{sample.name}_image.png", image), (f"{sample.name}_truth.png", truth)):
            Image.fromarray(path).save(out_dir / label)
            written.append(out_dir / label)
        for name, model in models.items():
            mask = colorize(predict_label(model, tensor, size, num_classes), palette, ignore_index)
            for kind, picture in (("mask", mask), ("overlay", overlay(image, mask))):
                path = out_dir / f"{sample.name}_{name}_{kind}.png"
                Image.fromarray(picture).save(path)
                written.append(path)
            row.append((name, mask))
        rows.append(row)
    legend = legend_entries(class_names, palette) if class_names else None
    if legend:
        legend_image(class_names, palette).save(out_dir / "legend.png")
        written.append(out_dir / "legend.png")
    if rows:
        written.append(_grid(rows, out_dir / "grid.png", legend))
    return written


def _grid(rows: list[list[tuple[str, np.ndarray]]], path: Path,
          legend: list[tuple[str, tuple[int, int, int]]] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cols = len(rows[0])
    height, width = rows[0][0][1].shape[:2]
    panel = 1.8  # inches per panel height
    fig_width = max(cols * panel * width / height, 4.0)
    columns = max(1, int(fig_width // 1.3))
    legend_rows = -(-len(legend) // columns) if legend else 0
    legend_height = 0.22 * legend_rows + (0.15 if legend else 0)
    fig, axes = plt.subplots(len(rows), cols, squeeze=False,
                             figsize=(fig_width, len(rows) * panel + 0.4 + legend_height))
    for r, row in enumerate(rows):
        for c, (title, picture) in enumerate(row):
            ax = axes[r][c]
            ax.imshow(picture)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
    if legend:
        handles = [Patch(facecolor=np.asarray(colour) / 255, edgecolor="grey", label=name)
                   for name, colour in legend]
        fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=7, frameon=False,
                   handlelength=1.2, columnspacing=1.0)
        fig.tight_layout(rect=(0, legend_height / fig.get_figheight(), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(runs: Mapping[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """Training cross-entropy (the task term, comparable across methods) and validation mIoU
    against optimiser steps, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, miou_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, records in runs.items():
        train = [(r["step"], r["ce"]) for r in records if r.get("kind") == "train" and "ce" in r]
        val = [(r["step"], 100 * r["miou"]) for r in records
               if r.get("kind") == "val" and isinstance(r.get("miou"), float) and math.isfinite(r["miou"])]
        if train:
            loss_ax.plot(*zip(*train), label=name)
        if val:
            miou_ax.plot(*zip(*val), marker="o", markersize=3, label=name)
    loss_ax.set(xlabel="optimiser step", ylabel="cross-entropy", title="training cross-entropy")
    miou_ax.set(xlabel="optimiser step", ylabel="val mIoU (%)", title="validation mIoU")
    for ax in (loss_ax, miou_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

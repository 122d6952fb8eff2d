"""Layer x layer similarity matrices as a PNG of heatmaps (matplotlib figures drawn
without pyplot: no display, and the user's matplotlib backend is left alone)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor


def similarity_heatmaps(
    matrices: Mapping[str, Tensor],
    path: str | Path,
    labels_a: Sequence[str] | None = None,
    labels_b: Sequence[str] | None = None,
    name_a: str = "model A",
    name_b: str = "model B",
    titles: Mapping[str, str] | None = None,
    columns: int = 4,
) -> Path:
    """One heatmap per measure (rows: layers of A, columns: layers of B), each on its own
    colour scale, with a dot on the most similar layer of B for each layer of A."""
    if not matrices:
        raise ValueError("give at least one matrix to draw.")
    columns = min(columns, len(matrices))
    rows = math.ceil(len(matrices) / columns)
    fig = Figure(figsize=(3.4 * columns, 3.1 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, (measure, matrix) in zip(axes.flat, matrices.items()):
        values = matrix.detach().double().cpu()
        image = ax.imshow(values.numpy(), cmap="viridis", origin="upper", aspect="auto")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        best = torch.nan_to_num(values, nan=-math.inf).argmax(dim=1)
        ax.scatter(best.numpy(), range(len(best)), s=12, c="red", marker="o")
        ax.set_title((titles or {}).get(measure, measure), fontsize=9)
        ax.set_xlabel(name_b, fontsize=8)
        ax.set_ylabel(name_a, fontsize=8)
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]))
        ax.set_xticklabels(labels_b or range(values.shape[1]), fontsize=7, rotation=90 if labels_b else 0)
        ax.set_yticklabels(labels_a or range(values.shape[0]), fontsize=7)
    for ax in list(axes.flat)[len(matrices) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)

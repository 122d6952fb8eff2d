"""Pictures of results, as PNG files (matplotlib figures drawn without pyplot: no
display, and the user's matplotlib backend is left alone)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure


def growth_plot(history: dict[str, list[list[float]]], path: str | Path) -> Path:
    """Dictionary size, and the share of tokens reconstructed worse than the threshold,
    against tokens seen, one line per hook."""
    fig = Figure(figsize=(10, 3.6))
    size_ax, error_ax = fig.subplots(1, 2)
    for hook, rows in history.items():
        tokens = [r[0] for r in rows]
        size_ax.plot(tokens, [r[1] for r in rows], label=hook)
        error_ax.plot(tokens, [r[2] for r in rows], label=hook)
    size_ax.set(xlabel="tokens", ylabel="atoms", title="dictionary size")
    error_ax.set(xlabel="tokens", ylabel="share of tokens", title="reconstructed worse than the threshold", ylim=(0, 1.02))
    size_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def attribution_plot(
    atoms: Sequence[int],
    scores: Sequence[float],
    labels: Sequence[str],
    path: str | Path,
    title: str = "attribution by atom",
    xlabel: str = "attribution (gradient x coefficient)",
) -> Path:
    """A horizontal bar per atom (``scores`` in the order given, first at the top),
    labelled ``#atom label``; positive bars blue, negative red."""
    if not (len(atoms) == len(scores) == len(labels)):
        raise ValueError(f"give as many scores and labels as atoms: got {len(atoms)}, {len(scores)} and {len(labels)}.")
    if not atoms:
        raise ValueError("give at least one atom to plot.")
    scores = [float(s) for s in scores]
    names = [f"#{int(a)} {_one_line(label, 48)}" for a, label in zip(atoms, labels)]
    fig = Figure(figsize=(9, 0.8 + 0.36 * len(atoms)))
    ax = fig.subplots()
    rows = range(len(atoms))
    ax.barh(rows, scores, color=["#3b5bdb" if s >= 0 else "#e03131" for s in scores])
    ax.set_yticks(list(rows), names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(xlabel=xlabel, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def _one_line(text: str, width: int) -> str:
    """``text`` on one line (newlines as ↵), cut to ``width`` characters."""
    text = text.replace("\n", "↵").replace("\t", " ")
    return text if len(text) <= width else text[: width - 1] + "…"

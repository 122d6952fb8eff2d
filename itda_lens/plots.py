"""Pictures of results, as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def growth_plot(history: dict[str, list[list[float]]], path: str | Path) -> Path:
    """Dictionary size and mean relative error against tokens seen, one line per hook."""
    fig, (size_ax, error_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for hook, rows in history.items():
        tokens = [r[0] for r in rows]
        size_ax.plot(tokens, [r[1] for r in rows], label=hook)
        error_ax.plot(tokens, [r[2] for r in rows], label=hook)
    size_ax.set(xlabel="tokens", ylabel="atoms", title="dictionary size")
    error_ax.set(xlabel="tokens", ylabel="mean ||x - x_hat||² / ||x||²", title="relative error before adding", yscale="log")
    size_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

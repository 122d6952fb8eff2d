"""Reconstruction and language-modelling metrics, accumulated over batches.

Only positions in the mask count: BOS and padding are never encoded and never scored.
A next-token loss counts at position ``p`` when ``p`` and ``p + 1`` are both in the mask.

- FVU: mean over tokens of ``||x - x_hat||^2`` divided by the mean over tokens of
  ``||x - mean(x)||^2``, the mean taken over all scored tokens.
- MSE: mean of ``(x - x_hat)^2`` over tokens and dimensions.
- cosine: mean over tokens of ``cos(x, x_hat)``.
- L0: mean number of distinct atoms with a non-zero coefficient per token (an atom that
  matching pursuit chose twice counts once, with its coefficients summed).
- CE loss score: ``(ce_zero - ce_spliced) / (ce_zero - ce_clean)``; delta LM loss:
  ``ce_spliced - ce_clean``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor


def merged_codes(
    indices: Int[Tensor, "n k"], values: Float[Tensor, "n k"]
) -> tuple[Int[Tensor, "n k"], Float[Tensor, "n k"], Bool[Tensor, "n k"]]:
    """Each token's codes with repeated atoms merged: its atom indices sorted, each
    atom's summed coefficient in every slot that holds it, and a mask of one slot per
    distinct atom whose sum is not zero."""
    indices, order = indices.sort(dim=1)
    values = values.gather(1, order)
    first = torch.ones_like(indices, dtype=torch.bool)
    first[:, 1:] = indices[:, 1:] != indices[:, :-1]
    group = first.long().cumsum(1) - 1
    summed = torch.zeros_like(values).scatter_add_(1, group, values).gather(1, group)
    return indices, summed, first & (summed != 0)


def atom_uses(indices: Int[Tensor, "n k"], values: Float[Tensor, "n k"], n_atoms: int) -> Int[Tensor, " n_atoms"]:
    """How many of the ``n`` tokens' codes use each atom (an atom repeated in a code counts
    once, and only when its summed coefficient is not zero)."""
    indices, _, keep = merged_codes(indices, values)
    return torch.bincount(indices[keep], minlength=n_atoms)


class ReconstructionMetrics:
    """Running sums for FVU, MSE, cosine and L0."""

    def __init__(self) -> None:
        self.tokens = 0
        self.d_model = 0
        self.sq_error = 0.0
        self.sq_norm = 0.0
        self.cosine = 0.0
        self.l0 = 0.0
        self.total: Tensor | None = None

    def update(self, x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"], codes: tuple[Int[Tensor, "n k"], Float[Tensor, "n k"]]) -> None:
        """Add ``n`` tokens, their reconstructions and their codes ``(indices, values)``."""
        x, x_hat = x.double(), x_hat.double()
        self.tokens += len(x)
        self.d_model = x.shape[1]
        self.sq_error += float((x - x_hat).pow(2).sum())
        self.sq_norm += float(x.pow(2).sum())
        self.cosine += float(F.cosine_similarity(x, x_hat, dim=1).sum())
        self.l0 += float(merged_codes(*codes)[2].sum())
        total = x.sum(0).cpu()
        self.total = total if self.total is None else self.total + total

    def result(self) -> dict[str, float]:
        if self.tokens == 0:
            raise ValueError("no tokens were scored.")
        mean = self.total / self.tokens
        variance = self.sq_norm / self.tokens - float(mean.pow(2).sum())
        return {
            "fvu": self.sq_error / self.tokens / variance,
            "mse": self.sq_error / (self.tokens * self.d_model),
            "cosine": self.cosine / self.tokens,
            "l0": self.l0 / self.tokens,
        }


def next_token_losses(
    logits: Float[Tensor, "batch seq vocab"], tokens: Int[Tensor, "batch seq"], mask: Bool[Tensor, "batch seq"]
) -> Float[Tensor, " n"]:
    """Cross-entropy of each scored next-token prediction."""
    scored = mask[:, :-1] & mask[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten().to(logits.device), reduction="none")
    return losses[scored.flatten().to(logits.device)]


class LossMetrics:
    """Running sums of clean, spliced and zero-ablated next-token losses."""

    def __init__(self) -> None:
        self.count = 0
        self.sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}

    def update(self, clean: Tensor, spliced: Tensor, zero: Tensor) -> None:
        self.count += len(clean)
        for name, losses in (("clean", clean), ("spliced", spliced), ("zero", zero)):
            self.sums[name] += float(losses.double().sum())

    def result(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("no next-token predictions were scored.")
        clean, spliced, zero = (self.sums[name] / self.count for name in ("clean", "spliced", "zero"))
        return {
            "ce_loss_clean": clean,
            "ce_loss_spliced": spliced,
            "ce_loss_zero": zero,
            "ce_loss_score": (zero - spliced) / (zero - clean),
            "delta_lm_loss": spliced - clean,
        }

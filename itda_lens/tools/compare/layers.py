"""Layer x layer similarity of models, and how well it matches layers to their depth.

A similarity matrix ``S`` of models ``a`` and ``b`` holds ``S[i, j]``, the similarity of
layer ``i`` of ``a`` and layer ``j`` of ``b``. For models of one architecture, layer ``i``
of ``a`` is *matched* when ``S[i, i]`` is the largest entry of row ``i`` (a tie shares
the credit: ``1 / (number of tied maxima)``; NaN never wins).

:func:`matching_accuracy` averages that over every layer of every ordered pair of models:
- ``include_self=False``: pairs of different models only, the protocol of Kornblith et
  al. (2019, "Similarity of Neural Network Representations Revisited", section 6.1);
- ``include_self=True``: each model against itself too, as the ITDA paper counts. A
  model's own layer is trivially its most similar, so this is never lower when the
  measure gives a layer full similarity with itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from itda_lens.core.itda import ITDA
from itda_lens.tools.compare.jaccard import KeyMode, atom_keys, check_same_doc_kind

PairKey = tuple[str, str]


def jaccard_matrix(
    dictionaries_a: Mapping[str, ITDA] | Sequence[ITDA],
    dictionaries_b: Mapping[str, ITDA] | Sequence[ITDA],
    by: KeyMode = "span",
    trim_whitespace: bool = True,
) -> Float[Tensor, "layers_a layers_b"]:
    """Jaccard of every dictionary of ``a`` with every dictionary of ``b`` (float64, in
    the order given)."""
    values_a, values_b = _values(dictionaries_a), _values(dictionaries_b)
    check_same_doc_kind(values_a + values_b)
    keys_a = [atom_keys(d, by, trim_whitespace) for d in values_a]
    keys_b = [atom_keys(d, by, trim_whitespace) for d in values_b]
    out = torch.empty(len(keys_a), len(keys_b), dtype=torch.float64)
    for i, ka in enumerate(keys_a):
        for j, kb in enumerate(keys_b):
            out[i, j] = len(ka & kb) / len(ka | kb)
    return out


def _values(dictionaries):
    values = list(dictionaries.values()) if isinstance(dictionaries, Mapping) else list(dictionaries)
    if not values:
        raise ValueError("give at least one dictionary.")
    return values


def matched(similarity: Float[Tensor, "layers layers"]) -> Float[Tensor, " layers"]:
    """Per row ``i``: 1 if ``S[i, i]`` is the unique row maximum, ``1/t`` if it ties with
    ``t - 1`` others, 0 otherwise (NaN entries never win)."""
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(
            f"layer matching needs a square matrix (models of one depth), got shape {tuple(similarity.shape)}."
        )
    s = torch.nan_to_num(similarity.double(), nan=-torch.inf)
    best = s.max(dim=1, keepdim=True).values
    ties = (s == best) & torch.isfinite(best)
    diagonal = ties.diagonal()
    return torch.where(diagonal, 1.0 / ties.sum(1).clamp_min(1), torch.zeros_like(best[:, 0]))


def ordered_pairs(matrices: Mapping[PairKey, Tensor], include_self: bool) -> dict[PairKey, Tensor]:
    """Every ordered pair of models with its matrix: a pair given once as ``(a, b)`` also
    stands for ``(b, a)`` by transposition; self-pairs are kept only with ``include_self``."""
    pairs: dict[PairKey, Tensor] = {}
    for (a, b), s in matrices.items():
        pairs[(a, b)] = s
    for (a, b), s in matrices.items():
        if a != b and (b, a) not in pairs:
            pairs[(b, a)] = s.T
    return {(a, b): s for (a, b), s in pairs.items() if include_self or a != b}


def matching_accuracy(matrices: Mapping[PairKey, Tensor], include_self: bool = False) -> float:
    """The share of layers matched to their own depth, over every layer of every ordered
    pair of models (see the module doc)."""
    pairs = ordered_pairs(matrices, include_self)
    if not pairs:
        raise ValueError(
            "no pair of models to match layers across: give matrices of at least two models"
            + ("" if include_self else ", or pass include_self=True")
            + "."
        )
    scores = torch.cat([matched(s) for s in pairs.values()])
    return float(scores.mean())

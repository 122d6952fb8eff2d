"""Layer x layer similarity of models, and how well it matches layers to their depth.

A similarity matrix ``S`` of models ``a`` and ``b`` holds ``S[i, j]``, the similarity of
layer ``i`` of ``a`` and layer ``j`` of ``b``. Layer ``i`` of ``a`` is *matched* when the
largest entry of row ``i`` is at the layer of ``b`` at the nearest relative depth
(:func:`depth_targets`: layer ``i`` of ``n`` sits at ``i / (n - 1)``, so the first layers
correspond, and the last). For models of one depth that is ``S[i, i]``. A tie shares the
credit: the share of the tied maxima that are targets; NaN never wins.

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
from jaxtyping import Bool, Float
from torch import Tensor

from itda_lens.core.itda import ITDA
from itda_lens.tools.compare.jaccard import (
    EXACT,
    RARITY_POWER,
    Key,
    KeyMode,
    atom_keys,
    check_min_overlap,
    check_same_doc_kind,
    matched_pairs,
    rarity_weights,
    ruzicka,
    use_shares,
)

PairKey = tuple[str, str]


def jaccard_matrix(
    dictionaries_a: Mapping[str, ITDA] | Sequence[ITDA],
    dictionaries_b: Mapping[str, ITDA] | Sequence[ITDA],
    by: KeyMode = "span",
    trim_whitespace: bool = True,
    min_overlap: float = EXACT,
) -> Float[Tensor, "layers_a layers_b"]:
    """Jaccard of every dictionary of ``a`` with every dictionary of ``b`` (float64, in
    the order given)."""
    values_a, values_b = _checked(dictionaries_a, dictionaries_b, by, min_overlap)
    keys_a = [atom_keys(d, by, trim_whitespace) for d in values_a]
    keys_b = [atom_keys(d, by, trim_whitespace) for d in values_b]
    out = torch.empty(len(keys_a), len(keys_b), dtype=torch.float64)
    for i, ka in enumerate(keys_a):
        for j, kb in enumerate(keys_b):
            common = len(matched_pairs(ka, kb, min_overlap))
            out[i, j] = common / (len(ka) + len(kb) - common)
    return out


def weighted_jaccard_matrix(
    dictionaries_a: Mapping[str, ITDA] | Sequence[ITDA],
    dictionaries_b: Mapping[str, ITDA] | Sequence[ITDA],
    uses_a: Sequence[Tensor],
    uses_b: Sequence[Tensor],
    by: KeyMode = "span",
    min_overlap: float = EXACT,
) -> Float[Tensor, "layers_a layers_b"]:
    """:func:`~itda_lens.tools.compare.jaccard.weighted_jaccard` of every dictionary of
    ``a`` with every dictionary of ``b``, ``uses_*`` holding each dictionary's uses in the
    same order (float64)."""
    values_a, values_b = _checked(dictionaries_a, dictionaries_b, by, min_overlap)
    shares_a = [use_shares(d, uses, by) for d, uses in zip(values_a, uses_a, strict=True)]
    shares_b = [use_shares(d, uses, by) for d, uses in zip(values_b, uses_b, strict=True)]
    return ruzicka_matrix(shares_a, shares_b, min_overlap)


def rarity_jaccard_matrix(
    dictionaries_a: Mapping[str, ITDA] | Sequence[ITDA],
    dictionaries_b: Mapping[str, ITDA] | Sequence[ITDA],
    by: KeyMode = "span",
    min_overlap: float = EXACT,
    power: float = RARITY_POWER,
) -> Float[Tensor, "layers_a layers_b"]:
    """The rarity-weighted Jaccard of every layer dictionary of model ``a`` with every one
    of model ``b`` (float64): each atom weighs ``n ** -power``, ``n`` the number of its
    own model's dictionaries that hold it
    (:func:`~itda_lens.tools.compare.jaccard.rarity_weights`). Give all of a model's
    layers: the weights depend on them. ``power=0`` is :func:`jaccard_matrix`."""
    values_a, values_b = _checked(dictionaries_a, dictionaries_b, by, min_overlap)
    return ruzicka_matrix(rarity_weights(values_a, by, power=power), rarity_weights(values_b, by, power=power), min_overlap)


def ruzicka_matrix(
    weights_a: Sequence[Mapping[Key, float]], weights_b: Sequence[Mapping[Key, float]], min_overlap: float = EXACT
) -> Float[Tensor, "layers_a layers_b"]:
    """:func:`~itda_lens.tools.compare.jaccard.ruzicka` of every weighted atom set of ``a``
    with every one of ``b`` (float64)."""
    out = torch.empty(len(weights_a), len(weights_b), dtype=torch.float64)
    for i, wa in enumerate(weights_a):
        for j, wb in enumerate(weights_b):
            out[i, j] = ruzicka(wa, wb, min_overlap)
    return out


def _checked(dictionaries_a, dictionaries_b, by: KeyMode, min_overlap: float) -> tuple[list[ITDA], list[ITDA]]:
    """Both models' dictionaries as lists, refused when empty, of two document kinds, or
    with an overlap threshold ``by`` does not allow."""
    values_a, values_b = _values(dictionaries_a), _values(dictionaries_b)
    check_same_doc_kind(values_a + values_b)
    check_min_overlap(min_overlap, by)
    return values_a, values_b


def _values(dictionaries) -> list[ITDA]:
    values = list(dictionaries.values()) if isinstance(dictionaries, Mapping) else list(dictionaries)
    if not values:
        raise ValueError("give at least one dictionary.")
    return values


def depth_targets(layers_a: int, layers_b: int) -> Bool[Tensor, "layers_a layers_b"]:
    """``True`` at the layers of ``b`` nearest in relative depth to each layer of ``a``
    (layer ``i`` of ``n`` at ``i / (n - 1)``; a single layer at 0). Several only on an
    exact tie; the identity when the depths are equal."""
    if layers_a < 1 or layers_b < 1:
        raise ValueError(f"models need at least one layer, got {layers_a} and {layers_b}.")
    # |i / (n_a - 1) - j / (n_b - 1)| times (n_a - 1)(n_b - 1): integers, so ties are exact.
    gap = (torch.arange(layers_a)[:, None] * max(layers_b - 1, 1) - torch.arange(layers_b)[None, :] * max(layers_a - 1, 1)).abs()
    return gap == gap.min(dim=1, keepdim=True).values


def matched(similarity: Float[Tensor, "*batch layers_a layers_b"]) -> Float[Tensor, "*batch layers_a"]:
    """Per row ``i``: the share of the row's maxima that lie at the nearest relative depth
    (:func:`depth_targets`): 1 if the unique maximum does, 0 if it lies elsewhere (NaN
    entries never win). Leading dimensions are a batch of matrices."""
    if similarity.dim() < 2:
        raise ValueError(f"layer matching needs a matrix, got shape {tuple(similarity.shape)}.")
    s = torch.nan_to_num(similarity.double(), nan=-torch.inf)
    best = s.max(dim=-1, keepdim=True).values
    ties = (s == best) & torch.isfinite(best)
    targets = depth_targets(*s.shape[-2:]).to(s.device)
    return (ties & targets).sum(-1) / ties.sum(-1).clamp_min(1)


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

"""Bootstrap confidence intervals of layer-matching accuracy.

Two things in a layer-matching result are chance: which models were trained (their
seeds) and which documents the dictionaries were built on. :func:`accuracy_draws`
redraws either or both, with replacement, and :func:`accuracy_interval` reports the percentile
interval of the accuracy over the draws:

- models: each draw takes as many models as there are, from each group (e.g. one group
  per tokenizer) separately; an ordered pair of drawn models counts once per way to draw
  it (``count_a * count_b``), a model against itself (with ``include_self``) once per
  copy; two copies of one model never make a cross-model pair, and a draw left with no
  pair at all is skipped;
- documents (ITDA Jaccard, plain or rarity-weighted, only): each draw weights every
  document by how often it is drawn. Jaccard over a set of documents is a ratio of sums of
  per-document counts (:class:`DocumentCounts`), so it is recomputed exactly for every draw. The baselines'
  matrices would need their activations recomputed per draw and are held fixed.

Whether one measure beats another is read from :func:`difference_interval`: the
interval of the accuracy gap over draws that redraw the same models for both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from itda_lens.core.itda import ITDA
from itda_lens.tools.compare.jaccard import EXACT, Key, KeyMode, check_min_overlap, check_same_doc_kind, matched_pairs, rarity_weights
from itda_lens.tools.compare.layers import PairKey, matched, ordered_pairs

Resample = Literal["models", "documents", "both"]


@dataclass
class Interval:
    """A value with the bounds of its bootstrap interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    @classmethod
    def of_draws(cls, draws: Float[Tensor, " draws_plus_one"], level: float = 0.95) -> Interval:
        """The value as given (entry 0) with the central ``level`` percentile interval of
        the bootstrap draws after it (NaN draws left out)."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must lie in (0, 1), got {level}.")
        redrawn = draws[1:]
        decided = redrawn[~redrawn.isnan()]
        tail = (1.0 - level) / 2
        low, high = torch.quantile(decided, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
        return cls(float(draws[0]), low, high)


@dataclass
class DocumentCounts:
    """Per document: the atoms of each dictionary of ``a`` and of ``b`` and the matched
    pairs of each dictionary pair (with atom weights: the sums of the weights and of the
    matched pairs' smaller weights)."""

    docs: list[int]
    sizes_a: Float[Tensor, "layers_a docs"]
    sizes_b: Float[Tensor, "layers_b docs"]
    common: Float[Tensor, "layers_a layers_b docs"]

    def jaccard(self, weights: Float[Tensor, "docs draws"] | None = None) -> Float[Tensor, "draws layers_a layers_b"]:
        """Jaccard (weighted: Ruzicka) of every dictionary pair over the documents weighted
        by each column of ``weights`` (default: one column of ones, all documents once)."""
        if weights is None:
            weights = torch.ones(len(self.docs), 1, dtype=torch.float64)
        common = torch.einsum("ijd,dn->nij", self.common, weights)
        union = (self.sizes_a @ weights).T[:, :, None] + (self.sizes_b @ weights).T[:, None, :] - common
        return torch.where(union > 0, common / union.clamp_min(1e-12), torch.zeros_like(union))


def document_counts(
    dictionaries_a: Sequence[ITDA],
    dictionaries_b: Sequence[ITDA],
    by: KeyMode = "span",
    min_overlap: float = EXACT,
    docs: Sequence[int] | None = None,
    rarity_power: float = 0.0,
) -> DocumentCounts:
    """:class:`DocumentCounts` of two models' dictionaries, over ``docs`` (default: every
    document of their atoms, sorted); atoms of other documents are left out. Each atom
    weighs as in the rarity-weighted Jaccard with ``rarity_power``
    (:func:`~itda_lens.tools.compare.jaccard.rarity_weights` over each model's
    dictionaries given; 0, the default: every atom 1, the paper's Jaccard). A weight
    depends on its own document only, so redrawing documents stays exact."""
    check_same_doc_kind(list(dictionaries_a) + list(dictionaries_b))
    check_min_overlap(min_overlap, by)
    weights_a = rarity_weights(list(dictionaries_a), by, power=rarity_power)
    weights_b = rarity_weights(list(dictionaries_b), by, power=rarity_power)
    if docs is None:
        docs = sorted({key[0] for weights in weights_a + weights_b for key in weights})
    column = {doc: i for i, doc in enumerate(docs)}

    def sizes(all_weights: list[dict[Key, float]]) -> Tensor:
        out = torch.zeros(len(all_weights), len(docs), dtype=torch.float64)
        for i, weights in enumerate(all_weights):
            for key, weight in weights.items():
                if key[0] in column:
                    out[i, column[key[0]]] += weight
        return out

    common = torch.zeros(len(weights_a), len(weights_b), len(docs), dtype=torch.float64)
    for i, wa in enumerate(weights_a):
        for j, wb in enumerate(weights_b):
            for x, y in matched_pairs(set(wa), set(wb), min_overlap):
                if x[0] in column:
                    common[i, j, column[x[0]]] += min(wa[x], wb[y])
    return DocumentCounts(list(docs), sizes(weights_a), sizes(weights_b), common)


def accuracy_draws(
    matrices: Mapping[PairKey, Tensor] | None = None,
    counts: Mapping[PairKey, DocumentCounts] | None = None,
    include_self: bool = False,
    resample: Resample = "both",
    groups: Mapping[str, str] | None = None,
    draws: int = 1000,
    seed: int = 0,
) -> Float[Tensor, " draws_plus_one"]:
    """Layer-matching accuracy (:func:`~itda_lens.tools.compare.layers.matching_accuracy`)
    on the models and documents as given (entry 0), then on each bootstrap draw (see the
    module doc; NaN for a draw left with no pair). Give ``matrices`` (held fixed), or
    ``counts`` for ITDA Jaccard (documents can be redrawn), per pair of models given once
    as ``(a, b)`` (and ``(a, a)`` for self-pairs). ``groups`` maps each model to the group
    it is redrawn within (default: one group).

    Models and documents are drawn from streams of their own, so two measures' draws with
    the same ``seed`` over the same models and ``groups`` redraw the same models: their
    difference is paired (:func:`difference_interval`)."""
    if (matrices is None) == (counts is None):
        raise ValueError("give matrices or counts (one of them).")
    if resample not in ("models", "documents", "both"):
        raise ValueError(f"resample must be 'models', 'documents' or 'both', got {resample!r}.")
    if resample != "models" and counts is None:
        raise ValueError("redrawing documents needs counts (ITDA Jaccard); the baselines' matrices can only redraw models.")
    given = matrices if matrices is not None else counts
    if counts is not None:
        docs = next(iter(counts.values())).docs
        if any(c.docs != docs for c in counts.values()):
            raise ValueError("every pair's counts must be over the same documents (pass docs= to document_counts).")
        weights = torch.ones(len(docs), draws + 1, dtype=torch.float64)
        if resample != "models":
            picks = torch.randint(len(docs), (len(docs), draws), generator=torch.Generator().manual_seed(seed + 1))
            weights[:, 1:] = torch.zeros(len(docs), draws, dtype=torch.float64).scatter_add_(0, picks, torch.ones_like(picks, dtype=torch.float64))
        similarity = {pair: c.jaccard(weights) for pair, c in counts.items()}
    else:
        similarity = {pair: s.double()[None].expand(draws + 1, *s.shape) for pair, s in given.items()}
    pairs = ordered_pairs({pair: torch.zeros(1, 1) for pair in similarity}, include_self)
    if not pairs:
        raise ValueError("no pair of models to match layers across: give at least two models, or pass include_self=True.")
    scores, rows = {}, {}
    for a, b in pairs:
        s = similarity[(a, b)] if (a, b) in similarity else similarity[(b, a)].transpose(1, 2)
        scores[(a, b)] = matched(s).sum(-1)
        rows[(a, b)] = s.shape[1]
    names = sorted({name for pair in pairs for name in pair})
    count = torch.ones(draws + 1, len(names), dtype=torch.float64)
    if resample != "documents":
        generator = torch.Generator().manual_seed(seed)
        group_of = {name: (groups or {}).get(name, "") for name in names}
        count[1:] = 0
        for group in sorted(set(group_of.values())):
            members = torch.tensor([i for i, name in enumerate(names) if group_of[name] == group])
            picks = members[torch.randint(len(members), (draws, len(members)), generator=generator)]
            count[1:].scatter_add_(1, picks, torch.ones_like(picks, dtype=torch.float64))
    index = {name: i for i, name in enumerate(names)}
    total = torch.zeros(draws + 1, dtype=torch.float64)
    decisions = torch.zeros(draws + 1, dtype=torch.float64)
    for (a, b), score in scores.items():
        weight = count[:, index[a]] * (count[:, index[b]] if a != b else 1.0)
        total += weight * score
        decisions += weight * rows[(a, b)]
    # A draw of copies of one model only has no cross-model pair: it decides nothing.
    return torch.where(decisions > 0, total / decisions.clamp_min(1), torch.full_like(total, float("nan")))


def accuracy_interval(
    matrices: Mapping[PairKey, Tensor] | None = None,
    counts: Mapping[PairKey, DocumentCounts] | None = None,
    include_self: bool = False,
    resample: Resample = "both",
    groups: Mapping[str, str] | None = None,
    draws: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Layer-matching accuracy with the percentile interval of its bootstrap draws
    (:func:`accuracy_draws`, which takes the same arguments but ``level``)."""
    return Interval.of_draws(accuracy_draws(matrices, counts, include_self, resample, groups, draws, seed), level)


def difference_interval(
    first: Float[Tensor, " draws_plus_one"], second: Float[Tensor, " draws_plus_one"], level: float = 0.95
) -> Interval:
    """How much more accurate ``first`` is than ``second``, with the percentile interval
    of the paired difference: both from :func:`accuracy_draws` with the same models,
    ``groups``, ``draws`` and ``seed``. An interval above 0 says ``first`` is ahead at
    this level, on the models both measures saw; two separate intervals ignore that they
    saw the same ones."""
    if first.shape != second.shape:
        raise ValueError(f"both measures need the same number of draws, got {len(first) - 1} and {len(second) - 1}.")
    return Interval.of_draws(first - second, level)

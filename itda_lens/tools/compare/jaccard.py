"""Jaccard similarity of two dictionaries by the provenance of their atoms, and its null.

Every atom is the activation of one token in context, so a dictionary is also a set of
token occurrences. Two atoms (of two dictionaries, possibly of two models) are the same
occurrence when they come from the same document (content hash) and

- ``by="span"``: cover the same characters of it. This does not depend on the tokenizer,
  so models with different tokenizers can be compared on shared documents. With
  ``trim_whitespace`` (the default) the span is first shrunk to its non-space
  characters, so a tokenizer that attaches the space to the next word (``" the"``) and
  one that does not (``"the"``) agree; a span of whitespace only is kept as it is.
- ``by="token"``: sit at the same token index of the document, as in the ITDA paper
  (meaningful only when both models tokenise the same way).

**Overlapping spans** (``by="span"`` with ``min_overlap < 1``, for two tokenizers that
cut words differently): atoms ``a`` and ``b`` of one document also match when their
spans' overlap over union, ``|a & b| / |a | b|`` in characters, is at least
``min_overlap``, which must lie in (1/2, 1]. Identical spans always match. Above one
half, a span overlaps that much with at most one span of a tokenisation (the two
overlaps would need more than all its characters), so the matching is one-to-one and
the Jaccard stays in [0, 1]: ``J = m / (|A| + |B| - m)`` with ``m`` matched pairs.
Should one dictionary hold overlapping spans (not one tokenisation), each atom of the
other keeps its best match (largest overlap, then first in order).
``min_overlap=1`` (the default) is exact span equality.

A dictionary read from the reference implementation's files keys its atoms by the
reference's sequence index instead of a document hash (``config.build["doc"]``); keys of
the two kinds never match, so comparing such dictionaries with each other is an error.

``J(A, B) = |A & B| / |A | B|``. Its null, :func:`expected_jaccard`, is the Jaccard
expected when each dictionary's atoms are replaced by as many token occurrences drawn
uniformly without replacement from the tokens it was built from; with two tokenizers,
``shared`` is the number of those occurrences that match each other by the same rule
(:func:`matched_pairs` on the two token populations), which keeps the null exact
because the rule pairs occurrences one-to-one.

Two weighted forms are offered beside the paper's Jaccard, never in place of it, both the
weighted (:func:`ruzicka`) Jaccard of weights on the same matched pairs: by each atom's
share of use on shared text (:func:`weighted_jaccard`), and by how few of its model's
layer dictionaries hold the occurrence (:func:`rarity_weights`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from itda_lens.core.itda import ITDA
from itda_lens.core.provenance import Provenance
from itda_lens.core.reference import DOC_KIND as REFERENCE_DOC_KIND

KeyMode = Literal["span", "token"]
HasProvenance = ITDA | Provenance

#: What ``provenance.doc`` holds in a dictionary built by itda-lens.
DOCUMENT_HASH = "document hash"

#: The default ``min_overlap``: spans match only when equal.
EXACT = 1.0

#: The default ``power`` of :func:`rarity_weights`: the smallest that reached the best
#: layer-matching accuracy on pilot models trained as long as the reported ones
#: (``docs/benchmarks.md``, "Layer matching across seeds").
RARITY_POWER = 4.0

#: Probability below which a value of the shared-atoms count is left out of the null.
_NEGLIGIBLE = 1e-18


def _provenance(value: HasProvenance) -> Provenance:
    if isinstance(value, ITDA):
        return value.provenance
    if isinstance(value, Provenance):
        return value
    raise TypeError(f"expected an ITDA or a Provenance, got {type(value).__name__}.")


def doc_kind(value: HasProvenance) -> str | None:
    """What the atoms' document ids are: :data:`DOCUMENT_HASH`, the reference's sequence
    index, or ``None`` for a bare :class:`Provenance` (which does not say)."""
    if isinstance(value, ITDA):
        return value.config.build.get("doc", DOCUMENT_HASH)
    _provenance(value)
    return None


def check_same_doc_kind(values: list[HasProvenance]) -> None:
    """Refuse dictionaries whose atoms are keyed by documents of different kinds (see the
    module doc): their Jaccard would be 0 whatever their atoms."""
    kinds = {kind for kind in map(doc_kind, values) if kind is not None}
    if len(kinds) > 1:
        raise ValueError(
            f"the dictionaries key their atoms' documents differently ({' and '.join(sorted(kinds))}), so no atom "
            f"can match; compare dictionaries of one kind (rebuild the {REFERENCE_DOC_KIND} ones with itda-lens on the same text)."
        )


def atom_keys(value: HasProvenance, by: KeyMode = "span", trim_whitespace: bool = True) -> set[tuple[int, int, int]]:
    """The token occurrences of a dictionary's atoms as hashable keys (see the module doc).

    Atoms of unknown document are left out; a dictionary with none known is an error.
    """
    return {key for key in atom_key_list(value, by, trim_whitespace) if key is not None}


def atom_key_list(value: HasProvenance, by: KeyMode = "span", trim_whitespace: bool = True) -> list[tuple[int, int, int] | None]:
    """:func:`atom_keys` atom by atom, in the dictionary's order (``None``: unknown document)."""
    provenance = _provenance(value)
    known = provenance.doc != -1
    if not bool(known.any()):
        raise ValueError(
            "the dictionary records no provenance (no atom has a known document), so its atoms "
            "cannot be matched to another's; build it with itda_lens.core.build to get provenance."
        )
    if by == "token" and bool((provenance.token_index[known] < 0).any()):
        raise ValueError("some atoms have no token index; compare them with by='span'.")
    keys = provenance.key_list(by)
    if by == "token":
        return keys
    if bool(((provenance.char_start[known] < 0) | (provenance.char_end[known] < 0)).any()):
        raise ValueError("some atoms have no character span; compare them with by='token'.")
    if not trim_whitespace or len(provenance.token) != len(keys):  # a provenance may record no token texts
        return keys
    for i, (key, text) in enumerate(zip(keys, provenance.token)):
        if key is not None and text.strip() and len(text) == key[2] - key[1]:
            doc, start, end = key
            keys[i] = (doc, start + len(text) - len(text.lstrip()), end - len(text) + len(text.rstrip()))
    return keys


def check_min_overlap(min_overlap: float, by: KeyMode = "span") -> float:
    """Refuse an overlap threshold outside (1/2, 1], or below 1 with ``by="token"``."""
    if isinstance(min_overlap, bool) or not isinstance(min_overlap, (int, float)) or not 0.5 < min_overlap <= 1.0:
        raise ValueError(f"min_overlap must lie in (0.5, 1] (above one half the matching is one-to-one), got {min_overlap!r}.")
    if by == "token" and min_overlap < 1.0:
        raise ValueError("min_overlap below 1 needs by='span' (token indices have no overlap).")
    return float(min_overlap)


Key = tuple[int, int, int]


def matched_pairs(keys_a: set[Key], keys_b: set[Key], min_overlap: float = EXACT) -> list[tuple[Key, Key]]:
    """The one-to-one pairs of span keys ``(doc, start, end)`` that match (see the module
    doc): equal keys, then, below ``min_overlap=1``, the span of ``b`` that holds the
    midpoint of ``a``'s (the only one that can overlap it by more than half) when their
    overlap over union reaches ``min_overlap``."""
    check_min_overlap(min_overlap)
    pairs = [(key, key) for key in keys_a & keys_b]
    if min_overlap == 1.0:
        return pairs
    rest_a = sorted(keys_a - keys_b)
    rest_b = sorted(keys_b - keys_a)
    if not rest_a or not rest_b:
        return pairs
    a, b = torch.tensor(rest_a, dtype=torch.long), torch.tensor(rest_b, dtype=torch.long)
    _, rank = torch.unique(torch.cat([a[:, 0], b[:, 0]]), return_inverse=True)
    rank_a, rank_b = rank[: len(a)] << 34, rank[len(a) :] << 34
    # Doubled character positions, so that a midpoint is an integer.
    starts_b = rank_b + 2 * b[:, 1]
    order = starts_b.argsort()
    midpoint = rank_a + a[:, 1] + a[:, 2]
    candidate = order[(torch.searchsorted(starts_b[order], midpoint) - 1).clamp_min(0)]
    holds = (rank_b[candidate] == rank_a) & (starts_b[candidate] < midpoint) & (midpoint < rank_a + 2 * b[candidate, 2])
    inter = torch.minimum(a[:, 2], b[candidate, 2]) - torch.maximum(a[:, 1], b[candidate, 1])
    union = torch.maximum(a[:, 2], b[candidate, 2]) - torch.minimum(a[:, 1], b[candidate, 1])
    overlap = inter / union.clamp_min(1)
    good = torch.nonzero(holds & (overlap >= min_overlap))[:, 0]
    # One atom of A per atom of B: the largest overlap, then the first in order.
    best = sorted(good.tolist(), key=lambda i: (int(candidate[i]), -float(overlap[i]), i))
    seen: set[int] = set()
    for i in best:
        j = int(candidate[i])
        if j not in seen:
            seen.add(j)
            pairs.append((rest_a[i], rest_b[j]))
    return pairs


def jaccard(a: HasProvenance, b: HasProvenance, by: KeyMode = "span", trim_whitespace: bool = True, min_overlap: float = EXACT) -> float:
    """``m / (|A| + |B| - m)`` with ``m`` the matched pairs of the two dictionaries' atom
    occurrences (``|A & B| / |A | B|`` with ``min_overlap=1``)."""
    check_same_doc_kind([a, b])
    check_min_overlap(min_overlap, by)
    keys_a, keys_b = atom_keys(a, by, trim_whitespace), atom_keys(b, by, trim_whitespace)
    common = len(matched_pairs(keys_a, keys_b, min_overlap))
    return common / (len(keys_a) + len(keys_b) - common)


def weighted_jaccard(
    a: HasProvenance,
    b: HasProvenance,
    uses_a: Float[Tensor, " n_atoms_a"],
    uses_b: Float[Tensor, " n_atoms_b"],
    by: KeyMode = "span",
    trim_whitespace: bool = True,
    min_overlap: float = EXACT,
) -> float:
    """The use-weighted Jaccard of two dictionaries, offered beside the paper's :func:`jaccard`.

    Each atom weighs its share of its dictionary's uses (``uses_a[i]``: how often atom ``i``
    of ``a`` is used on some text, e.g. :func:`~itda_lens.core.metrics.atom_uses` of codes
    of the text both models read); the result is the :func:`ruzicka` similarity of the two
    distributions over occurrences, ``s / (2 - s)`` with ``s`` the sum over matched pairs
    of the smaller share. It is 1 when both dictionaries put the same share of use on the
    same occurrences, 0 when no used atom matches. Atoms of unknown document are left out.
    """
    check_same_doc_kind([a, b])
    check_min_overlap(min_overlap, by)
    return ruzicka(use_shares(a, uses_a, by, trim_whitespace), use_shares(b, uses_b, by, trim_whitespace), min_overlap)


def use_shares(value: HasProvenance, uses: Float[Tensor, " n_atoms"], by: KeyMode = "span", trim_whitespace: bool = True) -> dict[Key, float]:
    """Each used atom occurrence's share of the dictionary's ``uses`` (see :func:`weighted_jaccard`)."""
    keys = atom_key_list(value, by, trim_whitespace)
    uses = torch.as_tensor(uses, dtype=torch.float64).flatten()
    if len(uses) != len(keys):
        raise ValueError(f"uses holds {len(uses)} values but the dictionary has {len(keys)} atoms; give one per atom.")
    if not bool(torch.isfinite(uses).all()) or bool((uses < 0).any()):
        raise ValueError("uses must be finite and >= 0 (counts or total |coefficients| per atom).")
    share: dict[Key, float] = {}
    for key, use in zip(keys, uses.tolist()):
        if key is not None and use > 0:
            share[key] = share.get(key, 0.0) + use
    total = sum(share.values())
    if total <= 0:
        raise ValueError("no atom of known document is used: encode text the dictionary was built on, or more of it.")
    return {key: use / total for key, use in share.items()}


def rarity_weights(
    dictionaries: Sequence[HasProvenance], by: KeyMode = "span", trim_whitespace: bool = True, power: float = RARITY_POWER
) -> list[dict[Key, float]]:
    """One model's layer dictionaries, each atom occurrence weighed by how few of them hold it.

    An occurrence that is an atom of ``n`` of the ``dictionaries`` (the layers of one
    model, so one tokenizer: keys compare exactly) weighs ``n ** -power`` in each. An atom
    every layer holds says little about which layer it came from; one only this layer
    holds says most. :func:`ruzicka` of two models' weights is the rarity-weighted
    Jaccard, offered beside the paper's :func:`jaccard`; ``power=0`` weighs every atom 1
    and gives the paper's Jaccard exactly.
    """
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power) or power < 0:
        raise ValueError(f"power must be a finite number >= 0, got {power!r}.")
    check_same_doc_kind(list(dictionaries))
    keys = [atom_keys(d, by, trim_whitespace) for d in dictionaries]
    held = Counter(key for layer in keys for key in layer)
    return [{key: float(held[key]) ** -power for key in layer} for layer in keys]


def ruzicka(weights_a: Mapping[Key, float], weights_b: Mapping[Key, float], min_overlap: float = EXACT) -> float:
    """The weighted (Ruzicka) Jaccard of two weighted atom sets:
    ``m / (W_a + W_b - m)``, ``W`` the sum of a set's weights and ``m`` the sum over the
    pairs that match (:func:`matched_pairs`) of the smaller weight. With every weight 1 it
    is :func:`jaccard`; 0 for two empty sets."""
    common = sum(min(weights_a[x], weights_b[y]) for x, y in matched_pairs(set(weights_a), set(weights_b), min_overlap))
    union = sum(weights_a.values()) + sum(weights_b.values()) - common
    return common / union if union > 0 else 0.0


def _log_choose(n: Tensor, k: Tensor) -> Tensor:
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def _log_hypergeometric(drawn: Tensor, population: float, marked: Tensor, draws: float) -> Tensor:
    """``log P(X = drawn)`` for ``X``, the marked items among ``draws`` drawn without
    replacement from ``population`` items of which ``marked`` are marked; ``-inf``
    outside the support."""
    drawn, marked = torch.broadcast_tensors(drawn, marked)
    other = population - marked
    valid = (drawn >= 0) & (drawn <= marked) & (draws - drawn >= 0) & (draws - drawn <= other)
    safe_drawn = torch.where(valid, drawn, torch.zeros_like(drawn))
    safe_marked = torch.where(valid, marked, torch.zeros_like(marked))
    population_t = torch.tensor(float(population), dtype=torch.float64)
    draws_t = torch.tensor(float(draws), dtype=torch.float64)
    log_p = (
        _log_choose(safe_marked, safe_drawn)
        + _log_choose(population_t - safe_marked, draws_t - safe_drawn)
        - _log_choose(population_t, draws_t)
    )
    return torch.where(valid, log_p, torch.full_like(log_p, -math.inf))


def _check_count(value: int, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def expected_jaccard(
    size_a: int,
    size_b: int,
    population_a: int,
    population_b: int | None = None,
    shared: int | None = None,
) -> float:
    """The expected Jaccard of two random atom sets: ``size_a`` occurrences drawn uniformly
    without replacement from the ``population_a`` tokens dictionary A was built from, and
    independently ``size_b`` from B's ``population_b`` (default: the same tokens), of which
    ``shared`` occurrences are common to both (default: all, when the populations are
    equal; give it for two tokenizers).

    Exact: with ``u`` of A's draws among the shared occurrences,
    ``u ~ Hypergeometric(population_a, shared, size_a)``, and the common atoms
    ``x | u ~ Hypergeometric(population_b, u, size_b)``;
    the result is ``E[x / (size_a + size_b - x)]``. Values of ``u`` of probability below
    1e-18 are left out.
    """
    _check_count(size_a, "size_a", 1)
    _check_count(size_b, "size_b", 1)
    _check_count(population_a, "population_a", 1)
    population_b = population_a if population_b is None else _check_count(population_b, "population_b", 1)
    if shared is None:
        if population_a != population_b:
            raise ValueError(
                f"the populations differ ({population_a} and {population_b} tokens): give shared, "
                "the number of token occurrences common to both (e.g. spans that are tokens in both tokenizations)."
            )
        shared = population_a
    _check_count(shared, "shared")
    if size_a > population_a or size_b > population_b:
        raise ValueError(f"sizes ({size_a}, {size_b}) exceed their populations ({population_a}, {population_b}).")
    if shared > min(population_a, population_b):
        raise ValueError(f"shared={shared} exceeds a population ({population_a}, {population_b}).")
    f64 = torch.float64
    u = torch.arange(0, min(size_a, shared) + 1, dtype=f64)
    p_u = _log_hypergeometric(u, population_a, torch.tensor(float(shared), dtype=f64), size_a).exp()
    keep = p_u > _NEGLIGIBLE
    u, p_u = u[keep], p_u[keep]
    x = torch.arange(0, min(size_b, int(u.max())) + 1, dtype=f64)
    score = x / (size_a + size_b - x)
    total = torch.zeros((), dtype=f64)
    step = max(1, (1 << 22) // len(x))
    for start in range(0, len(u), step):
        marked = u[start : start + step, None]
        p_x = _log_hypergeometric(x[None, :], population_b, marked, size_b).exp()
        total += (p_u[start : start + step, None] * p_x * score).sum()
    return float(total / p_u.sum())


@dataclass
class JaccardReport:
    """Jaccard of two dictionaries beside its null."""

    jaccard: float
    null: float | None
    common: int
    size_a: int
    size_b: int

    def to_dict(self) -> dict:
        return asdict(self)


def jaccard_report(
    a: HasProvenance,
    b: HasProvenance,
    by: KeyMode = "span",
    trim_whitespace: bool = True,
    population_a: int | None = None,
    population_b: int | None = None,
    shared: int | None = None,
    min_overlap: float = EXACT,
) -> JaccardReport:
    """Jaccard, the number of common atoms and the null :func:`expected_jaccard`.

    The populations default to the token counts the dictionaries record from their build
    (``config.build["tokens"]``); the null is ``None`` when they are unknown, or when they
    differ and ``shared`` is not given (count it with :func:`matched_pairs` on the two
    token populations and the same ``min_overlap``).
    """
    check_same_doc_kind([a, b])
    check_min_overlap(min_overlap, by)
    keys_a, keys_b = atom_keys(a, by, trim_whitespace), atom_keys(b, by, trim_whitespace)
    common = len(matched_pairs(keys_a, keys_b, min_overlap))
    population_a = population_a if population_a is not None else built_tokens(a)
    population_b = population_b if population_b is not None else built_tokens(b)
    null = None
    if population_a is not None and population_b is not None and (population_a == population_b or shared is not None):
        null = expected_jaccard(len(keys_a), len(keys_b), population_a, population_b, shared)
    return JaccardReport(common / (len(keys_a) + len(keys_b) - common), null, common, len(keys_a), len(keys_b))


def built_tokens(value: HasProvenance) -> int | None:
    """The number of tokens a dictionary was built from, if it records it."""
    if isinstance(value, ITDA):
        tokens = value.config.build.get("tokens")
        return int(tokens) if tokens is not None else None
    return None

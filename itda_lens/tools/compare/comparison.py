"""Comparing two models layer by layer: ITDA Jaccard, its null, and the baselines.

Every measure sees the same text. ITDA Jaccard compares the dictionaries built on the
corpus (atoms matched by provenance, :mod:`itda_lens.tools.compare.jaccard`, exactly or,
with ``min_overlap < 1``, by overlapping spans). Two weighted forms are offered beside
the paper's: the rarity-weighted ITDA Jaccard
(:func:`~itda_lens.tools.compare.jaccard.rarity_weights`) weighs each atom by how few of
its model's layer dictionaries hold the same occurrence; the use-weighted one
(:func:`~itda_lens.tools.compare.jaccard.weighted_jaccard`) by how many of the baselines'
occurrences its dictionary's codes use it for. The baselines of
:mod:`itda_lens.tools.compare.similarity` compare activations at the recorded occurrences that
all the models compared share, lined up by ``align``
(:mod:`itda_lens.tools.compare.occurrences`): the same document and characters
(``"span"``), or the same document and last character (``"end"``: across tokenizers, the
last token of each word), subsampled to at most ``max_tokens`` rows (a seeded draw; a measure given a smaller budget
in ``measure_tokens`` uses the first rows of that same draw). RBF CKA further uses its
own documented subsample (2048 rows); its centred kernels are computed once per layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from itda_lens.core.itda import ITDA
from itda_lens.core.metrics import atom_uses
from itda_lens.tools.compare import similarity as _sim
from itda_lens.tools.compare.heatmap import similarity_heatmaps
from itda_lens.tools.compare.intervals import DocumentCounts, accuracy_interval, document_counts
from itda_lens.tools.compare.jaccard import (
    EXACT,
    RARITY_POWER,
    KeyMode,
    atom_keys,
    built_tokens,
    check_min_overlap,
    expected_jaccard,
    matched_pairs,
    rarity_weights,
)
from itda_lens.tools.compare.layers import jaccard_matrix, matched, ruzicka_matrix, weighted_jaccard_matrix
from itda_lens.tools.compare.model_layers import ModelLayers
from itda_lens.tools.compare.occurrences import Align, occurrence_keys
from itda_lens.tools.compare.similarity import MEASURES, similarity_matrix

#: The names of the dictionary measures beside the baselines of ``MEASURES``: the paper's
#: Jaccard, the rarity-weighted and the use-weighted one.
JACCARD = "itda_jaccard"
RARITY_JACCARD = "itda_rarity_jaccard"
WEIGHTED_JACCARD = "itda_weighted_jaccard"
ALL_MEASURES = (JACCARD, RARITY_JACCARD, WEIGHTED_JACCARD, *MEASURES)
#: The dictionary measures computed from per-document counts (:func:`dictionary_counts`).
COUNTED = (JACCARD, RARITY_JACCARD)
#: Default row budgets of the measures whose cost grows with the square of the tokens.
MEASURE_TOKENS = {"mutual_knn": 2048}


def _check_measures(measures: Sequence[str]) -> list[str]:
    unknown = [m for m in measures if m not in ALL_MEASURES]
    if unknown:
        raise ValueError(f"unknown measures {unknown}; choose from {list(ALL_MEASURES)}.")
    return list(measures)


def dictionary_uses(dictionary: ITDA, x: Float[Tensor, "n d_model"]) -> Int[Tensor, " n_atoms"]:
    """How many of the activations ``x`` the dictionary's codes use each atom for."""
    codes = dictionary.encode(x.to(dictionary.atoms.device))
    return atom_uses(codes.indices.cpu(), codes.values.cpu(), dictionary.n_atoms)


def shared_token_rows(models: Sequence[ModelLayers], max_tokens: int | None = None, seed: int = 0, align: Align = "span") -> list[Int[Tensor, " n"]]:
    """For each model, the recorded rows of the occurrences that every model recorded
    (lined up by ``align``; a key recorded twice stands for its last row), in one order:
    a seeded random draw of at most ``max_tokens``."""
    if not models:
        raise ValueError("give at least one model.")
    if align not in ("span", "end"):
        raise ValueError(f"align must be 'span' or 'end', got {align!r}.")
    common = set(occurrence_keys(models[0].recorded, align))
    for other in models[1:]:
        common &= set(occurrence_keys(other.recorded, align))
    if not common:
        names = ", ".join(m.name for m in models)
        raise ValueError(
            f"{names} share no recorded token occurrence: build them on the same documents "
            "(and raise record_fraction if it is small)."
        )
    order = sorted(common)
    draw = torch.randperm(len(order), generator=torch.Generator().manual_seed(seed))
    if max_tokens is not None:
        draw = draw[:max_tokens]
    chosen = [order[i] for i in draw.tolist()]
    rows = []
    for model in models:
        last = {key: row for row, key in enumerate(occurrence_keys(model.recorded, align))}
        rows.append(torch.tensor([last[key] for key in chosen], dtype=torch.long))
    return rows


def _rbf_cka_matrices(
    activations: Mapping[str, Mapping[str, Tensor]], pairs: list[tuple[str, str]], sigma_frac: float = 0.8, max_tokens: int = 2048, seed: int = 0
) -> dict[tuple[str, str], Tensor]:
    """:func:`~itda_lens.tools.compare.similarity.rbf_cka` for every layer pair of every model
    pair (same subsample and bandwidth; equal up to rounding), each layer's centred kernel
    computed once and kept: ``models x layers x max_tokens^2`` float64 values."""
    grams: dict[tuple[str, str], Tensor] = {}
    for model, layers in activations.items():
        for hook, x in layers.items():
            fn = f"rbf_cka ({model}, {hook})"
            _sim._check_matrix(x, "X", fn)
            _sim._check_finite(x, "X", fn)
            _sim._check_not_constant(x, "X", fn)
            index = _sim._subsample(x.shape[0], max_tokens, seed)
            picked = x if index is None else x[index.to(x.device)]
            device = torch.device("cpu") if x.device.type == "mps" else x.device
            gram = _sim._rbf_centered_gram(_sim._f64(picked, device), sigma_frac, "X", fn)
            grams[(model, hook)] = gram / gram.norm()
    out = {}
    for a, b in pairs:
        matrix = torch.empty(len(activations[a]), len(activations[b]), dtype=torch.float64)
        for i, hook_a in enumerate(activations[a]):
            for j, hook_b in enumerate(activations[b]):
                matrix[i, j] = float((grams[(a, hook_a)] * grams[(b, hook_b)].to(grams[(a, hook_a)].device)).sum().clamp(0.0, 1.0))
        out[(a, b)] = matrix
    return out


def model_similarities(
    models: Sequence[ModelLayers],
    measures: Sequence[str] = ALL_MEASURES,
    by: KeyMode = "span",
    max_tokens: int | None = 8192,
    measure_tokens: Mapping[str, int] | None = None,
    include_self: bool = True,
    seed: int = 0,
    min_overlap: float = EXACT,
    align: Align = "span",
    rarity_power: float = RARITY_POWER,
) -> dict[str, dict[tuple[str, str], Float[Tensor, "layers_a layers_b"]]]:
    """Layer x layer matrices of every pair of ``models`` (``(a, b)`` with ``a`` before
    ``b``, and ``(a, a)`` with ``include_self``) by every measure. The baselines see the
    same occurrences for every model (:func:`shared_token_rows`); the rarity-weighted
    Jaccard weighs atoms with ``rarity_power``."""
    measures = _check_measures(measures)
    check_min_overlap(min_overlap, by)
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"models need distinct names, got {names}.")
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i:] if include_self or a != b]
    by_name = dict(zip(names, models))
    out: dict[str, dict[tuple[str, str], Tensor]] = {}
    if JACCARD in measures:
        out[JACCARD] = {(a, b): jaccard_matrix(by_name[a].dictionaries, by_name[b].dictionaries, by=by, min_overlap=min_overlap) for a, b in pairs}
    if RARITY_JACCARD in measures:
        weights = {name: rarity_weights(list(by_name[name].dictionaries.values()), by, power=rarity_power) for name in names}
        out[RARITY_JACCARD] = {(a, b): ruzicka_matrix(weights[a], weights[b], min_overlap) for a, b in pairs}
    baselines = [m for m in measures if m not in (JACCARD, RARITY_JACCARD, WEIGHTED_JACCARD)]
    if baselines or WEIGHTED_JACCARD in measures:
        rows = dict(zip(names, shared_token_rows(models, max_tokens, seed, align)))
    if WEIGHTED_JACCARD in measures:
        uses = {name: [dictionary_uses(d, by_name[name].activations[hook][rows[name]]) for hook, d in by_name[name].dictionaries.items()] for name in names}
        out[WEIGHTED_JACCARD] = {
            (a, b): weighted_jaccard_matrix(by_name[a].dictionaries, by_name[b].dictionaries, uses[a], uses[b], by=by, min_overlap=min_overlap) for a, b in pairs
        }
    if baselines:
        budgets = {**MEASURE_TOKENS, **(measure_tokens or {})}
        for measure in baselines:
            activations = {
                name: {hook: x[rows[name][: budgets.get(measure)]] for hook, x in by_name[name].activations.items()} for name in names
            }
            if measure == "rbf_cka":
                out[measure] = _rbf_cka_matrices(activations, pairs)
            else:
                out[measure] = {(a, b): similarity_matrix(activations[a], activations[b], measure) for a, b in pairs}
    return {m: out[m] for m in measures}


def layer_similarities(
    a: ModelLayers,
    b: ModelLayers,
    measures: Sequence[str] = ALL_MEASURES,
    by: KeyMode = "span",
    max_tokens: int | None = 8192,
    measure_tokens: Mapping[str, int] | None = None,
    seed: int = 0,
    min_overlap: float = EXACT,
    align: Align = "span",
    rarity_power: float = RARITY_POWER,
) -> dict[str, Float[Tensor, "layers_a layers_b"]]:
    """One layer x layer matrix per measure, rows for ``a``'s hooks, columns for ``b``'s
    (``a`` may be ``b``)."""
    options = {"seed": seed, "min_overlap": min_overlap, "align": align, "rarity_power": rarity_power}
    if a is b:
        found = model_similarities([a], measures, by, max_tokens, measure_tokens, include_self=True, **options)
        return {m: pairs[(a.name, a.name)] for m, pairs in found.items()}
    if a.name == b.name:
        raise ValueError(f"two different models are both named {a.name!r}; give them distinct names.")
    found = model_similarities([a, b], measures, by, max_tokens, measure_tokens, include_self=False, **options)
    return {m: pairs[(a.name, b.name)] for m, pairs in found.items()}


def shared_occurrences(a: ModelLayers, b: ModelLayers, by: KeyMode = "span", min_overlap: float = EXACT) -> tuple[int, int, int]:
    """Distinct token occurrences each model built from, and the pairs of them that match
    by the atoms' rule (:func:`~itda_lens.tools.compare.jaccard.matched_pairs`)."""
    keys_a, keys_b = set(occurrence_keys(a.occurrences, by)), set(occurrence_keys(b.occurrences, by))
    return len(keys_a), len(keys_b), len(matched_pairs(keys_a, keys_b, check_min_overlap(min_overlap, by)))


def jaccard_null_matrix(a: ModelLayers, b: ModelLayers, by: KeyMode = "span", min_overlap: float = EXACT) -> Float[Tensor, "layers_a layers_b"]:
    """The expected Jaccard of random atom sets of each pair of dictionaries' sizes, drawn
    from the occurrences each model was built from, matched by the same rule
    (:func:`expected_jaccard`)."""
    population_a, population_b, shared = shared_occurrences(a, b, by, min_overlap)
    sizes_a = [len(atom_keys(d, by)) for d in a.dictionaries.values()]
    sizes_b = [len(atom_keys(d, by)) for d in b.dictionaries.values()]
    out = torch.empty(len(sizes_a), len(sizes_b), dtype=torch.float64)
    cache: dict[tuple[int, int], float] = {}
    for i, size_a in enumerate(sizes_a):
        for j, size_b in enumerate(sizes_b):
            if (size_a, size_b) not in cache:
                cache[(size_a, size_b)] = expected_jaccard(size_a, size_b, population_a, population_b, shared)
            out[i, j] = cache[(size_a, size_b)]
    return out


def _rows(matrix: Tensor) -> list[list[float]]:
    return [[round(float(v), 6) for v in row] for row in matrix]


def _summary(similarity: Mapping[str, Tensor]) -> dict[str, dict]:
    """Per measure: the most similar layer of B for each layer of A and the share of
    layers matched to their relative depth in both directions."""
    out = {}
    for measure, s in similarity.items():
        out[measure] = {
            "best_match_b": torch.nan_to_num(s, nan=-torch.inf).argmax(1).tolist(),
            "matching_accuracy": float(torch.cat([matched(s), matched(s.T)]).mean()),
        }
    return out


def compare_models(
    a: ModelLayers,
    b: ModelLayers,
    measures: Sequence[str] = ALL_MEASURES,
    by: KeyMode = "span",
    max_tokens: int | None = 8192,
    measure_tokens: Mapping[str, int] | None = None,
    heatmap: str | Path | None = None,
    min_overlap: float = EXACT,
    align: Align = "span",
    rarity_power: float = RARITY_POWER,
) -> dict:
    """Layer x layer similarity of two models by every measure, the Jaccard null, per-measure
    best matches, the intervals of the (plain and rarity-weighted) ITDA Jaccard's matching
    accuracy (:func:`jaccard_interval`) and (with ``heatmap``) a PNG of the matrices. JSON-able."""
    measures = _check_measures(measures)
    counts = dictionary_counts(a.dictionaries, b.dictionaries, measures, by, min_overlap, rarity_power)
    others = layer_similarities(a, b, [m for m in measures if m not in counts], by, max_tokens, measure_tokens, min_overlap=min_overlap, align=align)
    similarity = {m: counts[m].jaccard()[0] if m in counts else others[m] for m in measures}
    population_a, population_b, shared = shared_occurrences(a, b, by, min_overlap)
    result = {
        "model_a": a.name,
        "model_b": b.name,
        "hooks_a": a.hooks,
        "hooks_b": b.hooks,
        "by": by,
        "min_overlap": min_overlap,
        "align": align,
        "rarity_power": rarity_power,
        "tokens_a": population_a,
        "tokens_b": population_b,
        "shared_tokens": shared,
        "baseline_tokens": len(shared_token_rows([a, b], max_tokens, align=align)[0]) if set(measures) - set(COUNTED) else 0,
        "n_atoms_a": [d.n_atoms for d in a.dictionaries.values()],
        "n_atoms_b": [d.n_atoms for d in b.dictionaries.values()],
        "similarity": {m: _rows(s) for m, s in similarity.items()},
        "summary": _summary(similarity),
    }
    if JACCARD in similarity:
        result["jaccard_null"] = _rows(jaccard_null_matrix(a, b, by, min_overlap))
    result.update(_intervals(counts))
    if heatmap is not None:
        result["heatmap"] = str(similarity_heatmaps(similarity, heatmap, _short(a.hooks), _short(b.hooks), a.name, b.name))
    return result


def dictionary_counts(
    dictionaries_a: Mapping[str, ITDA],
    dictionaries_b: Mapping[str, ITDA],
    measures: Sequence[str] = COUNTED,
    by: KeyMode = "span",
    min_overlap: float = EXACT,
    rarity_power: float = RARITY_POWER,
) -> dict[str, DocumentCounts]:
    """The per-document counts (:func:`~itda_lens.tools.compare.intervals.document_counts`)
    of the plain and the rarity-weighted ITDA Jaccard (with ``rarity_power``) among
    ``measures``: each measure's matrix (``counts.jaccard()[0]``) and its interval
    (:func:`jaccard_interval`) come from them, so atoms are matched once."""
    values_a, values_b = list(dictionaries_a.values()), list(dictionaries_b.values())
    if not values_a or not values_b:
        raise ValueError("give at least one dictionary.")
    powers = {JACCARD: 0.0, RARITY_JACCARD: rarity_power}
    return {m: document_counts(values_a, values_b, by, min_overlap, rarity_power=powers[m]) for m in COUNTED if m in measures}


def jaccard_interval(counts: DocumentCounts) -> dict[str, float]:
    """The layer-matching accuracy of one measure's :func:`dictionary_counts` between two
    models (both directions, layers matched by relative depth) with its 95% interval over
    the documents, redrawn (:func:`~itda_lens.tools.compare.intervals.accuracy_interval`)."""
    return accuracy_interval(counts={("a", "b"): counts}, resample="documents").to_dict()


def _intervals(counts: Mapping[str, DocumentCounts]) -> dict[str, dict[str, float]]:
    """The result entries ``jaccard_interval`` and ``rarity_jaccard_interval``, for the measures counted."""
    keys = {JACCARD: "jaccard_interval", RARITY_JACCARD: "rarity_jaccard_interval"}
    return {keys[m]: jaccard_interval(c) for m, c in counts.items()}


def compare_dictionaries(
    dictionaries_a: Mapping[str, ITDA],
    dictionaries_b: Mapping[str, ITDA],
    by: KeyMode = "span",
    shared_tokens: int | None = None,
    heatmap: str | Path | None = None,
    name_a: str = "A",
    name_b: str = "B",
    min_overlap: float = EXACT,
    rarity_power: float = RARITY_POWER,
) -> dict:
    """ITDA Jaccard, plain and rarity-weighted (with ``rarity_power``), of two models' saved
    dictionaries (no model needed; give every layer of each) with the intervals of their
    matching accuracy, and the plain one's null when the build token counts are recorded and
    equal (or ``shared_tokens`` is given: with ``min_overlap < 1``, the built-from tokens
    of the two that match by that rule)."""
    counts = dictionary_counts(dictionaries_a, dictionaries_b, by=by, min_overlap=min_overlap, rarity_power=rarity_power)
    similarity = {m: c.jaccard()[0] for m, c in counts.items()}
    result: dict = {
        "model_a": name_a,
        "model_b": name_b,
        "hooks_a": list(dictionaries_a),
        "hooks_b": list(dictionaries_b),
        "by": by,
        "min_overlap": min_overlap,
        "rarity_power": rarity_power,
        "n_atoms_a": [d.n_atoms for d in dictionaries_a.values()],
        "n_atoms_b": [d.n_atoms for d in dictionaries_b.values()],
        "similarity": {m: _rows(s) for m, s in similarity.items()},
        "summary": _summary(similarity),
        **_intervals(counts),
    }
    populations_a = {built_tokens(d) for d in dictionaries_a.values()}
    populations_b = {built_tokens(d) for d in dictionaries_b.values()}
    if len(populations_a) == 1 and len(populations_b) == 1 and None not in populations_a | populations_b:
        population_a, population_b = populations_a.pop(), populations_b.pop()
        if population_a == population_b or shared_tokens is not None:
            null = torch.tensor(
                [
                    [expected_jaccard(len(atom_keys(x, by)), len(atom_keys(y, by)), population_a, population_b, shared_tokens) for y in dictionaries_b.values()]
                    for x in dictionaries_a.values()
                ]
            )
            result["jaccard_null"] = _rows(null)
    if heatmap is not None:
        result["heatmap"] = str(similarity_heatmaps(similarity, heatmap, _short(list(dictionaries_a)), _short(list(dictionaries_b)), name_a, name_b))
    return result


def _short(hooks: list[str]) -> list[str]:
    """Hook names without a common ``.hook_...`` suffix, for axis labels."""
    suffixes = {hook.rsplit(".", 1)[-1] for hook in hooks}
    if len(suffixes) == 1 and all("." in hook for hook in hooks):
        return [hook.rsplit(".", 1)[0] for hook in hooks]
    return list(hooks)

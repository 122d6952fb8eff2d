"""One model's layers on a corpus: what a comparison needs of it.

:func:`model_layers` runs the normal build (:func:`itda_lens.core.build.build`, one forward
pass per batch for all hooks) and, in the same pass, keeps the activations of a
deterministic subset of the token occurrences for the baseline measures. The subset is
chosen by a hash of each occurrence's document and last character, so two models, even
with different tokenizers, keep the same occurrences wherever their tokens end at the
same place (which includes every token they share).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from itda_lens.core.activations import ActivationSource
from itda_lens.core.build import build
from itda_lens.core.config import DEFAULT_BUILD, BuildSettings
from itda_lens.core.itda import ITDA
from itda_lens.core.text import TokenBatch
from itda_lens.tools.compare.occurrences import DOC, END, batch_occurrences

_HASH_RANGE = float(1 << 61)


@dataclass
class ModelLayers:
    """A model's dictionaries (one per hook), every token occurrence they were built from
    and the activations of each hook at a recorded subset of those occurrences."""

    name: str
    dictionaries: dict[str, ITDA]
    occurrences: Int[Tensor, "n_tokens 4"]
    recorded: Int[Tensor, "n_recorded 4"]
    activations: dict[str, Float[Tensor, "n_recorded d_model"]]

    @property
    def hooks(self) -> list[str]:
        return list(self.dictionaries)

    @property
    def tokens(self) -> int:
        """Token occurrences the dictionaries were built from."""
        return len(self.occurrences)


def kept(occurrences: Int[Tensor, "n 4"], fraction: float) -> Int[Tensor, " m"]:
    """Rows whose ``(doc, end)`` hashes below ``fraction``: the same occurrences for
    every model and tokenizer."""
    if fraction >= 1.0:
        return torch.arange(len(occurrences))
    spans = occurrences[:, [DOC, END]].tolist()
    keep = [row for row, span in enumerate(spans) if (hash(tuple(span)) & ((1 << 61) - 1)) / _HASH_RANGE < fraction]
    return torch.tensor(keep, dtype=torch.long)


class RecordingSource:
    """An activation source that passes activations through to the builder and keeps
    those at the recorded occurrences of each batch. Feed it its batches through
    :meth:`batches`, which notes which batch the next call belongs to."""

    def __init__(self, source: ActivationSource, record_fraction: float = 1.0, dtype: torch.dtype = torch.float32):
        if not 0.0 <= record_fraction <= 1.0:
            raise ValueError(f"record_fraction must lie in [0, 1], got {record_fraction}.")
        self.source, self.record_fraction, self.dtype = source, record_fraction, dtype
        self.hooks, self.model_name, self.d_model = source.hooks, source.model_name, source.d_model
        self._batch: TokenBatch | None = None
        self.occurrences: list[Tensor] = []
        self.recorded: list[Tensor] = []
        self.activations: dict[str, list[Tensor]] = {hook: [] for hook in self.hooks}

    def batches(self, batches: Iterable[TokenBatch]) -> Iterator[TokenBatch]:
        for batch in batches:
            self._batch = batch
            yield batch
        self._batch = None

    def __call__(self, tokens: Int[Tensor, "batch seq"]) -> dict[str, Float[Tensor, "batch seq d_model"]]:
        batch = self._batch
        if batch is None or batch.tokens is not tokens:
            raise RuntimeError("RecordingSource was called with tokens that did not come through its batches().")
        activations = self.source(tokens)
        positions = torch.nonzero(batch.mask.flatten())[:, 0]
        occurrences = batch_occurrences(batch, positions)
        rows = kept(occurrences, self.record_fraction)
        self.occurrences.append(occurrences)
        self.recorded.append(occurrences[rows])
        for hook, x in activations.items():
            picked = x.flatten(0, 1)[positions[rows].to(x.device)]
            self.activations[hook].append(picked.detach().to("cpu", self.dtype))
        return activations


def model_layers(
    source: ActivationSource,
    batches: Iterable[TokenBatch],
    name: str | None = None,
    settings: BuildSettings = DEFAULT_BUILD,
    *,
    record_fraction: float = 1.0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    total_tokens: int | None = None,
) -> ModelLayers:
    """Build a dictionary per hook of ``source`` on ``batches`` with ``settings`` and
    record the activations of a ``record_fraction`` of the token occurrences (see the
    module doc)."""
    recorder = RecordingSource(source, record_fraction)
    result = build(
        recorder,
        recorder.batches(batches),
        settings,
        device=device,
        progress=progress,
        total_tokens=total_tokens,
    )
    return ModelLayers(
        name=name or source.model_name,
        dictionaries=result.dictionaries,
        occurrences=torch.cat(recorder.occurrences),
        recorded=torch.cat(recorder.recorded),
        activations={hook: torch.cat(parts) for hook, parts in recorder.activations.items()},
    )

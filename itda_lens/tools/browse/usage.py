"""How a dictionary's atoms are used on held-out text.

:class:`AtomUsage` accumulates, over streamed tokens, how often each atom is in a
token's sparse code (with a non-zero coefficient), its mean absolute coefficient when
it is, and the ``top`` tokens with the largest absolute coefficient on it, kept as
(coefficient, document, character span) and read as text at the end. It also scores
the reconstructions (FVU, MSE, cosine, L0).
:func:`atom_usage` runs the encoder over token batches to fill one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from itda_lens.core.activations import ActivationSource
from itda_lens.core.itda import ITDA, SparseCodes
from itda_lens.core.metrics import ReconstructionMetrics, merged_codes
from itda_lens.core.text import TokenBatch

#: Characters of held-out text kept on each side of a top context's token.
CONTEXT_CHARS = 80


@dataclass
class Context:
    """One held-out token that used an atom: its coefficient and its text in context."""

    value: float
    token: str
    before: str
    after: str


class AtomUsage:
    """Per-atom usage statistics over :attr:`tokens` held-out tokens.

    ``count[i]`` tokens coded atom ``i`` with a non-zero coefficient; ``abs_sum[i]`` and
    ``sum[i]`` add up those coefficients' magnitudes and values. ``top_*`` hold, per atom,
    the ``top`` tokens of largest ``|coefficient|`` (``top_doc == -1`` where fewer), and
    ``documents`` the texts they point into.
    """

    def __init__(self, n_atoms: int, top: int = 5):
        if n_atoms < 1:
            raise ValueError(f"n_atoms must be >= 1, got {n_atoms}.")
        if top < 0:
            raise ValueError(f"top must be >= 0, got {top}.")
        self.n_atoms, self.top, self.tokens = n_atoms, top, 0
        self.count: Int[Tensor, " n_atoms"] = torch.zeros(n_atoms, dtype=torch.long)
        self.abs_sum: Float[Tensor, " n_atoms"] = torch.zeros(n_atoms, dtype=torch.float64)
        self.sum: Float[Tensor, " n_atoms"] = torch.zeros(n_atoms, dtype=torch.float64)
        self.top_value: Float[Tensor, "n_atoms top"] = torch.full((n_atoms, top), float("nan"))
        self.top_doc: Int[Tensor, "n_atoms top"] = torch.full((n_atoms, top), -1, dtype=torch.long)
        self.top_start: Int[Tensor, "n_atoms top"] = self.top_doc.clone()
        self.top_end: Int[Tensor, "n_atoms top"] = self.top_doc.clone()
        self.documents: dict[int, str] = {}
        self.reconstruction = ReconstructionMetrics()

    def __repr__(self) -> str:
        used = int((self.count > 0).sum())
        return f"AtomUsage(n_atoms={self.n_atoms}, tokens={self.tokens}, used={used}, top={self.top})"

    # ------------------------------------------------------------------ results
    @property
    def frequency(self) -> Float[Tensor, " n_atoms"]:
        """Share of tokens whose code uses each atom."""
        return self.count.double() / max(self.tokens, 1)

    @property
    def mean_abs(self) -> Float[Tensor, " n_atoms"]:
        """Mean ``|coefficient|`` of each atom over the tokens that use it (0 if none)."""
        return self.abs_sum / self.count.clamp_min(1)

    @property
    def mean(self) -> Float[Tensor, " n_atoms"]:
        """Mean signed coefficient over the tokens that use each atom (0 if none)."""
        return self.sum / self.count.clamp_min(1)

    def metrics(self) -> dict[str, float]:
        """FVU, MSE, cosine and L0 of the reconstructions added with :meth:`add_reconstruction`
        (empty if none were)."""
        return self.reconstruction.result() if self.reconstruction.tokens else {}

    def top_spans(self) -> list[list[tuple[float, int, int, int]]]:
        """Per atom, its top held-out tokens as (coefficient, document id, character
        start, character end), largest ``|coefficient|`` first."""
        columns = [t.tolist() for t in (self.top_value, self.top_doc, self.top_start, self.top_end)]
        return [[entry for entry in zip(*rows) if entry[1] != -1] for rows in zip(*columns)]

    def contexts(self, atom: int, chars: int = CONTEXT_CHARS) -> list[Context]:
        """The top held-out tokens of ``atom`` in context, largest ``|coefficient|`` first."""
        if not 0 <= atom < self.n_atoms:
            raise IndexError(f"atom {atom} is out of range for {self.n_atoms} atoms.")
        columns = [t[atom].tolist() for t in (self.top_value, self.top_doc, self.top_start, self.top_end)]
        rows = []
        for value, doc, start, end in zip(*columns):
            if doc != -1:
                text = self.documents[doc]
                rows.append(Context(value, text[start:end], text[max(0, start - chars) : start], text[end : end + chars]))
        return rows

    # ------------------------------------------------------------------ updates
    def add(
        self,
        codes: SparseCodes,
        doc: Int[Tensor, " n"],
        char_start: Int[Tensor, " n"],
        char_end: Int[Tensor, " n"],
        documents: dict[int, str],
    ) -> None:
        """Count the codes ``[n, k]`` of ``n`` tokens whose documents and character spans
        are given; ``documents`` maps document ids to their text."""
        indices, values = codes.indices.detach().cpu(), codes.values.detach().cpu().double()
        n, k = indices.shape
        if not (len(doc) == len(char_start) == len(char_end) == n):
            raise ValueError(f"codes for {n} tokens but spans for {len(doc)}.")
        if n and int(indices.max()) >= self.n_atoms:
            raise ValueError(f"codes name atom {int(indices.max())} but the dictionary has {self.n_atoms} atoms.")
        # One entry per (token, atom): an atom chosen twice for a token counts once, with the summed coefficient.
        indices, summed, keep = merged_codes(indices, values)
        atom, summed = indices[keep], summed[keep]
        row = torch.arange(n)[:, None].expand(n, k)[keep]
        self.tokens += n
        self.count += torch.bincount(atom, minlength=self.n_atoms)
        self.abs_sum.index_add_(0, atom, summed.abs())
        self.sum.index_add_(0, atom, summed)
        if self.top:
            self._merge_top(atom, summed, doc[row], char_start[row], char_end[row])
            kept = set(self.top_doc[self.top_doc != -1].unique().tolist())
            self.documents.update({d: t for d, t in documents.items() if d in kept})
            self.documents = {d: t for d, t in self.documents.items() if d in kept}

    def add_reconstruction(self, x: Float[Tensor, "n d_model"], codes: SparseCodes, x_hat: Float[Tensor, "n d_model"]) -> None:
        """Add the tokens' reconstructions to :meth:`metrics`."""
        self.reconstruction.update(x.detach().cpu(), x_hat.detach().cpu(), (codes.indices.detach().cpu(), codes.values.detach().cpu()))

    def _merge_top(self, atom: Tensor, value: Tensor, doc: Tensor, start: Tensor, end: Tensor) -> None:
        """Keep, per atom, the ``top`` entries of largest |value| among the old and new."""
        t = self.top
        order = torch.argsort(-value.abs(), stable=True)
        order = order[torch.argsort(atom[order], stable=True)]
        atom_sorted = atom[order]
        rank = torch.arange(len(order)) - torch.searchsorted(atom_sorted, atom_sorted)
        keep = order[rank < t]
        slot = rank[rank < t]
        n = self.n_atoms
        new_value = torch.full((n, t), float("nan"))
        new_doc = torch.full((n, t), -1, dtype=torch.long)
        new_start, new_end = new_doc.clone(), new_doc.clone()
        target = (atom[keep], slot)
        new_value[target] = value[keep].float()
        new_doc[target], new_start[target], new_end[target] = doc[keep], start[keep], end[keep]
        values = torch.cat([self.top_value, new_value], dim=1)
        score = torch.nan_to_num(values.abs(), nan=-1.0)
        best = torch.topk(score, t, dim=1, sorted=True).indices
        self.top_value = values.gather(1, best)
        self.top_doc = torch.cat([self.top_doc, new_doc], 1).gather(1, best)
        self.top_start = torch.cat([self.top_start, new_start], 1).gather(1, best)
        self.top_end = torch.cat([self.top_end, new_end], 1).gather(1, best)


@torch.no_grad()
def atom_usage(
    itda: ITDA,
    source: ActivationSource,
    batches: Iterable[TokenBatch],
    *,
    hook: str | None = None,
    top: int = 5,
    total_tokens: int | None = None,
    progress: bool = False,
) -> AtomUsage:
    """Encode the activations of ``batches`` at ``hook`` (default: the dictionary's own)
    and return each atom's usage: count, mean ``|coefficient|`` and ``top`` contexts.
    BOS and padding positions are skipped."""
    hook = hook or itda.config.hook
    if hook is None:
        raise ValueError("the dictionary does not record its hook point; pass hook=.")
    if hook not in source.hooks:
        raise ValueError(f"the activation source reads {source.hooks}, not {hook!r}; make it with hooks=[{hook!r}].")
    if source.d_model != itda.d_model:
        raise ValueError(f"the source's activations have width {source.d_model} but the dictionary has d_model={itda.d_model}.")
    usage = AtomUsage(itda.n_atoms, top=top)
    bar = tqdm(total=total_tokens, unit="tok", desc="atom usage", disable=not progress)
    for batch in batches:
        positions = torch.nonzero(batch.mask.flatten())[:, 0]
        x = source(batch.tokens)[hook].flatten(0, 1)
        x = x[positions.to(x.device)].to(itda.atoms.device)
        codes = itda.encode(x)
        usage.add(codes, *(c.flatten()[positions] for c in (batch.doc, batch.char_start, batch.char_end)), batch.documents)
        usage.add_reconstruction(x, codes, itda.decode(codes))
        bar.update(len(positions))
    bar.close()
    if usage.tokens == 0:
        raise ValueError("the text gave no tokens to measure usage on: pass more text.")
    return usage

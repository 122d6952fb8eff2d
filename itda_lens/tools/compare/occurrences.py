"""Token occurrences: which characters of which document a token position covers.

Comparing two models on the same tokens needs a name for "the same token" that holds
across tokenizers. An occurrence is ``(doc, token_index, start, end)``: the document's
content hash, the token's index in that model's tokenisation, and its character span
shrunk to its non-space characters (a span of whitespace only is kept as it is), the
rule :func:`itda_lens.tools.compare.jaccard.atom_keys` uses.

Measures that compare activations row by row need one row per occurrence in every
model. Two ways to line the rows up (``align``):

- ``"span"``: the occurrences whose spans are equal in every model (for one tokenizer,
  every token; across tokenizers, the words both cut the same way);
- ``"end"``: the occurrences that *end* at the same character, one row per character
  where every tokenizer puts a token boundary: the token that ends there is the last
  one to read the text up to it (for tokenizers that cut at spaces, the last token of
  each word, whatever the pieces before it).

A key seen twice in one model (a character split into two byte tokens) stands for its
last row, the token that has read the most.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor

from itda_lens.core.text import TokenBatch

#: How the baselines' rows are lined up across models (see the module doc).
Align = Literal["span", "end"]

#: Columns of an occurrence table.
DOC, TOKEN_INDEX, START, END = range(4)


def trimmed_span(text: str, start: int, end: int) -> tuple[int, int]:
    """``(start, end)`` of ``text[start:end]`` without surrounding whitespace, unless it is
    all whitespace."""
    piece = text[start:end]
    if not piece.strip():
        return start, end
    return start + len(piece) - len(piece.lstrip()), end - (len(piece) - len(piece.rstrip()))


def batch_occurrences(batch: TokenBatch, positions: Int[Tensor, " n"]) -> Int[Tensor, "n 4"]:
    """Occurrences of the flat ``positions`` (indices into ``batch.tokens.flatten()``)."""
    doc, index, start, end = (t.flatten()[positions].tolist() for t in (batch.doc, batch.token_index, batch.char_start, batch.char_end))
    rows = []
    for d, i, s, e in zip(doc, index, start, end):
        s, e = trimmed_span(batch.documents[d], s, e)
        rows.append((d, i, s, e))
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 4)


def occurrence_keys(occurrences: Int[Tensor, "n 4"], by: str = "span") -> list[tuple[int, int, int]]:
    """Hashable keys in the order of the rows: ``(doc, start, end)`` for ``by="span"``,
    ``(doc, token_index, 0)`` for ``by="token"`` (as :func:`atom_keys` makes them),
    ``(doc, end, 0)`` for ``by="end"`` (see the module doc)."""
    zeros = torch.zeros_like(occurrences[:, DOC])
    if by == "span":
        columns = occurrences[:, [DOC, START, END]]
    elif by == "token":
        columns = torch.stack([occurrences[:, DOC], occurrences[:, TOKEN_INDEX], zeros], 1)
    elif by == "end":
        columns = torch.stack([occurrences[:, DOC], occurrences[:, END], zeros], 1)
    else:
        raise ValueError(f"by must be 'span', 'token' or 'end', got {by!r}.")
    return [tuple(row) for row in columns.tolist()]


def shared_rows(a: Int[Tensor, "n_a 4"], b: Int[Tensor, "n_b 4"], by: str = "span") -> tuple[Int[Tensor, " m"], Int[Tensor, " m"]]:
    """Rows of ``a`` and of ``b`` that are the same occurrence, paired, in ``a``'s order.
    A key seen twice on one side (a document given twice) pairs its first rows only."""
    first_b: dict[tuple[int, int, int], int] = {}
    for row, key in enumerate(occurrence_keys(b, by)):
        first_b.setdefault(key, row)
    seen: set[tuple[int, int, int]] = set()
    rows_a, rows_b = [], []
    for row, key in enumerate(occurrence_keys(a, by)):
        if key in first_b and key not in seen:
            seen.add(key)
            rows_a.append(row)
            rows_b.append(first_b[key])
    return torch.tensor(rows_a, dtype=torch.long), torch.tensor(rows_b, dtype=torch.long)

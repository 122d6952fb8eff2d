"""Where each atom came from: a token in context.

Every atom of an ITDA is the activation of one token of one document. Its record is
the document's content hash (the same text gives the same id in any run and in any
batch order), the token's index in the document's tokenisation, its character span in
the document, its token id and text, and a little surrounding text to read it by.

Character spans do not depend on the tokenizer, so two models' dictionaries built on
the same documents can be compared atom by atom (see :mod:`itda_lens.tools.compare`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from jaxtyping import Int
from torch import Tensor

#: Characters of text kept on each side of an atom's token.
CONTEXT_CHARS = 160

#: The integer columns, in the order they are saved.
COLUMNS = ("doc", "token_index", "char_start", "char_end", "token_id")

#: The text columns, saved as JSON.
TEXT_COLUMNS = ("token", "before", "after")


def document_id(text: str) -> int:
    """A signed 64-bit id from the SHA-256 of the document's text."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


@dataclass
class Provenance:
    """One record per atom, as columns. ``-1`` marks a field that is not known."""

    doc: Int[Tensor, " n"]
    token_index: Int[Tensor, " n"]
    char_start: Int[Tensor, " n"]
    char_end: Int[Tensor, " n"]
    token_id: Int[Tensor, " n"]
    token: list[str] = field(default_factory=list)
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.doc)
        for name in COLUMNS:
            column = getattr(self, name)
            if column.dtype != torch.long or column.dim() != 1 or len(column) != n:
                raise ValueError(
                    f"provenance column {name!r} must be a 1-d int64 tensor of length {n}, "
                    f"got {column.dtype} of shape {tuple(column.shape)}."
                )
        for name in TEXT_COLUMNS:
            texts = getattr(self, name)
            if not texts:
                setattr(self, name, [""] * n)
            elif len(texts) != n:
                raise ValueError(f"provenance list {name!r} has {len(texts)} entries for {n} atoms.")

    def __len__(self) -> int:
        return len(self.doc)

    @classmethod
    def empty(cls) -> Provenance:
        """No records."""
        return cls.unknown(0)

    @classmethod
    def unknown(cls, n: int) -> Provenance:
        """``n`` records with every field unknown (for atoms users bring themselves)."""
        minus_one = torch.full((n,), -1, dtype=torch.long)
        return cls(*(minus_one.clone() for _ in COLUMNS))

    @classmethod
    def cat(cls, parts: list[Provenance]) -> Provenance:
        """Records of several provenances, in order."""
        parts = [p for p in parts if len(p)] or [cls.empty()]
        columns = [torch.cat([getattr(p, name) for p in parts]) for name in COLUMNS]
        texts = [sum((getattr(p, name) for p in parts), []) for name in TEXT_COLUMNS]
        return cls(*columns, *texts)

    def select(self, index: Int[Tensor, " m"] | list[int]) -> Provenance:
        """The records at ``index``, in that order. A negative index is refused: in codes,
        -1 marks a position that was not encoded, not the last atom."""
        index = torch.as_tensor(index, dtype=torch.long)
        if index.numel() and int(index.min()) < 0:
            raise IndexError(f"atom index {int(index.min())} is not an atom (-1 marks a position that was not encoded); select codes where indices >= 0.")
        picks = index.tolist()
        columns = [getattr(self, name)[index] for name in COLUMNS]
        texts = [[getattr(self, name)[i] for i in picks] for name in TEXT_COLUMNS]
        return Provenance(*columns, *texts)

    def tensors(self) -> dict[str, Tensor]:
        """The integer columns, named ``provenance.<column>`` for a safetensors file."""
        return {f"provenance.{name}": getattr(self, name).contiguous() for name in COLUMNS}

    def texts(self) -> dict[str, list[str]]:
        """The text columns, for a JSON file."""
        return {name: getattr(self, name) for name in TEXT_COLUMNS}

    @classmethod
    def from_saved(cls, tensors: dict[str, Tensor], texts: dict[str, list[str]]) -> Provenance:
        """Inverse of :meth:`tensors` and :meth:`texts`; columns of another type are refused."""
        missing = [name for name in COLUMNS if f"provenance.{name}" not in tensors]
        if missing:
            raise ValueError(f"the saved provenance lacks the columns {missing}.")
        wrong = [name for name in COLUMNS if tensors[f"provenance.{name}"].dtype != torch.long]
        if wrong:
            raise ValueError(f"the saved provenance columns {wrong} are not int64.")
        if not isinstance(texts, dict) or not set(texts) <= set(TEXT_COLUMNS):
            raise ValueError(f"the saved provenance texts must be a dict with the keys {list(TEXT_COLUMNS)}.")
        for name, values in texts.items():
            if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
                raise ValueError(f"the saved provenance texts {name!r} must be a list of strings.")
        columns = [tensors[f"provenance.{name}"] for name in COLUMNS]
        return cls(*columns, *(texts.get(name, []) for name in TEXT_COLUMNS))

    def keys(self, by: str = "span") -> set[tuple[int, int, int]]:
        """Hashable keys of the records with a known document.

        ``by="span"`` keys by (document, character span), which does not depend on the
        tokenizer; ``by="token"`` by (document, token index), as in the ITDA paper.
        """
        return {key for key in self.key_list(by) if key is not None}

    def key_list(self, by: str = "span") -> list[tuple[int, int, int] | None]:
        """:meth:`keys` record by record, in order (``None``: unknown document)."""
        if by == "span":
            cols = (self.doc, self.char_start, self.char_end)
        elif by == "token":
            cols = (self.doc, self.token_index, torch.zeros_like(self.doc))
        else:
            raise ValueError(f"by must be 'span' or 'token', got {by!r}.")
        return [key if key[0] != -1 else None for key in zip(*(c.tolist() for c in cols))]

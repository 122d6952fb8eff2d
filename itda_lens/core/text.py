"""Corpora into fixed-length token sequences that remember where each token came from.

Documents come from a local text or JSON-lines file, a Hugging Face dataset (by hub
name, streamed) or, with neither, the built-in corpus: the Python Language Reference
topics that ship inside every CPython (:mod:`pydoc_data.topics`), so the main job runs
with no network and no files.

Each document is tokenised on its own with character offsets and cut into sequences of
``seq_len`` tokens: a BOS token followed by ``seq_len - 1`` tokens of the document. The
last sequence of a document is padded. BOS and padding positions are marked in
``TokenBatch.mask`` so that they are never atoms, training signals or metric terms.

Everything is read lazily and stops once ``max_tokens`` are gathered: files are read
line by line, and a document is tokenised in pieces of about :data:`WINDOW_CHARS`
characters, cut where a run of whitespace starts, so a huge document costs only what is
used of it. For byte-level BPE tokenizers (GPT-2 style, as SmolLM2's) such a cut is a
token boundary anyway, so the tokens are those of the whole document.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from itda_lens.core.config import CorpusSettings, Split
from itda_lens.core.provenance import CONTEXT_CHARS, Provenance, document_id

#: Share of documents (chosen by content hash) kept aside for evaluation.
HELDOUT_FRACTION = 0.1

#: Characters of a document tokenised at a time.
WINDOW_CHARS = 4096

_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


def file_documents(path: str | Path) -> Iterator[str]:
    """Documents of a local file, read lazily.

    ``.jsonl``: one JSON object per line with a ``"text"`` field. Other files are plain
    text, cut at WikiText article titles (`` = Title = ``) when the first line with text
    is one, else at blank lines.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no text file at {path}.")
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file; give a .txt or .jsonl file.")
    return _file_documents(path)


def _file_documents(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        try:
            yield from _jsonl_documents(path, f) if path.suffix == ".jsonl" else _text_documents(f)
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text ({err.reason}); convert it to UTF-8.") from err


def _jsonl_documents(path: Path, lines: Iterable[str]) -> Iterator[str]:
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"{path}:{number} is not a JSON object with a 'text' field (a string).")
            if text.strip():
                yield text


def _text_documents(lines: Iterable[str]) -> Iterator[str]:
    lines = iter(lines)
    head: list[str] = []  # blank lines, then the first line with text, which decides the cut
    for line in lines:
        head.append(line)
        if line.strip():
            break
    titled = bool(head) and _WIKITEXT_TITLE.match(head[-1].rstrip("\n")) is not None
    document: list[str] = []
    for line in itertools.chain(head, lines):
        starts_new = _WIKITEXT_TITLE.match(line.rstrip("\n")) if titled else not line.strip()
        if starts_new and "".join(document).strip():
            yield "".join(document)
            document = []
        if titled or line.strip():
            document.append(line)
    if "".join(document).strip():
        yield "".join(document)


def hf_documents(
    name: str, config: str | None = None, split: str = CorpusSettings.dataset_split, column: str = CorpusSettings.text_column, **load_args
) -> Iterator[str]:
    """Documents of a Hugging Face dataset, streamed (``load_args`` go to
    ``datasets.load_dataset``, e.g. ``data_files``)."""
    import datasets

    for row in datasets.load_dataset(name, config, split=split, streaming=True, **load_args):
        if column not in row:
            raise ValueError(f"dataset {name!r} has no column {column!r}; its columns are {sorted(row)}.")
        text = row[column]
        if isinstance(text, str) and text.strip():
            yield text


def builtin_documents() -> Iterator[str]:
    """The Python Language Reference topics shipped with CPython, one per document."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name]


def select_split(documents: Iterable[str], split: Split) -> Iterator[str]:
    """``train`` or ``heldout`` documents, chosen by content hash (about
    :data:`HELDOUT_FRACTION` held out), or ``all`` of them."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}.")
    for text in documents:
        held = (document_id(text) % 1000) < HELDOUT_FRACTION * 1000
        if split == "all" or held == (split == "heldout"):
            yield text


@dataclass
class TokenBatch:
    """Sequences of token ids with, per position, where the token came from."""

    tokens: Int[Tensor, "batch seq"]
    mask: Bool[Tensor, "batch seq"]
    doc: Int[Tensor, "batch seq"]
    token_index: Int[Tensor, "batch seq"]
    char_start: Int[Tensor, "batch seq"]
    char_end: Int[Tensor, "batch seq"]
    documents: dict[int, str]

    @property
    def n_tokens(self) -> int:
        """Positions that count (not BOS or padding)."""
        return int(self.mask.sum())

    def provenance(self, positions: Int[Tensor, " n"]) -> Provenance:
        """Records for flat positions (indices into ``tokens.flatten()``)."""
        columns = [t.flatten()[positions] for t in (self.doc, self.token_index, self.char_start, self.char_end)]
        token_id = self.tokens.flatten()[positions]
        tokens, before, after = [], [], []
        for doc, start, end in zip(*(c.tolist() for c in (columns[0], columns[2], columns[3]))):
            text = self.documents.get(doc, "")  # BOS (doc -1) has no text
            tokens.append(text[start:end])
            before.append(text[max(0, start - CONTEXT_CHARS) : start])
            after.append(text[end : end + CONTEXT_CHARS])
        return Provenance(*columns[:2], columns[2], columns[3], token_id, tokens, before, after)


def token_batches(
    documents: Iterable[str],
    tokenizer,
    seq_len: int = CorpusSettings.seq_len,
    batch_size: int = CorpusSettings.batch_size,
    max_tokens: int | None = CorpusSettings.max_tokens,
    include_bos: bool = CorpusSettings.include_bos,
) -> Iterator[TokenBatch]:
    """Batches of ``batch_size`` sequences of ``seq_len`` tokens, until ``max_tokens``
    tokens (not counting BOS and padding) or the documents run out. With
    ``include_bos`` the BOS positions are in the mask too (their provenance is unknown)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (BOS and one token), got {seq_len}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("the tokenizer has no BOS token; itda-lens starts every sequence with one.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    rows: list[list[tuple[int, int, int, int, int]]] = []
    texts: dict[int, str] = {}
    produced = 0
    for row, text in _rows(documents, tokenizer, seq_len - 1, max_tokens):
        rows.append(row)
        texts[row[0][1]] = text
        if len(rows) == batch_size:
            yield _collate(rows, texts, seq_len, bos, pad, include_bos)
            produced += 1
            rows, texts = [], {}
    if rows:
        yield _collate(rows, texts, seq_len, bos, pad, include_bos)
        produced += 1
    if produced == 0:
        raise ValueError("the corpus has no text: pass a non-empty file or dataset.")


def _rows(documents: Iterable[str], tokenizer, width: int, max_tokens: int | None) -> Iterator[tuple[list, str]]:
    """Rows of at most ``width`` token entries of one document (with its text), until
    ``max_tokens`` entries; a document is read only as far as needed."""
    remaining = max_tokens if max_tokens is not None else float("inf")
    for text in documents:
        row = []
        for entry in _document_tokens(text, document_id(text), tokenizer):
            row.append(entry)
            remaining -= 1
            if len(row) == width or remaining <= 0:
                yield row, text
                row = []
            if remaining <= 0:
                return
        if row:
            yield row, text


def _document_tokens(text: str, doc: int, tokenizer) -> Iterator[tuple[int, int, int, int, int]]:
    """``(token id, doc, token index, char start, char end)`` of a document, tokenised
    one window of about :data:`WINDOW_CHARS` characters at a time, as they are needed."""
    index = 0
    for offset, piece in _windows(text):
        encoded = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
        for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
            yield token, doc, index, offset + start, offset + end
            index += 1


def _windows(text: str) -> Iterator[tuple[int, str]]:
    """``(offset, piece)`` cutting ``text`` into pieces of at most :data:`WINDOW_CHARS`
    characters, each cut where a run of whitespace starts in the second half of the
    window (at the window's end if there is none)."""
    start = 0
    while start < len(text):
        end = start + WINDOW_CHARS
        if end < len(text):
            end = next((i for i in range(end, start + WINDOW_CHARS // 2, -1) if text[i].isspace() and not text[i - 1].isspace()), end)
        yield start, text[start:end]
        start = end


def _collate(rows, texts, seq_len, bos, pad, include_bos) -> TokenBatch:
    n = len(rows)
    tokens = torch.full((n, seq_len), pad, dtype=torch.long)
    tokens[:, 0] = bos
    mask = torch.zeros(n, seq_len, dtype=torch.bool)
    mask[:, 0] = include_bos
    columns = [torch.full((n, seq_len), -1, dtype=torch.long) for _ in range(4)]
    for r, chunk in enumerate(rows):
        if not chunk:
            continue
        values = torch.tensor(chunk, dtype=torch.long)
        tokens[r, 1 : 1 + len(chunk)] = values[:, 0]
        mask[r, 1 : 1 + len(chunk)] = True
        for column, values_column in zip(columns, values[:, 1:].T):
            column[r, 1 : 1 + len(chunk)] = values_column
    return TokenBatch(tokens, mask, *columns, documents=dict(texts))


def documents_from(text_file: str | Path | None = None, dataset: str | None = None, **dataset_args) -> Iterator[str]:
    """Documents from a file, a dataset name, or the built-in corpus when neither is given."""
    if text_file is not None and dataset is not None:
        raise ValueError("give a text file or a dataset, not both.")
    if text_file is not None:
        return file_documents(text_file)
    if dataset is not None:
        return hf_documents(dataset, **dataset_args)
    return builtin_documents()

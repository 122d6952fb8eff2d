"""Greedy construction of ITDA dictionaries from streamed activations.

The settings are a :class:`~itda_lens.core.config.BuildSettings`. For each hook point,
activations arrive in stream order and are taken ``step_tokens`` at a time. Each is
encoded with the current dictionary; one whose relative error ``||x - x_hat||^2 /
||x||^2`` exceeds ``threshold`` becomes a candidate atom (its unit vector). Candidates
are accepted in stream order, except one that an earlier accepted candidate of the same
step already explains alone (``1 - cos^2 <= threshold``), so the dictionary never holds
duplicates. Building stops adding at ``max_atoms``. A token's
encoding stops early once it is surely within the threshold (it cannot become an atom),
which changes the time a build takes, not the dictionary. :class:`GrowingDictionary`
holds the atoms and this rule in plain torch; a :class:`Grower` runs it next to the model
(in nnsight sessions on a server) and hands back what it took.

A build writes a checkpoint every ``checkpoint_every`` batches and when interrupted or
failing (of the batches finished by then); started again with the same settings and
text it resumes from there and ends with exactly the dictionary an uninterrupted build
gives. A checkpoint is written beside the previous one and swapped in, so a complete one
is never lost.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from itda_lens.core.activations import ActivationSource
from itda_lens.core.config import DEFAULT_BUILD, BuildSettings, CorpusSettings, ModelSettings
from itda_lens.core.files import MAX_CONFIG_BYTES, read_regular_file
from itda_lens.core.gram_rows import GRAM_BYTES, GramRows
from itda_lens.core.itda import ITDA, ITDAConfig, relative_error
from itda_lens.core.provenance import Provenance
from itda_lens.core.pursuit import decode, pursuit
from itda_lens.core.pursuit_blocks import padded_width
from itda_lens.core.text import TokenBatch

STATE_FILE = "state.json"
#: Batches between checkpoints.
CHECKPOINT_EVERY = 50


class GrowingDictionary:
    """The atoms of one hook point and the rule that grows them (see the module's text),
    with the settings of :class:`~itda_lens.core.config.BuildSettings` as keywords; its
    Gram rows take at most ``gram_bytes`` (0: none, dense matching pursuit: for a copy
    that only collects atoms grown elsewhere).

    Plain torch and the standard library, so that it also runs inside an nnsight session
    on a server that lacks itda-lens (:mod:`itda_lens.backends.nnsight_build`).
    """

    def __init__(
        self, d_model: int, *, k: int, threshold: float, max_atoms: int | None, refit: bool, step_tokens: int,
        device: str | torch.device = "cpu", gram_bytes: int = GRAM_BYTES,
    ):
        self.d_model, self.device = d_model, torch.device(device)
        self.k, self.threshold, self.max_atoms, self.refit, self.step_tokens = k, threshold, max_atoms, refit, step_tokens
        self.n_atoms = 0
        self.groups: list[int] = []  # dictionary size after each addition
        self.gram_bytes = gram_bytes
        self._atoms = torch.empty(0, d_model, device=self.device)
        self._gram: GramRows | None = None

    @property
    def atoms(self) -> Float[Tensor, "n_atoms d_model"]:
        return self._atoms[: self.n_atoms]

    @property
    def full(self) -> bool:
        return self.max_atoms is not None and self.n_atoms >= self.max_atoms

    def update(self, x: Float[Tensor, "n d_model"]) -> tuple[list[int], float]:
        """Offer activations in stream order; returns the rows that became atoms and the
        share of the rows encoded (none once full: NaN) that were reconstructed worse than
        the threshold."""
        if x.shape[-1] != self.d_model:
            raise ValueError(f"activations of width {x.shape[-1]} offered to a builder of width {self.d_model}.")
        x = x.to(self.device, torch.float32)
        finite = torch.isfinite(x).all(dim=1)
        if not finite.all():
            raise ValueError(
                f"{int((~finite).sum())} of {len(x)} activations contain NaN or inf; "
                "check the model's dtype (float16 overflows) and its inputs."
            )
        accepted: list[int] = []
        worse = encoded = 0
        step = self.step_tokens
        for start in range(0, len(x), step):
            if self.full:
                break
            chunk = x[start : start + step]
            poor = chunk.norm(dim=1) > 0
            if self.n_atoms:
                # A token stops encoding once surely within the threshold: it cannot become an atom.
                k = min(self.k, self.n_atoms)
                idx, val = pursuit(chunk, self.atoms, k, gram=self._gram, refit=self.refit, tolerance=self.threshold)
                poor &= relative_error(chunk, decode(idx, val, self.atoms)) > self.threshold
            candidates = torch.nonzero(poor)[:, 0]
            worse, encoded = worse + len(candidates), encoded + len(chunk)
            keep = self._independent(F.normalize(chunk[candidates], dim=1))
            if self.max_atoms is not None:
                keep = keep[: self.max_atoms - self.n_atoms]
            if keep:
                rows = candidates[keep]
                self.extend(F.normalize(chunk[rows], dim=1))
                accepted.extend((rows + start).tolist())
        return accepted, worse / encoded if encoded else float("nan")

    def _independent(self, units: Float[Tensor, "c d_model"]) -> list[int]:
        """Candidates (in order) that no earlier kept candidate explains alone."""
        explains = ((units @ units.T).pow(2) >= 1.0 - self.threshold).cpu().numpy()
        keep: list[int] = []
        for j in range(len(units)):
            if not explains[j, keep].any():
                keep.append(j)
        return keep

    def extend(self, units: Float[Tensor, "a d_model"], groups: list[int] | None = None) -> None:
        """Add unit-norm atoms, as :meth:`update` added them: in one addition, or in the
        additions that ``groups`` (the dictionary's size after each) gives."""
        start = self.n_atoms
        if groups is None:
            groups = [start + len(units)] if len(units) else []
        for end in groups:
            self._append(units[self.n_atoms - start : end - start].to(self.device, torch.float32))

    def _append(self, units: Float[Tensor, "a d_model"]) -> None:
        old, new = self.n_atoms, self.n_atoms + len(units)
        if new > len(self._atoms):
            self._grow(new)
        self._atoms[old:new] = units
        self.n_atoms = new
        if self._gram is not None:
            self._gram.grow(self.atoms, room=len(self._atoms))
        elif self.gram_bytes:
            self._gram = GramRows(self.atoms, self.gram_bytes, room=len(self._atoms))
        self.groups.append(new)

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * len(self._atoms), 1024)
        if self.max_atoms is not None:
            capacity = min(capacity, self.max_atoms)
        capacity = padded_width(capacity)
        atoms = torch.empty(capacity, self.d_model, device=self.device)
        atoms[: self.n_atoms] = self.atoms
        self._atoms = atoms


class DictionaryBuilder(GrowingDictionary):
    """The growing dictionary of one hook point, with where each atom came from."""

    def __init__(self, d_model: int, settings: BuildSettings = DEFAULT_BUILD, device: str | torch.device = "cpu", gram_bytes: int = GRAM_BYTES):
        if not isinstance(settings, BuildSettings):
            raise TypeError(f"settings must be a BuildSettings, got {type(settings).__name__}.")
        super().__init__(d_model, **asdict(settings), device=device, gram_bytes=gram_bytes)
        self.settings = settings
        self.provenance: list[Provenance] = []

    def to_itda(self, model: str | None = None, hook: str | None = None, build: dict | None = None) -> ITDA:
        """The dictionary so far, for ``hook`` of ``model``, with ``build`` as its record."""
        if self.n_atoms < self.k:
            raise ValueError(
                f"only {self.n_atoms} atoms were built, fewer than k={self.k}: give more text "
                "(more tokens), a lower threshold, or a smaller k."
            )
        cfg = ITDAConfig(d_model=self.d_model, k=self.k, threshold=self.threshold, model=model, hook=hook, refit=self.refit, build=build or {})
        return ITDA(self.atoms.clone(), cfg, Provenance.cat(self.provenance))

    def restore(self, itda: ITDA, groups: list[int]) -> None:
        """Continue from a checkpointed dictionary, grown in the same steps."""
        self.provenance = [itda.provenance]
        self.extend(itda.atoms, groups)


@runtime_checkable
class Grower(Protocol):
    """Grows the builders from several batches at once, away from the client: in an
    nnsight session on a server (:class:`itda_lens.backends.nnsight_build.ServerBuilder`).
    :func:`build` takes one in place of an :class:`~itda_lens.core.activations.ActivationSource`."""

    hooks: list[str]
    model_name: str
    d_model: int
    #: Batches given to one call of :meth:`grow`; a checkpoint can follow each call.
    session_batches: int

    def grow(self, builders: dict[str, DictionaryBuilder], batches: list[TokenBatch]) -> list[dict[str, tuple[list[int], float]]]:
        """Add to each builder, by :meth:`GrowingDictionary.extend`, the atoms that
        :meth:`GrowingDictionary.update` takes from ``batches``; for each batch and
        hook, what ``update`` returned (rows counted among the batch's encoded positions).
        Once every builder is full it stops, returning only the batches it read."""
        ...


@dataclass
class BuildResult:
    """The dictionaries of a build and what it cost."""

    dictionaries: dict[str, ITDA]
    tokens: int
    seconds_forward: float
    seconds_dictionary: float
    history: dict[str, list[list[float]]] = field(default_factory=dict)


def build(
    source: ActivationSource | Grower,
    batches: Iterable[TokenBatch],
    settings: BuildSettings = DEFAULT_BUILD,
    *,
    device: str | torch.device = "cpu",
    gram_bytes: int = GRAM_BYTES,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    keep_checkpoint: bool = False,
    total_tokens: int | None = None,
    progress: bool = True,
    corpus: CorpusSettings | None = None,
    model: ModelSettings | None = None,
) -> BuildResult:
    """Build one dictionary per hook point of ``source`` from ``batches`` with
    ``settings``; reading stops early once every dictionary has ``settings.max_atoms``.

    The dictionaries grow on ``device``, each reading Gram rows held in at most
    ``gram_bytes`` (a memory budget that changes the speed, not the dictionaries).

    ``history[hook]`` holds ``[tokens, n_atoms, share of the batch's tokens reconstructed
    worse than the threshold]`` after each batch. Each dictionary's ``config.build``
    records the settings, the hooks and model, the model's dtype (from ``model``) and the
    ``corpus`` the batches were made from, when given.

    With ``checkpoint_dir`` the build resumes from a checkpoint found there, if it was
    made with the same settings and model dtype from the same batches (compared by a
    hash of the tokens read so far); it writes one when a multiple of ``checkpoint_every``
    batches is passed. ``keep_checkpoint`` leaves a checkpoint of the
    finished build there, to be removed with :func:`remove_checkpoint` once the
    dictionaries are saved; otherwise it is removed when the build ends.

    A :class:`Grower` source takes ``source.session_batches`` batches at a time, and
    the time it takes counts as ``seconds_forward``.
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be at least 1, got {checkpoint_every}.")
    if not isinstance(settings, BuildSettings):
        raise TypeError(f"settings must be a BuildSettings, got {type(settings).__name__}.")
    grows = isinstance(source, Grower)  # the dictionaries grow elsewhere: no Gram rows here
    builders = {hook: DictionaryBuilder(source.d_model, settings, device, gram_bytes=0 if grows else gram_bytes) for hook in source.hooks}
    recorded = {"hooks": source.hooks, "model": source.model_name, **asdict(settings)}
    if model is not None:
        recorded["model_dtype"] = model.dtype
    text_hash = hashlib.sha256()
    state = {
        "batches": 0, "tokens": 0, "seconds_forward": 0.0, "seconds_dictionary": 0.0,
        "history": {h: [] for h in source.hooks}, "corpus_sha256": text_hash.hexdigest(),
    }
    checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None else None
    found = find_checkpoint(checkpoint) if checkpoint is not None else None
    if found is not None:
        state = _resume(found, recorded, builders)
    saved = state["batches"]
    bar = tqdm(total=total_tokens, initial=state["tokens"], unit="tok", desc="building", disable=not progress)
    try:
        for group in _groups(_unread(batches, text_hash, state, found), source.session_batches if grows else 1):
            if all(b.full for b in builders.values()):
                break
            start = time.perf_counter()
            if grows:
                outcomes = source.grow(builders, [batch for _, batch, _ in group])
                middle = time.perf_counter()
            else:
                batch = group[0][1]
                activations = source(batch.tokens)
                middle = time.perf_counter()
                positions = torch.nonzero(batch.mask.flatten())[:, 0]
                outcomes = [{}]
                for hook, builder in builders.items():
                    outcomes[0][hook] = builder.update(activations[hook].flatten(0, 1)[positions.to(activations[hook].device)])
            end = time.perf_counter()
            state.update(seconds_forward=state["seconds_forward"] + middle - start, seconds_dictionary=state["seconds_dictionary"] + end - middle)
            sizes = {hook: builder.n_atoms - sum(len(outcome[hook][0]) for outcome in outcomes) for hook, builder in builders.items()}
            for (number, batch, digest), outcome in zip(group, outcomes):
                positions = torch.nonzero(batch.mask.flatten())[:, 0]
                for hook, builder in builders.items():
                    added, worse = outcome[hook]
                    if added:
                        builder.provenance.append(batch.provenance(positions[added]))
                    sizes[hook] += len(added)
                    state["history"][hook].append([state["tokens"] + len(positions), sizes[hook], worse])
                # The batch is done, in one update; a checkpoint leaves out what an unfinished batch added.
                state.update(batches=number + 1, tokens=state["tokens"] + len(positions), corpus_sha256=digest)
                bar.update(len(positions))
            bar.set_postfix(atoms=",".join(str(b.n_atoms) for b in builders.values()))
            if checkpoint is not None and state["batches"] // checkpoint_every > saved // checkpoint_every:
                _save_checkpoint(checkpoint, recorded, builders, state)
                saved = state["batches"]
    except BaseException:  # Ctrl-C, a failed remote job, ...: keep what is finished
        if checkpoint is not None and state["batches"] > saved:
            _save_checkpoint(checkpoint, recorded, builders, state)
        raise
    finally:
        bar.close()
    if state["tokens"] == 0:
        raise ValueError("the corpus gave no tokens to build from: pass more text.")
    info = {key: state[key] for key in ("tokens", "seconds_forward", "seconds_dictionary")}
    if corpus is not None:
        info["corpus"] = asdict(corpus)
    dictionaries = {
        hook: builder.to_itda(source.model_name, hook, {**recorded, **info, "history": state["history"][hook]})
        for hook, builder in builders.items()
    }
    if checkpoint is not None and keep_checkpoint and state["batches"] > saved:
        _save_checkpoint(checkpoint, recorded, builders, state)
    elif checkpoint is not None and not keep_checkpoint:
        remove_checkpoint(checkpoint)
    return BuildResult(dictionaries, state["tokens"], state["seconds_forward"], state["seconds_dictionary"], state["history"])


def checkpoint_folders(directory: str | Path) -> list[Path]:
    """The folders a checkpoint at ``directory`` occupies: itself, the next one while it
    is written (``.partial``) and the previous one while it is replaced (``.old``)."""
    directory = Path(directory)
    return [directory, directory.with_name(directory.name + ".partial"), directory.with_name(directory.name + ".old")]


def find_checkpoint(directory: str | Path) -> Path | None:
    """The complete checkpoint at ``directory``, or the previous one if the build stopped
    while replacing it; ``None`` if there is none."""
    current, _, previous = checkpoint_folders(directory)
    return next((folder for folder in (current, previous) if (folder / STATE_FILE).is_file()), None)


def remove_checkpoint(directory: str | Path) -> None:
    """Delete the checkpoint at ``directory`` (see :func:`checkpoint_folders`)."""
    for folder in checkpoint_folders(directory):
        if folder.exists():
            shutil.rmtree(folder)


def _unread(batches: Iterable[TokenBatch], corpus, state: dict, checkpoint: Path | None) -> Iterator[tuple[int, TokenBatch, str]]:
    """The batches after the ``state["batches"]`` a checkpoint holds, each with its number
    and the hash of the corpus read up to it; every batch read goes into the hash, which
    must match the checkpoint's once its batches are read."""
    resumed, number = state["batches"], -1
    for number, batch in enumerate(batches):
        if number == resumed:
            _check_corpus(corpus, state, checkpoint)
        _digest(corpus, batch)
        if number >= resumed:
            yield number, batch, corpus.hexdigest()
    if number < resumed:
        _check_corpus(corpus, state, checkpoint)


def _groups(items: Iterator, size: int) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last may be shorter)."""
    while group := list(itertools.islice(items, size)):
        yield group


def _digest(corpus, batch: TokenBatch) -> None:
    """Add a batch's tokens, and where they come from, to the hash of the corpus read."""
    corpus.update(str(tuple(batch.tokens.shape)).encode())
    for column in (batch.tokens, batch.mask, batch.doc, batch.char_start, batch.char_end):
        corpus.update(column.numpy().tobytes())


def _check_corpus(corpus, state: dict, checkpoint: Path | None) -> None:
    if corpus.hexdigest() != state["corpus_sha256"]:
        raise ValueError(
            f"the text differs from the text the checkpoint in {checkpoint} was built from (its first "
            f"{state['batches']} batches); give the same text and text options to resume, or delete {checkpoint} to start afresh."
        )


def _save_checkpoint(directory: Path, settings: dict, builders: dict[str, DictionaryBuilder], state: dict) -> None:
    """Write the checkpoint of the finished batches in ``state`` (atoms a batch in progress
    added are left out) beside the current one, then swap them so that one of them is
    always complete."""
    current, partial, previous = checkpoint_folders(directory)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    groups = {}
    for number, (hook, builder) in enumerate(builders.items()):
        rows = state["history"][hook][: state["batches"]]
        n_atoms = rows[-1][1] if rows else 0
        if n_atoms:
            cfg = ITDAConfig(d_model=builder.d_model, k=min(builder.k, n_atoms), threshold=builder.threshold, hook=hook)
            provenance = Provenance.cat(builder.provenance).select(torch.arange(n_atoms))
            ITDA(builder.atoms[:n_atoms].cpu(), cfg, provenance).save(partial / f"hook{number}")
        groups[hook] = [size for size in builder.groups if size <= n_atoms]
    history = {hook: rows[: state["batches"]] for hook, rows in state["history"].items()}
    (partial / STATE_FILE).write_text(json.dumps({"settings": settings, "state": {**state, "history": history}, "groups": groups}))
    if current.exists():
        if previous.exists():
            shutil.rmtree(previous)
        current.replace(previous)
    partial.replace(current)
    if previous.exists():
        shutil.rmtree(previous)


def _resume(directory: Path, settings: dict, builders: dict[str, DictionaryBuilder]) -> dict:
    saved = json.loads(read_regular_file(directory / STATE_FILE, MAX_CONFIG_BYTES))
    differ = {key: value for key, value in json.loads(json.dumps(settings)).items() if saved["settings"].get(key) != value}
    if differ:
        was = ", ".join(f"{key}={saved['settings'].get(key)!r}" for key in differ)
        now = ", ".join(f"{key}={value!r}" for key, value in differ.items())
        raise ValueError(
            f"the checkpoint in {directory} was made with {was}, not {now}; "
            f"run with the same settings to resume, or delete {directory} to start afresh."
        )
    for number, (hook, builder) in enumerate(builders.items()):
        if saved["groups"][hook]:
            builder.restore(ITDA.load(directory / f"hook{number}"), saved["groups"][hook])
    return saved["state"]

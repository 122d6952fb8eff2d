"""The settings of a build, of its text and of its model: one default for each.

The Python API (:func:`itda_lens.core.build.build`, :func:`itda_lens.core.text.token_batches`,
:func:`itda_lens.backends.models.load_model`), the command line (:mod:`itda_lens.tools.options`) and the
saved config (``config.build``) all take their defaults from these dataclasses. Each is
checked when it is made, with one error naming the setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from itda_lens.core import checks

Split = Literal["train", "heldout", "all"]
SPLITS: tuple[Split, ...] = ("train", "heldout", "all")

#: The floating-point types a model can be loaded in.
DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class BuildSettings:
    """How a dictionary is built; a checkpoint resumes only with the same settings."""

    k: int = 40
    """Atoms per encoding: the steps of matching pursuit."""

    threshold: float = 0.08
    """The relative error ``||x - x_hat||^2 / ||x||^2`` above which an activation
    becomes an atom (see :func:`itda_lens.core.reference.relative_threshold` for the
    reference implementation's ``loss_threshold``)."""

    max_atoms: int | None = None
    """Stop adding atoms at this many (at least ``k``); ``None``: no limit."""

    refit: bool = True
    """Refit the coefficients on the chosen atoms by least squares; ``False`` keeps the
    plain matching-pursuit coefficients, as the reference implementation does."""

    step_tokens: int = 256
    """Activations offered to the growing dictionary at a time."""

    def __post_init__(self) -> None:
        checks.integer(self.k, "k", low=1)
        if not 0.0 < checks.number(self.threshold, "threshold") < 1.0:
            raise ValueError(f"threshold is a relative error and must lie in (0, 1), got {self.threshold}.")
        if self.max_atoms is not None and checks.integer(self.max_atoms, "max_atoms", low=1) < self.k:
            raise ValueError(f"max_atoms={self.max_atoms} is smaller than k={self.k}.")
        checks.flag(self.refit, "refit")
        checks.integer(self.step_tokens, "step_tokens", low=1)


#: The settings a build takes when given none.
DEFAULT_BUILD = BuildSettings()


@dataclass(frozen=True)
class SessionSettings:
    """How a build runs next to the model, in nnsight sessions
    (:class:`itda_lens.backends.nnsight_build.ServerBuilder`); the dictionary does not depend on them."""

    session_batches: int = 16
    """Batches per session; the client checkpoints after each, so a failed session loses at most these."""

    max_request_bytes: int | None = None
    """Refuse to send a session larger than this (the dictionary sent in counts); ``None``: no cap."""

    max_result_bytes: int | None = None
    """End a session before the atoms it returns pass this many bytes (the next session
    goes on); ``None``: no cap."""

    def __post_init__(self) -> None:
        checks.integer(self.session_batches, "session_batches", low=1)
        for name in ("max_request_bytes", "max_result_bytes"):
            if getattr(self, name) is not None:
                checks.integer(getattr(self, name), name, low=1)


#: The session settings a server-side build takes when given none.
DEFAULT_SESSIONS = SessionSettings()


@dataclass(frozen=True)
class CorpusSettings:
    """Which text is read, and how it is cut into batches of token sequences."""

    text_file: str | None = None
    """A ``.txt`` or ``.jsonl`` file; with neither it nor ``dataset``, the built-in corpus."""

    dataset: str | None = None
    """A Hugging Face dataset name, streamed."""

    dataset_config: str | None = None
    """The dataset's configuration."""

    dataset_split: str = "train"
    """The dataset's own split."""

    text_column: str = "text"
    """The dataset's column of text."""

    split: Split = "train"
    """Which documents: ``train``, ``heldout`` (about 10%, by a hash of the text) or ``all``."""

    max_tokens: int | None = None
    """Stop after this many tokens (BOS and padding not counted); ``None``: all of them."""

    seq_len: int = 128
    """Tokens per sequence, BOS included (at most the model's context)."""

    batch_size: int = 16
    """Sequences per batch."""

    include_bos: bool = False
    """Also encode (and score) the BOS positions."""

    def __post_init__(self) -> None:
        if self.text_file is not None and self.dataset is not None:
            raise ValueError("give text_file or dataset, not both.")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}.")
        if self.max_tokens is not None:
            checks.integer(self.max_tokens, "max_tokens", low=1)
        checks.integer(self.seq_len, "seq_len", low=2)
        checks.integer(self.batch_size, "batch_size", low=1)
        checks.flag(self.include_bos, "include_bos")


@dataclass(frozen=True)
class ModelSettings:
    """Which model is loaded, and how."""

    name: str = "smollm2-135m-instruct"
    """The embedded SmolLM2-135M-Instruct (the default), a Hugging Face id or a local folder."""

    dtype: str = "float32"
    """One of :data:`DTYPES`."""

    device: str = "cpu"
    """Where the model (and the growing dictionary) runs: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}.")

"""Command-line options the ``itda-lens`` commands share, and what they describe.

Their defaults are those of :mod:`itda_lens.core.config`, and :func:`build_settings`,
:func:`corpus_settings` and :func:`model_settings` turn them back into those dataclasses.

The argument types refuse bad values when the command line is read, naming the option,
before any model is loaded; so do the checks of output paths and the first read of the
corpus here. Errors are ``ValueError``s whose one-line message says what to change.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path

from itda_lens.core.config import DTYPES, SPLITS, BuildSettings, CorpusSettings, ModelSettings, SessionSettings


def _number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def sequence_length(text: str) -> int:
    """A whole number of at least 2 (a BOS token and one token of text)."""
    value = _number(text, int)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (BOS and one token), got {value}")
    return value


def open_fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    value = _number(text, float)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in (0, 1]."""
    value = _number(text, float)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def device(text: str) -> str:
    """A device this machine has (:func:`itda_lens.backends.models.check_device`)."""
    from itda_lens.backends.models import check_device

    try:
        check_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).rstrip(".")) from None
    return text


def add_text_args(parser: argparse.ArgumentParser, split: str) -> None:
    """The options that choose the text and how it is cut into batches."""
    group = parser.add_argument_group("text (default: the built-in corpus, see itda_lens.core.text)")
    group.add_argument("--text-file", type=Path, help="a .txt or .jsonl file")
    group.add_argument("--dataset", help="a Hugging Face dataset name, streamed")
    group.add_argument("--dataset-config", default=CorpusSettings.dataset_config)
    group.add_argument("--dataset-split", default=CorpusSettings.dataset_split)
    group.add_argument("--text-column", default=CorpusSettings.text_column)
    group.add_argument("--split", default=split, choices=SPLITS, help=f"which documents (default: {split})")
    group.add_argument("--max-tokens", type=positive_int, default=CorpusSettings.max_tokens)
    group.add_argument("--seq-len", type=sequence_length, default=CorpusSettings.seq_len, help="tokens per sequence, BOS included (at most the model's context)")
    group.add_argument("--batch-size", type=positive_int, default=CorpusSettings.batch_size)
    group.add_argument("--include-bos", action="store_true", help="also encode (and score) the BOS positions")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """The options every command shares."""
    parser.add_argument("--device", type=device, default=ModelSettings.device)
    parser.add_argument("--dtype", default=ModelSettings.dtype, choices=DTYPES)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also: ITDA_LENS_DEBUG=1)")


def add_dictionary_args(parser) -> None:
    """The options of the dictionaries a command builds (:class:`~itda_lens.core.config.BuildSettings`)."""
    parser.add_argument("--k", type=positive_int, default=BuildSettings.k, help="atoms per encoding")
    parser.add_argument("--threshold", type=open_fraction, default=BuildSettings.threshold, help="relative error above which an activation becomes an atom")
    parser.add_argument("--max-atoms", type=positive_int, default=BuildSettings.max_atoms, help="stop adding atoms at this many (at least --k)")
    parser.add_argument(
        "--no-refit", dest="refit", action="store_false",
        help="keep plain matching-pursuit coefficients (no least-squares refit), as the reference implementation does",
    )
    parser.add_argument("--step-tokens", type=positive_int, default=BuildSettings.step_tokens, help="tokens offered to the dictionary at a time")


def add_session_args(parser) -> None:
    """Where the dictionary is built, and the sessions of a server-side build (:class:`~itda_lens.core.config.SessionSettings`)."""
    group = parser.add_argument_group("building on the server (--backend nnsight --remote local|ndif --build-on server)")
    group.add_argument(
        "--build-on", choices=["client", "server"], default="client",
        help="client: stream the activations here and build here; server: build next to the model in nnsight sessions, only new atoms come back",
    )
    group.add_argument("--session-batches", type=positive_int, default=SessionSettings.session_batches, help="batches per session; a checkpoint follows each")
    group.add_argument("--max-request-bytes", type=positive_int, default=SessionSettings.max_request_bytes, help="refuse to send a larger session (the dictionary sent in counts)")
    group.add_argument("--max-result-bytes", type=positive_int, default=SessionSettings.max_result_bytes, help="end a session before the atoms it returns pass this many bytes")


def session_settings(args: argparse.Namespace) -> SessionSettings:
    """The session settings the options give."""
    return SessionSettings(args.session_batches, args.max_request_bytes, args.max_result_bytes)


def build_settings(args: argparse.Namespace) -> BuildSettings:
    """The build settings the options give."""
    return BuildSettings(args.k, args.threshold, args.max_atoms, args.refit, args.step_tokens)


def corpus_settings(args: argparse.Namespace) -> CorpusSettings:
    """The text the options choose, a text file by its absolute path."""
    text_file = str(args.text_file.resolve()) if args.text_file is not None else None
    return CorpusSettings(
        text_file, args.dataset, args.dataset_config, args.dataset_split, args.text_column,
        args.split, args.max_tokens, args.seq_len, args.batch_size, args.include_bos,
    )


def model_settings(args: argparse.Namespace, name: str) -> ModelSettings:
    """The model ``name`` as the options load it."""
    return ModelSettings(name, args.dtype, args.device)


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong between options, in argparse's words; ``None`` if nothing."""
    max_atoms, k = getattr(args, "max_atoms", None), getattr(args, "k", None)
    if max_atoms is not None and k is not None and max_atoms < k:
        return f"argument --max-atoms: must be at least --k ({k}), got {max_atoms}"
    if getattr(args, "build_on", "client") == "server" and (args.backend != "nnsight" or args.remote == "no"):
        return "argument --build-on: server needs --backend nnsight and --remote local or ndif"
    if getattr(args, "text_file", None) is not None and getattr(args, "dataset", None) is not None:
        return "argument --dataset: give --text-file or --dataset, not both"
    return None


def corpus_name(args: argparse.Namespace) -> str:
    """The text the options choose, in words."""
    if args.text_file is not None:
        return str(args.text_file)
    if args.dataset is not None:
        return f"dataset {args.dataset}" + (f" ({args.dataset_config})" if args.dataset_config else "") + f", {args.dataset_split} split"
    return "the built-in corpus"


def text_documents(args: argparse.Namespace) -> Iterator[str]:
    """The documents of ``args.split`` of the text the options choose. The first is read
    now, so that text that cannot be read fails before any model is loaded."""
    from itda_lens.core.text import HELDOUT_FRACTION, documents_from, select_split

    if args.text_file is not None and not args.text_file.exists():
        raise ValueError(f"--text-file {args.text_file} does not exist; give a .txt or .jsonl file.")
    dataset_args = {"config": args.dataset_config, "split": args.dataset_split, "column": args.text_column} if args.dataset else {}
    try:
        documents = select_split(documents_from(args.text_file, args.dataset, **dataset_args), args.split)
        first = next(documents, None)
    except OSError as err:
        if args.dataset is None:
            raise
        raise ValueError(
            f"cannot read --dataset {args.dataset} ({one_line(err)}); check its name, --dataset-config, "
            "--dataset-split and the network, or give --text-file."
        ) from err
    if first is None:
        raise ValueError(
            f"{corpus_name(args)} has no documents in the {args.split} split (documents are split by a hash of their "
            f"text, {HELDOUT_FRACTION:.0%} held out); give more documents, or another --split."
        )
    return itertools.chain([first], documents)


def token_batches(args: argparse.Namespace, documents: Iterator[str], tokenizer):
    """The batches the text options describe, of ``documents``."""
    from itda_lens.core import text

    return text.token_batches(documents, tokenizer, args.seq_len, args.batch_size, args.max_tokens, args.include_bos)


def model_name(name: str) -> str:
    """``name`` as recorded: a local model folder by its absolute path, so that it names
    the same folder from anywhere."""
    from itda_lens.backends.models import DEFAULT_MODEL

    return str(Path(name).resolve()) if name != DEFAULT_MODEL and Path(name).is_dir() else name


def load_model(args: argparse.Namespace, name: str, backend: str):
    """The model ``name`` for ``backend`` on ``args.device`` in ``args.dtype``, checked
    against ``args.seq_len``."""
    from itda_lens.backends import models

    if args.no_progress:
        from transformers.utils import logging

        logging.disable_progress_bar()
    try:
        model = models.load_model(name, backend, dtype=args.dtype, device=args.device)
    except OSError as err:
        raise ValueError(f"cannot load the model {name} ({one_line(err)}); give the embedded default, a Hugging Face id or a local model folder.") from err
    check_seq_len(args.seq_len, model, backend)
    return model


def check_seq_len(seq_len: int, model, backend: str) -> None:
    """Refuse sequences longer than the model's context."""
    context = model.cfg.n_ctx if backend == "transformer_lens" else getattr(model.config, "max_position_embeddings", None)
    if context is not None and seq_len > context:
        raise ValueError(f"--seq-len {seq_len} is longer than the model's context of {context} tokens; give --seq-len {context} or less.")


def check_out_folder(out: Path) -> None:
    """Refuse an output folder that is a file, or that cannot be made or written to."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (it is made if missing).")
    _check_writable(out if out.exists() else out.parent)


def check_out_file(out: Path) -> None:
    """Refuse an output file that is a folder, or whose folder cannot be written to."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the path of the file to write.")
    _check_writable(out.parent)


def _check_writable(folder: Path) -> None:
    if not folder.is_dir():
        raise ValueError(f"the folder of --out ({folder}) does not exist; create it first.")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"cannot write in {folder} ({err.strerror}); give an --out you can write to.") from err


def one_line(err: BaseException) -> str:
    """The first line of an exception's message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__

"""The ``itda-lens`` command: ``train``, ``eval``, ``browse`` and ``compare``.

With ``--json`` the last line printed is one JSON object with the results. An error ends
a command with status 2 and one line on stderr that says what to change (``--debug``, or
the environment variable ``ITDA_LENS_DEBUG=1``, shows its traceback); Ctrl-C ends it
with status 130.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from itda_lens.tools.options import (
    add_dictionary_args,
    add_run_args,
    add_session_args,
    add_text_args,
    build_settings,
    check_args,
    check_out_folder,
    check_seq_len,
    corpus_name,
    corpus_settings,
    load_model,
    model_name,
    model_settings,
    one_line,
    positive_int,
    session_settings,
    text_documents,
    token_batches,
)

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
#: In a ``train --out`` folder: the checkpoint, the dictionaries being saved, the plot.
CHECKPOINT_DIR = ".checkpoint"
SAVING_DIR = ".saving"
GROWTH_FILE = "growth.png"


class CommandError(Exception):
    """An error reported in one line that ends the command with ``status``."""

    def __init__(self, message: str, status: int = EXIT_ERROR):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line in one line (``--help`` shows the usage)."""

    def error(self, message: str, command: str | None = None):
        prog = f"{self.prog} {command}" if command else self.prog
        self.exit(EXIT_ERROR, f"{prog}: error: {message} (see {prog} --help)\n")


def command_parser() -> argparse.ArgumentParser:
    """The parser of every command; its defaults are those of :mod:`itda_lens.core.config`."""
    from itda_lens.backends.models import DEFAULT_MODEL
    from itda_lens.core.build import CHECKPOINT_EVERY
    from itda_lens.tools.browse.cli import add_browse_parser
    from itda_lens.tools.compare.cli import add_compare_parser

    parser = _Parser(prog="itda-lens", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="build a dictionary")
    train.add_argument("--model", default=DEFAULT_MODEL, help="the embedded default, a Hugging Face id or a local folder")
    train.add_argument("--hook", action="append", required=True, help="a TransformerLens hook name, or with --backend nnsight a module path such as model.layers.15; repeat for several")
    train.add_argument("--backend", choices=["transformer_lens", "nnsight"], default="transformer_lens")
    train.add_argument("--remote", choices=["no", "local", "ndif"], default="no", help="with --backend nnsight: run traces on NDIF (needs a Hub id and NDIF_API_KEY), or simulate it locally")
    add_dictionary_args(train)
    add_session_args(train)
    train.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per hook if several)")
    train.add_argument("--overwrite", action="store_true", help="replace the dictionaries in --out (other files there are kept)")
    train.add_argument("--checkpoint-every", type=positive_int, default=CHECKPOINT_EVERY, help="batches between checkpoints (with --remote ndif or --build-on server: after each batch or session)")
    add_text_args(train, "train")
    add_run_args(train)

    evaluate = commands.add_parser("eval", help="evaluate a dictionary on held-out text")
    evaluate.add_argument("dictionary", type=Path)
    evaluate.add_argument("--model", default=None, help="default: the model the dictionary was built for")
    evaluate.add_argument("--hook", default=None, help="default: the hook the dictionary was built at")
    add_text_args(evaluate, "heldout")
    add_run_args(evaluate)

    add_browse_parser(commands)
    add_compare_parser(commands)
    return parser


def _train(args) -> dict:
    from itda_lens.core.activations import TransformerLensSource
    from itda_lens.core.build import build, find_checkpoint, remove_checkpoint

    out: Path = args.out
    single = len(args.hook) == 1
    check_out_folder(out)
    _check_targets(out, args.hook, args.overwrite)
    documents = text_documents(args)
    name = model_name(args.model)
    if args.backend == "nnsight":
        from itda_lens.backends.nnsight_source import NnsightSource

        if args.remote == "ndif":
            from nnsight import LanguageModel

            model = LanguageModel(args.model)  # a Hub id; the weights stay on NDIF
            check_seq_len(args.seq_len, model, "nnsight")
        else:
            model = load_model(args, name, "nnsight")
        remote = {"no": False, "local": "local", "ndif": True}[args.remote]
        if args.build_on == "server":
            from itda_lens.backends.nnsight_build import ServerBuilder

            source = ServerBuilder(model, args.hook, model_name=name, remote=remote, sessions=session_settings(args))
        else:
            source = NnsightSource(model, args.hook, model_name=name, remote=remote)
    else:
        model = load_model(args, name, "transformer_lens")
        source = TransformerLensSource(model, args.hook, model_name=name)
    out.mkdir(exist_ok=True)
    checkpoint = out / CHECKPOINT_DIR
    try:
        result = build(
            source,
            token_batches(args, documents, model.tokenizer),
            build_settings(args),
            device=args.device,
            checkpoint_dir=checkpoint,
            checkpoint_every=1 if args.remote == "ndif" or args.build_on == "server" else args.checkpoint_every,
            keep_checkpoint=True,
            total_tokens=args.max_tokens,
            progress=not args.no_progress,
            corpus=corpus_settings(args),
            model=model_settings(args, name),
        )
        try:
            _save(result, out, single)
        except OSError as err:
            raise CommandError(
                f"could not save the dictionaries in {out} ({one_line(err)}); the finished build is kept in "
                f"{checkpoint}: make room or fix the permissions, then rerun the same command to save it."
            ) from err
    except KeyboardInterrupt as err:
        found = find_checkpoint(checkpoint)
        where = f"its checkpoint is at {found}" if found else "no batch had finished, so it has no checkpoint"
        raise CommandError(f"the build was interrupted; {where}: rerun the same command to resume.", EXIT_INTERRUPTED) from err
    remove_checkpoint(checkpoint)
    sizes = {hook: itda.n_atoms for hook, itda in result.dictionaries.items()}
    for hook, size in sizes.items():
        print(f"{hook}: {size} atoms from {result.tokens} tokens")
    print(f"forward {result.seconds_forward:.1f} s, dictionary {result.seconds_dictionary:.1f} s; saved to {out}")
    return {
        "n_atoms": next(iter(sizes.values())) if single else sizes,
        "tokens": result.tokens,
        "seconds_forward": result.seconds_forward,
        "seconds_dictionary": result.seconds_dictionary,
        "out": str(out),
    }


def _check_targets(out: Path, hooks: list[str], overwrite: bool) -> None:
    """Refuse, unless ``overwrite``, to replace a dictionary or to write among files that
    ``train`` did not write; a file where a dictionary folder goes is always refused."""
    from itda_lens.core.build import checkpoint_folders
    from itda_lens.core.itda import ATOMS_FILE, CONFIG_FILE, TEXTS_FILE

    if not out.exists():
        return
    single = len(hooks) == 1
    dictionary_files = {CONFIG_FILE, ATOMS_FILE, TEXTS_FILE}
    targets = [out] if single else [out / hook for hook in hooks]
    for target in targets:
        if target.exists() and not target.is_dir():
            raise CommandError(f"{target} is a file where a dictionary folder goes; move it away or give another --out.")
    finished = [target for target in targets if (target / CONFIG_FILE).exists()]
    if finished and not overwrite:
        raise CommandError(f"{finished[0]} already holds a dictionary; pass --overwrite to replace it (other files are kept), or give another --out.")
    ours = {GROWTH_FILE, SAVING_DIR, *(folder.name for folder in checkpoint_folders(out / CHECKPOINT_DIR))}
    others = [path for path in out.iterdir() if path.name not in (ours | (dictionary_files if single else set(hooks)))]
    if not single:
        others += [path for target in targets if target.is_dir() for path in target.iterdir() if path.name not in dictionary_files]
    if others and not overwrite:
        names = ", ".join(sorted(str(path.relative_to(out)) for path in others)[:3]) + (", ..." if len(others) > 3 else "")
        raise CommandError(f"--out {out} holds files that train did not write ({names}); give a new or empty folder, or pass --overwrite to write beside them (they are kept).")


def _save(result, out: Path, single: bool) -> None:
    """Write the dictionaries and the growth plot to a folder in ``out``, then move them
    into place: a dictionary folder holds a ``config.json`` only once it is complete."""
    from itda_lens.tools.plots import growth_plot

    saving = out / SAVING_DIR
    if saving.exists():
        shutil.rmtree(saving)
    saving.mkdir()
    for number, itda in enumerate(result.dictionaries.values()):
        itda.save(saving / f"hook{number}")
    growth_plot(result.history, saving / GROWTH_FILE)
    (saving / GROWTH_FILE).replace(out / GROWTH_FILE)
    for number, hook in enumerate(result.dictionaries):
        _move_dictionary(saving / f"hook{number}", out if single else out / hook)
    saving.rmdir()


def _move_dictionary(saved: Path, target: Path) -> None:
    from itda_lens.core.itda import CONFIG_FILE

    if not target.exists():
        saved.replace(target)
        return
    (target / CONFIG_FILE).unlink(missing_ok=True)
    for path in sorted(saved.iterdir(), key=lambda path: path.name == CONFIG_FILE):
        path.replace(target / path.name)
    saved.rmdir()


def _eval(args) -> dict:
    from itda_lens.backends.models import DEFAULT_MODEL
    from itda_lens.core.itda import ITDA
    from itda_lens.tools.evaluate import evaluate

    itda = ITDA.load(args.dictionary, device=args.device)
    documents = text_documents(args)
    model = load_model(args, args.model or itda.config.model or DEFAULT_MODEL, "transformer_lens")
    batches = token_batches(args, documents, model.tokenizer)
    result = evaluate(model, itda, batches, hook=args.hook, total_tokens=args.max_tokens, progress=not args.no_progress)
    result.update(split=args.split, corpus=corpus_name(args))
    print(f"evaluated on {result['tokens']} tokens of {result['documents']} documents, the {args.split} split of {result['corpus']}")
    for name, value in result.items():
        if name not in ("split", "corpus"):
            print(f"{name:>16}: {value:.4f}" if isinstance(value, float) else f"{name:>16}: {value}")
    return result


def _report(err: BaseException) -> tuple[str, int]:
    """The one line and exit status for an error that ended a command."""
    if isinstance(err, CommandError):
        return str(err), err.status
    if isinstance(err, KeyboardInterrupt):
        return "interrupted.", EXIT_INTERRUPTED
    if isinstance(err, (ValueError, OSError, ImportError)):
        return one_line(err), EXIT_ERROR
    return f"{type(err).__name__}: {one_line(err)} (rerun with --debug for the traceback)", EXIT_ERROR


def main(argv: list[str] | None = None) -> None:
    from itda_lens.tools.browse.cli import run_browse
    from itda_lens.tools.compare.cli import run_compare

    parser = command_parser()
    args = parser.parse_args(argv)
    problem = check_args(args)
    if problem:
        parser.error(problem, args.command)
    command = {"train": _train, "eval": _eval, "browse": run_browse, "compare": run_compare}[args.command]
    try:
        result = command(args)
    except (Exception, KeyboardInterrupt) as err:
        if args.debug or os.environ.get("ITDA_LENS_DEBUG") == "1":
            raise
        message, status = _report(err)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(status) from None
    if args.json:
        print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

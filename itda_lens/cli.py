"""The ``itda-lens`` command: ``train``, ``eval``, ``browse`` and ``compare``.

With ``--json`` the last line printed is one JSON object with the results.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from itda_lens.build import DEFAULT_THRESHOLD


def _add_text_args(parser: argparse.ArgumentParser, split: str) -> None:
    group = parser.add_argument_group("text (default: the built-in corpus, see itda_lens.text)")
    group.add_argument("--text-file", type=Path, help="a .txt or .jsonl file")
    group.add_argument("--dataset", help="a Hugging Face dataset name, streamed")
    group.add_argument("--dataset-config", default=None)
    group.add_argument("--dataset-split", default="train")
    group.add_argument("--text-column", default="text")
    group.add_argument("--split", default=split, choices=["train", "heldout", "all"], help=f"which documents (default: {split})")
    group.add_argument("--max-tokens", type=int, default=None)
    group.add_argument("--seq-len", type=int, default=128)
    group.add_argument("--batch-size", type=int, default=16)
    group.add_argument("--include-bos", action="store_true", help="also encode (and score) the BOS positions")


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    """Options every command that runs a model shares."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--no-progress", action="store_true")


def _batches(args, tokenizer):
    from itda_lens.text import documents_from, select_split, token_batches

    dataset_args = {"config": args.dataset_config, "split": args.dataset_split, "column": args.text_column} if args.dataset else {}
    documents = documents_from(args.text_file, args.dataset, **dataset_args)
    return token_batches(select_split(documents, args.split), tokenizer, args.seq_len, args.batch_size, args.max_tokens, args.include_bos)


def _parser() -> argparse.ArgumentParser:
    from itda_lens.models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="itda-lens", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="build a dictionary")
    train.add_argument("--model", default=DEFAULT_MODEL, help="the embedded default, a Hugging Face id or a local folder")
    train.add_argument("--hook", action="append", required=True, help="a TransformerLens hook name, or with --backend nnsight a module path such as model.layers.15; repeat for several")
    train.add_argument("--backend", choices=["transformer_lens", "nnsight"], default="transformer_lens")
    train.add_argument("--remote", choices=["no", "local", "ndif"], default="no", help="with --backend nnsight: run traces on NDIF (needs a Hub id and NDIF_API_KEY), or simulate it locally")
    train.add_argument("--k", type=int, default=40)
    train.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="relative error above which an activation becomes an atom")
    train.add_argument("--max-atoms", type=int, default=None)
    train.add_argument("--step-tokens", type=int, default=256)
    train.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per hook if several)")
    train.add_argument("--overwrite", action="store_true", help="replace a finished dictionary in --out")
    train.add_argument("--checkpoint-every", type=int, default=50, help="batches between checkpoints")
    _add_text_args(train, "train")

    evaluate = commands.add_parser("eval", help="evaluate a dictionary on held-out text")
    evaluate.add_argument("dictionary", type=Path)
    evaluate.add_argument("--model", default=None, help="default: the model the dictionary was built for")
    evaluate.add_argument("--hook", default=None, help="default: the hook the dictionary was built at")
    _add_text_args(evaluate, "heldout")

    from itda_lens.browse.cli import add_browse_parser
    from itda_lens.compare.cli import add_compare_parser

    add_browse_parser(commands)
    add_compare_parser(commands)

    for command in (train, evaluate):
        _add_run_args(command)
    return parser


def _train(args) -> dict:
    from itda_lens.activations import TransformerLensSource
    from itda_lens.build import build
    from itda_lens.models import load_model
    from itda_lens.plots import growth_plot

    out: Path = args.out
    if not out.parent.exists():
        raise SystemExit(f"error: the parent folder of --out ({out.parent}) does not exist; create it first.")
    if (out / "config.json").exists() and not args.overwrite:
        raise SystemExit(f"error: {out} already holds a dictionary; pass --overwrite to replace it.")
    if args.backend == "nnsight":
        from itda_lens.activations import NnsightSource

        if args.remote == "ndif":
            from nnsight import LanguageModel

            model = LanguageModel(args.model)  # a Hub id; the weights stay on NDIF
        else:
            model = load_model(args.model, "nnsight", dtype=args.dtype, device=args.device)
        remote = {"no": False, "local": "local", "ndif": True}[args.remote]
        source = NnsightSource(model, args.hook, model_name=args.model, remote=remote)
    else:
        model = load_model(args.model, "transformer_lens", dtype=args.dtype, device=args.device)
        source = TransformerLensSource(model, args.hook, model_name=args.model)
    out.mkdir(exist_ok=True)
    corpus = {"text_file": str(args.text_file) if args.text_file else None, "dataset": args.dataset, "split": args.split, "seq_len": args.seq_len, "batch_size": args.batch_size, "max_tokens": args.max_tokens, "include_bos": args.include_bos}
    result = build(
        source,
        _batches(args, model.tokenizer),
        k=args.k,
        threshold=args.threshold,
        max_atoms=args.max_atoms,
        step_tokens=args.step_tokens,
        device=args.device,
        checkpoint_dir=out / ".checkpoint",
        checkpoint_every=1 if args.remote == "ndif" else args.checkpoint_every,
        total_tokens=args.max_tokens,
        progress=not args.no_progress,
        metadata={"corpus": corpus},
    )
    single = len(args.hook) == 1
    for hook, itda in result.dictionaries.items():
        itda.save(out if single else out / hook)
    growth_plot(result.history, out / "growth.png")
    sizes = {hook: itda.n_atoms for hook, itda in result.dictionaries.items()}
    for hook, size in sizes.items():
        print(f"{hook}: {size} atoms from {result.tokens} tokens")
    print(f"forward {result.seconds_forward:.1f} s, dictionary {result.seconds_dictionary:.1f} s; saved to {out}")
    return {
        "n_atoms": sizes[args.hook[0]] if single else sizes,
        "tokens": result.tokens,
        "seconds_forward": result.seconds_forward,
        "seconds_dictionary": result.seconds_dictionary,
        "out": str(out),
    }


def _eval(args) -> dict:
    from itda_lens.evaluate import evaluate
    from itda_lens.itda import ITDA
    from itda_lens.models import DEFAULT_MODEL, load_model

    itda = ITDA.load(args.dictionary, device=args.device)
    model = load_model(args.model or itda.config.model or DEFAULT_MODEL, "transformer_lens", dtype=args.dtype, device=args.device)
    result = evaluate(model, itda, _batches(args, model.tokenizer), hook=args.hook, total_tokens=args.max_tokens, progress=not args.no_progress)
    for name, value in result.items():
        print(f"{name:>16}: {value:.4f}" if isinstance(value, float) else f"{name:>16}: {value}")
    return result


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        from itda_lens.browse.cli import run_browse
        from itda_lens.compare.cli import run_compare

        result = {"train": _train, "eval": _eval, "browse": run_browse, "compare": run_compare}[args.command](args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        raise SystemExit(f"error: {err}") from err
    if args.json:
        print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""``itda-lens compare``: two models (or two sets of saved dictionaries) layer by layer.

With models, both are run on the same documents (each with its own tokenizer), one
dictionary is built per hook of each, and ITDA Jaccard (atoms matched by document and
character span, so the tokenizers may differ; with ``--min-overlap`` below 1, spans that
overlap that much, for tokenizers that cut words differently) is set beside the baseline
measures on the token occurrences both share (``--align end``: the tokens that end at the
same character, e.g. the last token of each word). With ``--dictionaries-a/-b`` only
Jaccard is computed. Prints the Jaccard matrix, each layer's best match, the share of
layers matched to their relative depth with ITDA Jaccard's 95% interval over the
documents. ``--out`` receives ``comparison.json`` and ``similarity.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``compare`` command to the ``itda-lens`` sub-commands."""
    from itda_lens.tools.compare.comparison import ALL_MEASURES
    from itda_lens.tools.compare.jaccard import EXACT, RARITY_POWER
    from itda_lens.tools.options import add_dictionary_args, add_run_args, add_text_args, fraction, positive_int

    parser = subparsers.add_parser("compare", help="compare two models (or two sets of dictionaries) layer by layer", description=__doc__)
    models = parser.add_argument_group("models (dictionaries are built on the corpus)")
    models.add_argument("--model-a", help="the embedded default, a Hugging Face id or a local folder")
    models.add_argument("--model-b")
    models.add_argument("--backend", default="transformer_lens", choices=["transformer_lens", "nnsight"])
    models.add_argument("--hook-a", action="append", help="a hook of model A (TransformerLens name); repeat. Default: every blocks.i.hook_resid_post")
    models.add_argument("--hook-b", action="append", help="a hook of model B; repeat. Default: every blocks.i.hook_resid_post")
    add_dictionary_args(models)
    models.add_argument("--measures", nargs="+", default=list(ALL_MEASURES), choices=list(ALL_MEASURES))
    models.add_argument("--baseline-tokens", type=positive_int, default=8192, help="at most this many shared tokens for the baselines")
    models.add_argument(
        "--record-fraction", type=fraction, default=None,
        help="share of tokens whose activations are kept for the baselines (default: enough for --baseline-tokens given --max-tokens)",
    )
    saved = parser.add_argument_group("saved dictionaries (Jaccard only)")
    saved.add_argument("--dictionaries-a", type=Path, help="a dictionary folder, or a folder of them (one per hook)")
    saved.add_argument("--dictionaries-b", type=Path)
    saved.add_argument("--shared-tokens", type=positive_int, default=None, help="tokens common to both builds, for the null when their token counts differ")
    parser.add_argument("--by", default="span", choices=["span", "token"], help="match atoms by character span (any tokenizers) or token index")
    parser.add_argument(
        "--min-overlap", type=float, default=EXACT,
        help="atoms match when their spans' overlap over union reaches this, in (0.5, 1]; 1: equal spans (two tokenizers: try 0.6)",
    )
    parser.add_argument(
        "--rarity-power", type=float, default=RARITY_POWER,
        help="itda_rarity_jaccard: an atom held by n of its model's layers weighs n ** -power (0: the paper's Jaccard); choose it on pilot models like yours",
    )
    models.add_argument("--align", default="span", choices=["span", "end"], help="baselines on tokens of equal spans, or on tokens that end at the same character")
    parser.add_argument("--out", type=Path, required=True, help="folder for comparison.json and similarity.png")
    add_text_args(parser, "all")
    add_run_args(parser)
    return parser


def run_compare(args: argparse.Namespace) -> dict:
    """Run ``itda-lens compare``; returns the JSON-able comparison (also written to
    ``--out/comparison.json``)."""
    from itda_lens.tools.compare.comparison import compare_dictionaries, compare_models
    from itda_lens.tools.options import check_out_folder, text_documents

    with_models = args.model_a is not None or args.model_b is not None
    with_saved = args.dictionaries_a is not None or args.dictionaries_b is not None
    if with_models == with_saved:
        raise ValueError("give --model-a and --model-b, or --dictionaries-a and --dictionaries-b (not both kinds).")
    if with_saved and (args.dictionaries_a is None or args.dictionaries_b is None):
        raise ValueError("give both --dictionaries-a and --dictionaries-b.")
    if with_models and (args.model_a is None or args.model_b is None):
        raise ValueError("give both --model-a and --model-b.")
    if not 0.5 < args.min_overlap <= 1.0:
        raise ValueError(f"--min-overlap must lie in (0.5, 1] (above one half the matching is one-to-one), got {args.min_overlap}.")
    if args.by == "token" and args.min_overlap < 1.0:
        raise ValueError("--min-overlap below 1 needs --by span (token indices have no overlap).")
    if not math.isfinite(args.rarity_power) or args.rarity_power < 0:
        raise ValueError(f"--rarity-power must be a finite number >= 0, got {args.rarity_power}.")
    check_out_folder(args.out)
    heatmap = args.out / "similarity.png"
    if with_saved:
        dictionaries = load_dictionaries(args.dictionaries_a), load_dictionaries(args.dictionaries_b)
        args.out.mkdir(exist_ok=True)
        result = compare_dictionaries(
            *dictionaries, by=args.by, shared_tokens=args.shared_tokens, heatmap=heatmap,
            name_a=str(args.dictionaries_a), name_b=str(args.dictionaries_b), min_overlap=args.min_overlap, rarity_power=args.rarity_power,
        )
    else:
        text_documents(args)  # the text can be read, before any model is loaded
        args.out.mkdir(exist_ok=True)
        layers = [_model_layers(args, name, hooks) for name, hooks in ((args.model_a, args.hook_a), (args.model_b, args.hook_b))]
        result = compare_models(
            *layers, measures=args.measures, by=args.by, max_tokens=args.baseline_tokens, heatmap=heatmap, min_overlap=args.min_overlap, align=args.align,
            rarity_power=args.rarity_power,
        )
    (args.out / "comparison.json").write_text(json.dumps(result, indent=1))
    _print_summary(result)
    return result


def load_dictionaries(folder: Path) -> dict:
    """``{hook: ITDA}`` from a dictionary folder or a folder of dictionary folders (in
    natural order of their names, so ``blocks.10`` follows ``blocks.9``)."""
    from itda_lens.core.itda import CONFIG_FILE, ITDA
    from itda_lens.core.reference import ATOMS_FILE

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no dictionary folder at {folder}.")
    if (folder / CONFIG_FILE).exists() or (folder / ATOMS_FILE).exists():
        folders = [folder]
    else:
        folders = sorted((p for p in folder.iterdir() if (p / CONFIG_FILE).exists() or (p / ATOMS_FILE).exists()), key=_natural)
    if not folders:
        raise FileNotFoundError(f"{folder} holds no dictionary (a folder with {CONFIG_FILE}) nor folders of them.")
    dictionaries = {}
    for path in folders:
        itda = ITDA.load(path)
        dictionaries[itda.config.hook or path.name] = itda
    return dictionaries


def _natural(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _model_layers(args, name: str, hooks: list[str] | None):
    from itda_lens.tools.compare.model_layers import model_layers
    from itda_lens.tools.options import build_settings, load_model, text_documents, token_batches

    documents = text_documents(args)
    model = load_model(args, name, args.backend)
    if args.backend == "nnsight":
        from itda_lens.backends.nnsight_source import NnsightSource

        n_layers = model.config.num_hidden_layers
        source = NnsightSource(model, hooks or [f"blocks.{i}.hook_resid_post" for i in range(n_layers)], model_name=name)
    else:
        from itda_lens.core.activations import TransformerLensSource

        n_layers = model.cfg.n_layers
        source = TransformerLensSource(model, hooks or [f"blocks.{i}.hook_resid_post" for i in range(n_layers)], model_name=name)
    fraction = args.record_fraction
    if fraction is None:
        fraction = 1.0 if args.max_tokens is None else min(1.0, 2.0 * args.baseline_tokens / args.max_tokens)
    return model_layers(
        source, token_batches(args, documents, model.tokenizer), name, build_settings(args),
        record_fraction=fraction, device=args.device, progress=not args.no_progress, total_tokens=args.max_tokens,
    )


def _print_summary(result: dict) -> None:
    overlap = "equal spans" if result["min_overlap"] == 1.0 else f"overlap over union >= {result['min_overlap']}"
    print(f"{result['model_a']} vs {result['model_b']} (atoms matched by {result['by']}" + (f", {overlap})" if result["by"] == "span" else ")"))
    if "shared_tokens" in result:
        print(
            f"tokens: {result['tokens_a']} and {result['tokens_b']}, {result['shared_tokens']} matching; "
            f"baselines on {result['baseline_tokens']} (aligned by {result['align']})"
        )
    jaccard = result["similarity"]["itda_jaccard"] if "itda_jaccard" in result["similarity"] else None
    if jaccard is not None:
        print("ITDA Jaccard, rows: layers of A, columns: layers of B" + (" (/ null)" if "jaccard_null" in result else ""))
        for i, row in enumerate(jaccard):
            null = result.get("jaccard_null")
            print(f"  {i:>3} " + " ".join(f"{v:.3f}" + (f"/{null[i][j]:.3f}" if null else "") for j, v in enumerate(row)))
    width = max(map(len, result["summary"]), default=0)
    for measure, entry in result["summary"].items():
        print(f"{measure:>{width}}: best layer of B for each layer of A {entry['best_match_b']}; relative-depth accuracy {entry['matching_accuracy']:.2f}")
    for key, label in (("jaccard_interval", "ITDA Jaccard"), ("rarity_jaccard_interval", f"rarity-weighted ITDA Jaccard (power {result['rarity_power']:g})")):
        if key in result:
            interval = result[key]
            print(f"{label} relative-depth accuracy {interval['value']:.3f}, 95% interval over documents [{interval['low']:.3f}, {interval['high']:.3f}]")
    if "heatmap" in result:
        print(f"heatmap: {result['heatmap']}")

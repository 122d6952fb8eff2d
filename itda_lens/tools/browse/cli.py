"""``itda-lens browse DIR``: write the atom browser of a saved dictionary.

The dictionary's model is run over held-out text (by default 20,000 tokens of the
held-out split of the corpus) to measure how often and how strongly each atom is used
and to find its top contexts; ``--no-usage`` skips that and needs no model. The page is
written to ``DIR/browser.html`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_USAGE_TOKENS = 20_000


def add_browse_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``browse`` command to the ``itda-lens`` sub-commands."""
    from itda_lens.tools.options import add_run_args, add_text_args, positive_int

    parser = subparsers.add_parser("browse", help="write a static HTML page to explore a dictionary's atoms", description=__doc__)
    parser.add_argument("dictionary", type=Path, help="a dictionary folder (as written by itda-lens train)")
    parser.add_argument("--out", type=Path, default=None, help="the HTML file to write (default: DICTIONARY/browser.html)")
    parser.add_argument("--title", default=None, help="the page title (default: model and hook)")
    parser.add_argument("--model", default=None, help="default: the model the dictionary was built for")
    parser.add_argument("--hook", default=None, help="default: the hook the dictionary was built at")
    parser.add_argument("--top", type=positive_int, default=5, help="top held-out contexts kept per atom")
    parser.add_argument("--no-usage", action="store_true", help="skip the held-out usage (no model is run)")
    add_text_args(parser, "heldout")
    parser.set_defaults(max_tokens=DEFAULT_USAGE_TOKENS)
    add_run_args(parser)
    return parser


def run_browse(args: argparse.Namespace) -> dict:
    """Run ``itda-lens browse``; returns what the JSON line reports."""
    from itda_lens.core.itda import ITDA
    from itda_lens.tools.browse.page import write_browser
    from itda_lens.tools.browse.usage import atom_usage
    from itda_lens.tools.options import check_out_file, load_model, text_documents, token_batches

    itda = ITDA.load(args.dictionary, device=args.device)
    out = args.out if args.out is not None else args.dictionary / "browser.html"
    check_out_file(out)
    usage = None
    if not args.no_usage:
        from itda_lens.backends.models import DEFAULT_MODEL
        from itda_lens.core.activations import TransformerLensSource

        hook = args.hook or itda.config.hook
        if hook is None:
            raise ValueError("the dictionary does not record its hook point; pass --hook.")
        documents = text_documents(args)
        name = args.model or itda.config.model or DEFAULT_MODEL
        model = load_model(args, name, "transformer_lens")
        source = TransformerLensSource(model, [hook], model_name=name)
        usage = atom_usage(
            itda, source, token_batches(args, documents, model.tokenizer), hook=hook, top=args.top,
            total_tokens=args.max_tokens, progress=not args.no_progress,
        )
    write_browser(itda, out, usage=usage, title=args.title)
    result = {"out": str(out), "n_atoms": itda.n_atoms, "bytes": out.stat().st_size}
    if usage is not None:
        used = int((usage.count > 0).sum())
        result.update({"tokens": usage.tokens, "used_atoms": used, "fvu": usage.metrics()["fvu"]})
        print(f"{used} of {itda.n_atoms} atoms used on {usage.tokens} held-out tokens (FVU {result['fvu']:.4f})")
    print(f"atom browser written to {out} ({result['bytes'] / 1e6:.1f} MB); open it in a web browser")
    return result

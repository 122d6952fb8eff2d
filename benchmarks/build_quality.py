"""Build a dictionary and evaluate it: the core issue's quality and build-overhead goals.

Builds at one hook of a model from the training documents of a text file (first
--tokens tokens), evaluates on its held-out documents, and prints the build's time
split (the model's forward passes vs. the dictionary work, measured in the same run)
and the reconstruction and loss metrics, each beside its goal.

    python benchmarks/build_quality.py --text-file ../shared/corpus/wikitext-2/valid.txt
"""

from __future__ import annotations

import argparse
import json
import time

from itda_lens import BuildSettings, build, evaluate, load_model
from itda_lens.core.activations import TransformerLensSource
from itda_lens.core.text import file_documents, select_split, token_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-file", required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--hook", default="blocks.15.hook_resid_post")
    parser.add_argument("--tokens", type=int, default=60_000)
    parser.add_argument("--eval-tokens", type=int, default=None, help="default: all held-out tokens")
    parser.add_argument("--k", type=int, default=BuildSettings.k)
    parser.add_argument("--threshold", type=float, default=BuildSettings.threshold)
    parser.add_argument("--max-atoms", type=int, default=8192)
    parser.add_argument("--step-tokens", type=int, default=BuildSettings.step_tokens, help="tokens encoded per dictionary update")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="save the dictionary here")
    args = parser.parse_args()

    model = load_model(args.model, device=args.device)
    source = TransformerLensSource(model, [args.hook], model_name=args.model)
    train = token_batches(select_split(file_documents(args.text_file), "train"), model.tokenizer, 128, 16, args.tokens)
    settings = BuildSettings(k=args.k, threshold=args.threshold, max_atoms=args.max_atoms, step_tokens=args.step_tokens)
    result = build(source, train, settings, device=args.device, total_tokens=args.tokens)
    itda = result.dictionaries[args.hook]
    if args.out:
        itda.save(args.out)
    heldout = token_batches(select_split(file_documents(args.text_file), "heldout"), model.tokenizer, 128, 16, args.eval_tokens)
    start = time.perf_counter()
    metrics = evaluate(model, itda, heldout)
    overhead = result.seconds_dictionary / result.seconds_forward
    print(f"\n{args.model} {args.hook}: built on {result.tokens} tokens, evaluated on {metrics['tokens']} held-out tokens ({time.perf_counter() - start:.0f} s)")
    rows = [
        ("atoms", f"{itda.n_atoms}", "<= 8192"),
        ("forward seconds", f"{result.seconds_forward:.1f}", ""),
        ("dictionary seconds", f"{result.seconds_dictionary:.1f}", ""),
        ("build overhead", f"{100 * overhead:.1f}%", "<= 20%"),
        ("FVU", f"{metrics['fvu']:.4f}", "<= 0.12"),
        ("delta LM loss", f"{metrics['delta_lm_loss']:.4f}", "<= 0.05"),
        ("CE loss score", f"{metrics['ce_loss_score']:.4f}", ""),
        ("cosine", f"{metrics['cosine']:.4f}", ""),
    ]
    for name, value, goal in rows:
        print(f"{name:>20}: {value:>10}  {goal}")
    print(json.dumps({"n_atoms": itda.n_atoms, "tokens": result.tokens, "seconds_forward": result.seconds_forward, "seconds_dictionary": result.seconds_dictionary, "overhead": overhead, **metrics}))


if __name__ == "__main__":
    main()

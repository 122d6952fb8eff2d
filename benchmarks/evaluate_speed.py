"""Evaluation speed: one run up to the hook plus a continuation, against three whole runs.

``evaluate`` at a residual-stream hook runs the model once up to the hook and then once
from the hook on, over the clean, spliced and zero-ablated activations stacked along the
batch. Every other hook point takes three whole forward passes (clean, spliced,
zero-ablated); this script times that path too, at the same hook, by making
``start_block`` answer ``None``. Both evaluate the same held-out batches with the same
dictionary (atoms: activations at the hook on training tokens) in this process; the
script prints the seconds of each (median of --repeats, runs interleaved), their ratio,
and the largest difference between the losses the two report.

    python benchmarks/evaluate_speed.py --text-file ../shared/corpus/wikitext-2/valid.txt
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from unittest import mock

import torch

from itda_lens import ITDA, evaluate, load_model
from itda_lens.backends.transformer_lens import run_until, start_block
from itda_lens.core.text import file_documents, select_split, token_batches

LOSSES = ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-file", required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--hook", default="blocks.15.hook_resid_post")
    parser.add_argument("--tokens", type=int, default=2048, help="held-out tokens evaluated")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-atoms", type=int, default=2048, help="atoms: activations at the hook on this many training tokens")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model = load_model(args.model, device=args.device)
    block = start_block(model, args.hook)
    if block is None:
        parser.error(f"{args.hook} is not a residual-stream hook point: evaluate takes three whole passes there anyway.")
    train = token_batches(select_split(file_documents(args.text_file), "train"), model.tokenizer, args.seq_len, args.batch_size, args.n_atoms)
    with torch.no_grad():
        atoms = torch.cat([run_until(model, block, batch.tokens.to(args.device))[batch.mask.to(args.device)] for batch in train])
    itda = ITDA.from_atoms(atoms, k=args.k, hook=args.hook, model=args.model)
    heldout = list(token_batches(select_split(file_documents(args.text_file), "heldout"), model.tokenizer, args.seq_len, args.batch_size, args.tokens))

    def timed(three_passes: bool) -> tuple[float, dict]:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with mock.patch("itda_lens.tools.evaluate.start_block", return_value=None) if three_passes else contextlib.nullcontext():
            result = evaluate(model, itda, heldout, progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, result

    runs: dict[str, list[float]] = {"three_passes": [], "continued": []}
    results = {}
    for _ in range(args.repeats):
        for name in runs:
            seconds, results[name] = timed(name == "three_passes")
            runs[name].append(seconds)
    seconds = {name: statistics.median(times) for name, times in runs.items()}
    difference = max(abs(results["three_passes"][loss] - results["continued"][loss]) for loss in LOSSES)
    ratio = seconds["three_passes"] / seconds["continued"]

    tokens = results["continued"]["tokens"]
    print(f"{args.model} {args.hook}: {tokens} held-out tokens in batches of {args.batch_size} x {args.seq_len}, "
          f"{itda.n_atoms} atoms, k={args.k}, device={args.device}, threads={torch.get_num_threads()}")
    for name, value in seconds.items():
        print(f"{name:>13}: {value:8.2f} s  ({1e3 * value / tokens:.2f} ms/token)")
    print(f"speed-up of the continued evaluation over three passes: {ratio:.2f}x")
    print(f"largest difference between their losses: {difference:.2e}")
    print(json.dumps({"seconds": seconds, "speedup": ratio, "loss_difference": difference, "tokens": tokens}))


if __name__ == "__main__":
    main()

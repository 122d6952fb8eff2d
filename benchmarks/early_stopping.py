"""Early stopping in the builder: the same dictionary in less time.

Reads one hook's activations once (the training documents of a text file, first
--tokens tokens), then builds from them in this process with the builder as it is and
with its early stopping switched off (its pursuit calls without ``tolerance``), runs
interleaved. Prints the dictionary seconds of each (median of --repeats), their ratio,
and whether the two dictionaries are identical.

    python benchmarks/early_stopping.py --text-file ../shared/corpus/wikitext-2/valid.txt
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from itda_lens import BuildSettings, build, load_model
from itda_lens.core import pursuit
from itda_lens.core.activations import TransformerLensSource
from itda_lens.core.text import file_documents, select_split, token_batches


class Recorded:
    """An activation source that replays activations read once, batch by batch."""

    def __init__(self, source: TransformerLensSource, batches: list):
        self.hooks, self.d_model, self.model_name = source.hooks, source.d_model, source.model_name
        self.activations = [source(batch.tokens) for batch in batches]
        self.calls = 0

    def __call__(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        return self.activations[self.calls - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-file", required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--hook", default="blocks.15.hook_resid_post")
    parser.add_argument("--tokens", type=int, default=60_000)
    parser.add_argument("--max-atoms", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    model = load_model(args.model)
    batches = list(token_batches(select_split(file_documents(args.text_file), "train"), model.tokenizer, 128, 16, args.tokens))
    recorded = Recorded(TransformerLensSource(model, [args.hook], model_name=args.model), batches)
    stopping = pursuit.pursuit

    def without_stopping(*args, tolerance=None, **kwargs):
        return stopping(*args, **kwargs)

    seconds: dict[str, list[float]] = {"stopping": [], "no_stopping": []}
    atoms = {}
    for _ in range(args.repeats):
        for variant in seconds:
            pursuit.pursuit = stopping if variant == "stopping" else without_stopping
            recorded.calls = 0
            result = build(recorded, batches, BuildSettings(max_atoms=args.max_atoms), progress=False)
            seconds[variant].append(result.seconds_dictionary)
            atoms[variant] = result.dictionaries[args.hook].atoms
    pursuit.pursuit = stopping
    median = {variant: statistics.median(values) for variant, values in seconds.items()}
    same = atoms["stopping"].shape == atoms["no_stopping"].shape and torch.equal(atoms["stopping"], atoms["no_stopping"])
    print(f"{args.model} {args.hook}: {result.tokens} tokens, {len(atoms['stopping'])} atoms")
    for variant, value in median.items():
        print(f"{variant:>12}: {value:6.2f} s dictionary (runs: {', '.join(f'{s:.2f}' for s in seconds[variant])})")
    print(f"speed-up from early stopping: {median['no_stopping'] / median['stopping']:.2f}x; identical dictionaries: {same}")
    print(json.dumps({"seconds": seconds, "speedup": median["no_stopping"] / median["stopping"], "identical": same, "n_atoms": len(atoms["stopping"])}))


if __name__ == "__main__":
    main()

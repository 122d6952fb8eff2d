"""Layer matching with ground truth: do similarity measures find the same layer across seeds?

Trains several tiny Llama-architecture language models that differ only in their seed
(initialisation and batch order) on the shared WikiText text (``tiny_lm.py``), builds one
ITDA dictionary per layer (``blocks.{i}.hook_resid_post``) per model through
TransformerLens on the same documents, records the activations at those tokens, and
scores every measure by how often the most similar layer of another model is the layer
at the same depth:

- cross-model: every layer of every ordered pair of different models (Kornblith et al.);
- with self-pairs: each model against itself counted as well (as the ITDA paper counts).

Prints a table of accuracies, each with a 95% bootstrap interval (models redrawn; for
ITDA Jaccard, the documents too: ``itda_lens.tools.compare.intervals``), the paper's
whole-model Jaccard (atoms of every layer together), the Jaccard at matched depth beside
its null, and writes a heatmap PNG (mean cross-seed matrix per measure) and a JSON file with every matrix.

The ITDA settings (``--k``, ``--threshold``, ``--max-atoms``) were chosen on pilot models
(seeds 0-3, 400 training steps: ``--first-seed 0 --seeds 4 --steps 400``), the power of
the rarity-weighted Jaccard on seeds 0-3 trained for the default 1,200 steps
(``--first-seed 0 --seeds 4``); the default run uses other seeds (20-27; seeds 10-14 were
seen before the power was chosen again). Baselines use the defaults of
:mod:`itda_lens.tools.compare.similarity`. Trained models are kept in ``--models-dir``
and loaded on later runs.

    python benchmarks/layer_matching.py --threads 2         # CPU defaults: ~2.5 min to train each model, ~15 min for the rest
    python benchmarks/layer_matching.py --device cuda --threads 8 --seeds 5 --layers 12 \\
        --d-model 256 --d-mlp 1024 --steps 4000 --batch-size 32 --build-tokens 200000 --max-atoms 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_lm import (
    Sequences,
    TinyLMConfig,
    add_training_options,
    bridge,
    heldout_loss,
    trained_model,
    training_vocabulary,
)

from itda_lens.core.activations import TransformerLensSource
from itda_lens.core.config import BuildSettings
from itda_lens.core.text import file_documents, select_split, token_batches
from itda_lens.tools.compare.comparison import (
    ALL_MEASURES,
    JACCARD,
    RARITY_JACCARD,
    jaccard_null_matrix,
    model_similarities,
)
from itda_lens.tools.compare.heatmap import similarity_heatmaps
from itda_lens.tools.compare.intervals import Interval, accuracy_draws, accuracy_interval, difference_interval, document_counts
from itda_lens.tools.compare.jaccard import RARITY_POWER, atom_keys
from itda_lens.tools.compare.layers import jaccard_matrix, matched, ordered_pairs
from itda_lens.tools.compare.model_layers import model_layers

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "wikitext-2" / "valid.txt"
#: Activations kept per model for the baselines, at most (unless --record-fraction says otherwise).
RECORD_BYTES = 256 * 2**20


def record_fraction(build_tokens: int, layers: int, d_model: int, baseline_tokens: int) -> float:
    """The share of the build tokens whose activations are kept: all while they fit in
    :data:`RECORD_BYTES`, and at least twice the baselines' tokens."""
    fits = RECORD_BYTES / (build_tokens * layers * d_model * 4)
    return min(1.0, max(fits, 2 * baseline_tokens / build_tokens))


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    lm = TinyLMConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text-file", type=Path, default=CORPUS)
    models = p.add_argument_group("models")
    models.add_argument("--seeds", type=int, default=8, help="number of models")
    models.add_argument("--first-seed", type=int, default=20, help="seeds first-seed .. first-seed + seeds - 1")
    models.add_argument("--layers", type=int, default=lm.n_layers)
    add_training_options(models)
    models.add_argument("--softmax-tokens", type=int, default=lm.softmax_tokens, help="training softmax over this many most frequent tokens")
    itda = p.add_argument_group("dictionaries")
    itda.add_argument("--build-tokens", type=int, default=60000, help="tokens the dictionaries are built from (at most)")
    itda.add_argument("--build-split", default="all", choices=["all", "heldout", "train"], help="documents they are built from")
    itda.add_argument("--k", type=int, default=8)
    itda.add_argument("--threshold", type=float, default=0.005)
    itda.add_argument("--max-atoms", type=int, default=8000)
    itda.add_argument("--by", default="token", choices=["token", "span"], help="how atoms are matched (one tokenizer here: both agree)")
    measures = p.add_argument_group("measures")
    measures.add_argument("--baseline-tokens", type=int, default=8192, help="tokens the baselines see (mutual kNN: 2048; RBF CKA: its 2048 subsample)")
    measures.add_argument("--measures", nargs="+", default=list(ALL_MEASURES), choices=list(ALL_MEASURES))
    measures.add_argument("--draws", type=int, default=1000, help="bootstrap draws")
    measures.add_argument(
        "--rarity-powers", type=float, nargs="*", default=[0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0],
        help=f"powers of the rarity-weighted ITDA Jaccard to print accuracies for (the measure itself uses {RARITY_POWER}; 0 is the paper's Jaccard)",
    )
    measures.add_argument(
        "--record-fraction", type=float, default=None,
        help="share of the build tokens whose activations are kept for the baselines (default: all while they fit in 256 MiB per model)",
    )
    run = p.add_argument_group("run")
    run.add_argument("--device", default="cpu")
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    run.add_argument("--models-dir", type=Path, default=ROOT / "runs" / "layer_matching" / "models", help="trained models are kept here")
    run.add_argument("--out", type=Path, default=ROOT / "runs" / "layer_matching")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    from itda_lens.backends.models import embedded_model_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    documents = list(file_documents(args.text_file))
    config = TinyLMConfig(
        args.d_model, args.layers, args.heads, args.d_mlp, args.seq_len, args.batch_size, args.steps, args.lr, softmax_tokens=args.softmax_tokens
    )
    train = Sequences.from_documents(select_split(documents, "train"), tokenizer, args.seq_len)
    heldout = Sequences.from_documents(select_split(documents, "heldout"), tokenizer, args.seq_len)
    vocab = training_vocabulary(train, config.softmax_tokens)
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(args.layers)]
    fraction = args.record_fraction
    if fraction is None:
        fraction = record_fraction(args.build_tokens, args.layers, args.d_model, args.baseline_tokens)
    print(f"corpus {args.text_file.name}: {int(train.mask.sum())} training tokens; {config}", flush=True)
    print(f"dictionaries: k={args.k}, threshold={args.threshold}, max_atoms={args.max_atoms}, up to {args.build_tokens} tokens ({args.build_split} documents)", flush=True)

    models, seconds = [], {"train": 0.0, "build": 0.0, "measures": 0.0}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        t0 = time.perf_counter()
        model, info = trained_model(args.models_dir, train, tokenizer, config, seed, args.device)
        loss = heldout_loss(model, heldout, vocab, args.device)
        t1 = time.perf_counter()
        name = f"seed{seed}"
        source = TransformerLensSource(bridge(model, tokenizer, name), hooks, model_name=name)
        batches = token_batches(select_split(documents, args.build_split), tokenizer, args.seq_len, 32, args.build_tokens)
        with torch.no_grad():
            layers = model_layers(source, batches, name, BuildSettings(k=args.k, threshold=args.threshold, max_atoms=args.max_atoms), record_fraction=fraction, device=args.device)
        models.append(layers)
        t2 = time.perf_counter()
        seconds["train"] += t1 - t0
        seconds["build"] += t2 - t1
        sizes = ",".join(str(d.n_atoms) for d in layers.dictionaries.values())
        print(
            f"{name}: trained in {info['seconds']:.0f} s (this run: {t1 - t0:.0f} s), held-out loss {loss:.3f} nats; "
            f"{layers.tokens} tokens, atoms per layer {sizes} ({t2 - t1:.0f} s)",
            flush=True,
        )

    t0 = time.perf_counter()
    matrices = model_similarities(models, args.measures, by=args.by, max_tokens=args.baseline_tokens, include_self=True)
    names = [m.name for m in models]
    by_name = dict(zip(names, models))
    nulls = {(a, b): jaccard_null_matrix(x, y, args.by) for i, (a, x) in enumerate(zip(names, models)) for b, y in zip(names[i + 1 :], models[i + 1 :])}
    seconds["measures"] = time.perf_counter() - t0
    if JACCARD in args.measures:
        other = "span" if args.by == "token" else "token"
        gap = max(
            float((jaccard_matrix(by_name[a].dictionaries, by_name[b].dictionaries, by=other) - s).abs().max())
            for (a, b), s in matrices[JACCARD].items()
        )
        # Identical but for the few characters a byte-level tokenizer splits into two tokens (one span).
        print(f"ITDA Jaccard by {other} instead of by {args.by}: largest difference {gap:.1e}")

    # Per document counts of the dictionary measures, so that their intervals redraw documents too.
    docs = sorted({key[0] for m in models for d in m.dictionaries.values() for key in atom_keys(d, args.by)})
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i:]]

    at_power: dict[float, dict] = {}

    def counts_at(power: float) -> dict:
        if power not in at_power:
            at_power[power] = {
                (a, b): document_counts(list(by_name[a].dictionaries.values()), list(by_name[b].dictionaries.values()), args.by, docs=docs, rarity_power=power)
                for a, b in pairs
            }
        return at_power[power]

    counts = {measure: counts_at(power) for measure, power in ((JACCARD, 0.0), (RARITY_JACCARD, RARITY_POWER)) if measure in args.measures}

    found: dict[tuple[str, bool], torch.Tensor] = {}

    def draws(measure: str, include_self: bool) -> torch.Tensor:
        """Accuracy and its bootstrap draws; every measure redraws the same models."""
        if (measure, include_self) not in found:
            if measure in counts:
                found[measure, include_self] = accuracy_draws(counts=counts[measure], include_self=include_self, draws=args.draws)
            else:
                found[measure, include_self] = accuracy_draws(matrices[measure], include_self=include_self, resample="models", draws=args.draws)
        return found[measure, include_self]

    rows = [(m, Interval.of_draws(draws(m, False)), Interval.of_draws(draws(m, True))) for m in args.measures]
    n = len(models)
    print(f"\nlayer-matching accuracy [95% bootstrap interval]: {n} seeds x {args.layers} layers; {n * (n - 1) * args.layers} cross-model decisions, {n * n * args.layers} with self-pairs")
    print("(ITDA Jaccard: models and documents redrawn; baselines: models redrawn)")
    print(f"{'measure':<22} {'cross-model':>24} {'with self-pairs':>24}")
    for measure, cross, with_self in rows:
        print(f"{measure:<22} {cross!s:>24} {with_self!s:>24}")
    baselines = [m for m in args.measures if m not in counts]
    gaps = {
        (m, b): [difference_interval(draws(m, s), draws(b, s)) for s in (False, True)] for m in counts for b in baselines
    }
    if gaps:
        print("\nITDA Jaccard (plain, rarity-weighted) minus each other measure, paired over the same redrawn models [95% interval; above 0: ahead]:")
        for (m, b), (cross, with_self) in gaps.items():
            print(f"  {m + ' - ' + b:<46} {cross!s:>26} {with_self!s:>26}")
    print(f"\ncross-model accuracy per layer (layers 0-{args.layers - 1}):")
    per_layer = {}
    for measure in args.measures:
        per_layer[measure] = torch.stack([matched(s) for s in ordered_pairs(matrices[measure], include_self=False).values()]).mean(0).tolist()
        print(f"  {measure:<22} " + " ".join(f"{v:.2f}" for v in per_layer[measure]))
    by_power = {}
    if args.rarity_powers:
        print(f"\nrarity-weighted ITDA Jaccard by power (atoms weigh n ** -power, n: the model's layers holding the occurrence; the measure uses {RARITY_POWER}):")
        for power in args.rarity_powers:
            by_power[power] = [accuracy_interval(counts=counts_at(power), include_self=s, draws=args.draws) for s in (False, True)]
            print(f"  power {power:<4g} {by_power[power][0]!s:>24} {by_power[power][1]!s:>24}")
    if JACCARD in args.measures:
        unions = {name: set().union(*(atom_keys(d, args.by) for d in m.dictionaries.values())) for name, m in by_name.items()}
        whole = [len(unions[a] & unions[b]) / len(unions[a] | unions[b]) for i, a in enumerate(names) for b in names[i + 1 :]]
        print(f"\nwhole-model Jaccard (atoms of every layer together): mean {sum(whole) / len(whole):.3f}, range {min(whole):.3f}-{max(whole):.3f} over {len(whole)} pairs")

    mean = {m: torch.stack(list(ordered_pairs(matrices[m], include_self=False).values())).mean(0) for m in args.measures}
    if JACCARD in args.measures:
        null = torch.stack(list(ordered_pairs(nulls, include_self=False).values())).mean(0)
        print(f"\nITDA Jaccard at the same depth, mean over seed pairs, beside its null (random atoms of the same sizes, by {args.by}):")
        print("  " + "  ".join(f"L{i} {float(mean[JACCARD][i, i]):.3f}/{float(null[i, i]):.3f}" for i in range(args.layers)))
    titles = {m: f"{m}: {cross.value:.2f} cross / {with_self.value:.2f} self" for m, cross, with_self in rows}
    heatmap = similarity_heatmaps(mean, args.out / "layer_matching.png", name_a="layer, seed a", name_b="layer, seed b", titles=titles)
    total = time.perf_counter() - start
    print(f"\ntime: training/loading {seconds['train']:.0f} s, dictionaries+activations {seconds['build']:.0f} s, measures {seconds['measures']:.0f} s; total {total:.0f} s")
    print(f"heatmap of the mean cross-seed matrices: {heatmap}")
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "accuracy": {m: {"cross_model": c.to_dict(), "with_self_pairs": s.to_dict()} for m, c, s in rows},
        "paired_gaps": {f"{m} - {b}": {"cross_model": c.to_dict(), "with_self_pairs": w.to_dict()} for (m, b), (c, w) in gaps.items()},
        "per_layer_cross_model": per_layer,
        "rarity_powers": {str(p): {"cross_model": c.to_dict(), "with_self_pairs": s.to_dict()} for p, (c, s) in by_power.items()},
        "matrices": {m: {f"{a}|{b}": s.tolist() for (a, b), s in matrices[m].items()} for m in args.measures},
        "jaccard_null": {f"{a}|{b}": s.tolist() for (a, b), s in nulls.items()},
        "seconds": {**seconds, "total": total},
    }
    (args.out / "layer_matching.json").write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

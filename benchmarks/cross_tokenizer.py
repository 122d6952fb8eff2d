"""Layer matching across tokenizers and depths, with ground truth and bootstrap intervals.

Trains tiny Llama-architecture language models (``tiny_lm.py``) on the same WikiText
text, each tokenizer with its own depth: by default byte-level BPE with 2,000 tokens (4
layers), byte-level BPE with 4,000 (6 layers) and unigram with 3,000 (8 layers), the
tokenizers trained here on the training documents with Hugging Face ``tokenizers``;
``--seeds`` models per tokenizer. One ITDA dictionary per layer per model is built on
the same documents (``--build-docs``, every token of them). Layer ``i`` of a model of
``n`` layers sits at relative depth ``i / (n - 1)``; a layer is matched when the most
similar layer of the other model is the one at the nearest relative depth.

- ITDA Jaccard matches atoms by overlapping character spans (``--min-overlap``: overlap
  over union of the two spans, see :mod:`itda_lens.tools.compare.jaccard`); its null
  matches the built-from tokens by the same rule.
- The baselines compare activations on occurrences lined up by ``--align``: ``end``,
  the token that ends at each character where every tokenizer has a boundary (the
  last token of each word); ``span``, only tokens with the same span in every model.

Accuracy is printed for same-tokenizer pairs (cross-model and with self-pairs) and for
cross-tokenizer pairs, each with a 95% bootstrap interval: models redrawn within their
tokenizer and, for ITDA Jaccard, documents redrawn too (``itda_lens.tools.compare.intervals``).
Also printed: the whole-model Jaccard (atoms of all layers together) within and across
tokenizers, and the Jaccard at matched depth beside its null. ``--min-overlaps`` prints
ITDA Jaccard's accuracy at other thresholds too.

Settings were chosen on pilot models (seed 0 of each tokenizer; one cross-tokenizer
pair, 10 decisions, ITDA Jaccard only) and are reported on fresh ones (seeds 10-11):
relative-error threshold 0.02 against 0.005 and 0.05 (0.6, 0.5 and 0.4 cross-tokenizer
accuracy there), ``--min-overlap 0.6`` against 0.75 and 1 (0.6, 0.6, 0.5); ``--k`` and
``--max-atoms`` are ``layer_matching.py``'s. Trained models and tokenizers are kept in
``--models-dir``. Keep ``--threads`` at or below the free cores: more threads than cores
slows training many times over.

    for t in 0.005 0.02 0.05; do python benchmarks/cross_tokenizer.py --tokenizers bpe:2000@0 bpe:4000@0 --depths 4 6 \\
        --steps 600 --build-docs 2 --threshold $t --measures itda_jaccard --min-overlaps 1.0 0.75 0.6 --draws 200 \\
        --out runs/cross_tokenizer/pilot-$t; done                                                    # pilot
    python benchmarks/cross_tokenizer.py --tokenizers bpe:2000@10,11 bpe:4000@10,11 --depths 4 6 --steps 600 \\
        --build-docs 2 --min-overlaps 1.0 0.75 0.6 --out runs/cross_tokenizer/report    # the run in docs/benchmarks.md
    python benchmarks/cross_tokenizer.py --threads 2 --steps 600 --min-overlaps 1.0 0.75 0.6 \
        --out runs/cross_tokenizer/full                          # the full design: three tokenizers, seeds 10-12, 12 documents
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from layer_matching import CORPUS, ROOT, record_fraction
from tiny_lm import Sequences, TinyLMConfig, add_training_options, bridge, heldout_loss, trained_model, trained_tokenizer, training_vocabulary

from itda_lens.core.activations import TransformerLensSource
from itda_lens.core.config import BuildSettings
from itda_lens.core.text import file_documents, select_split, token_batches
from itda_lens.tools.compare.comparison import ALL_MEASURES, JACCARD, RARITY_JACCARD, jaccard_null_matrix, model_similarities
from itda_lens.tools.compare.heatmap import similarity_heatmaps
from itda_lens.tools.compare.intervals import Interval, accuracy_draws, difference_interval, document_counts
from itda_lens.tools.compare.jaccard import RARITY_POWER, atom_keys, matched_pairs
from itda_lens.tools.compare.layers import depth_targets
from itda_lens.tools.compare.model_layers import model_layers


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text-file", type=Path, default=CORPUS)
    models = p.add_argument_group("models")
    models.add_argument("--tokenizers", nargs="+", default=["bpe:2000", "bpe:4000", "unigram:3000"], help="kind:vocabulary size[@seed,seed...], kind bpe or unigram; @ overrides --seeds for that tokenizer")
    models.add_argument("--depths", nargs="+", type=int, default=[4, 6, 8], help="layers of the models of each tokenizer, in order")
    models.add_argument("--seeds", type=int, nargs="+", default=[10, 11, 12], help="the seeds of each tokenizer's models")
    add_training_options(models)
    itda = p.add_argument_group("dictionaries")
    itda.add_argument("--build-docs", type=int, default=12, help="the first documents of the corpus; every token of them")
    itda.add_argument("--k", type=int, default=8)
    itda.add_argument("--threshold", type=float, default=0.02)
    itda.add_argument("--max-atoms", type=int, default=8000)
    itda.add_argument("--min-overlap", type=float, default=0.6, help="overlap over union of two atoms' spans for them to match")
    itda.add_argument("--min-overlaps", type=float, nargs="*", default=[], help="also print ITDA Jaccard's accuracy at these")
    itda.add_argument("--rarity-power", type=float, default=RARITY_POWER, help="the rarity-weighted ITDA Jaccard's power (atoms weigh n ** -power)")
    measures = p.add_argument_group("measures")
    measures.add_argument("--align", default="end", choices=["end", "span"], help="how the baselines' occurrences are lined up")
    measures.add_argument("--baseline-tokens", type=int, default=8192)
    measures.add_argument("--measures", nargs="+", default=list(ALL_MEASURES), choices=list(ALL_MEASURES))
    measures.add_argument("--draws", type=int, default=1000, help="bootstrap draws")
    run = p.add_argument_group("run")
    run.add_argument("--device", default="cpu")
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads (more than the free cores slows training many times over)")
    run.add_argument("--models-dir", type=Path, default=ROOT / "runs" / "cross_tokenizer" / "models")
    run.add_argument("--out", type=Path, default=ROOT / "runs" / "cross_tokenizer")
    args = p.parse_args(argv)
    if len(args.depths) != len(args.tokenizers):
        p.error(f"give one depth per tokenizer: {len(args.tokenizers)} tokenizers, {len(args.depths)} depths.")
    return args


def union_keys(dictionaries) -> set:
    """The atoms of every layer of a model, as one set of span keys."""
    return set().union(*(atom_keys(d, "span") for d in dictionaries.values()))


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    documents = list(file_documents(args.text_file))
    train_docs, heldout_docs = list(select_split(documents, "train")), list(select_split(documents, "heldout"))
    build_docs = documents[: args.build_docs]
    print(f"corpus {args.text_file.name}: {len(train_docs)} training documents; dictionaries on the first {len(build_docs)} documents", flush=True)

    # Every model is trained (or loaded) before any is hosted by TransformerLens: training
    # after a TransformerBridge was booted in the process ran many times slower here.
    trained, group, seconds = [], {}, {"train": 0.0, "build": 0.0}
    for spec, depth in zip(args.tokenizers, args.depths):
        kind, vocab_size = spec.split("@")[0].split(":")
        seeds = [int(seed) for seed in spec.split("@")[1].split(",")] if "@" in spec else args.seeds
        tokenizer = trained_tokenizer(args.models_dir / "tokenizers", train_docs, kind, int(vocab_size))
        config = TinyLMConfig(args.d_model, depth, args.heads, args.d_mlp, args.seq_len, args.batch_size, args.steps, args.lr, softmax_tokens=None)
        train = Sequences.from_documents(train_docs, tokenizer, args.seq_len)
        heldout = Sequences.from_documents(heldout_docs, tokenizer, args.seq_len)
        for seed in seeds:
            t0 = time.perf_counter()
            model, info = trained_model(args.models_dir, train, tokenizer, config, seed, args.device)
            loss = heldout_loss(model, heldout, training_vocabulary(train), args.device)
            seconds["train"] += time.perf_counter() - t0
            name = f"{kind}{vocab_size}-L{depth}-s{seed}"
            group[name] = spec
            trained.append((name, model, tokenizer, depth))
            print(f"{name}: trained in {info['seconds']:.0f} s, held-out loss {loss:.3f} nats ({len(tokenizer)} tokens)", flush=True)
    models = []
    for name, model, tokenizer, depth in trained:
        t0 = time.perf_counter()
        hooks = [f"blocks.{i}.hook_resid_post" for i in range(depth)]
        source = TransformerLensSource(bridge(model, tokenizer, name), hooks, model_name=name)
        batches = token_batches(build_docs, tokenizer, args.seq_len, 32, None)
        n_tokens = sum(len(tokenizer(text)["input_ids"]) for text in build_docs)
        fraction = record_fraction(n_tokens, depth, args.d_model, args.baseline_tokens)
        settings = BuildSettings(k=args.k, threshold=args.threshold, max_atoms=args.max_atoms)
        with torch.no_grad():
            layers = model_layers(source, batches, name, settings, record_fraction=fraction, device=args.device)
        seconds["build"] += time.perf_counter() - t0
        models.append(layers)
        sizes = ",".join(str(d.n_atoms) for d in layers.dictionaries.values())
        print(f"{name}: {layers.tokens} tokens, atoms per layer {sizes} ({time.perf_counter() - t0:.0f} s)", flush=True)

    t0 = time.perf_counter()
    names = [m.name for m in models]
    by_name = dict(zip(names, models))
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i:]]
    docs = sorted({key[0] for m in models for d in m.dictionaries.values() for key in atom_keys(d, "span")})
    overlaps = sorted({args.min_overlap, *args.min_overlaps}, reverse=True)
    counts = {
        overlap: {(a, b): document_counts(list(by_name[a].dictionaries.values()), list(by_name[b].dictionaries.values()), "span", overlap, docs) for a, b in pairs}
        for overlap in overlaps
    }
    rarity_counts = {}
    if RARITY_JACCARD in args.measures:
        rarity_counts = {
            (a, b): document_counts(
                list(by_name[a].dictionaries.values()), list(by_name[b].dictionaries.values()), "span", args.min_overlap, docs, rarity_power=args.rarity_power
            )
            for a, b in pairs
        }
    baselines = [m for m in args.measures if m not in (JACCARD, RARITY_JACCARD)]
    matrices = model_similarities(models, baselines, max_tokens=args.baseline_tokens, include_self=True, min_overlap=args.min_overlap, align=args.align) if baselines else {}
    matrices[JACCARD] = {pair: c.jaccard()[0] for pair, c in counts[args.min_overlap].items()}
    if rarity_counts:
        matrices[RARITY_JACCARD] = {pair: c.jaccard()[0] for pair, c in rarity_counts.items()}
    dictionary_measures = [m for m in (JACCARD, RARITY_JACCARD) if m in matrices]
    seconds["measures"] = time.perf_counter() - t0

    same = [(a, b) for a, b in pairs if group[a] == group[b]]
    cross = [(a, b) for a, b in pairs if group[a] != group[b]]
    draws = {"draws": args.draws, "groups": group}

    computed: dict[tuple, torch.Tensor] = {}

    def accuracies(measure: str, subset: list, include_self: bool, overlap: float = args.min_overlap) -> torch.Tensor:
        """Accuracy and its bootstrap draws (each computed once); every measure redraws the same models."""
        key = (measure, tuple(subset), include_self, overlap)
        if key not in computed:
            if measure in dictionary_measures:
                found = counts[overlap] if measure == JACCARD else rarity_counts
                computed[key] = accuracy_draws(counts={p: found[p] for p in subset}, include_self=include_self, **draws)
            else:
                computed[key] = accuracy_draws({p: matrices[measure][p] for p in subset}, include_self=include_self, resample="models", **draws)
        return computed[key]

    def interval(measure: str, subset: list, include_self: bool, overlap: float = args.min_overlap):
        if not include_self and all(a == b for a, b in subset):
            return "-"
        return Interval.of_draws(accuracies(measure, subset, include_self, overlap))

    n = len(names)
    print(f"\n{n} models; ITDA Jaccard with min_overlap {args.min_overlap} (rarity power {args.rarity_power:g}), baselines aligned by {args.align}")
    print("accuracy [95% bootstrap interval]; ITDA Jaccard redraws models and documents, the baselines models only")
    header = f"{'measure':<22} {'same tokenizer, cross-model':>28} {'same tokenizer, with self':>28} {'cross-tokenizer':>28}"
    print(header)
    table = {}
    for measure in [*dictionary_measures, *baselines]:
        row = {"same_cross_model": interval(measure, same, False), "same_with_self": interval(measure, same, True), "cross_tokenizer": interval(measure, cross, False)}
        table[measure] = row
        print(f"{measure:<22} {row['same_cross_model']!s:>28} {row['same_with_self']!s:>28} {row['cross_tokenizer']!s:>28}", flush=True)
    print("\nITDA Jaccard (plain, rarity-weighted) minus each other measure, paired over the same redrawn models [95% interval; above 0: ahead]:")
    print(f"{'':<46} {'same tokenizer, cross-model':>28} {'cross-tokenizer':>28}")
    gaps = {}
    for measure in dictionary_measures:
        for baseline in baselines:
            gaps[f"{measure} - {baseline}"] = row = {
                label: "-" if all(a == b for a, b in subset) else difference_interval(accuracies(measure, subset, False), accuracies(baseline, subset, False))
                for label, subset in (("same_cross_model", same), ("cross_tokenizer", cross))
            }
            print(f"  {measure + ' - ' + baseline:<44} {row['same_cross_model']!s:>28} {row['cross_tokenizer']!s:>28}")
    if len(overlaps) > 1:
        print("\nITDA Jaccard by min_overlap (cross-tokenizer; same tokenizer cross-model):")
        for overlap in overlaps:
            print(f"  {overlap:.2f}: {interval(JACCARD, cross, False, overlap)!s}; {interval(JACCARD, same, False, overlap)!s}")

    print("\nwhole-model Jaccard (atoms of every layer together), mean [min, max] over model pairs:")
    whole = {}
    unions = {name: union_keys(m.dictionaries) for name, m in by_name.items()}
    for label, subset in (("same tokenizer", same), ("cross-tokenizer", cross)):
        if all(a == b for a, b in subset):
            continue
        values = []
        for a, b in subset:
            if a != b:
                common = len(matched_pairs(unions[a], unions[b], args.min_overlap))
                values.append(common / (len(unions[a]) + len(unions[b]) - common))
        whole[label] = values
        print(f"  {label}: {sum(values) / len(values):.3f} [{min(values):.3f}, {max(values):.3f}] over {len(values)} pairs")

    print("\nITDA Jaccard at the nearest relative depth / its null, mean over cross-tokenizer pairs:")
    at_depth, null_at_depth = [], []
    for a, b in cross:
        s = matrices[JACCARD][(a, b)]
        null = jaccard_null_matrix(by_name[a], by_name[b], "span", args.min_overlap)
        targets = depth_targets(*s.shape)
        at_depth.append(float(s[targets].mean()))
        null_at_depth.append(float(null[targets].mean()))
    print(f"  {sum(at_depth) / len(at_depth):.3f} / {sum(null_at_depth) / len(null_at_depth):.3f}")

    a, b = max(cross, key=lambda pair: abs(len(by_name[pair[0]].hooks) - len(by_name[pair[1]].hooks)))
    heatmap = similarity_heatmaps(
        {m: matrices[m][(a, b)] for m in [*dictionary_measures, *baselines]}, args.out / "cross_tokenizer.png", name_a=a, name_b=b,
        titles={m: f"{m}: {table[m]['cross_tokenizer'].value:.2f} cross-tok." for m in [*dictionary_measures, *baselines]},
    )
    total = time.perf_counter() - start
    print(f"\ntime: training/loading {seconds['train']:.0f} s, dictionaries+activations {seconds['build']:.0f} s, measures {seconds['measures']:.0f} s; total {total:.0f} s")
    print(f"heatmap of {a} against {b}: {heatmap}")
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "accuracy": {m: {k: v if isinstance(v, str) else v.to_dict() for k, v in row.items()} for m, row in table.items()},
        "paired_gaps": {name: {k: v if isinstance(v, str) else v.to_dict() for k, v in row.items()} for name, row in gaps.items()},
        "whole_model_jaccard": whole,
        "matrices": {m: {f"{a}|{b}": s.tolist() for (a, b), s in matrices[m].items()} for m in matrices},
        "seconds": {**seconds, "total": total},
    }
    (args.out / "cross_tokenizer.json").write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

"""How often matching pursuit reuses a Gram row: the ceiling of a Gram-row cache.

The ``gram`` pursuit (``itda_lens.core.pursuit``) saves its time by reading one Gram row
per step instead of multiplying the residual with the whole dictionary; a row that is
not held costs as much to make as one such product. Above the Gram budget
(``itda_lens.core.gram_rows.GRAM_BYTES``) only some rows are held, so the speed-up over
plain MP can be no more than the number of choices each made row serves.

For each ``--atoms`` size this encodes ``--tokens`` held-out SmolLM2 activations (the
data of ``encode_speed.py``: real activations as atoms) and prints:

- ``distinct/choices``: distinct atoms chosen over the ``k`` choices of each token, in
  chunks of ``--chunk`` tokens (rows made once per chunk serve ``1 / distinct`` choices);
- ``cover``: the share of the choices whose atom's row is held, when the budget holds the
  rows of the atoms chosen most by ``--warm-tokens`` other held-out tokens (as the cache
  of a dictionary in use does), and, as an upper bound, by these tokens themselves
  (``oracle``: a cache that knew the future);
- ``ceiling``: choices / rows made (per chunk, the distinct atoms whose row is not held),
  the most such a cache can gain over plain MP counting only the making of rows (``-``
  when no row is missing: then the steps' own reads bound the speed-up, as
  ``encode_speed.py`` measures).

``--built`` adds a dictionary built by itda-lens (default settings) from the same
training activations, beside the first atoms of the same number (sampled): whether atoms
that entered because nothing else explained them share their rows more.

    python benchmarks/gram_reuse.py --atoms 8192 32768 131072 --gram-gib 4 8 16
    python benchmarks/gram_reuse.py --atoms --built --gram-gib 0.25 0.5 1
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from encode_speed import smollm2_activations
from tqdm.auto import tqdm

from itda_lens import ITDA, BuildSettings
from itda_lens.core.build import DictionaryBuilder
from itda_lens.core.gram_rows import GRAM_BYTES, rows_within


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, nargs="*", default=[8192, 32768, 131072], help="dictionary sizes (the first atoms of the training activations)")
    parser.add_argument("--built", action="store_true", help="also a dictionary built by itda-lens from the training activations, and as many sampled atoms")
    parser.add_argument("--train-tokens", type=int, default=131072, help="training activations (atoms are taken or built from these)")
    parser.add_argument("--text-file", default="../shared/corpus/wikitext-2/valid.txt")
    parser.add_argument("--k", type=int, default=BuildSettings.k)
    parser.add_argument("--tokens", type=int, default=1024, help="held-out inputs encoded")
    parser.add_argument("--warm-tokens", type=int, default=2048, help="other held-out inputs whose choices pick the held rows")
    parser.add_argument("--chunk", type=int, default=256, help="tokens that share the rows made for them")
    parser.add_argument("--gram-gib", type=float, nargs="+", default=[GRAM_BYTES / 2**30], help="Gram budgets in GiB (float32 rows)")
    args = parser.parse_args()

    train, heldout = smollm2_activations(args.text_file, max([args.train_tokens, *args.atoms]), args.tokens + args.warm_tokens)
    x, warm_x = heldout[: args.tokens], heldout[args.tokens : args.tokens + args.warm_tokens]
    print(f"k={args.k} tokens={args.tokens} warm_tokens={args.warm_tokens} chunk={args.chunk} gram_gib={args.gram_gib}")
    dictionaries = [(f"sampled {n}", F.normalize(train[:n], dim=1)) for n in args.atoms]
    if args.built:
        builder = DictionaryBuilder(train.shape[1])
        for start in tqdm(range(0, args.train_tokens, 4096), desc="building"):
            builder.update(train[start : start + 4096])
        dictionaries += [(f"built {builder.n_atoms}", builder.atoms), (f"sampled {builder.n_atoms}", F.normalize(train[: builder.n_atoms], dim=1))]
    print(f"{'atoms':>14} {'Gram GiB':>8} {'rows held':>9} {'distinct/choices':>16} {'cover warm/oracle':>17} {'ceiling warm/oracle':>19}")
    for label, atoms in dictionaries:
        n_atoms = len(atoms)
        itda = ITDA.from_atoms(atoms, k=args.k, refit=False)
        itda.gram_bytes = 0  # dense MP: the same choices, without making rows
        chosen = itda.encode(x).indices
        chunks = [torch.unique(chosen[start : start + args.chunk]) for start in range(0, len(chosen), args.chunk)]
        distinct = sum(len(picked) for picked in chunks) / chosen.numel()
        uses = torch.bincount(chosen.flatten(), minlength=n_atoms)
        rankings = {"warm": torch.bincount(itda.encode(warm_x).indices.flatten(), minlength=n_atoms), "oracle": uses}
        for gib in args.gram_gib:
            held = rows_within(int(gib * 2**30), n_atoms)
            cover, ceiling = [], []
            for ranking in rankings.values():
                top = torch.zeros(n_atoms, dtype=torch.bool)
                top[ranking.topk(held).indices] = True
                cover.append(f"{float(uses[top].sum() / uses.sum()):.3f}")
                missing = sum(int((~top[picked]).sum()) for picked in chunks)
                ceiling.append(f"{chosen.numel() / missing:.1f}x" if missing else "-")
            print(f"{label:>14} {gib:>8g} {held:>9} {distinct:>16.3f} {'/'.join(cover):>17} {'/'.join(ceiling):>19}", flush=True)


if __name__ == "__main__":
    main()

"""Encoder speed: itda-lens' matching pursuit against a plain dense k-step MP.

Both run in this process on the same atoms and inputs; the script prints the seconds
of each (median of --repeats, runs interleaved) and their ratio. The plain MP is the
textbook loop: one product of the residual with the whole dictionary per step.

    python benchmarks/encode_speed.py --n-atoms 8192 --d-model 576 --k 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from itda_lens import ITDA, BuildSettings


def plain_mp(x: torch.Tensor, atoms: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    residual = x.clone()
    indices = torch.empty(len(x), k, dtype=torch.long)
    values = torch.empty(len(x), k)
    rows = torch.arange(len(x))
    for step in range(k):
        correlations = residual @ atoms.T
        best = correlations.abs().argmax(dim=1)
        coef = correlations[rows, best]
        residual -= coef[:, None] * atoms[best]
        indices[:, step], values[:, step] = best, coef
    return indices, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-atoms", type=int, default=8192)
    parser.add_argument("--d-model", type=int, default=576)
    parser.add_argument("--k", type=int, default=BuildSettings.k)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    atoms = F.normalize(torch.randn(args.n_atoms, args.d_model, generator=generator), dim=1).to(args.device)
    # Inputs near the span of a few atoms, like activations a dictionary was built for.
    mix = torch.randn(args.tokens, 60, generator=generator).to(args.device)
    picks = torch.randint(0, args.n_atoms, (args.tokens, 60), generator=generator).to(args.device)
    x = (mix[:, :, None] * atoms[picks]).sum(1) + 0.1 * torch.randn(args.tokens, args.d_model, generator=generator).to(args.device)

    refit = ITDA.from_atoms(atoms, k=args.k)
    mp_only = ITDA.from_atoms(atoms, k=args.k, refit=False)
    refit.gram(), mp_only.gram()  # built once per dictionary, not per encode

    def timed(fn) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    runs: dict[str, list[float]] = {"plain_mp": [], "itda_mp": [], "itda_refit": []}
    for _ in range(args.repeats):
        runs["plain_mp"].append(timed(lambda: plain_mp(x, atoms, args.k)))
        runs["itda_mp"].append(timed(lambda: mp_only.encode(x)))
        runs["itda_refit"].append(timed(lambda: refit.encode(x)))
    seconds = {name: statistics.median(times) for name, times in runs.items()}

    want_i, want_v = plain_mp(x, atoms, args.k)
    got = mp_only.encode(x)
    same = float((got.indices == want_i).float().mean())
    error = {name: float(((x - model.decode(model.encode(x))).pow(2).sum(1) / x.pow(2).sum(1)).mean()) for name, model in (("itda_mp", mp_only), ("itda_refit", refit))}

    print(f"n_atoms={args.n_atoms} d_model={args.d_model} k={args.k} tokens={args.tokens} device={args.device} threads={torch.get_num_threads()}")
    for name, value in seconds.items():
        print(f"{name:>11}: {value:8.3f} s  ({1e3 * value / args.tokens:.3f} ms/token)")
    print(f"speed-up of itda_mp over plain_mp:    {seconds['plain_mp'] / seconds['itda_mp']:.1f}x")
    print(f"speed-up of itda_refit over plain_mp: {seconds['plain_mp'] / seconds['itda_refit']:.1f}x")
    print(f"same atoms chosen as plain MP: {100 * same:.2f}% of slots; relative error MP {error['itda_mp']:.4f}, refit {error['itda_refit']:.4f}")
    print(json.dumps({"seconds": seconds, "speedup_mp": seconds["plain_mp"] / seconds["itda_mp"], "speedup_refit": seconds["plain_mp"] / seconds["itda_refit"], "same_indices": same, "relative_error": error}))


if __name__ == "__main__":
    main()

"""Encoding and building at the widths of big models: d_model 4,096, 8,192 and 16,384
(Llama-3.1-8B, 70B and 405B) with 16,384 and 32,768 atoms.

For each width and size a fresh dictionary encodes ``--tokens`` activation-like vectors
twice: ``cold``, making the Gram rows of the atoms they choose on the way, then ``warm``,
with those rows held. It prints both throughputs (tokens per second) and the memory: the
atoms, the Gram buffer (the default budget has room for every row at these sizes) and
the process' peak resident size so far. It then builds a dictionary of
``--build-atoms`` atoms at each width and prints the build throughput. An encode costs
one ``x @ atoms.T`` (``n_atoms * d_model`` per token) and ``k`` steps of ``n_atoms``; a
Gram row costs ``n_atoms * d_model`` once, and the rows take ``n_atoms**2`` floats
whatever the width.

    python benchmarks/widths.py                     # about 15 minutes on 2 CPU cores
    python benchmarks/widths.py --device cuda       # the same on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F
from encode_speed import synchronize, timed  # the same clock as encode_speed.py

from itda_lens import ITDA, BuildSettings
from itda_lens.core.build import DictionaryBuilder

MODELS = {4096: "Llama-3.1-8B", 8192: "Llama-3.1-70B", 16384: "Llama-3.1-405B"}


def activation_like(n: int, d_model: int, generator: torch.Generator, device: str) -> torch.Tensor:
    """Vectors with a shared mean direction and 30 components from a basis of 4,096."""
    basis = F.normalize(torch.randn(4096, d_model, generator=generator), dim=1)
    mean = 4.0 * F.normalize(torch.randn(d_model, generator=generator), dim=0)
    mix = torch.zeros(n, len(basis)).scatter_(1, torch.randint(0, len(basis), (n, 30), generator=generator), torch.randn(n, 30, generator=generator))
    return (mean + mix @ basis).to(device)


def peak_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=sorted(MODELS))
    parser.add_argument("--atoms", type=int, nargs="+", default=[16384, 32768])
    parser.add_argument("--k", type=int, default=BuildSettings.k)
    parser.add_argument("--tokens", type=int, default=64, help="inputs encoded per size")
    parser.add_argument("--build-atoms", type=int, default=4096, help="size of the dictionary each width builds (0: no build)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    device = args.device
    print(f"k={args.k} tokens={args.tokens} device={device} threads={torch.get_num_threads()}")
    print(f"{'d_model':>7} {'model':>15} {'atoms':>6} {'cold/s':>8} {'warm/s':>8} {'rows made':>9} {'atoms GiB':>9} {'Gram GiB':>8} {'peak GiB':>8}")
    ITDA.from_atoms(torch.randn(256, 32), k=args.k).encode(torch.randn(8, 32))  # compile the steps before timing
    rows = []
    for d_model in args.widths:
        x = activation_like(args.tokens, d_model, generator, device)
        for n_atoms in args.atoms:
            itda = ITDA.from_atoms(activation_like(n_atoms, d_model, generator, device), k=args.k)
            cold = timed(device, itda.encode, x)
            warm = timed(device, itda.encode, x)
            gram = itda.gram_rows()
            row = {
                "d_model": d_model, "n_atoms": n_atoms, "cold_tokens_per_s": args.tokens / cold, "warm_tokens_per_s": args.tokens / warm,
                "rows_made": gram.n_held, "atoms_gib": itda.atoms.numel() * 4 / 2**30, "gram_gib": gram.buffer.numel() * 4 / 2**30,
                "peak_gib": peak_gib(device),
            }
            rows.append(row)
            print(f"{d_model:>7} {MODELS.get(d_model, ''):>15} {n_atoms:>6} {row['cold_tokens_per_s']:>8.1f} {row['warm_tokens_per_s']:>8.1f} "
                  f"{gram.n_held:>9} {row['atoms_gib']:>9.2f} {row['gram_gib']:>8.2f} {row['peak_gib']:>8.2f}", flush=True)
            del itda, gram
    builds = []
    if args.build_atoms:
        print(f"\nbuilding {args.build_atoms} atoms (threshold {BuildSettings.threshold}, k {args.k}):")
        print(f"{'d_model':>7} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'atoms':>6}")
        for d_model in args.widths:
            builder = DictionaryBuilder(d_model, BuildSettings(k=args.k, max_atoms=args.build_atoms), device=device)
            tokens = 0
            start = time.perf_counter()
            while not builder.full:
                builder.update(activation_like(4096, d_model, generator, device))
                tokens += 4096
            synchronize(device)
            seconds = time.perf_counter() - start
            builds.append({"d_model": d_model, "tokens": tokens, "seconds": seconds, "n_atoms": builder.n_atoms})
            print(f"{d_model:>7} {tokens:>7} {seconds:>8.1f} {tokens / seconds:>7.0f} {builder.n_atoms:>6}", flush=True)
    print(json.dumps({"k": args.k, "device": device, "encode": rows, "build": builds}))


if __name__ == "__main__":
    main()

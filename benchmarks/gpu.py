"""Encoding and building on a GPU, against a plain MP on the same GPU.

For each width and dictionary size it prints, with float32 and bfloat16 activations:
the encoding throughput of itda-lens and of the textbook MP (one product of the residual
with the whole dictionary per step) on the same inputs, their ratio, and the share of
the GPU's measured matrix-multiply peak the encoder reaches. The peak is timed here with
one large product in the dictionary's dtype; the encoder's work is counted as its
matrix products and steps (``2 * n_atoms * d_model + 2 * k * n_atoms`` flops per token).
It then builds a dictionary at each width and prints the build throughput.

    python benchmarks/gpu.py                 # on a machine with CUDA
    python benchmarks/gpu.py --device cpu --widths 576 --atoms 2048 --tokens 256   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from encode_speed import plain_mp, synchronize, timed  # the same baseline and clock as encode_speed.py

from itda_lens import ITDA, BuildSettings
from itda_lens.core.build import DictionaryBuilder


def matmul_peak(device: str, dtype: torch.dtype, size: int = 8192) -> float:
    """Flop/s of one ``size``-cubed matrix product (best of three)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    return 2 * size**3 / min(timed(device, torch.matmul, a, b) for _ in range(3))


def problem(n: int, d_model: int, n_atoms: int, generator: torch.Generator, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit atoms and inputs near the span of 30 of them (drawn uniformly)."""
    atoms = F.normalize(torch.randn(n_atoms, d_model, generator=generator), dim=1)
    mix = torch.zeros(n, n_atoms).scatter_(1, torch.randint(0, n_atoms, (n, 30), generator=generator), torch.randn(n, 30, generator=generator))
    x = mix @ atoms + 0.05 * torch.randn(n, d_model, generator=generator)
    return atoms.to(device), x.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[576, 4096, 8192])
    parser.add_argument("--atoms", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--k", type=int, default=BuildSettings.k)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--build-atoms", type=int, default=8192, help="size of the dictionary each width builds (0: no build)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = args.device
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    generator = torch.Generator().manual_seed(0)
    peaks = {dtype: matmul_peak(device, getattr(torch, dtype)) for dtype in ("float32", "bfloat16")}
    print(f"device={device} ({name}) k={args.k} tokens={args.tokens}; matmul peak "
          + ", ".join(f"{dtype} {flops / 1e12:.1f} TFLOP/s" for dtype, flops in peaks.items()))
    print(f"{'d_model':>7} {'atoms':>6} {'activations':>11} {'itda tok/s':>11} {'plain tok/s':>11} {'speed-up':>8} {'of peak':>8} {'same':>6}")
    rows = []
    for d_model in args.widths:
        for n_atoms in args.atoms:
            atoms, x = problem(args.tokens, d_model, n_atoms, generator, device)
            itda = ITDA.from_atoms(atoms, k=args.k, refit=False)
            itda.gram_rows().fetch(torch.arange(n_atoms, device=device))  # every row, made once per dictionary
            for dtype in ("float32", "bfloat16"):
                inputs = x.to(getattr(torch, dtype))
                itda.encode(inputs[:64])
                seconds = timed(device, itda.encode, inputs)
                plain_seconds = timed(device, plain_mp, inputs.float(), atoms, args.k)
                same = float((itda.encode(inputs).indices == plain_mp(inputs.float(), atoms, args.k)[0]).float().mean())
                flops = args.tokens * (2 * n_atoms * d_model + 2 * args.k * n_atoms)
                row = {
                    "d_model": d_model, "n_atoms": n_atoms, "activations": dtype, "tokens_per_s": args.tokens / seconds,
                    "plain_tokens_per_s": args.tokens / plain_seconds, "speedup": plain_seconds / seconds,
                    "fraction_of_peak": flops / seconds / peaks["float32"], "same_indices": same,
                }
                rows.append(row)
                print(f"{d_model:>7} {n_atoms:>6} {dtype:>11} {row['tokens_per_s']:>11.0f} {row['plain_tokens_per_s']:>11.0f} "
                      f"{row['speedup']:>7.1f}x {100 * row['fraction_of_peak']:>7.1f}% {100 * same:>5.1f}%", flush=True)
    builds = []
    if args.build_atoms:
        print(f"\nbuilding {args.build_atoms} atoms on {device}:")
        for d_model in args.widths:
            builder = DictionaryBuilder(d_model, BuildSettings(k=args.k, max_atoms=args.build_atoms), device=device)
            tokens, start = 0, time.perf_counter()
            while not builder.full:
                _, x = problem(4096, d_model, 4096, generator, device)
                builder.update(x)
                tokens += 4096
            synchronize(device)
            seconds = time.perf_counter() - start
            builds.append({"d_model": d_model, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds})
            print(f"{d_model:>7} {tokens:>7} tokens in {seconds:.1f} s: {tokens / seconds:.0f} tok/s", flush=True)
    print(json.dumps({"device": name, "k": args.k, "peaks": peaks, "encode": rows, "build": builds}))


if __name__ == "__main__":
    main()

"""Encoder speed at each dictionary size: itda-lens' matching pursuit against a plain MP.

For each ``--atoms`` size, both encoders run in this process on the same atoms and the
same inputs; the script prints the seconds of each, their ratio, the share of slots
where they chose the same atom, the memory of the Gram rows and, for int8 rows, how
often per input a token's correlations were computed again exactly. The plain MP is the
textbook loop: one product of the residual with the whole dictionary per step.

itda-lens is timed twice per size, with the default Gram budget (``--gram-gib``):
``cold``, a fresh dictionary whose Gram rows are all still to compute, and ``warm``,
after encoding ``--warm-tokens`` other tokens (the rows it holds then are those chosen
most). Above 32,768 atoms the default budget (4 GiB) holds the rows in int8, up to
65,536 atoms; 131,072 atoms need ``--gram-gib 16.01`` for that, else only part of the rows
is held.

Data (``--data``):
  - ``smollm2`` (default): real activations of SmolLM2-135M-Instruct at
    ``blocks.15.hook_resid_post``: the atoms are activations of training documents of
    the corpus, the inputs activations of held-out documents. The activations are
    computed once and cached (about 10 minutes on 2 CPU cores).
  - ``random``: random unit atoms and inputs near the span of 60 atoms drawn uniformly,
    so that no atom is chosen much more than another: the worst case for the cache.

    python benchmarks/encode_speed.py --atoms 2048 8192 32768 65536
    python benchmarks/encode_speed.py --atoms 131072 --gram-gib 16.01 --warm-tokens 256
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from itda_lens import ITDA, BuildSettings
from itda_lens.backends.models import cache_dir
from itda_lens.core.itda import relative_error

HOOK = "blocks.15.hook_resid_post"


def plain_mp(x: torch.Tensor, atoms: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    residual = x.clone()
    indices = torch.empty(len(x), k, dtype=torch.long, device=x.device)
    values = torch.empty(len(x), k, device=x.device)
    rows = torch.arange(len(x), device=x.device)
    for step in range(k):
        correlations = residual @ atoms.T
        best = correlations.abs().argmax(dim=1)
        coef = correlations[rows, best]
        residual -= coef[:, None] * atoms[best]
        indices[:, step], values[:, step] = best, coef
    return indices, values


def smollm2_activations(text_file: str, n_train: int, n_heldout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n_train, 576]`` activations of training documents and ``[n_heldout, 576]`` of
    held-out ones at :data:`HOOK`, cached under the itda-lens cache folder (a cache with
    at least as many is sliced)."""
    import safetensors.torch

    path = cache_dir() / "benchmarks" / f"smollm2-{HOOK}.safetensors"
    if path.exists():
        saved = safetensors.torch.load_file(path)
        if len(saved["train"]) >= n_train and len(saved["heldout"]) >= n_heldout:
            return saved["train"][:n_train], saved["heldout"][:n_heldout]
    from itda_lens import load_model
    from itda_lens.core.activations import TransformerLensSource
    from itda_lens.core.text import file_documents, select_split, token_batches

    model = load_model()
    source = TransformerLensSource(model, [HOOK])
    out = {}
    for split, n in (("heldout", n_heldout), ("train", n_train)):
        batches = token_batches(select_split(file_documents(text_file), split), model.tokenizer, 128, 16, n)
        out[split] = torch.cat([source(batch.tokens)[HOOK][batch.mask].float() for batch in batches])[:n].contiguous()
        if len(out[split]) < n:
            raise SystemExit(f"error: the {split} documents of {text_file} give only {len(out[split])} tokens, not {n}; ask for fewer.")
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(out, path)
    return out["train"], out["heldout"]


def random_problem(n_atoms: int, d_model: int, tokens: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    atoms = F.normalize(torch.randn(n_atoms, d_model, generator=generator), dim=1)
    mix = torch.randn(tokens, 60, generator=generator)
    picks = torch.randint(0, n_atoms, (tokens, 60), generator=generator)
    x = (mix[:, :, None] * atoms[picks]).sum(1) + 0.1 * torch.randn(tokens, d_model, generator=generator)
    return atoms, x


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work (nothing to wait for elsewhere)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn, *args) -> float:
    """Seconds of ``fn(*args)``, queued GPU work included. Also used by gpu.py and widths.py."""
    synchronize(device)
    start = time.perf_counter()
    fn(*args)
    synchronize(device)
    return time.perf_counter() - start


def dictionary(atoms: torch.Tensor, args: argparse.Namespace) -> ITDA:
    """A fresh dictionary (no Gram rows made yet) with MP coefficients, as plain MP gives."""
    itda = ITDA.from_atoms(atoms, k=args.k, refit=False)
    if args.gram_gib is not None:
        itda.gram_bytes = int(args.gram_gib * (1 << 30))
    return itda


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, nargs="+", default=[2048, 8192, 32768, 131072], help="dictionary sizes")
    parser.add_argument("--data", choices=["smollm2", "random"], default="smollm2")
    parser.add_argument("--text-file", default="../shared/corpus/wikitext-2/valid.txt", help="the corpus (--data smollm2)")
    parser.add_argument("--d-model", type=int, default=576, help="width (--data random)")
    parser.add_argument("--k", type=int, default=BuildSettings.k)
    parser.add_argument("--tokens", type=int, default=1024, help="inputs timed")
    parser.add_argument("--warm-tokens", type=int, default=4096, help="other inputs encoded before the warm run")
    parser.add_argument("--gram-gib", type=float, default=None, help="Gram budget in GiB (default: itda-lens' default)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each encoder (median)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    if args.data == "smollm2":
        train, heldout = smollm2_activations(args.text_file, max(args.atoms), args.tokens + args.warm_tokens)
    dictionary(F.normalize(torch.randn(256, 32), dim=1), args).encode(torch.randn(8, 32))  # compile the steps before timing
    print(f"data={args.data} d_model={args.d_model if args.data == 'random' else 576} k={args.k} tokens={args.tokens} "
          f"warm_tokens={args.warm_tokens} device={args.device} threads={torch.get_num_threads()}")
    print(f"{'atoms':>7} {'plain MP s':>10} {'cold s':>8} {'warm s':>8} {'cold x':>7} {'warm x':>7} {'same':>7} {'error plain/itda':>17} {'rows held':>10} {'Gram MiB':>9} {'dtype':>7} {'recomputed':>10} {'peak RSS GiB':>12}")
    results = []
    for n_atoms in args.atoms:
        if args.data == "smollm2":
            atoms = F.normalize(train[:n_atoms], dim=1)
            x, warm_x = heldout[: args.tokens], heldout[args.tokens :]
        else:
            atoms, both = random_problem(n_atoms, args.d_model, args.tokens + args.warm_tokens, generator)
            x, warm_x = both[: args.tokens], both[args.tokens :]
        atoms, x, warm_x = atoms.to(args.device), x.to(args.device), warm_x.to(args.device)

        plain, cold, warm = [], [], []
        for _ in range(args.repeats):
            plain.append(timed(args.device, plain_mp, x, atoms, args.k))
            warm_itda = None  # one dictionary's Gram rows at a time (16 GiB at 131,072 atoms)
            cold_itda = dictionary(atoms, args)
            cold.append(timed(args.device, cold_itda.encode, x))
            del cold_itda  # its Gram rows
            warm_itda = dictionary(atoms, args)
            warm_itda.encode(warm_x)
            warm.append(timed(args.device, warm_itda.encode, x))
        seconds = {"plain_mp": statistics.median(plain), "cold": statistics.median(cold), "warm": statistics.median(warm)}
        want = plain_mp(x, atoms, args.k)
        gram = warm_itda.gram_rows()
        before = gram.recomputed
        codes = warm_itda.encode(x)
        recomputed = (gram.recomputed - before) / len(x)
        same = float((codes.indices == want[0]).float().mean())
        # Where the two choose differently (ties in float rounding), the reconstructions must still agree.
        error_plain = float(relative_error(x, warm_itda.decode(want)).mean())
        error_itda = float(relative_error(x, warm_itda.decode(codes)).mean())
        row = {
            "n_atoms": n_atoms, "seconds": seconds, "relative_error_plain": error_plain, "relative_error_itda": error_itda, "speedup_cold": seconds["plain_mp"] / seconds["cold"],
            "speedup_warm": seconds["plain_mp"] / seconds["warm"], "same_indices": same,
            "rows_held": gram.n_held, "gram_bytes": gram.buffer.numel() * gram.buffer.element_size(), "gram_dtype": str(gram.buffer.dtype).removeprefix("torch."),
            "recomputed_per_token": recomputed, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        results.append(row)
        print(f"{n_atoms:>7} {seconds['plain_mp']:>10.2f} {seconds['cold']:>8.2f} {seconds['warm']:>8.2f} {row['speedup_cold']:>6.1f}x {row['speedup_warm']:>6.1f}x "
              f"{100 * same:>6.2f}% {error_plain:>8.5f}/{error_itda:<8.5f} {gram.n_held:>10} {row['gram_bytes'] / 2**20:>9.0f} {row['gram_dtype']:>7} {recomputed:>10.2f} {row['peak_rss_bytes'] / 2**30:>12.2f}", flush=True)
    print(json.dumps({"data": args.data, "k": args.k, "tokens": args.tokens, "results": results}))


if __name__ == "__main__":
    main()

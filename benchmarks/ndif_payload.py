"""Request sizes and time estimates for ITDA on NDIF: Llama-3.1-70B and 405B.

Measured here (real nnsight serialisation, with ``itda_lens.backends.nnsight.DryRunBackend``, of
traces on the embedded SmolLM2 carrying payloads of the big models' widths):
  - the request of one activation-collection trace (token ids, read one layer, stop);
  - the request of a steer (one atom) and of a splice/ablation (the whole dictionary);
  - the client's dictionary-building speed at each width, on this machine;
  - building on the server (``itda_lens.backends.nnsight_build``): the request of one
    session (the dictionary sent in as float32 unit atoms, and the token ids of its
    batches) and the values it returns (the activations that became atoms, in bf16, and
    per batch the rows taken), serialised as nnsight and ``torch.save`` do.
Computed from those and from the assumptions given as options (printed with the
results): bytes streamed back, server compute, transfer and queue times.

    python benchmarks/ndif_payload.py            # about a minute on 2 CPU cores
    python benchmarks/ndif_payload.py --json     # the same as one JSON object, last line
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from itda_lens.core.config import BuildSettings, SessionSettings

#: Public architecture facts of the models NDIF hosts (Llama 3.1 model cards / configs).
MODELS = {
    "Llama-3.1-70B": {"d_model": 8192, "n_layers": 80, "params": 70.6e9},
    "Llama-3.1-405B": {"d_model": 16384, "n_layers": 126, "params": 405.9e9},
}
BF16 = 2


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1_000_000, help="tokens to build a dictionary from")
    parser.add_argument("--batch", type=int, default=32, help="sequences per trace")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--n-atoms", type=int, default=None, help="dictionary size (default: d_model)")
    parser.add_argument("--k", type=int, default=BuildSettings.k)
    parser.add_argument("--upload-mb-s", type=float, default=10.0, help="assumed client upload bandwidth, MB/s")
    parser.add_argument("--download-mb-s", type=float, default=50.0, help="assumed download bandwidth, MB/s")
    parser.add_argument("--server-tflops", type=float, default=200.0, help="assumed effective bf16 TFLOP/s the server gives a job")
    parser.add_argument("--queue-s", type=float, default=3.0, help="assumed fixed cost per request (queue, setup), seconds")
    parser.add_argument("--measure-atoms", type=int, default=512, help="atoms serialised to measure the per-atom request cost")
    parser.add_argument("--session-batches", type=int, default=SessionSettings.session_batches, help="traces per session when building on the server")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def _measure_requests(model, d_model: int, n_atoms: int, batch: int, seq_len: int) -> dict[str, float]:
    """Serialised request sizes (bytes, zstd-compressed as sent) at width ``d_model``."""
    import itda_lens.backends.nnsight as itn
    from itda_lens.core.itda import ITDA

    tokens = torch.randint(1000, 20000, (batch, seq_len))
    attention = torch.ones_like(tokens)
    dry = itn.DryRunBackend()
    with model.trace(tokens, attention_mask=attention, backend=dry) as tracer:
        activations = [itn.hidden_states(model.model.layers[3].output)]
        activations.save()
        tracer.stop()
    collect = dry.request_bytes

    dictionary = ITDA.from_atoms(torch.randn(n_atoms, d_model), k=min(BuildSettings.k, n_atoms))
    prompt = torch.randint(1000, 20000, (1, 16))
    sizes = {}
    for name, shipped in {"steer": itn.payload(dictionary, atoms=[0], dtype=torch.bfloat16), "full": itn.payload(dictionary, dtype=torch.bfloat16)}.items():
        dry = itn.DryRunBackend()
        with model.trace(prompt, backend=dry):
            itn.steer(model.model.layers[3], shipped, [0], 1.0, error_term=True)
        sizes[name] = dry.request_bytes
    per_atom = (sizes["full"] - sizes["steer"]) / (n_atoms - 1)
    return {"collect": collect, "steer": sizes["steer"], "per_atom": per_atom, "base": sizes["steer"] - per_atom}


def _measure_sessions(model, d_model: int, n_atoms: int, batch: int, seq_len: int, session_batches: int) -> dict[str, float]:
    """Bytes of a server-side build's session at width ``d_model``: the request
    (zstd-compressed as sent) without and with ``n_atoms`` float32 atoms sent in, and the
    returned values (``torch.save``) with ``n_atoms`` bf16 activations taken as atoms."""
    import io

    import nnsight

    import itda_lens.backends.nnsight as itn
    from itda_lens.backends.nnsight_build import grow_in_session
    from itda_lens.backends.nnsight_source import NnsightSource

    source = NnsightSource(model, ["model.layers.3"])
    hook = source.hooks[0]
    tokens = [torch.randint(1000, 20000, (batch, seq_len)) for _ in range(session_batches)]
    positions = [torch.arange(batch * seq_len).reshape(batch, seq_len)[:, 1:].flatten() for _ in tokens]
    settings = {"k": BuildSettings.k, "threshold": BuildSettings.threshold, "max_atoms": None, "refit": True, "step_tokens": BuildSettings.step_tokens}
    requests = {}
    for size in (0, n_atoms):
        units = torch.nn.functional.normalize(torch.randn(size, d_model), dim=1)
        dry = itn.DryRunBackend()
        with model.session(backend=dry):
            grown = grow_in_session(source, tokens, positions, {hook: (units, [size] if size else [])}, settings)
            nnsight.save(grown)
        requests[size] = dry.request_bytes
    results = {}
    for size in (0, n_atoms):
        # Per batch: the rows taken (spread evenly) and the share worse than the threshold.
        taken = [list(range(size * b // session_batches, size * (b + 1) // session_batches)) for b in range(session_batches)]
        returned = ({hook: (torch.randn(size, d_model).to(torch.bfloat16), [size] if size else [])}, [{hook: (rows, 0.5)} for rows in taken])
        buffer = io.BytesIO()
        torch.save(returned, buffer)
        results[size] = buffer.tell()
    return {
        "request_base": requests[0], "request_per_atom": (requests[n_atoms] - requests[0]) / n_atoms,
        "result_base": results[0], "result_per_atom": (results[n_atoms] - results[0]) / n_atoms,
    }


def _builder_seconds_per_token(d_model: int, n_atoms: int, k: int, tokens: int = 256) -> float:
    """Client time per token to encode with a full dictionary (the builder's main cost)."""
    from itda_lens.core import pursuit
    from itda_lens.core.gram_rows import GramRows

    torch.manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d_model), dim=1)
    gram = GramRows(atoms)
    x = torch.randn(tokens, d_model)
    pursuit.pursuit(x[:8], atoms, k, gram=gram)
    start = time.perf_counter()
    pursuit.pursuit(x, atoms, k, gram=gram)
    return (time.perf_counter() - start) / tokens


def main() -> None:
    options = _options()
    from itda_lens.backends.models import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(backend="nnsight")
    tokens_per_trace = options.batch * options.seq_len
    traces = -(-options.tokens // tokens_per_trace)
    results = {}
    for name, facts in MODELS.items():
        d, layers = facts["d_model"], facts["n_layers"]
        n_atoms = options.n_atoms or d
        layer = layers // 2
        measured = _measure_requests(model, d, min(options.measure_atoms, n_atoms), options.batch, options.seq_len)
        full_request = measured["base"] + n_atoms * measured["per_atom"]
        streamed = options.tokens * d * BF16
        flops = 2 * facts["params"] * (layer + 1) / layers * options.tokens
        server_s = flops / (options.server_tflops * 1e12)
        download_s = streamed / (options.download_mb_s * 1e6)
        upload_s = traces * measured["collect"] / (options.upload_mb_s * 1e6)
        queue_s = traces * options.queue_s
        session = _measure_sessions(model, d, min(options.measure_atoms, n_atoms), options.batch, options.seq_len, options.session_batches)
        sessions = -(-traces // options.session_batches)
        # Upper bound: every session after the first sends the finished dictionary back up.
        server_up = sessions * session["request_base"] + (sessions - 1) * n_atoms * session["request_per_atom"]
        server_down = sessions * session["result_base"] + n_atoms * session["result_per_atom"]
        builder_s = _builder_seconds_per_token(d, min(n_atoms, 4096), options.k) * n_atoms / min(n_atoms, 4096) * options.tokens
        results[name] = {
            "d_model": d,
            "layer": f"model.layers.{layer}",
            "n_atoms": n_atoms,
            "collect_request_bytes": measured["collect"],
            "result_bytes_per_token": d * BF16,
            "result_bytes_per_trace": tokens_per_trace * d * BF16,
            "traces": traces,
            "streamed_bytes": streamed,
            "server_seconds": server_s,
            "download_seconds": download_s,
            "upload_seconds": upload_s,
            "queue_seconds": queue_s,
            "client_build_seconds": builder_s,
            "steer_request_bytes": measured["steer"],
            "atom_bytes": measured["per_atom"],
            "splice_request_bytes": full_request,
            "splice_upload_seconds": full_request / (options.upload_mb_s * 1e6),
            "client_build_up_bytes": traces * measured["collect"],
            "sessions": sessions,
            "session_request_bytes": session["request_base"] + n_atoms * session["request_per_atom"],
            "session_atom_up_bytes": session["request_per_atom"],
            "session_atom_down_bytes": session["result_per_atom"],
            "server_build_up_bytes": server_up,
            "server_build_down_bytes": server_down,
            "down_ratio": streamed / server_down,
        }
    if options.json:
        print(json.dumps({"assumptions": vars(options), "models": results}))
        return
    print(
        f"assumptions: {options.tokens:,} tokens in traces of {options.batch} x {options.seq_len} tokens; "
        f"upload {options.upload_mb_s} MB/s, download {options.download_mb_s} MB/s, "
        f"server {options.server_tflops} TFLOP/s per job, {options.queue_s} s per request; bf16 activations and atoms"
    )
    for name, r in results.items():
        mb = 1e6
        print(f"\n{name} (d_model {r['d_model']}, reading {r['layer']}, dictionary of {r['n_atoms']:,} atoms)")
        print("  building from streamed activations")
        print(f"    request per trace (ids, read one layer, stop) {r['collect_request_bytes'] / 1e3:10.1f} kB   [measured]")
        print(f"    result per trace                              {r['result_bytes_per_trace'] / mb:10.1f} MB   ({r['result_bytes_per_token']:,} B/token)")
        print(f"    traces                                        {r['traces']:10,d}")
        print(f"    streamed back in all                          {r['streamed_bytes'] / 1e9:10.1f} GB")
        print(f"    server compute (stops after the layer)        {r['server_seconds'] / 60:10.1f} min")
        print(f"    download                                      {r['download_seconds'] / 60:10.1f} min")
        print(f"    upload of requests                            {r['upload_seconds'] / 60:10.1f} min")
        print(f"    per-request overhead                          {r['queue_seconds'] / 60:10.1f} min")
        print(f"    client dictionary building (this CPU)         {r['client_build_seconds'] / 60:10.1f} min   [measured rate, full dictionary]")
        print(f"  building on the server ({r['sessions']} sessions of {options.session_batches} traces)")
        print(f"    each atom sent in (float32, zstd)             {r['session_atom_up_bytes'] / 1e3:10.1f} kB   [measured]")
        print(f"    each atom returned (bf16, torch.save)         {r['session_atom_down_bytes'] / 1e3:10.1f} kB   [measured]")
        print(f"    request of a session with every atom          {r['session_request_bytes'] / mb:10.1f} MB")
        print(f"    up in all (at most: the full dictionary each) {r['server_build_up_bytes'] / 1e9:10.2f} GB   (streaming: {r['client_build_up_bytes'] / 1e9:.3f} GB)")
        print(f"    down in all                                   {r['server_build_down_bytes'] / 1e9:10.2f} GB   (streaming: {r['streamed_bytes'] / 1e9:.1f} GB, {r['down_ratio']:.0f}x more)")
        print("  using the dictionary inside traces")
        print(f"    steer request (one atom, bf16)                {r['steer_request_bytes'] / 1e3:10.1f} kB   [measured]")
        print(f"    each further atom                             {r['atom_bytes'] / 1e3:10.1f} kB   [measured]")
        print(f"    splice / ablate / attribute (every atom)      {r['splice_request_bytes'] / mb:10.1f} MB   ({r['splice_upload_seconds']:.0f} s upload)")


if __name__ == "__main__":
    main()

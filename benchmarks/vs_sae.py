"""ITDA against a TopK SAE trained by SAE Lens, on the same activations.

Reads one hook's activations once, from the training documents of a text file (first
--tokens tokens, as benchmarks/build_quality.py reads them). From them it builds an
ITDA with the project's defaults (``itda_lens.build``, --latents atoms) and trains a
TopK SAE of --latents latents with the same ``k`` using SAE Lens' ``SAETrainer``
(its ``TopKTrainingSAE``, inputs scaled to the expected norm, Adam), for --budget
seconds of training. Every --probe-every steps the SAE is scored on the first
--probe-tokens held-out tokens, where the ITDA was scored too, to find when the SAE
first matches the ITDA's delta LM loss. At the end both are evaluated on all held-out
documents by the same code, ``itda_lens.evaluate`` (the SAE through its top-k latents as
codes and its own decoder), and the script prints FVU, delta LM loss, CE loss score and
the seconds each took; reading the activations is counted once, apart.

SAE Lens needs TransformerLens 3, so this runs in the TL3 environment:

    .venv-tl3/bin/python benchmarks/vs_sae.py --text-file ../shared/corpus/wikitext-2/valid.txt

Most of its time goes to the model's forward passes (reading, probes, evaluation);
--eval-tokens and --probe-tokens shorten the last two. The run in docs/benchmarks.md
(with --eval-tokens 4096 --probe-tokens 1024) took 42 minutes on a busy 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator

import torch
from early_stopping import Recorded
from jaxtyping import Float
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.sae_trainer import SAETrainer
from torch import Tensor

from itda_lens import BuildSettings, ITDAConfig, SparseCodes, build, evaluate, load_model
from itda_lens.core.activations import TransformerLensSource
from itda_lens.core.text import file_documents, select_split, token_batches


class SAEDictionary:
    """An SAE Lens SAE as ``evaluate`` sees a dictionary: its ``k`` largest latents are
    the codes and its decoder decodes them, with the trainer's input scaling around it."""

    def __init__(self, sae: TopKTrainingSAE, scaler: ActivationScaler, config: ITDAConfig):
        self.sae, self.scaler, self.config = sae, scaler, config
        self.n_atoms, self.d_model, self.k = sae.cfg.d_sae, sae.cfg.d_in, sae.cfg.k

    def encode(self, x: Float[Tensor, "n d_model"]) -> SparseCodes:
        values, indices = self.sae.encode(self.scaler.scale(x)).topk(self.k, dim=-1)
        return SparseCodes(indices, values)

    def decode(self, codes: SparseCodes) -> Float[Tensor, "n d_model"]:
        return self.scaler.unscale(self.sae.decode(codes.to_dense(self.n_atoms)))


def shuffled_batches(activations: Float[Tensor, "n d_model"], size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Batches of ``size`` rows, each pass over ``activations`` in a new random order."""
    while True:
        order = torch.randperm(len(activations), generator=generator)
        for start in range(0, len(order) - size + 1, size):
            yield activations[order[start : start + size]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-file", required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--hook", default="blocks.15.hook_resid_post")
    parser.add_argument("--tokens", type=int, default=60_000, help="training tokens, for both")
    parser.add_argument("--eval-tokens", type=int, default=None, help="default: all held-out tokens")
    parser.add_argument("--latents", type=int, default=8192, help="ITDA atoms (at most) and SAE latents")
    parser.add_argument("--k", type=int, default=BuildSettings.k, help="atoms / latents per token, for both")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of SAE training (probes not counted)")
    parser.add_argument("--batch-size", type=int, default=4096, help="SAE training batch, in tokens")
    parser.add_argument("--lr", type=float, default=1e-3, help="SAE learning rate (constant)")
    parser.add_argument("--probe-every", type=int, default=10, help="SAE steps between held-out probes")
    parser.add_argument("--probe-tokens", type=int, default=2048, help="held-out tokens per probe")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    model = load_model(args.model)
    batches = list(token_batches(select_split(file_documents(args.text_file), "train"), model.tokenizer, 128, 16, args.tokens))
    start = time.perf_counter()
    recorded = Recorded(TransformerLensSource(model, [args.hook], model_name=args.model), batches)
    seconds_activations = time.perf_counter() - start
    activations = torch.cat([acts[args.hook][batch.mask] for acts, batch in zip(recorded.activations, batches)])

    start = time.perf_counter()
    result = build(recorded, batches, BuildSettings(k=args.k, max_atoms=args.latents), progress=False)
    seconds_itda = time.perf_counter() - start
    itda = result.dictionaries[args.hook]

    def heldout(tokens: int | None) -> list:
        return list(token_batches(select_split(file_documents(args.text_file), "heldout"), model.tokenizer, 128, 16, tokens))

    probe = heldout(args.probe_tokens)
    itda_probe = evaluate(model, itda, probe, progress=False)["delta_lm_loss"]
    print(f"ITDA: {itda.n_atoms} atoms from {result.tokens} tokens in {seconds_itda:.1f} s; delta LM loss {itda_probe:.4f} on the probe")

    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=activations.shape[1], d_sae=args.latents, k=args.k, normalize_activations="expected_average_only_in",
            metadata=SAEMetadata(model_name=args.model, hook_name=args.hook),
        )
    )
    data = shuffled_batches(activations, args.batch_size, torch.Generator().manual_seed(args.seed))
    # Training stops on the clock; the sample count only bounds it.
    settings = SAETrainerConfig(total_training_samples=10**12, train_batch_size_samples=args.batch_size, lr=args.lr, lr_end=args.lr)
    trainer = SAETrainer(settings, sae, data)
    start = time.perf_counter()
    trainer.activation_scaler.estimate_scaling_factor(activations.shape[1], data, max(1, len(activations) // args.batch_size))
    seconds_sae = time.perf_counter() - start
    as_dictionary = SAEDictionary(sae, trainer.activation_scaler, ITDAConfig(d_model=sae.cfg.d_in, k=args.k, model=args.model, hook=args.hook))
    probes, reached, seconds_probes = [], None, 0.0
    while seconds_sae < args.budget:
        start = time.perf_counter()
        trainer.maybe_reset_sparsity()
        trainer.step(next(data))
        trainer.n_training_steps += 1
        seconds_sae += time.perf_counter() - start
        if trainer.n_training_steps % args.probe_every == 0 or seconds_sae >= args.budget:
            start = time.perf_counter()
            sae.eval()
            delta = evaluate(model, as_dictionary, probe, progress=False)["delta_lm_loss"]
            seconds_probes += time.perf_counter() - start
            probes.append([trainer.n_training_steps, seconds_sae, delta])
            print(f"SAE step {trainer.n_training_steps:5d}, {seconds_sae:6.1f} s: delta LM loss {delta:.4f} on the probe")
            if reached is None and delta <= itda_probe:
                reached = seconds_sae
    trainer.set_final_sae_metadata()
    sae.eval()

    evaluation = heldout(args.eval_tokens)
    itda_metrics = evaluate(model, itda, evaluation)
    sae_metrics = evaluate(model, as_dictionary, evaluation)
    print(f"\n{args.model} {args.hook}: {len(activations)} training tokens, {itda_metrics['tokens']} held-out tokens")
    print(f"reading the activations (once, for both): {seconds_activations:.1f} s")
    print(f"{'':>22}{'ITDA':>10}{'SAE':>10}")
    rows = [
        ("latents / atoms", itda.n_atoms, args.latents, "d"),
        ("seconds", seconds_itda, seconds_sae, ".1f"),
        ("FVU", itda_metrics["fvu"], sae_metrics["fvu"], ".4f"),
        ("delta LM loss", itda_metrics["delta_lm_loss"], sae_metrics["delta_lm_loss"], ".4f"),
        ("CE loss score", itda_metrics["ce_loss_score"], sae_metrics["ce_loss_score"], ".4f"),
        ("L0", itda_metrics["l0"], sae_metrics["l0"], ".1f"),
    ]
    for name, ours, theirs, spec in rows:
        print(f"{name:>22}{ours:>10{spec}}{theirs:>10{spec}}")
    steps = trainer.n_training_steps
    print(f"SAE: {steps} steps of {args.batch_size} tokens ({steps * args.batch_size / len(activations):.1f} passes), probes {seconds_probes:.0f} s extra")
    if reached is None:
        print(f"the SAE did not reach the ITDA's delta LM loss on the probe ({itda_probe:.4f}) within {args.budget:.0f} s of training")
    else:
        print(f"the SAE first reached the ITDA's delta LM loss on the probe ({itda_probe:.4f}) after {reached:.1f} s of training")
    print(json.dumps({
        "tokens": len(activations), "itda_tokens": result.tokens, "seconds_activations": seconds_activations,
        "seconds_itda": seconds_itda, "seconds_sae": seconds_sae, "sae_steps": steps, "batch_size": args.batch_size, "lr": args.lr,
        "itda_probe_delta_lm_loss": itda_probe, "sae_seconds_to_itda_delta_lm_loss": reached, "probes": probes,
        "itda": itda_metrics, "sae": sae_metrics,
    }))


if __name__ == "__main__":
    main()

"""Tiny Llama-architecture language models trained from scratch, for benchmarks and tutorials.

Models of one architecture that differ only in their seed (initialisation and batch
order) are trained with plain PyTorch on the same token sequences: the ground truth of
the layer-matching benchmark, where layer ``i`` of one model corresponds to layer ``i``
of another.

The models use a real tokenizer (the embedded SmolLM2's by default) and keep its full
vocabulary, so TransformerLens hosts them like any ``LlamaForCausalLM``. To keep training
cheap on a CPU, the loss is a softmax over the ``softmax_tokens`` most frequent target
ids of the training text only (4096 cover 93% of WikiText's SmolLM2 tokens): the other
ids have their logits pinned at minus infinity and targets among them are not scored.
Every token is still read. Embeddings are tied.

Models may also use a tokenizer trained here (:func:`trained_tokenizer`, Hugging Face
``tokenizers``: byte-level BPE or unigram, any vocabulary size), for the cross-tokenizer
benchmark.

A trained model is saved with ``save_pretrained`` under a folder named by a hash of its
training settings and loaded from there on the next run; a trained tokenizer is saved
as ``tokenizer.json`` the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Int
from torch import Tensor

from itda_lens.core.text import token_batches


@dataclass(frozen=True)
class TinyLMConfig:
    """Architecture and training settings of a tiny Llama."""

    d_model: int = 64
    n_layers: int = 6
    n_heads: int = 4
    d_mlp: int = 256
    seq_len: int = 128
    batch_size: int = 8
    steps: int = 1200
    lr: float = 3e-3
    warmup: int = 30
    softmax_tokens: int | None = 4096

    def key(self, seed: int, data: str) -> str:
        """A short id of these settings, the seed and the training data."""
        text = json.dumps({**asdict(self), "seed": seed, "data": data}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def add_training_options(group) -> None:
    """The shared width and training options of the benchmarks' tiny Llamas (an argparse
    group), with :class:`TinyLMConfig`'s defaults."""
    lm = TinyLMConfig()
    group.add_argument("--d-model", type=int, default=lm.d_model)
    group.add_argument("--heads", type=int, default=lm.n_heads)
    group.add_argument("--d-mlp", type=int, default=lm.d_mlp)
    group.add_argument("--seq-len", type=int, default=lm.seq_len)
    group.add_argument("--batch-size", type=int, default=lm.batch_size)
    group.add_argument("--steps", type=int, default=lm.steps)
    group.add_argument("--lr", type=float, default=lm.lr)


@dataclass
class Sequences:
    """Training sequences: BOS then ``seq_len - 1`` tokens of one document, padded."""

    tokens: Int[Tensor, "n seq"]
    mask: Bool[Tensor, "n seq"]

    @classmethod
    def from_documents(cls, documents, tokenizer, seq_len: int) -> Sequences:
        batches = list(token_batches(documents, tokenizer, seq_len=seq_len, batch_size=256))
        return cls(torch.cat([b.tokens for b in batches]), torch.cat([b.mask for b in batches]))

    def fingerprint(self) -> str:
        """A hash of the token ids and mask."""
        digest = hashlib.sha256(self.tokens.numpy().tobytes() + self.mask.numpy().tobytes())
        return digest.hexdigest()[:16]


#: Algorithms :func:`train_tokenizer` knows.
TOKENIZER_KINDS = ("bpe", "unigram")
#: Special tokens of the tokenizers trained here: BOS (also EOS), padding, unknown.
BOS, PAD, UNK = "<bos>", "<pad>", "<unk>"


def train_tokenizer(documents: list[str], kind: str, vocab_size: int):
    """A tokenizer trained on ``documents``: ``"bpe"``, byte-level BPE with the space
    attached to the next word (as GPT-2's), or ``"unigram"``, a SentencePiece-style
    unigram model over words marked by a leading ``▁``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[BOS, PAD, UNK], unk_token=UNK)
    else:
        raise ValueError(f"tokenizer kind must be one of {TOKENIZER_KINDS}, got {kind!r}.")
    tokenizer.train_from_iterator(documents, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=BOS, pad_token=PAD, unk_token=UNK)


def trained_tokenizer(folder: str | Path, documents: list[str], kind: str, vocab_size: int):
    """The tokenizer :func:`train_tokenizer` makes of these documents: loaded from
    ``folder`` if it was trained before, else trained now and saved there."""
    from transformers import PreTrainedTokenizerFast

    digest = hashlib.sha256("\x00".join(documents).encode()).hexdigest()[:12]
    target = Path(folder) / f"{kind}{vocab_size}-{digest}"
    if not (target / "tokenizer.json").exists():
        train_tokenizer(documents, kind, vocab_size).save_pretrained(target)
    return PreTrainedTokenizerFast.from_pretrained(target)


def make_model(config: TinyLMConfig, tokenizer, seed: int):
    """A freshly initialised ``LlamaForCausalLM`` with the tokenizer's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    hf_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.d_model,
        intermediate_size=config.d_mlp,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        max_position_embeddings=config.seq_len,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(hf_config)


def _learning_rate(step: int, config: TinyLMConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def training_vocabulary(data: Sequences, size: int | None = None) -> Int[Tensor, " v"]:
    """The ``size`` most frequent target token ids of the training sequences (all that
    occur if ``None``), sorted."""
    ids, counts = torch.unique(data.tokens[:, 1:][data.mask[:, 1:]], return_counts=True)
    if size is not None and size < len(ids):
        ids = ids[counts.argsort(descending=True, stable=True)[:size]]
    return ids.sort().values


def restricted_loss(model, tokens: Int[Tensor, "b seq"], mask: Bool[Tensor, "b seq"], vocab: Int[Tensor, " v"]) -> Tensor:
    """Mean next-token cross-entropy with the softmax over ``vocab`` only, at the masked
    targets that lie in ``vocab``."""
    position = torch.full((model.config.vocab_size,), -1, dtype=torch.long, device=tokens.device)
    position[vocab] = torch.arange(len(vocab), device=tokens.device)
    targets = position[tokens[:, 1:]]
    scored = mask[:, 1:] & (targets >= 0)
    hidden = model.model(tokens).last_hidden_state[:, :-1][scored]
    logits = hidden @ model.get_input_embeddings().weight[vocab].T
    return F.cross_entropy(logits, targets[scored])


def train(model, data: Sequences, config: TinyLMConfig, seed: int, device: str = "cpu") -> list[float]:
    """Train ``model`` in place for ``config.steps`` steps; returns the training losses."""
    model.to(device).train()
    vocab = training_vocabulary(data, config.softmax_tokens).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(config.steps):
        rows = torch.randint(0, len(data.tokens), (config.batch_size,), generator=generator)
        loss = restricted_loss(model, data.tokens[rows].to(device), data.mask[rows].to(device), vocab)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def heldout_loss(model, data: Sequences, vocab: Int[Tensor, " v"], device: str = "cpu", batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats) on ``data`` with the training softmax (over
    ``vocab``; targets outside it are skipped)."""
    model.to(device).eval()
    total, count = 0.0, 0
    vocab = vocab.to(device)
    for start in range(0, len(data.tokens), batch_size):
        tokens = data.tokens[start : start + batch_size].to(device)
        mask = data.mask[start : start + batch_size].to(device)
        n = int((mask[:, 1:] & torch.isin(tokens[:, 1:], vocab)).sum())
        total += float(restricted_loss(model, tokens, mask, vocab)) * n
        count += n
    return total / max(count, 1)


def trained_model(folder: str | Path, data: Sequences, tokenizer, config: TinyLMConfig, seed: int, device: str = "cpu"):
    """The model trained with these settings: loaded from ``folder`` if it was trained
    before, else trained now and saved there. Returns ``(model, info)``."""
    from transformers import LlamaForCausalLM

    target = Path(folder) / f"seed{seed}-{config.key(seed, data.fingerprint())}"
    info_file = target / "training.json"
    if info_file.exists():
        model = LlamaForCausalLM.from_pretrained(target).to(device).eval()
        return model, json.loads(info_file.read_text())
    model = make_model(config, tokenizer, seed)
    start = time.perf_counter()
    losses = train(model, data, config, seed, device)
    info = {"seed": seed, "config": asdict(config), "seconds": time.perf_counter() - start, "final_train_loss": sum(losses[-20:]) / len(losses[-20:])}
    model.eval().save_pretrained(target)
    info_file.write_text(json.dumps(info, indent=2))
    return model, info


def bridge(model, tokenizer, name: str):
    """``model`` hosted by a TransformerLens ``TransformerBridge``."""
    from transformer_lens.model_bridge import TransformerBridge

    hosted = TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tokenizer)
    hosted.cfg.model_name = name
    return hosted

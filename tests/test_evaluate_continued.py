"""evaluate() continued from the hook equals the three whole passes, on the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import pytest
import torch

from itda_lens.backends.transformer_lens import run_until, start_block
from itda_lens.core.itda import ITDA
from itda_lens.core.text import file_documents, select_split, token_batches
from itda_lens.tools import evaluate as evaluate_module
from itda_lens.tools.evaluate import evaluate

pytestmark = pytest.mark.tl3

try:
    from transformer_lens import HookedTransformer  # noqa: F401

    BACKENDS = ["bridge", "hooked_transformer"]
except (ImportError, AttributeError):
    BACKENDS = ["bridge"]


@pytest.fixture(params=BACKENDS)
def model(request):
    return request.getfixturevalue(request.param)


def _continues(model) -> bool:
    """Whether ``model`` can start at a block: all but TransformerLens 3's bridge."""
    return start_block(model, "blocks.4.hook_resid_post") is not None


def test_start_block_names_the_block_after_a_residual_hook(model):
    if not _continues(model):
        assert hasattr(model, "_hook_registry")  # the TransformerLens 3 bridge: three passes everywhere
        return
    last = model.cfg.n_layers - 1
    assert start_block(model, "blocks.15.hook_resid_post") == 16
    assert start_block(model, "blocks.0.hook_resid_pre") == 0
    assert start_block(model, "blocks.7.hook_resid_pre") == 7
    assert start_block(model, f"blocks.{last}.hook_resid_post") is None
    for elsewhere in ("blocks.3.hook_mlp_out", "blocks.3.hook_resid_mid", "blocks.3.attn.hook_z" if "blocks.3.attn.hook_z" in model.hook_dict else "hook_embed"):
        assert start_block(model, elsewhere) is None
    if "blocks.15.hook_out" in model.hook_dict:  # the bridge's own name of hook_resid_post
        assert start_block(model, "blocks.15.hook_out") == 16


@pytest.mark.parametrize("hook", ["blocks.15.hook_resid_post", "blocks.0.hook_resid_pre"])
def test_continued_evaluation_equals_three_passes(model, wikitext, monkeypatch, hook):
    if not _continues(model):
        pytest.skip("TransformerLens 3's bridge always takes the three passes")
    tokenizer = model.tokenizer
    train = next(iter(token_batches(select_split(file_documents(wikitext), "train"), tokenizer, 32, 4, 120)))
    with torch.no_grad():
        activations = run_until(model, start_block(model, hook), train.tokens)
    itda = ITDA.from_atoms(activations[train.mask], k=8, hook=hook)
    batches = list(token_batches(select_split(file_documents(wikitext), "heldout"), tokenizer, 32, 4, 120))

    passes = []
    handle = model.blocks[-1].register_forward_hook(lambda module, args, output: passes.append(len(args[0])))
    try:
        continued = evaluate(model, itda, batches, progress=False)
        runs_continued = list(passes)
        passes.clear()
        monkeypatch.setattr(evaluate_module, "start_block", lambda model, hook: None)
        three = evaluate(model, itda, batches, progress=False)
    finally:
        handle.remove()
    # the last block runs once per batch on the three variants stacked, instead of three times
    rows = [len(batch.tokens) for batch in batches]
    assert passes == [n for n in rows for _ in range(3)]
    assert runs_continued == [3 * n for n in rows]
    assert continued.keys() == three.keys()
    for name, value in three.items():
        assert continued[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert three["ce_loss_clean"] < three["ce_loss_spliced"] < three["ce_loss_zero"]

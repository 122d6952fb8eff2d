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
        assert type(model).__name__ == "TransformerBridge"  # TransformerLens 3's: three passes everywhere
        return
    last = model.cfg.n_layers - 1
    assert start_block(model, "blocks.15.hook_resid_post") == 16
    assert start_block(model, "blocks.0.hook_resid_pre") == 0
    assert start_block(model, "blocks.7.hook_resid_pre") == 7
    assert start_block(model, f"blocks.{last}.hook_resid_post") is None
    assert start_block(model, "blocks.3.hook_mlp_out") is None and start_block(model, "blocks.3.hook_resid_mid") is None
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

    # rows each forward call of the first and of the last block ran on
    calls: dict[int, list[int]] = {0: [], -1: []}
    handles = [model.blocks[i].register_forward_hook(lambda module, args, output, i=i: calls[i].append(len(args[0]))) for i in calls]
    try:
        continued = evaluate(model, itda, batches, progress=False)
        calls_continued = {i: rows.copy() for i, rows in calls.items()}
        for rows in calls.values():
            rows.clear()
        monkeypatch.setattr(evaluate_module, "start_block", lambda model, hook: None)
        three = evaluate(model, itda, batches, progress=False)
    finally:
        for handle in handles:
            handle.remove()
    rows = [len(batch.tokens) for batch in batches]
    assert calls[0] == calls[-1] == [n for n in rows for _ in range(3)]
    # continued: each block runs once per batch, the last one on the three versions stacked
    assert len(calls_continued[0]) == len(batches) and calls_continued[-1] == [3 * n for n in rows]
    assert continued.keys() == three.keys()
    for name, value in three.items():
        assert continued[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert three["ce_loss_clean"] < three["ce_loss_spliced"] < three["ce_loss_zero"]

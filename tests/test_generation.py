"""Greedy generation through TransformerLens is Hugging Face's, token for token.

A release of transformers once made ``TransformerBridge.generate`` with its KV cache (the
default) continue every prompt with garbage while single forward passes stayed right; these
tests catch that, with and without a dictionary spliced in, on TransformerBridge and (in the
TransformerLens 3 environment) HookedTransformer.
"""

from __future__ import annotations

import pytest
import torch

from itda_lens.backends.transformer_lens import attach, detach

pytestmark = pytest.mark.tl3

EARLY, LATE = "blocks.3.hook_resid_post", "blocks.15.hook_resid_post"
PROMPTS = [
    "My favourite food is",
    "The capital of France is",
    "def fibonacci(n):",
    "When Mary and John went to the store, John gave a drink to",
]
NEW_TOKENS = 12


@pytest.fixture(params=["bridge", "hooked_transformer"])
def model(request):
    model = request.getfixturevalue(request.param)
    detach(model)
    yield model
    detach(model)


def _reference(hf_model, ids: torch.Tensor) -> list[int]:
    out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False)
    return out[0].tolist()


def _greedy(model, ids: torch.Tensor, **options) -> list[int]:
    return model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, verbose=False, **options)[0].tolist()


@torch.no_grad()
@pytest.mark.parametrize("spliced", [False, True], ids=["plain", "spliced with error term"])
def test_greedy_generate_with_kv_cache_equals_hugging_face(model, hf_model, dictionaries, spliced):
    expected = {prompt: _reference(hf_model, model.to_tokens(prompt)) for prompt in PROMPTS}
    with attach(model, dictionaries[LATE], error_term=True) if spliced else _nothing():
        got = {prompt: _greedy(model, model.to_tokens(prompt)) for prompt in PROMPTS}
    for prompt in PROMPTS:
        assert got[prompt] == expected[prompt], (prompt, model.tokenizer.decode(got[prompt]), model.tokenizer.decode(expected[prompt]))
        assert len(got[prompt]) > len(model.to_tokens(prompt)[0])


@torch.no_grad()
@pytest.mark.parametrize("everywhere", [True, False], ids=["all", "prompt only"])
def test_steering_with_kv_cache_equals_steering_without(model, dictionaries, everywhere):
    """With the KV cache each generated token is a one-token pass, edited by ``"all"`` and
    ``"new"`` only; without it every step reruns the whole sequence as a prompt, where
    ``positions`` apply. Steering every position (``"all"``), or only the prompt's
    positions (as a list), is the same edit both ways, so the two generations must agree."""
    ids = model.to_tokens(PROMPTS[0])
    with attach(model, dictionaries[EARLY], error_term=True) as splice:
        plain = _greedy(model, ids)
        positions = "all" if everywhere else list(range(ids.shape[1]))
        with splice.steer(0, 100.0, positions=positions):
            cached = _greedy(model, ids)
            uncached = _greedy(model, ids, use_past_kv_cache=False)
    assert cached == uncached
    assert cached != plain  # the steering did something


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None

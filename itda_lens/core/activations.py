"""Activation sources: a model and hook points in, ``[batch, seq, d_model]`` tensors out.

A source runs one forward pass per batch for all of its hook points and stops after the
last block it needs. This module holds the protocol, its checks and the TransformerLens
source; the nnsight one is :class:`itda_lens.backends.nnsight_source.NnsightSource`.
"""

from __future__ import annotations

import difflib
import re
from typing import Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


class ActivationSource(Protocol):
    """Anything that maps token ids to activations at named hook points."""

    hooks: list[str]
    model_name: str
    d_model: int

    def __call__(self, tokens: Int[Tensor, "batch seq"]) -> dict[str, Float[Tensor, "batch seq d_model"]]: ...


def check_hook_names(hooks: list[str], available: list[str], what: str = "hook point") -> None:
    """Raise a ``ValueError`` naming close matches for each unknown name."""
    if not hooks:
        raise ValueError(f"give at least one {what}.")
    for hook in hooks:
        if hook not in available:
            close = difflib.get_close_matches(hook, available, n=5, cutoff=0.6)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise ValueError(f"the model has no {what} {hook!r}.{hint}")


def check_activations(hook: str, x: Tensor, tokens: Int[Tensor, "batch seq"], d_model: int) -> None:
    """Raise a ``ValueError`` unless ``x`` is ``[batch, seq, d_model]`` for ``tokens``."""
    want = (*tokens.shape, d_model)
    if tuple(x.shape) != want:
        raise ValueError(
            f"the activations at {hook} have shape {list(x.shape)}, not [batch, pos, d_model] = {list(want)}; "
            "give a hook on the residual stream or the output of a block, attention or MLP, such as blocks.0.hook_resid_post."
        )


def last_block(hooks: list[str]) -> int | None:
    """The highest ``blocks.N`` index among ``hooks``; ``None`` if one lies outside the blocks."""
    matches = [_BLOCK.match(hook) for hook in hooks]
    if any(match is None for match in matches):
        return None
    return max(int(match.group(1)) for match in matches)


class TransformerLensSource:
    """Activations from a ``HookedTransformer`` or ``TransformerBridge`` by hook name."""

    def __init__(self, model, hooks: list[str], model_name: str | None = None):
        check_hook_names(hooks, list(model.hook_dict))
        self.model = model
        self.hooks = list(hooks)
        self.model_name = model_name or getattr(model.cfg, "model_name", None) or "unknown"
        block = last_block(self.hooks)
        self.stop_at_layer = None if block is None else block + 1
        self.d_model = model.cfg.d_model

    @torch.no_grad()
    def __call__(self, tokens: Int[Tensor, "batch seq"]) -> dict[str, Float[Tensor, "batch seq d_model"]]:
        device = next(self.model.parameters()).device
        _, cache = self.model.run_with_cache(
            tokens.to(device), names_filter=self.hooks, stop_at_layer=self.stop_at_layer, return_cache_object=False
        )
        for hook in self.hooks:
            check_activations(hook, cache[hook], tokens, self.d_model)
        return {hook: cache[hook] for hook in self.hooks}

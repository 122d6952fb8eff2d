"""Activation sources: a model and hook points in, ``[batch, seq, d_model]`` tensors out.

A source runs one forward pass per batch for all of its hook points and stops after the
last block it needs.
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


class NnsightSource:
    """Activations from an nnsight ``LanguageModel``, locally or on NDIF.

    ``modules`` are module paths (``model.layers.15``; ``model.layers.15.input`` for a
    module's input) or TransformerLens hook names (mapped by :mod:`itda_lens.names`).
    One trace per batch caches them all and stops after the block holding the last.
    With ``remote`` (``True``, a host URL, or ``"local"`` for nnsight's simulation of
    NDIF) each trace runs through a :class:`~itda_lens.nnsight.RetryingBackend` that
    retries connection errors with backoff; give :func:`~itda_lens.build.build` a
    ``checkpoint_dir`` so a build that still fails resumes where it stopped.
    ``hooks`` are TransformerLens hook names where the architecture is mapped (so the
    dictionary works from either library), else the module paths.
    """

    def __init__(
        self,
        model,
        modules: list[str],
        model_name: str | None = None,
        remote: bool | str = False,
        retries: int = 3,
        backoff: float = 2.0,
        max_request_bytes: int | None = None,
        backend=None,
    ):
        from itda_lens import names
        from itda_lens.nnsight import RetryingBackend

        if not modules:
            raise ValueError("give at least one module path, such as 'model.layers.15'.")
        try:
            architecture = names.architecture(model)
        except ValueError:
            architecture = None
        if architecture is None and any(names.is_hook_name(m) for m in modules):
            names.architecture(model)  # raises, naming the architectures that are mapped
        paths = [names.to_module_path(m, architecture) if architecture else m for m in modules]
        available = [name for name, _ in model._module.named_modules() if name]
        check_hook_names([_module_of(path) for path in paths], available, what="module")
        self.model = model
        self.modules = paths
        self.hooks = []
        for given, path in zip(modules, paths):
            if names.is_hook_name(given):
                self.hooks.append(given)
            else:
                try:
                    self.hooks.append(names.hook_name(path, architecture) if architecture else path)
                except ValueError:
                    self.hooks.append(path)
        if len(set(self.hooks)) != len(self.hooks):
            raise ValueError(f"modules {modules} name the same activation twice.")
        config = model.config
        self.model_name = model_name or getattr(config, "_name_or_path", None) or "unknown"
        self.d_model = config.hidden_size
        self._stop = _stop_module(model._module, paths)
        if backend is None and remote:
            backend = RetryingBackend(model, remote, max_request_bytes=max_request_bytes, retries=retries, backoff=backoff)
        self.backend = backend

    def __call__(self, tokens: Int[Tensor, "batch seq"]) -> dict[str, Float[Tensor, "batch seq d_model"]]:
        from itda_lens.nnsight import hidden_states

        model, stop = self.model, self._stop
        envoys = [model.get(_module_of(path)) for path in self.modules]
        inputs = any(path.endswith(".input") for path in self.modules)
        attention_mask = torch.ones_like(tokens)
        with model.trace(tokens, attention_mask=attention_mask, backend=self.backend) as tracer:
            # A cache records the modules in whatever order they run; reading the stop
            # module's output lets the forward reach them all, then it ends there.
            cache = tracer.cache(modules=envoys, include_inputs=inputs)
            with torch.no_grad():
                _ = model.get(stop).output
            tracer.stop()
        activations = {}
        for hook, path, envoy in zip(self.hooks, self.modules, envoys):
            entry = cache[envoy.path]
            activations[hook] = entry.input if path.endswith(".input") else hidden_states(entry.output)
            check_activations(hook, activations[hook], tokens, self.d_model)
        return activations


def _module_of(path: str) -> str:
    """The module of a module path (without a trailing ``.input`` or ``.output``)."""
    return path.removesuffix(".input").removesuffix(".output")


def _stop_module(module, paths: list[str]) -> str:
    """The module whose output comes after every one of ``paths``: of the blocks holding
    them (children of a ``ModuleList``, such as ``model.layers.7``, which run in order) or
    the modules themselves outside any block, the one that returns last."""
    lists = {name for name, child in module.named_modules() if isinstance(child, torch.nn.ModuleList)}
    returns: dict[str, int] = {}  # post-order: a module returns after its children

    def walk(name: str, node) -> None:
        for child_name, child in node.named_children():
            walk(f"{name}.{child_name}" if name else child_name, child)
        returns[name] = len(returns)

    walk("", module)

    def block(path: str) -> str:
        parts = _module_of(path).split(".")
        for end in range(2, len(parts) + 1):
            if ".".join(parts[: end - 1]) in lists:
                return ".".join(parts[:end])
        return _module_of(path)

    return max((block(path) for path in paths), key=returns.__getitem__)

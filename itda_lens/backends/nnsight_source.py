"""Activations from an nnsight ``LanguageModel``, locally or on NDIF: the nnsight
:class:`~itda_lens.core.activations.ActivationSource`."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from itda_lens.backends import names
from itda_lens.backends.nnsight import RetryingBackend, hidden_states
from itda_lens.core.activations import check_activations, check_hook_names


class NnsightSource:
    """Activations from an nnsight ``LanguageModel``, locally or on NDIF.

    ``modules`` are module paths (``model.layers.15``; ``model.layers.15.input`` for a
    module's input) or TransformerLens hook names (mapped by :mod:`itda_lens.backends.names`).
    One trace per batch caches them all and stops after the block holding the last.
    With ``remote`` (``True``, a host URL, or ``"local"`` for nnsight's simulation of
    NDIF) each trace runs through a :class:`~itda_lens.backends.nnsight.RetryingBackend` that
    retries connection errors with backoff; give :func:`~itda_lens.core.build.build` a
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

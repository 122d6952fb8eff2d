"""ITDA dictionaries spliced into TransformerLens models (``HookedTransformer`` and
``TransformerBridge``, TransformerLens 3.x and 4.x).

:func:`attach` puts a dictionary at a hook point: from then on every forward pass (plain
calls, ``run_with_cache``, ``run_with_hooks``, ``generate``) replaces the activation there
with what the dictionary makes of it, until :func:`detach` (or the end of a ``with``
block). The model's own hook point then carries that replacement, and the dictionary
adds hook points of its own, named ``<hook>.itda.<name>`` after the hook name you
attached at (``blocks.15.hook_resid_post.itda.hook_values``), with SAE Lens' names where
SAE Lens has one::

    hook_sae_input      [batch, pos, d_model]  the activation entering the dictionary
    hook_indices        [batch, pos, k]        the atoms of the sparse codes
    hook_values         [batch, pos, k]        their coefficients
    hook_sae_acts_post  [batch, pos, n_atoms]  dense codes: only with ``dense_codes=True``,
                                               and only built when a hook function is on it
    hook_sae_recons     [batch, pos, d_model]  the reconstruction decoded from the codes
    hook_sae_error      [batch, pos, d_model]  activation minus the reconstruction of the
                                               unedited codes
    hook_sae_output     [batch, pos, d_model]  what the model receives: the reconstruction,
                                               plus the error with ``error_term=True``

With ``error_term=True`` the output equals the activation in value and the error is
detached, so gradients reach the codes; with it off the model runs spliced, the model
whose loss ``itda-lens eval`` reports.

Positions holding an excluded token (BOS by default) are never encoded: the activation
passes through unchanged, their codes are :data:`~itda_lens.core.ops.NOT_ENCODED` (-1) with
coefficient 0 and their error 0.

Edits to the codes (:meth:`AttachedITDA.ablate`, :meth:`~AttachedITDA.clamp`,
:meth:`~AttachedITDA.steer`) are context managers; :mod:`itda_lens.core.ops` applies them, as
it does for nnsight. They apply before the dictionary's hook functions run, so a cache
shows the codes the model used; the error stays that of the unedited codes. While an edit
is active, a one-token forward pass that follows an earlier pass is taken as a token that
``generate`` added (it runs with its KV cache, the default): ``positions="all"`` and
``"new"`` edit it, positions given as ints or a mask do not.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from packaging.version import Version
from torch import Tensor, nn

from itda_lens.core import checks, ops
from itda_lens.core.itda import ITDA, SparseCodes
from itda_lens.core.ops import Positions

#: Name of the child module that holds an attached dictionary under its host hook point.
CHILD_NAME = "itda"

__all__ = [
    "AttachedITDA",
    "Attachments",
    "Record",
    "attach",
    "attach_all",
    "attached",
    "attachments",
    "check_compatible",
    "detach",
    "replace_hook",
    "run_from",
    "run_until",
    "start_block",
]


def check_compatible(model, itda: ITDA, hook: str) -> None:
    """Raise if ``hook`` is not a hook point of ``model`` or has another width than
    ``itda``; warn if the dictionary was built for another model or hook."""
    from itda_lens.core.activations import check_hook_names

    hooks = model.hook_dict
    check_hook_names([hook], list(hooks))
    width = model.cfg.d_model
    if width != itda.d_model:
        raise ValueError(
            f"the dictionary has width {itda.d_model} but {hook} has width {width}: it was built for "
            f"model={itda.config.model!r}, hook={itda.config.hook!r}; use a dictionary built for this hook point."
        )
    built = itda.config.hook
    same_hook = built == hook or hooks.get(built) is hooks[hook]
    checks.warn_if_elsewhere(itda.config.model, getattr(model.cfg, "model_name", None), built, hook, same_hook, stacklevel=3)


def replace_hook(replacement: Float[Tensor, "batch seq d_model"], mask: Bool[Tensor, "batch seq"]) -> Callable[[Tensor, object], Tensor]:
    """A hook function that puts ``replacement`` in place of the activation at ``mask``."""

    def hook_fn(activation: Tensor, hook=None) -> Tensor:
        mask_here = mask.to(activation.device)[..., None]
        return torch.where(mask_here, replacement.to(activation.device, activation.dtype), activation)

    return hook_fn


def start_block(model, hook: str) -> int | None:
    """The block that :func:`run_from` starts at to continue the model from ``hook``: ``L``
    for ``blocks.L.hook_resid_pre``, ``L + 1`` for ``blocks.L.hook_resid_post`` of any block
    but the last, under any name of those hook points. ``None`` at every other hook point,
    and on a ``TransformerBridge`` of TransformerLens 3 (it cannot start at a block)."""
    if _is_bridge(model) and Version(version("transformer-lens")).major < 4:
        return None
    hooks = model.hook_dict
    point = hooks[hook]
    n_layers = model.cfg.n_layers
    for layer in range(n_layers):
        if hooks.get(f"blocks.{layer}.hook_resid_pre") is point:
            return layer
        if layer + 1 < n_layers and hooks.get(f"blocks.{layer}.hook_resid_post") is point:
            return layer + 1
    return None


def run_until(model, block: int, tokens: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq d_model"]:
    """The residual stream entering ``block``, running only the blocks below it."""
    return model(tokens, stop_at_layer=block)


def run_from(model, block: int, residual: Float[Tensor, "batch seq d_model"]) -> Float[Tensor, "batch seq vocab"]:
    """The logits of the model continued from ``residual`` entering ``block`` (see
    :func:`start_block`), running only ``block`` and the blocks above it.

    ``HookedTransformer`` starts there (``start_at_layer``). ``TransformerBridge``'s
    ``start_at_layer`` runs the blocks below too and discards their output, so they are
    swapped for a pass-through during the call (restored after it, even on an error); the
    logits are those of a whole pass where, as in Llama-family models, the blocks read
    nothing from the blocks below but the residual stream."""
    if not _is_bridge(model) or block == 0:
        return model(residual, start_at_layer=block)
    blocks = model.blocks
    skipped = [blocks[index] for index in range(block)]
    try:
        for index in range(block):
            blocks[index] = _PassThrough()
        return model(residual, start_at_layer=block)
    finally:
        for index, original in enumerate(skipped):
            blocks[index] = original


class _PassThrough(nn.Module):
    """Stands in for a block whose output the bridge discards."""

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        return hidden_states


@dataclass(eq=False)
class _Edit:
    """One change to the codes, applied on every forward pass while active."""

    kind: Literal["ablate", "clamp", "steer"]
    atoms: Int[Tensor, " m"]
    amounts: list[float]
    positions: Positions
    forwards: int = 0

    def where(self, batch: int, seq: int, device: torch.device) -> Bool[Tensor, "batch seq"]:
        """The positions this forward pass edits. A one-token pass after an earlier
        pass is a generated token (``generate`` with its KV cache)."""
        generated = seq == 1 and self.forwards > 0
        self.forwards += 1
        return ops.position_mask(self.positions, batch, seq, generated=generated, device=device)


@dataclass
class Record:
    """What one forward pass of an :class:`AttachedITDA` used (see
    :meth:`AttachedITDA.recording`); ``None`` until the pass has run. ``values`` and
    ``error`` require grad when the pass ran with gradients enabled."""

    indices: Int[Tensor, "batch pos k"] | None = None
    values: Float[Tensor, "batch pos k"] | None = None
    error: Float[Tensor, "batch pos d_model"] | None = None


# --------------------------------------------------------------------------- the splice
class AttachedITDA(nn.Module):
    """A dictionary attached at one hook point of a model (made by :func:`attach`).

    Usable as a context manager: leaving the ``with`` block detaches it.
    """

    def __init__(self, itda: ITDA, hook: str, error_term: bool, exclude_tokens: Sequence[int], dense_codes: bool):
        super().__init__()
        # Kept out of the module tree so that the model's state_dict stays its own.
        self.__dict__["itda"] = itda
        self.hook = hook
        self.error_term = error_term
        self.exclude_tokens = tuple(int(t) for t in exclude_tokens)
        self.hook_sae_input = _hook_point()
        self.hook_indices = _hook_point()
        self.hook_values = _hook_point()
        if dense_codes:
            self.hook_sae_acts_post = _hook_point()
        self.hook_sae_recons = _hook_point()
        self.hook_sae_error = _hook_point()
        self.hook_sae_output = _hook_point()
        #: Mean |coefficient| of each atom where active, from :meth:`calibrate` (NaN: never active).
        self.typical_coefficients: Float[Tensor, " n_atoms"] | None = None
        self._edits: list[_Edit] = []
        #: Token ids embedded since the last multi-token embedding: a one-token embedding
        #: extends them (generate adds tokens one at a time, with or without a KV cache).
        self._tokens: Tensor | None = None
        self._embedded = False  # an embedding happened since the last pass
        self._warned_no_tokens = False
        self._stats: list[Tensor] | None = None
        self._record: Record | None = None
        self._handles: list = []
        self.__dict__["_model"] = None

    # ------------------------------------------------------------------ names
    @property
    def dense_codes(self) -> bool:
        return hasattr(self, "hook_sae_acts_post")

    def hook_points(self) -> dict[str, nn.Module]:
        """The dictionary's hook points by full name."""
        return {hp.name: hp for _, hp in self.named_children()}

    def codes(self, cache: Mapping[str, Tensor]) -> SparseCodes:
        """The sparse codes stored in a ``run_with_cache`` cache."""
        return SparseCodes(cache[self.hook_indices.name], cache[self.hook_values.name])

    def extra_repr(self) -> str:
        return f"hook={self.hook!r}, n_atoms={self.itda.n_atoms}, k={self.itda.k}, error_term={self.error_term}"

    # ------------------------------------------------------------------ forward
    def forward(self, x: Float[Tensor, "batch seq d_model"]) -> Float[Tensor, "batch seq d_model"]:
        """The activation as the model receives it with the dictionary in place."""
        if x.dim() != 3:
            raise ValueError(f"the dictionary at {self.hook} expects activations [batch, pos, d_model], got shape {tuple(x.shape)}.")
        x = self.hook_sae_input(x)
        itda = self._dictionary_on(x.device)
        keep = self._encoded_positions(x)
        self._embedded = False  # used up: a later pass without token ids must not see these
        record = self._record
        gradients = record is not None and torch.is_grad_enabled()
        if gradients and not x.requires_grad:
            x = x.detach().requires_grad_(True)
        codes = itda.encode(x[keep])
        indices, values = ops.scatter_codes(codes.indices, codes.values, keep)
        with torch.no_grad():
            error = ops.reconstruction_error(x, itda.decode(SparseCodes(indices, values.detach())), keep)
        if self._stats is not None:
            ops.count_coefficients(indices[keep], values[keep], *self._stats)
        batch, seq, _ = x.shape
        for edit in self._edits:
            where = edit.where(batch, seq, indices.device) & keep
            indices, values = ops.edit_codes(indices, values, edit.kind, edit.atoms, edit.amounts, where)
        indices = self.hook_indices(indices)
        values = self.hook_values(values)
        if self.dense_codes and self.hook_sae_acts_post.fwd_hooks:
            dense = self.hook_sae_acts_post(itda.dense(SparseCodes(indices, values)))
            recon = (dense.to(itda.atoms.dtype) @ itda.atoms).to(x.dtype)
        else:
            recon = itda.decode(SparseCodes(indices, values)).to(x.dtype)
        recon = self.hook_sae_recons(ops.splice(x, recon, keep))
        error = self.hook_sae_error(error)
        error_used = None
        if self.error_term:
            error_used = error.detach().requires_grad_(gradients)
        if record is not None:
            record.indices, record.values, record.error = indices, values, error_used
        return self.hook_sae_output(recon if error_used is None else recon + error_used)

    @contextmanager
    def recording(self) -> Iterator[Record]:
        """Inside the ``with`` block, the next forward pass fills the :class:`Record` it
        yields; with gradients enabled its ``values`` (and ``error``, with the error term)
        are leaves of the graph to the model's output, for attribution."""
        if self._record is not None:
            raise RuntimeError(f"the dictionary at {self.hook} is already recording; leave that with block first.")
        self._record = Record()
        try:
            yield self._record
        finally:
            self._record = None

    @torch.no_grad()
    def encode(self, text: Tensor | str | list[str]) -> SparseCodes:
        """The codes of the model's activations on ``text`` (token ids ``[batch, pos]`` or
        strings, tokenized with BOS as ``model.to_tokens`` does), ``[batch, pos, k]``;
        edits active now are applied."""
        model = self._model_or_raise()
        (tokens,) = _token_tensors(model, text)
        with self.recording() as record:
            model(tokens.to(next(model.parameters()).device))
        if record.indices is None:
            raise RuntimeError(f"the dictionary at {self.hook} did not run in this forward pass.")
        return SparseCodes(record.indices, record.values)

    def _dictionary_on(self, device: torch.device) -> ITDA:
        if self.itda.atoms.device != device:
            self.itda.to(device)
        return self.itda

    def _encoded_positions(self, x: Tensor) -> Bool[Tensor, "batch seq"]:
        keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if not self.exclude_tokens:
            return keep
        tokens = self._tokens
        batch, seq = x.shape[:2]
        if not self._embedded or tokens is None or tokens.shape[0] != batch or tokens.shape[1] < seq:
            if not self._warned_no_tokens:
                warnings.warn(
                    f"the dictionary at {self.hook} saw no token ids for this forward pass (input embeddings, "
                    "or start_at_layer?), so it encodes every position, BOS included.",
                    stacklevel=2,
                )
                self._warned_no_tokens = True
            return keep
        excluded = torch.tensor(self.exclude_tokens, device=tokens.device)
        return ~torch.isin(tokens[:, -seq:], excluded).to(x.device)

    def _capture_tokens(self, module, args, kwargs) -> None:
        tokens = args[0] if args else kwargs.get("input_ids", kwargs.get("tokens"))
        if isinstance(tokens, Tensor) and not tokens.is_floating_point() and tokens.dim() == 2:
            previous = self._tokens
            extends = tokens.shape[1] == 1 and previous is not None and previous.shape[0] == tokens.shape[0]
            self._tokens = torch.cat([previous, tokens.to(previous.device)], dim=1) if extends else tokens
            self._embedded = True

    def _splice(self, module, inputs, output: Tensor) -> Tensor:
        return self(output)

    # ------------------------------------------------------------------ edits
    def atom_indices(self, atoms: int | Sequence[int] | Tensor) -> Int[Tensor, " m"]:
        """``atoms`` as indices of this dictionary, checked (see :func:`itda_lens.core.checks.atom_indices`)."""
        return checks.atom_indices(atoms, self.itda.n_atoms, where=f" at {self.hook}")

    @contextmanager
    def _editing(self, edit: _Edit) -> Iterator[AttachedITDA]:
        self._edits.append(edit)
        try:
            yield self
        finally:
            self._edits.remove(edit)

    def ablate(self, atoms: int | Sequence[int] | Tensor, positions: Positions = ops.ALL) -> AbstractContextManager[AttachedITDA]:
        """Inside the ``with`` block, ``atoms`` get coefficient 0 at ``positions``
        (see :func:`itda_lens.core.ops.position_mask`)."""
        return self._editing(_Edit("ablate", self.atom_indices(atoms), [], ops.check_positions(positions)))

    def clamp(self, atom: int, value: float, positions: Positions = ops.ALL) -> AbstractContextManager[AttachedITDA]:
        """Inside the ``with`` block, ``atom``'s coefficient is ``value`` at ``positions``
        (added there when the codes lack it)."""
        atoms = self.atom_indices(atom)
        if len(atoms) != 1:
            raise ValueError(f"clamp takes one atom, got {atoms.tolist()}.")
        return self._editing(_Edit("clamp", atoms, [checks.number(value, "value")], ops.check_positions(positions)))

    def steer(
        self, atoms: int | Sequence[int] | Tensor, scale: float | Sequence[float], positions: Positions = ops.ALL, *, relative: bool = False
    ) -> AbstractContextManager[AttachedITDA]:
        """Inside the ``with`` block, add ``scale`` (one number, or one per atom) times
        each atom's direction at ``positions``. ``relative``: ``scale`` is in units of each
        atom's typical coefficient (see :meth:`calibrate`)."""
        atoms = self.atom_indices(atoms)
        amounts = ops.amounts(atoms, scale, relative, self.typical_coefficients, where=f" at {self.hook}")
        return self._editing(_Edit("steer", atoms, amounts, ops.check_positions(positions)))

    # ------------------------------------------------------------------ statistics
    @torch.no_grad()
    def calibrate(self, text: Tensor | str | list[str] | Iterable) -> Float[Tensor, " n_atoms"]:
        """Run the model on ``text`` (token ids ``[batch, pos]``, strings, or
        :class:`~itda_lens.core.text.TokenBatch` es) and set :attr:`typical_coefficients`
        from the unedited codes."""
        model = self._model_or_raise()
        n = self.itda.n_atoms
        self._stats = [torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)]
        try:
            device = next(model.parameters()).device
            for tokens in _token_tensors(model, text):
                model(tokens.to(device))
            sums, counts = self._stats
        finally:
            self._stats = None
        self.typical_coefficients = ops.typical_coefficients(sums, counts)
        return self.typical_coefficients

    # ------------------------------------------------------------------ lifetime
    def _model_or_raise(self):
        model = self.__dict__["_model"]
        if model is None:
            raise RuntimeError(f"the dictionary at {self.hook} is not attached to a model.")
        return model

    def detach(self) -> ITDA:
        """Remove the dictionary from the model; returns it."""
        model = self._model_or_raise()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        host = model.hook_dict[self.hook]
        del host._modules[CHILD_NAME]
        if _is_bridge(model):
            for name in self.hook_points():
                model._hook_registry.pop(name, None)
        else:
            model.setup()
        self.__dict__["_model"] = None
        return self.itda

    def __enter__(self) -> AttachedITDA:
        return self

    def __exit__(self, *exc) -> None:
        if self.__dict__["_model"] is not None:
            self.detach()


def _hook_point():
    from transformer_lens.hook_points import HookPoint

    return HookPoint()


def _is_bridge(model) -> bool:
    return hasattr(model, "_hook_registry")


def _token_tensors(model, text) -> Iterator[Int[Tensor, "batch pos"]]:
    if isinstance(text, (str, list)) and (isinstance(text, str) or all(isinstance(t, str) for t in text)):
        yield model.to_tokens(text)
    elif isinstance(text, Tensor):
        yield text
    else:
        for batch in text:
            yield batch.tokens if hasattr(batch, "tokens") else batch


# --------------------------------------------------------------------------- attach / detach
def attach(
    model,
    itda: ITDA,
    hook: str | None = None,
    *,
    error_term: bool = False,
    exclude_tokens: Sequence[int] | None = None,
    dense_codes: bool = False,
) -> AttachedITDA:
    """Splice ``itda`` into ``model`` at ``hook`` (default: the hook it was built at).

    It stays until :func:`detach` or the end of ``with attach(...)``; ``reset_hooks``
    does not remove it. ``exclude_tokens`` are token ids whose positions are left alone
    (default: the tokenizer's BOS). ``dense_codes`` adds the ``hook_sae_acts_post`` hook point.
    The dictionary moves to the activations' device on first use.
    """
    if not isinstance(itda, ITDA):
        raise TypeError(f"attach takes an ITDA, got {type(itda).__name__}.")
    hook = checks.hook(hook, itda.config.hook)
    checks.flag(error_term, "error_term")
    checks.flag(dense_codes, "dense_codes")
    check_compatible(model, itda, hook)
    host = model.hook_dict[hook]
    existing = host._modules.get(CHILD_NAME)
    if existing is not None:
        same = "" if existing.hook == hook else f" (attached as {existing.hook!r}, the same hook point)"
        raise ValueError(f"a dictionary is already attached at {hook!r}{same}; detach it first: detach(model, {existing.hook!r}).")
    if exclude_tokens is None:
        tokenizer = getattr(model, "tokenizer", None)
        bos = getattr(tokenizer, "bos_token_id", None)
        exclude_tokens = () if bos is None else (bos,)
    ids = exclude_tokens.flatten().tolist() if isinstance(exclude_tokens, Tensor) else exclude_tokens
    ids = list(ids) if isinstance(ids, Iterable) and not isinstance(ids, (str, bytes)) else [None]
    if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in ids):
        raise TypeError(f"exclude_tokens must be token ids (ints), got {exclude_tokens!r}.")
    splice = AttachedITDA(itda, hook, error_term, ids, dense_codes)
    host.add_module(CHILD_NAME, splice)
    if _is_bridge(model):
        for child, point in splice.named_children():
            point.name = f"{hook}.{CHILD_NAME}.{child}"
            model._hook_registry[point.name] = point
    else:
        model.setup()
        for child, point in splice.named_children():
            point.name = f"{hook}.{CHILD_NAME}.{child}"
    embed = getattr(model, "embed", None)
    if isinstance(embed, nn.Module):
        splice._handles.append(embed.register_forward_pre_hook(splice._capture_tokens, with_kwargs=True))
    elif splice.exclude_tokens:
        warnings.warn("the model has no `embed` module, so token ids cannot be seen: every position is encoded.", stacklevel=2)
    splice._handles.append(host.register_forward_hook(splice._splice, prepend=True))
    splice.__dict__["_model"] = model
    return splice


class Attachments(dict):
    """Dictionaries attached together by :func:`attach_all`, by hook name; a context
    manager that detaches them all."""

    def detach(self) -> None:
        for splice in self.values():
            if splice.__dict__["_model"] is not None:
                splice.detach()

    def __enter__(self) -> Attachments:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def attach_all(model, itdas: Iterable[ITDA] | Mapping[str, ITDA], **options) -> Attachments:
    """Attach several dictionaries (each at its own hook, or ``{hook: itda}``); on an
    error none stays attached."""
    pairs = list(itdas.items()) if isinstance(itdas, Mapping) else [(None, itda) for itda in itdas]
    done = Attachments()
    try:
        for hook, itda in pairs:
            splice = attach(model, itda, hook, **options)
            done[splice.hook] = splice
    except Exception:
        done.detach()
        raise
    return done


def attachments(model) -> dict[str, AttachedITDA]:
    """The dictionaries attached to ``model``, by the hook name they were attached at."""
    found: dict[str, AttachedITDA] = {}
    seen: set[int] = set()
    for point in model.hook_dict.values():
        if id(point) in seen:
            continue
        seen.add(id(point))
        child = point._modules.get(CHILD_NAME)
        if isinstance(child, AttachedITDA):
            found[child.hook] = child
    return found


def attached(model, hook: str | None = None) -> AttachedITDA:
    """The dictionary attached at ``hook`` (any name of that hook point), or the only
    one attached when ``hook`` is ``None``."""
    found = attachments(model)
    if hook is None:
        if not found:
            raise ValueError("no dictionary is attached: call attach(model, itda) first.")
        if len(found) > 1:
            raise ValueError(f"{len(found)} dictionaries are attached ({sorted(found)}); pass hook= to choose one.")
        return next(iter(found.values()))
    from itda_lens.core.activations import check_hook_names

    hooks = model.hook_dict
    check_hook_names([hook], list(hooks))
    child = hooks[hook]._modules.get(CHILD_NAME)
    if not isinstance(child, AttachedITDA):
        raise ValueError(f"no dictionary is attached at {hook!r}; attached: {sorted(found) or 'none'}.")
    return child


def detach(model, hook: str | None = None) -> None:
    """Detach the dictionary at ``hook``, or every attached dictionary."""
    if hook is None:
        for splice in attachments(model).values():
            splice.detach()
    else:
        attached(model, hook).detach()

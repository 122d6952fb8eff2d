"""ITDA dictionaries spliced into TransformerLens models (``HookedTransformer`` and
``TransformerBridge``, TransformerLens 3.x and 4.x).

:func:`attach` puts a dictionary at a hook point: from then on every forward pass (plain
calls, ``run_with_cache``, ``run_with_hooks``, ``generate``) replaces the activation there
with what the dictionary makes of it, until :func:`detach` (or the end of a ``with``
block). The model's own hook point then carries that replacement, and the dictionary
adds hook points of its own, named ``<hook>.itda.<name>`` after the hook name you
attached at (``blocks.15.hook_resid_post.itda.hook_values``)::

    hook_in       [batch, pos, d_model]  the activation entering the dictionary
    hook_indices  [batch, pos, k]        the atoms of the sparse codes
    hook_values   [batch, pos, k]        their coefficients
    hook_dense    [batch, pos, n_atoms]  dense codes: only with ``dense_codes=True``,
                                         and only built when a hook function is on it
    hook_recon    [batch, pos, d_model]  the reconstruction decoded from the codes
    hook_error    [batch, pos, d_model]  activation minus the reconstruction of the
                                         unedited codes
    hook_out      [batch, pos, d_model]  what the model receives: the reconstruction,
                                         plus the error with ``error_term=True``

With ``error_term=True`` the output equals the activation in value and the error is
detached, so gradients reach the codes; with it off the model runs spliced, the model
whose loss ``itda-lens eval`` reports.

Positions holding an excluded token (BOS by default) are never encoded: the activation
passes through unchanged, their codes are index 0 with coefficient 0 and their error 0.

Edits to the codes (:meth:`AttachedITDA.ablate`, :meth:`~AttachedITDA.clamp`,
:meth:`~AttachedITDA.steer`) are context managers. They apply before the dictionary's
hook functions run, so a cache shows the codes the model used; the error stays that of
the unedited codes. While an edit is active, a one-token forward pass that follows an
earlier pass is taken as a token that ``generate`` added (it runs with its KV cache, the
default): ``new_tokens`` decides whether it is edited. Any other pass is a prompt, where
``positions`` apply.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from itda_lens import checks
from itda_lens.itda import ITDA, SparseCodes

#: Name of the child module that holds an attached dictionary under its host hook point.
CHILD_NAME = "itda"

__all__ = [
    "AttachedITDA",
    "Attachments",
    "Positions",
    "attach",
    "attach_all",
    "attached",
    "attachments",
    "check_compatible",
    "check_positions",
    "detach",
    "position_mask",
    "replace_hook",
]

Positions = None | int | Sequence[int] | slice | Tensor


def check_compatible(model, itda: ITDA, hook: str) -> None:
    """Raise if ``hook`` is not a hook point of ``model`` or has another width than
    ``itda``; warn if the dictionary was built for another model or hook."""
    from itda_lens.activations import check_hook_names

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


def replace_hook(
    replacement: Float[Tensor, "batch seq d_model"], mask: Bool[Tensor, "batch seq"]
) -> Callable[[Tensor, object], Tensor]:
    """A hook function that puts ``replacement`` in place of the activation at ``mask``."""

    def hook_fn(activation: Tensor, hook=None) -> Tensor:
        mask_here = mask.to(activation.device)[..., None]
        return torch.where(mask_here, replacement.to(activation.device, activation.dtype), activation)

    return hook_fn


# --------------------------------------------------------------------------- positions
def check_positions(positions: Positions) -> Positions:
    """``positions`` if it is one of the kinds :func:`position_mask` takes, ints as a
    list; a ``TypeError`` naming the kinds otherwise (``1.5`` is not position 1)."""
    kinds = "None, an int, ints, a slice, an integer tensor or a bool mask"
    if positions is None or isinstance(positions, slice):
        return positions
    if isinstance(positions, Tensor):
        if positions.is_floating_point() or positions.is_complex():
            raise TypeError(f"positions must be {kinds}; got a {positions.dtype} tensor.")
        return positions if positions.dtype == torch.bool else positions.flatten().tolist()
    if isinstance(positions, numbers.Integral) and not isinstance(positions, bool):
        return [int(positions)]
    if isinstance(positions, Iterable) and not isinstance(positions, (str, bytes)):
        picks = list(positions)
        if all(isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in picks):
            return [int(p) for p in picks]
    raise TypeError(f"positions must be {kinds}; got {positions!r}.")


def position_mask(positions: Positions, batch: int, seq: int, device: torch.device | str = "cpu") -> Bool[Tensor, "batch seq"]:
    """``positions`` as a mask: ``None`` (all), an int or ints (negative count from the
    end), a slice, or a bool tensor of shape ``[seq]`` or ``[batch, seq]``."""
    positions = check_positions(positions)
    if positions is None:
        return torch.ones(batch, seq, dtype=torch.bool, device=device)
    if isinstance(positions, Tensor):
        if positions.shape not in ((seq,), (batch, seq)):
            raise ValueError(f"a position mask must have shape [{seq}] or [{batch}, {seq}], got {tuple(positions.shape)}.")
        return positions.to(device).expand(batch, seq).clone()
    mask = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    if isinstance(positions, slice):
        mask[:, positions] = True
        return mask
    picks = positions
    bad = [p for p in picks if not -seq <= p < seq]
    if bad:
        raise IndexError(f"positions {bad} lie outside the sequence of {seq} positions.")
    mask[:, picks] = True
    return mask


@dataclass(eq=False)
class _Edit:
    """One change to the codes, applied on every forward pass while active."""

    kind: Literal["ablate", "clamp", "steer"]
    atoms: Int[Tensor, " m"]
    amount: float
    positions: Positions
    new_tokens: bool
    forwards: int = 0

    def where(self, batch: int, seq: int, device: torch.device) -> Bool[Tensor, "batch seq"]:
        """The positions this forward pass edits. A one-token pass after an earlier
        pass is a generated token (``generate`` with its KV cache): edited iff
        ``new_tokens``. Any other pass is a prompt: ``positions`` apply."""
        generated = seq == 1 and self.forwards > 0
        self.forwards += 1
        if generated:
            return torch.full((batch, seq), self.new_tokens, dtype=torch.bool, device=device)
        return position_mask(self.positions, batch, seq, device)


@dataclass
class _Record:
    """What a forward pass used, kept for attribution."""

    indices: Int[Tensor, "batch seq k"]
    values: Float[Tensor, "batch seq k"]
    error: Float[Tensor, "batch seq d_model"] | None


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
        self.hook_in = _hook_point()
        self.hook_indices = _hook_point()
        self.hook_values = _hook_point()
        if dense_codes:
            self.hook_dense = _hook_point()
        self.hook_recon = _hook_point()
        self.hook_error = _hook_point()
        self.hook_out = _hook_point()
        #: Mean |coefficient| of each atom where active, from :meth:`calibrate` (NaN: never active).
        self.typical_coefficients: Float[Tensor, " n_atoms"] | None = None
        self._edits: list[_Edit] = []
        #: Token ids embedded since the last multi-token embedding: a one-token embedding
        #: extends them (generate adds tokens one at a time, with or without a KV cache).
        self._tokens: Tensor | None = None
        self._embedded = False  # an embedding happened since the last pass
        self._warned_no_tokens = False
        self._stats: list[Tensor] | None = None
        self._record: _Record | None = None
        self._recording = False
        self._handles: list = []
        self.__dict__["_model"] = None

    # ------------------------------------------------------------------ names
    @property
    def dense_codes(self) -> bool:
        return hasattr(self, "hook_dense")

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
        x = self.hook_in(x)
        itda = self._dictionary_on(x.device)
        keep = self._encoded_positions(x)
        self._embedded = False  # used up: a later pass without token ids must not see these
        if self._recording and torch.is_grad_enabled() and not x.requires_grad:
            x = x.detach().requires_grad_(True)
        batch, seq, _ = x.shape
        codes = itda.encode(x[keep])
        k = codes.indices.shape[-1]
        indices = torch.zeros(batch, seq, k, dtype=torch.long, device=x.device)
        values = torch.zeros(batch, seq, k, dtype=codes.values.dtype, device=x.device)
        indices[keep] = codes.indices
        values = values.index_put((*keep.nonzero().T,), codes.values)
        with torch.no_grad():
            clean_recon = itda.decode(SparseCodes(indices, values.detach())).to(x.dtype)
            error = torch.where(keep[..., None], x.detach() - clean_recon, 0.0)
        if self._stats is not None:
            self._count(indices[keep], values[keep].detach())
        if self._edits:
            indices, values = self._edit(indices, values, keep)
        indices = self.hook_indices(indices)
        values = self.hook_values(values)
        if self.dense_codes and self.hook_dense.fwd_hooks:
            dense = self.hook_dense(itda.dense(SparseCodes(indices, values)))
            recon = (dense.to(itda.atoms.dtype) @ itda.atoms).to(x.dtype)
        else:
            recon = itda.decode(SparseCodes(indices, values)).to(x.dtype)
        recon = self.hook_recon(torch.where(keep[..., None], recon, x))
        error = self.hook_error(error)
        error_used = None
        if self.error_term:
            error_used = error.detach().requires_grad_(True) if self._recording and torch.is_grad_enabled() else error.detach()
            out = recon + error_used
        else:
            out = recon
        if self._recording:
            self._record = _Record(indices, values, error_used)
        return self.hook_out(out)

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
        """``atoms`` as indices of this dictionary, checked (see :func:`itda_lens.checks.atom_indices`)."""
        return checks.atom_indices(atoms, self.itda.n_atoms, where=f" at {self.hook}")

    def _one_atom(self, atom: int | Tensor, verb: str) -> Int[Tensor, " 1"]:
        atoms = self.atom_indices(atom)
        if len(atoms) != 1:
            raise ValueError(f"{verb} takes one atom, got {atoms.tolist()}.")
        return atoms

    @contextmanager
    def _editing(self, edit: _Edit) -> Iterator[AttachedITDA]:
        self._edits.append(edit)
        try:
            yield self
        finally:
            self._edits.remove(edit)

    def ablate(self, atoms: int | Sequence[int] | Tensor, positions: Positions = None) -> AbstractContextManager[AttachedITDA]:
        """Inside the ``with`` block, ``atoms`` get coefficient 0 at ``positions``
        (default: every position)."""
        return self._editing(_Edit("ablate", self.atom_indices(atoms), 0.0, check_positions(positions), new_tokens=True))

    def clamp(self, atom: int, value: float, positions: Positions = None, new_tokens: bool = True) -> AbstractContextManager[AttachedITDA]:
        """Inside the ``with`` block, ``atom``'s coefficient is ``value`` at ``positions``
        (added there when the codes lack it); ``new_tokens``: also on tokens ``generate``
        adds."""
        atoms, value = self._one_atom(atom, "clamp"), checks.number(value, "value")
        return self._editing(_Edit("clamp", atoms, value, check_positions(positions), checks.flag(new_tokens, "new_tokens")))

    def steer(
        self, atom: int, scale: float, *, relative: bool = False, positions: Positions = None, new_tokens: bool = True
    ) -> AbstractContextManager[AttachedITDA]:
        """Inside the ``with`` block, add ``scale`` times ``atom``'s direction at
        ``positions`` (default: every prompt position), and with ``new_tokens`` on every
        token ``generate`` adds. ``relative``: ``scale`` is in units of the atom's typical
        coefficient (see :meth:`calibrate`)."""
        atoms, amount = self._one_atom(atom, "steer"), checks.number(scale, "scale")
        if checks.flag(relative, "relative"):
            amount *= self.typical_coefficient(int(atoms[0]))
        return self._editing(_Edit("steer", atoms, amount, check_positions(positions), checks.flag(new_tokens, "new_tokens")))

    def typical_coefficient(self, atom: int) -> float:
        """Mean |coefficient| of ``atom`` where it was active during :meth:`calibrate`."""
        atom = int(self._one_atom(atom, "typical_coefficient")[0])
        if self.typical_coefficients is None:
            raise ValueError(
                f"the dictionary at {self.hook} is not calibrated: call .calibrate(tokens) first, or steer with an absolute scale."
            )
        typical = float(self.typical_coefficients[atom])
        if typical != typical:
            raise ValueError(
                f"atom {atom} was never active in the calibration text: calibrate on more text or steer with an absolute scale."
            )
        return typical

    def _edit(self, indices: Tensor, values: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        batch, seq, _ = indices.shape
        for edit in self._edits:
            where = edit.where(batch, seq, indices.device) & keep
            atoms = edit.atoms.to(indices.device)
            if edit.kind in ("ablate", "clamp"):
                values = values.masked_fill(torch.isin(indices, atoms) & where[..., None], 0.0)
            if edit.kind in ("clamp", "steer"):
                extra = (where * edit.amount).to(values.dtype)[..., None]
                indices = torch.cat([indices, atoms.expand(batch, seq, 1)], dim=-1)
                values = torch.cat([values, extra], dim=-1)
        return indices, values

    # ------------------------------------------------------------------ statistics
    def _count(self, indices: Int[Tensor, "n k"], values: Float[Tensor, "n k"]) -> None:
        active = values != 0
        sums, counts = self._stats
        sums.index_add_(0, indices[active].to(sums.device), values[active].abs().to(sums))
        counts.index_add_(0, indices[active].to(counts.device), torch.ones_like(values[active], dtype=counts.dtype).to(counts.device))

    @torch.no_grad()
    def calibrate(self, text: Tensor | str | list[str] | Iterable) -> Float[Tensor, " n_atoms"]:
        """Run the model on ``text`` (token ids ``[batch, pos]``, strings, or
        :class:`~itda_lens.text.TokenBatch` es) and set :attr:`typical_coefficients`
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
        self.typical_coefficients = torch.where(counts > 0, sums / counts.clamp_min(1), float("nan")).float()
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
    (default: the tokenizer's BOS). ``dense_codes`` adds the ``hook_dense`` hook point.
    The dictionary moves to the activations' device on first use.
    """
    if not isinstance(itda, ITDA):
        raise TypeError(f"attach takes an ITDA, got {type(itda).__name__}.")
    hook = hook or itda.config.hook
    if hook is None:
        raise ValueError("the dictionary does not record its hook point; pass hook=, e.g. 'blocks.15.hook_resid_post'.")
    if not isinstance(hook, str):
        raise TypeError(f"hook must be a hook name such as 'blocks.15.hook_resid_post', got {hook!r}.")
    checks.flag(error_term, "error_term")
    checks.flag(dense_codes, "dense_codes")
    check_compatible(model, itda, hook)
    host = model.hook_dict[hook]
    existing = host._modules.get(CHILD_NAME)
    if existing is not None:
        same = "" if existing.hook == hook else f" (attached as {existing.hook!r}, the same hook point)"
        raise ValueError(
            f"a dictionary is already attached at {hook!r}{same}; detach it first: detach(model, {existing.hook!r})."
        )
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
    from itda_lens.activations import check_hook_names

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

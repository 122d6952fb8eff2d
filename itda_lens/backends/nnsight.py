"""ITDA dictionaries inside nnsight traces (``trace``, ``generate``, ``session``), local
or on NDIF: the verbs of :mod:`itda_lens.backends.transformer_lens`, with the same names,
parameters and meaning (``docs/api/verbs.md`` sets them side by side).

Inside a trace, the functions here take a module's envoy (``lm.model.layers[15]``) and
a :class:`Payload`, the part of a dictionary that travels with the request::

    import itda_lens.backends.nnsight as itn

    prompt = itn.tokenize(lm, "The capital of France is")   # BOS + text, and the mask
    dictionary = itn.payload(itda, dtype=lm.dtype)          # every atom: to encode
    with lm.trace(prompt.input_ids, attention_mask=prompt.attention_mask, remote="local"):
        codes = itn.splice(lm.model.layers[15], dictionary, mask=prompt.mask)
        nnsight.save(codes)
        logits = lm.output.logits.save()

:func:`encode` decomposes a module's output, :func:`splice` puts the reconstruction in its
place (with or without the error term), :func:`ablate`, :func:`clamp` and :func:`steer`
edit the codes (a steer with ``error_term=True`` needs only the atoms it adds). ``mask``
gives the positions that are encoded (``tokenize`` excludes BOS and padding, as
TransformerLens does); ``positions`` the ones an edit touches (``"all"``, ``"new"``,
ints or a bool mask; a one-position forward, as ``generate`` makes for each new token,
counts as a new token). Codes come back as ``(indices, values)`` of shape
``[batch, seq, k]``, with :data:`~itda_lens.core.ops.NOT_ENCODED` (-1) and 0 where not encoded.

On the client, :func:`calibrate`, :func:`attribute` and :func:`measure_ablations` run
whole traces on strings or token ids and return what their TransformerLens namesakes
return (typical coefficients, an :class:`~itda_lens.tools.attribution.Attribution`, measured
effects), with ``remote=`` passed to each trace.

Arguments are checked as the TransformerLens verbs check them (:mod:`itda_lens.core.checks`):
atom indices must be integers, scales finite numbers, masks bool; NaN or inf
activations raise; a module other than the one the dictionary was built at (another
layer, an MLP output instead of the residual stream) gets the warning
:func:`~itda_lens.backends.transformer_lens.attach` gives, once per payload and module.

Remote safety: what runs inside a trace uses only torch and the standard library
(:mod:`itda_lens.core.ops`, and, for encoding on the CPU, numba where it is installed).
Importing this module registers ``itda_lens`` with ``nnsight.register`` so these
functions are shipped by value to a server that lacks itda-lens. Never reference an
:class:`~itda_lens.ITDA` inside a trace: it needs packages NDIF lacks; pass
``payload(itda)`` instead. Values returned to the client are plain tensors and tuples.

On the client, :class:`RetryingBackend` sends a trace to NDIF (or to nnsight's local
simulation of it) with a cap on the request size and retries with backoff on
connection errors; :class:`DryRunBackend` measures a request without running it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import nnsight
import torch
from nnsight.tracing.backend import Backend

from itda_lens.backends.names import LAYOUTS as _LAYOUTS
from itda_lens.backends.names import hook_name as _hook_name
from itda_lens.backends.names import to_module_path as _to_module_path
from itda_lens.core.checks import atom_indices as _atom_indices
from itda_lens.core.checks import finite_activations as _finite_activations
from itda_lens.core.checks import flag as _flag
from itda_lens.core.checks import integer as _integer
from itda_lens.core.checks import number as _number
from itda_lens.core.checks import warn_if_elsewhere as _warn_if_elsewhere
from itda_lens.core.gram_rows import GramRows as _GramRows
from itda_lens.core.itda import FLOAT_DTYPES
from itda_lens.core.ops import ALL as _ALL
from itda_lens.core.ops import amounts as _amounts
from itda_lens.core.ops import decode as _decode_codes
from itda_lens.core.ops import edit_codes as _edit_codes
from itda_lens.core.ops import gradient_x_ablation as _gradient_x_ablation
from itda_lens.core.ops import position_mask as _position_mask
from itda_lens.core.ops import reconstruction_error as _reconstruction_error
from itda_lens.core.ops import scatter_codes as _scatter_codes
from itda_lens.core.ops import splice as _splice_output
from itda_lens.core.pursuit import pursuit as _pursuit

if TYPE_CHECKING:
    from jaxtyping import Bool, Float, Int
    from torch import Tensor

    from itda_lens.core.ops import Positions
    from itda_lens.tools.attribution import Attribution, Metric

# Ship itda_lens by value: NDIF does not have it installed.
nnsight.register("itda_lens")


class PayloadTooLarge(ValueError):
    """A payload or request above the size cap the user set."""


# ------------------------------------------------------------------ payload (client)
class Payload:
    """Atoms of a dictionary, in the dtype they travel in, with what encoding needs.

    ``ids[i]`` is the dictionary index of ``atoms[i]``. A complete payload (every atom)
    can encode, splice, ablate, clamp and steer; one with chosen atoms can only steer
    with ``error_term=True``.
    ``hook`` and ``model`` say where the dictionary was built.
    """

    def __init__(
        self,
        atoms: Float[Tensor, "n d_model"],
        ids: list[int],
        n_atoms: int,
        k: int,
        refit: bool = True,
        hook: str | None = None,
        model: str | None = None,
        typical: Float[Tensor, " n"] | None = None,
    ):
        self.atoms = atoms
        self.ids = list(ids)
        self.n_atoms = _integer(n_atoms, "n_atoms", low=1)
        self.k = _integer(k, "k", 1, self.n_atoms)
        self.refit = _flag(refit, "refit")
        self.hook = hook
        self.model = model
        #: Typical coefficient of each of ``atoms`` (from :func:`calibrate`), for relative steering.
        self.typical = typical
        self._prepared: dict[str, Any] = {}
        self._warned: set[str] = set()  # modules already warned about

    @property
    def d_model(self) -> int:
        return self.atoms.shape[1]

    @property
    def complete(self) -> bool:
        """Whether the payload holds every atom of the dictionary, in order."""
        return len(self.ids) == self.n_atoms

    @property
    def nbytes(self) -> int:
        """Bytes of atom data this payload adds to a request."""
        return self.atoms.numel() * self.atoms.element_size()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_prepared"] = {}  # device copies and Gram matrices are rebuilt where the trace runs
        state["_warned"] = set()
        return state

    def __repr__(self) -> str:
        return (
            f"Payload({len(self.ids)} of {self.n_atoms} atoms, d_model={self.d_model}, k={self.k}, "
            f"dtype={str(self.atoms.dtype).removeprefix('torch.')}, {self.nbytes:,} bytes)"
        )


def payload(
    itda,
    atoms: Sequence[int] | None = None,
    dtype: torch.dtype | str | None = None,
    max_bytes: int | None = None,
    typical_coefficients: Float[Tensor, " n_atoms"] | None = None,
) -> Payload:
    """What of ``itda`` a trace needs: every atom (default), or only ``atoms`` (for
    :func:`steer`), cast to ``dtype`` (pass the model's, e.g. ``lm.dtype``), with
    ``typical_coefficients`` from :func:`calibrate` for ``steer(..., relative=True)``.

    Raises :class:`PayloadTooLarge` when the atoms exceed ``max_bytes``.
    """
    if not hasattr(itda, "atoms") or not hasattr(itda, "config"):
        raise TypeError(f"payload() takes an ITDA, got {type(itda).__name__}.")
    n_atoms = itda.atoms.shape[0]
    ids = list(range(n_atoms)) if atoms is None else list(dict.fromkeys(_atom_indices(atoms, n_atoms).tolist()))
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, got {dtype!r}.")
        dtype = getattr(torch, dtype.removeprefix("torch."))
    dtype = dtype or itda.atoms.dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a float type such as torch.bfloat16, got {dtype!r}.")
    if max_bytes is not None:
        _integer(max_bytes, "max_bytes", low=0)
    rows = itda.atoms.detach() if atoms is None else itda.atoms.detach()[ids]
    # A fresh contiguous copy: a view would ship the storage of the whole dictionary.
    shipped = rows.to("cpu", dtype).contiguous().clone()
    typical = None
    if typical_coefficients is not None:
        if not isinstance(typical_coefficients, torch.Tensor) or tuple(typical_coefficients.shape) != (n_atoms,):
            raise ValueError(f"typical_coefficients must be a tensor [{n_atoms}] as calibrate returns it.")
        typical = typical_coefficients.detach().to("cpu", torch.float32)[ids].clone()
    result = Payload(shipped, ids, n_atoms, itda.config.k, itda.config.refit, itda.config.hook, itda.config.model, typical)
    if max_bytes is not None and result.nbytes > max_bytes:
        raise PayloadTooLarge(
            f"the payload is {result.nbytes:,} bytes ({len(ids)} atoms x d_model {result.d_model} x "
            f"{shipped.element_size()} bytes), above max_bytes={max_bytes:,}: send fewer atoms (atoms=[...]), "
            "a smaller dtype (dtype=torch.bfloat16), or raise max_bytes."
        )
    return result


# ------------------------------------------------------------ inside a trace (server-safe)
def hidden_states(output: Any) -> Float[Tensor, "batch seq d_model"]:
    """The hidden states in a module's output: the output itself when it is a tensor
    (transformers 5), else its first element (transformers 4 returns tuples)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def with_hidden_states(output: Any, new: Float[Tensor, "batch seq d_model"]) -> Any:
    """``output`` with its hidden states replaced by ``new``, in the same structure."""
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    return new


def token_mask(
    input_ids: Int[Tensor, "batch seq"],
    attention_mask: Int[Tensor, "batch seq"] | None = None,
    bos_token_id: int | None = None,
) -> Bool[Tensor, "batch seq"]:
    """Positions to encode: attended (not padding) and not BOS."""
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if bos_token_id is not None:
        mask = mask & (input_ids != bos_token_id)
    return mask


def _check_payload(dictionary: Any, needs_every_atom: bool) -> None:
    if type(dictionary).__name__ != "Payload":
        raise TypeError(f"pass itda_lens.backends.nnsight.payload(itda) into a trace, not a {type(dictionary).__name__}: an ITDA needs packages the NDIF server lacks.")
    if needs_every_atom and not dictionary.complete:
        raise ValueError(
            f"encoding needs every atom, but this payload holds {len(dictionary.ids)} of {dictionary.n_atoms}: make it with payload(itda) (no atoms=)."
        )


def _check_site(module: Any, dictionary: Any) -> None:
    """Warn, once per payload and module, when ``module`` is not where the dictionary was
    built (compared as hook names where :mod:`itda_lens.backends.names` maps the architecture)."""
    root, path = getattr(module, "root", None), getattr(module, "path", None)
    if root is None or not isinstance(path, str):
        raise TypeError(f"pass a module's envoy (such as lm.model.layers[15]), got {type(module).__name__}.")
    path = path.removeprefix(root.path + ".")
    if path in dictionary._warned:
        return
    dictionary._warned.add(path)
    config = getattr(getattr(root, "_module", None), "config", None)
    model_type = getattr(config, "model_type", None)
    hook, same_hook = path, dictionary.hook == path
    if model_type in _LAYOUTS:
        with contextlib.suppress(ValueError):
            hook = _hook_name(path, model_type)
        with contextlib.suppress(ValueError):
            same_hook = same_hook or _to_module_path(dictionary.hook or "", model_type) == path
    _warn_if_elsewhere(dictionary.model, getattr(config, "_name_or_path", None), dictionary.hook, hook, same_hook, stacklevel=4)


def _module_output(module: Any, dictionary: Any, mask: Tensor | None) -> tuple[Any, Tensor, Tensor]:
    """``module``'s output, its hidden states and the positions to work on, after
    checking the mask and the module."""
    _check_site(module, dictionary)
    output = module.output
    x = hidden_states(output)
    return output, x, _positions(x, dictionary, mask)


def _positions(x: Tensor, dictionary: Any, mask: Tensor | None) -> Tensor:
    """The ``[batch, seq]`` mask on ``x``'s device, after checking widths and shapes."""
    if x.shape[-1] != dictionary.d_model:
        raise ValueError(
            f"the module output has width {x.shape[-1]} but the dictionary has d_model={dictionary.d_model} "
            f"(built at hook {dictionary.hook!r}); use a dictionary built for this module."
        )
    if mask is None:
        return torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
    if not isinstance(mask, torch.Tensor) or mask.is_floating_point() or mask.is_complex():
        kind = f"a {mask.dtype} tensor" if isinstance(mask, torch.Tensor) else repr(mask)
        raise TypeError(f"mask must be a bool tensor [batch, seq] (or 0/1 integers, as an attention mask), got {kind}.")
    if mask.dtype != torch.bool and ((mask != 0) & (mask != 1)).any():
        raise ValueError("an integer mask must hold only 0 and 1.")
    if tuple(mask.shape) != tuple(x.shape[:-1]):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the module output has {tuple(x.shape[:-1])} positions; "
            "during generation (one new token per step) pass mask=None."
        )
    return mask.to(x.device, torch.bool)


def _prepared(dictionary: Any, device: torch.device) -> tuple[Tensor, _GramRows]:
    """Float32 atoms on ``device`` and their Gram rows (default budget), cached."""
    key = str(device)
    if key not in dictionary._prepared:
        atoms = dictionary.atoms.to(device, torch.float32)
        dictionary._prepared[key] = (atoms, _GramRows(atoms))
    return dictionary._prepared[key]


def _encode_rows(dictionary: Any, rows: Float[Tensor, "n d_model"]) -> tuple[Tensor, Tensor]:
    atoms, gram = _prepared(dictionary, rows.device)
    with torch.no_grad():
        if rows.shape[0] == 0:
            empty = torch.empty(0, dictionary.k, device=rows.device)
            return empty.long(), empty
        rows = rows.detach().float()
        _finite_activations(rows)
        return _pursuit(rows, atoms, dictionary.k, gram=gram, refit=dictionary.refit)


def _decode(dictionary: Any, indices: Tensor, values: Tensor) -> Tensor:
    atoms, _ = _prepared(dictionary, values.device)
    return _decode_codes(indices, values, atoms)


def _codes(dictionary: Any, x: Tensor, encoded: Tensor) -> tuple[Tensor, Tensor]:
    return _scatter_codes(*_encode_rows(dictionary, x[encoded]), encoded)


def encode(
    module: Any, dictionary: Payload, mask: Bool[Tensor, "batch seq"] | None = None, differentiable: bool = False
) -> tuple[Int[Tensor, "batch seq k"], Float[Tensor, "batch seq k"]]:
    """The codes of ``module``'s output at ``mask`` (default: every position).

    With ``differentiable`` the values are leaves that require grad, spliced back into
    the output with the error term (which keeps its value up to float rounding) so that
    a later metric's gradient reaches them.
    """
    _check_payload(dictionary, needs_every_atom=True)
    if not _flag(differentiable, "differentiable"):
        _, x, encoded = _module_output(module, dictionary, mask)
        return _codes(dictionary, x, encoded)
    indices, values, _ = _differentiable_splice(module, dictionary, mask, error_term=True)
    return indices, values


def _differentiable_splice(module: Any, dictionary: Payload, mask: Tensor | None, error_term: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Splice with the codes' values (and the error term, when used) as leaves that
    require grad; returns the codes and the error leaf."""
    output, x, encoded = _module_output(module, dictionary, mask)
    indices, values = _codes(dictionary, x, encoded)
    values = values.detach().requires_grad_(True)
    reconstruction = _decode(dictionary, indices, values).to(x.dtype)
    error = None
    if error_term:
        error = _reconstruction_error(x, reconstruction, encoded).requires_grad_(True)
    module.output = with_hidden_states(output, _splice_output(x.detach(), reconstruction, encoded, error))
    return indices, values, error


def splice(
    module: Any, dictionary: Payload, mask: Bool[Tensor, "batch seq"] | None = None, error_term: bool = False
) -> tuple[Int[Tensor, "batch seq k"], Float[Tensor, "batch seq k"]]:
    """Replace ``module``'s output at ``mask`` by its reconstruction; returns the codes.

    With ``error_term`` the output keeps its value, ``x_hat + (x - x_hat).detach()``.
    Positions outside ``mask`` (BOS, padding) are left untouched.
    """
    _check_payload(dictionary, needs_every_atom=True)
    error_term = _flag(error_term, "error_term")
    output, x, encoded = _module_output(module, dictionary, mask)
    indices, values = _codes(dictionary, x, encoded)
    reconstruction = _decode(dictionary, indices, values)
    error = _reconstruction_error(x, reconstruction, encoded) if error_term else None
    module.output = with_hidden_states(output, _splice_output(x, reconstruction, encoded, error))
    return indices, values


def _edit(
    module: Any, dictionary: Payload, kind: str, atoms: Tensor, amounts: list[float], positions: Any, mask: Tensor | None, error_term: bool
) -> tuple[Tensor, Tensor]:
    """Splice with ``atoms`` edited (see :func:`itda_lens.core.ops.edit_codes`) at ``positions``;
    returns the edited codes."""
    _check_payload(dictionary, needs_every_atom=True)
    error_term = _flag(error_term, "error_term")
    output, x, encoded = _module_output(module, dictionary, mask)
    indices, values = _codes(dictionary, x, encoded)
    batch, seq = encoded.shape
    where = _position_mask(positions, batch, seq, generated=seq == 1, device=x.device) & encoded
    edited = _edit_codes(indices, values, kind, atoms, amounts, where)
    error = _reconstruction_error(x, _decode(dictionary, indices, values), encoded) if error_term else None
    module.output = with_hidden_states(output, _splice_output(x, _decode(dictionary, *edited), encoded, error))
    return edited


def ablate(
    module: Any,
    dictionary: Payload,
    atoms: int | Sequence[int],
    positions: Positions = _ALL,
    *,
    mask: Bool[Tensor, "batch seq"] | None = None,
    error_term: bool = False,
) -> tuple[Int[Tensor, "batch seq k"], Float[Tensor, "batch seq k"]]:
    """Splice ``module``'s output with ``atoms``' coefficients set to 0 at ``positions``;
    with ``error_term`` every other part of the output stays as it was. Returns the
    codes the model used."""
    atoms = _atom_indices(atoms, dictionary.n_atoms)
    return _edit(module, dictionary, "ablate", atoms, [], positions, mask, error_term)


def clamp(
    module: Any,
    dictionary: Payload,
    atom: int,
    value: float,
    positions: Positions = _ALL,
    *,
    mask: Bool[Tensor, "batch seq"] | None = None,
    error_term: bool = False,
) -> tuple[Int[Tensor, "batch seq k"], Float[Tensor, "batch seq k"]]:
    """Splice ``module``'s output with ``atom``'s coefficient set to ``value`` at
    ``positions`` (added there when the codes lack it). Returns the codes the model used."""
    atoms = _atom_indices(atom, dictionary.n_atoms)
    if len(atoms) != 1:
        raise ValueError(f"clamp takes one atom, got {atoms.tolist()}.")
    return _edit(module, dictionary, "clamp", atoms, [_number(value, "value")], positions, mask, error_term)


def steer(
    module: Any,
    dictionary: Payload,
    atoms: int | Sequence[int],
    scale: float | Sequence[float],
    positions: Positions = _ALL,
    *,
    relative: bool = False,
    mask: Bool[Tensor, "batch seq"] | None = None,
    error_term: bool = False,
) -> None:
    """Add ``scale`` (one number, or one per atom) times each atom's direction at
    ``positions``; ``relative``: in units of each atom's typical coefficient (the
    payload's, from :func:`calibrate`). Without ``error_term`` the output is spliced
    first (a complete payload); with it the atoms are added to the output as it is,
    and the payload needs to hold only them."""
    _check_payload(dictionary, needs_every_atom=False)
    atoms = _atom_indices(atoms, dictionary.n_atoms)
    rows = {atom: row for row, atom in enumerate(dictionary.ids)}
    missing = [atom for atom in atoms.tolist() if atom not in rows]
    if missing:
        raise ValueError(f"atoms {missing} are not in the payload; make it with payload(itda, atoms={atoms.tolist()}).")
    typical = None
    if dictionary.typical is not None:
        typical = torch.full((dictionary.n_atoms,), float("nan"))
        typical[torch.as_tensor(dictionary.ids)] = dictionary.typical
    amounts = _amounts(atoms, scale, relative, typical)
    if not _flag(error_term, "error_term"):
        if not dictionary.complete:
            raise ValueError(
                "steer without the error term splices the dictionary, which needs every atom: make the payload with "
                "payload(itda), or pass error_term=True to add the atoms to the output as it is."
            )
        _edit(module, dictionary, "steer", atoms, amounts, positions, mask, error_term=False)
        return
    output, x, encoded = _module_output(module, dictionary, mask)
    batch, seq = encoded.shape
    where = _position_mask(positions, batch, seq, generated=seq == 1, device=x.device) & encoded
    directions, _ = _prepared(dictionary, x.device)
    picked = torch.as_tensor([rows[atom] for atom in atoms.tolist()], dtype=torch.long, device=x.device)
    weights = torch.as_tensor(amounts, dtype=torch.float32, device=x.device)
    vector = (weights[:, None] * directions[picked]).sum(dim=0).to(x.dtype)
    module.output = with_hidden_states(output, torch.where(where[..., None], x + vector, x))


def _attribution_in_trace(
    lm: Any, module: Any, dictionary: Payload, mask: Tensor, metric: Callable, error_term: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Inside a trace: the codes, the metric and the attribution of each code (and of
    the error term per position)."""
    indices, values, error = _differentiable_splice(module, dictionary, mask, error_term)
    value = metric(lm.output.logits)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ValueError(f"the metric must return a scalar tensor, got {getattr(value, 'shape', value)!r}.")
    value = value.reshape(())
    leaves = [values] if error is None else [values, error]
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    scores = _gradient_x_ablation(grads[0], values.detach())
    error_scores = None if error is None else _gradient_x_ablation(grads[1], error.detach()).sum(-1)
    return indices, values.detach(), scores.detach(), value.detach(), error_scores


# ------------------------------------------------------------------ whole traces (client)
class Prompts(NamedTuple):
    """Token ids as TransformerLens makes them (BOS, then the text; left-padded), their
    attention mask, and ``mask``: the positions to encode (neither BOS nor padding)."""

    input_ids: Int[Tensor, "batch seq"]
    attention_mask: Int[Tensor, "batch seq"]
    mask: Bool[Tensor, "batch seq"]


def tokenize(lm: Any, text: str | Sequence[str] | Tensor | Prompts) -> Prompts:
    """``text`` (a string, strings, or token ids ``[batch, seq]`` that start with BOS)
    as :class:`Prompts` for ``lm``'s tokenizer."""
    if isinstance(text, Prompts):
        return text
    tokenizer = lm.tokenizer
    bos = tokenizer.bos_token_id
    if isinstance(text, torch.Tensor):
        if text.dim() != 2 or text.is_floating_point() or text.dtype == torch.bool:
            raise ValueError("token ids must be an integer tensor [batch, seq].")
        attention = torch.ones_like(text)
        return Prompts(text, attention, token_mask(text, attention, bos))
    texts = [text] if isinstance(text, str) else list(text) if isinstance(text, Sequence) else None
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"text must be a string, a list of strings or token ids [batch, seq], got {type(text).__name__}.")
    rows = [([] if bos is None else [bos]) + tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for number, row in enumerate(rows):
        ids[number, width - len(row) :] = torch.tensor(row)
        attention[number, width - len(row) :] = 1
    return Prompts(ids, attention, token_mask(ids, attention, bos))


def _site(lm: Any, itda: Any, hook: str | None) -> str:
    """The module path of ``hook`` (a hook name or module path; default: where ``itda`` was built)."""
    from itda_lens.backends.names import architecture

    hook = hook or itda.config.hook
    if not isinstance(hook, str):
        raise ValueError("the dictionary does not record its hook point; pass hook=, e.g. 'blocks.15.hook_resid_post'.")
    path = _to_module_path(hook, architecture(lm))
    module_at(lm, path)
    return path


def calibrate(
    lm: Any, text: str | Sequence[str] | Tensor | Prompts, itda: Any, *, hook: str | None = None, remote: bool | str = False
) -> Float[Tensor, " n_atoms"]:
    """Mean |coefficient| of each atom of ``itda`` where active on ``text`` (NaN: never
    active), as :meth:`AttachedITDA.calibrate <itda_lens.backends.transformer_lens.AttachedITDA.calibrate>`;
    pass it to :func:`payload` for ``steer(..., relative=True)``."""
    from itda_lens.core.ops import count_coefficients, typical_coefficients

    prompts, path = tokenize(lm, text), _site(lm, itda, hook)
    dictionary = payload(itda, dtype=lm.dtype)
    with lm.trace(prompts.input_ids, attention_mask=prompts.attention_mask, remote=remote):
        codes = encode(lm.get(path), dictionary, mask=prompts.mask)
        nnsight.save(codes)
    sums, counts = torch.zeros(itda.n_atoms, dtype=torch.float64), torch.zeros(itda.n_atoms, dtype=torch.float64)
    count_coefficients(codes[0][prompts.mask].cpu(), codes[1][prompts.mask].cpu(), sums, counts)
    return typical_coefficients(sums, counts)


def measure_ablations(
    lm: Any,
    text: str | Sequence[str] | Tensor | Prompts,
    atoms: int | Sequence[int] | Sequence[Sequence[int]] | Tensor,
    metric: Metric,
    itda: Any,
    *,
    hook: str | None = None,
    positions: Positions = _ALL,
    error_term: bool = True,
    remote: bool | str = False,
) -> Float[Tensor, " n"]:
    """``metric(ablated) - metric(unablated)`` for each entry of ``atoms`` (an atom, or a
    list of atoms ablated together) at ``positions``, one trace per entry, as
    :func:`itda_lens.tools.attribution.measure_ablations` measures it on TransformerLens.
    ``error_term`` (default on): the unablated run is the clean model."""
    from itda_lens.tools.attribution import atom_groups

    prompts, path = tokenize(lm, text), _site(lm, itda, hook)
    groups = atom_groups(atoms, itda.n_atoms)
    _flag(error_term, "error_term")
    if not callable(metric):
        raise TypeError(f"metric must be a callable on logits, got {metric!r}.")
    dictionary = payload(itda, dtype=lm.dtype)
    run = dict(attention_mask=prompts.attention_mask, remote=remote)
    with lm.trace(prompts.input_ids, **run):
        splice(lm.get(path), dictionary, mask=prompts.mask, error_term=error_term)
        base = metric(lm.output.logits).detach().save()
    effects = torch.empty(len(groups), dtype=torch.float64)
    for number, group in enumerate(groups):
        with lm.trace(prompts.input_ids, **run):
            ablate(lm.get(path), dictionary, group, positions, mask=prompts.mask, error_term=error_term)
            value = metric(lm.output.logits).detach().save()
        effects[number] = float(value) - float(base)
    return effects


def attribute(
    lm: Any,
    text: str | Sequence[str] | Tensor | Prompts,
    metric: Metric,
    itda: Any,
    *,
    hook: str | None = None,
    error_term: bool = True,
    remote: bool | str = False,
) -> Attribution:
    """Attribution of ``metric`` to every (position, atom) of ``itda``'s codes at
    ``hook`` (default: where it was built), from one trace with one backward pass: the
    :class:`~itda_lens.tools.attribution.Attribution` that
    :func:`itda_lens.tools.attribution.attribute` returns on TransformerLens."""
    from itda_lens.tools.attribution import Attribution

    prompts, path = tokenize(lm, text), _site(lm, itda, hook)
    error_term = _flag(error_term, "error_term")
    if not callable(metric):
        raise TypeError(f"metric must be a callable on logits, got {metric!r}.")
    dictionary = payload(itda, dtype=lm.dtype)
    with lm.trace(prompts.input_ids, attention_mask=prompts.attention_mask, remote=remote):
        result = _attribution_in_trace(lm, lm.get(path), dictionary, prompts.mask, metric, error_term)
        nnsight.save(result)
    indices, values, scores, value, error = result
    texts = [lm.tokenizer.convert_ids_to_tokens(row) for row in prompts.input_ids.tolist()]

    def measure(atoms):
        return measure_ablations(lm, prompts, atoms, metric, itda, hook=hook, error_term=error_term, remote=remote)

    hook_name = _hook_name(path, lm) if lm.config.model_type in _LAYOUTS else path
    return Attribution(
        hook_name,
        itda,
        float(value),
        prompts.input_ids,
        indices.cpu(),
        values.cpu(),
        scores.cpu(),
        None if error is None else error.cpu(),
        texts,
        measure,
    )


# ------------------------------------------------------------------ backends (client)
def is_transient(error: BaseException) -> bool:
    """Whether retrying may help: a connection, timeout or server-side (5xx, 429) error,
    not a failed job (a ``RemoteError`` from the job itself) or a bad request."""
    import httpx
    from nnsight.intervention.backends.remote import RemoteError

    try:
        import websocket
    except ModuleNotFoundError:  # nnsight imports it lazily; without it no websocket errors arise
        websocket = None
    if isinstance(error, PayloadTooLarge):
        return False
    status = getattr(error, "status_code", None)  # websocket handshake refused with an HTTP status
    if isinstance(status, int) and status < 500 and status != 429:
        return False
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code >= 500 or error.response.status_code == 429
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(error, (OSError, httpx.TransportError)):  # refused, reset, unreachable, timed out
        return True
    if websocket is not None and isinstance(error, websocket.WebSocketException):
        return True
    if isinstance(error, RemoteError) and error.__cause__ is not None:
        return is_transient(error.__cause__)
    return False


def request_bytes(tracer: Any, compress: bool | None = None) -> int:
    """Bytes of the request nnsight would send for ``tracer`` (zstd-compressed as
    ``CONFIG.API.COMPRESS`` says, unless ``compress`` is given)."""
    from nnsight.ndif import pull_env
    from nnsight.schema.config import CONFIG
    from nnsight.schema.request import RequestModel

    pull_env()
    compress = CONFIG.API.COMPRESS if compress is None else compress
    return len(RequestModel.serialize(tracer, compress=compress))


class RetryingBackend(Backend):
    """Runs traces on NDIF (``remote=True`` or a host URL) or in nnsight's local
    simulation of it (``remote="local"``), with a request-size cap and retries.

    Each attempt that fails with a transient error (see :func:`is_transient`) is
    retried after ``backoff * 2**attempt`` seconds, at most ``max_backoff``, up to
    ``retries`` times. ``request_bytes`` holds the size of the last request and
    ``attempts`` the attempts of the last trace. ``inner`` replaces the backend that
    ``remote`` selects (for another transport, or for tests).
    """

    def __init__(
        self,
        model: Any,
        remote: bool | str = True,
        *,
        max_request_bytes: int | None = None,
        retries: int = 3,
        backoff: float = 2.0,
        max_backoff: float = 60.0,
        blocking: bool = True,
        verbose: bool = False,
        inner: Callable[[Any], Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}.")
        if inner is None:
            if not remote:
                raise ValueError("remote must be True, 'local' or a host URL; for local runs pass no backend.")
            inner = model._remote_backend(remote, blocking, None, verbose)
        self.inner = inner
        self.max_request_bytes = max_request_bytes
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.sleep = sleep
        self.request_bytes: int | None = None
        self.attempts = 0
        if hasattr(inner, "_serialize"):  # a RemoteBackend: measure the blob it actually sends
            serialize = inner._serialize

            def measured(tracer):
                blob = serialize(tracer)
                self._check_size(len(blob))
                return blob

            inner._serialize = measured

    def _check_size(self, size: int) -> None:
        self.request_bytes = size
        if self.max_request_bytes is not None and size > self.max_request_bytes:
            raise PayloadTooLarge(
                f"the request is {size:,} bytes, above max_request_bytes={self.max_request_bytes:,}: send fewer "
                "atoms (payload(itda, atoms=[...])), a smaller dtype, fewer tokens per trace, or raise the cap."
            )

    def __call__(self, tracer: Any) -> Any:
        if not hasattr(self.inner, "_serialize"):
            self._check_size(request_bytes(tracer))
        self.attempts = 0
        while True:
            self.attempts += 1
            try:
                return self.inner(tracer)
            except Exception as error:
                if self.attempts > self.retries or not is_transient(error):
                    raise
                self.sleep(min(self.max_backoff, self.backoff * 2 ** (self.attempts - 1)))


class DryRunBackend(Backend):
    """Serialises a trace as a request to NDIF would and runs nothing; ``request_bytes``
    (compressed, as sent) and ``raw_bytes`` give its size. Saved names stay unset."""

    def __init__(self):
        self.request_bytes: int | None = None
        self.raw_bytes: int | None = None

    def __call__(self, tracer: Any) -> None:
        self.raw_bytes = request_bytes(tracer, compress=False)
        self.request_bytes = request_bytes(tracer, compress=True)


def module_at(model: Any, path: str) -> Any:
    """The envoy of ``model`` at module ``path`` (``model.layers.15``), or a
    ``ValueError`` naming close paths."""
    from itda_lens.core.activations import check_hook_names

    check_hook_names([path], [name for name, _ in model._module.named_modules() if name], what="module")
    return model.get(path)

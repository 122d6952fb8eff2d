"""ITDA dictionaries inside nnsight traces (``trace``, ``generate``, ``session``), local
or on NDIF.

Inside a trace, the functions here take a module's envoy (``lm.model.layers[15]``) and
a :class:`Payload`, the part of a dictionary that travels with the request::

    import itda_lens.nnsight as itn

    dictionary = itn.payload(itda, dtype=lm.dtype)          # every atom: to encode
    with lm.trace(ids, attention_mask=attention, remote="local"):
        codes = itn.splice(lm.model.layers[15], dictionary, mask=mask)
        nnsight.save(codes)
        logits = lm.output.logits.save()

:func:`encode` decomposes a module's output, :func:`splice` puts the reconstruction
in its place (with or without the error term), :func:`ablate` removes atoms,
:func:`steer` adds atoms (the payload may hold only those atoms), and
:func:`attribute` turns a metric's gradient into per-atom attributions. Codes come
back as ``(indices, values)`` of shape ``[batch, seq, k]``; positions outside ``mask``
are not encoded and have index -1 and value 0.

Remote safety: what runs inside a trace uses only torch and the standard library (and,
for encoding on the CPU, numba where it is installed).
Importing this module registers ``itda_lens`` with ``nnsight.register`` so these
functions are shipped by value to a server that lacks itda-lens. Never reference an
:class:`~itda_lens.ITDA` inside a trace: it needs packages NDIF lacks; pass
``payload(itda)`` instead. Values returned to the client are plain tensors and tuples.

On the client, :class:`RetryingBackend` sends a trace to NDIF (or to nnsight's local
simulation of it) with a cap on the request size and retries with backoff on
connection errors; :class:`DryRunBackend` measures a request without running it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import nnsight
import torch
from nnsight.tracing.backend import Backend

from itda_lens.itda import GRAM_MAX_BYTES
from itda_lens.pursuit import decode as _decode_kernel
from itda_lens.pursuit import gram_matrix as _gram_matrix
from itda_lens.pursuit import pursuit as _pursuit

if TYPE_CHECKING:
    from jaxtyping import Bool, Float, Int
    from torch import Tensor

# Ship itda_lens by value: NDIF does not have it installed.
nnsight.register("itda_lens")


class PayloadTooLarge(ValueError):
    """A payload or request above the size cap the user set."""


# ------------------------------------------------------------------ payload (client)
class Payload:
    """Atoms of a dictionary, in the dtype they travel in, with what encoding needs.

    ``ids[i]`` is the dictionary index of ``atoms[i]``. A complete payload (every atom)
    can encode, splice, ablate and attribute; one with chosen atoms can only steer.
    """

    def __init__(
        self,
        atoms: Float[Tensor, "n d_model"],
        ids: list[int],
        n_atoms: int,
        k: int,
        refit: bool = True,
        hook: str | None = None,
    ):
        self.atoms = atoms
        self.ids = list(ids)
        self.n_atoms = n_atoms
        self.k = k
        self.refit = refit
        self.hook = hook
        self._prepared: dict[str, Any] = {}

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
) -> Payload:
    """What of ``itda`` a trace needs: every atom (default), or only ``atoms`` (for
    :func:`steer`), cast to ``dtype`` (pass the model's, e.g. ``lm.dtype``).

    Raises :class:`PayloadTooLarge` when the atoms exceed ``max_bytes``.
    """
    if not hasattr(itda, "atoms") or not hasattr(itda, "config"):
        raise TypeError(f"payload() takes an ITDA, got {type(itda).__name__}.")
    n_atoms = itda.atoms.shape[0]
    if atoms is None:
        ids = list(range(n_atoms))
    else:
        ids = list(dict.fromkeys(int(a) for a in atoms))
        bad = [a for a in ids if not 0 <= a < n_atoms]
        if bad or not ids:
            raise ValueError(f"atoms {bad or '[]'} are not indices of this dictionary (0 to {n_atoms - 1}).")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    dtype = dtype or itda.atoms.dtype
    rows = itda.atoms.detach() if atoms is None else itda.atoms.detach()[ids]
    # A fresh contiguous copy: a view would ship the storage of the whole dictionary.
    shipped = rows.to("cpu", dtype).contiguous().clone()
    result = Payload(shipped, ids, n_atoms, itda.config.k, itda.config.refit, itda.config.hook)
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
        raise TypeError(
            f"pass itda_lens.nnsight.payload(itda) into a trace, not a {type(dictionary).__name__}: "
            "an ITDA needs packages the NDIF server lacks."
        )
    if needs_every_atom and not dictionary.complete:
        raise ValueError(
            f"encoding needs every atom, but this payload holds {len(dictionary.ids)} of {dictionary.n_atoms}: "
            "make it with payload(itda) (no atoms=)."
        )


def _positions(x: Tensor, dictionary: Any, mask: Tensor | None) -> Tensor:
    """The ``[batch, seq]`` mask on ``x``'s device, after checking widths and shapes."""
    if x.shape[-1] != dictionary.d_model:
        raise ValueError(
            f"the module output has width {x.shape[-1]} but the dictionary has d_model={dictionary.d_model} "
            f"(built at hook {dictionary.hook!r}); use a dictionary built for this module."
        )
    if mask is None:
        return torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
    if tuple(mask.shape) != tuple(x.shape[:-1]):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the module output has {tuple(x.shape[:-1])} positions; "
            "during generation (one new token per step) pass mask=None."
        )
    return mask.to(x.device, torch.bool)


def _prepared(dictionary: Any, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Float32 atoms on ``device`` and their Gram matrix (``None`` if too large), cached."""
    key = str(device)
    if key not in dictionary._prepared:
        atoms = dictionary.atoms.to(device, torch.float32)
        gram = _gram_matrix(atoms) if atoms.shape[0] ** 2 * 4 <= GRAM_MAX_BYTES else None
        dictionary._prepared[key] = (atoms, gram)
    return dictionary._prepared[key]


def _encode_rows(dictionary: Any, rows: Float[Tensor, "n d_model"]) -> tuple[Tensor, Tensor]:
    atoms, gram = _prepared(dictionary, rows.device)
    with torch.no_grad():
        if rows.shape[0] == 0:
            empty = torch.empty(0, dictionary.k, device=rows.device)
            return empty.long(), empty
        return _pursuit(rows.detach().float(), atoms, dictionary.k, gram=gram, refit=dictionary.refit)


def _scatter_codes(
    rows: tuple[Tensor, Tensor], mask: Bool[Tensor, "batch seq"], k: int
) -> tuple[Int[Tensor, "batch seq k"], Float[Tensor, "batch seq k"]]:
    indices = torch.full((*mask.shape, k), -1, dtype=torch.long, device=mask.device)
    values = torch.zeros((*mask.shape, k), dtype=rows[1].dtype, device=mask.device)
    indices[mask] = rows[0]
    values[mask] = rows[1]
    return indices, values


def _decode(dictionary: Any, indices: Tensor, values: Tensor) -> Tensor:
    atoms, _ = _prepared(dictionary, values.device)
    return _decode_kernel(indices, values, atoms)


def encode(
    module: Any, dictionary: Payload, mask: Bool[Tensor, "batch seq"] | None = None, differentiable: bool = False
) -> tuple[Int[Tensor, "batch seq k"], Float[Tensor, "batch seq k"]]:
    """The codes of ``module``'s output at ``mask`` (default: every position).

    With ``differentiable`` the values are leaves that require grad, spliced back into
    the output (which keeps its value up to float rounding) so that a later metric's
    gradient reaches them; pass the codes to :func:`attribute`.
    """
    _check_payload(dictionary, needs_every_atom=True)
    output = module.output
    x = hidden_states(output)
    positions = _positions(x, dictionary, mask)
    rows = x[positions]
    indices, values = _scatter_codes(_encode_rows(dictionary, rows), positions, dictionary.k)
    if not differentiable:
        return indices, values
    values = values.detach().requires_grad_(True)
    chosen, coefficients = indices[positions], values[positions]
    reconstruction = _decode(dictionary, chosen, coefficients)
    rows_new = rows.detach() - reconstruction.detach().to(x.dtype) + reconstruction.to(x.dtype)
    x_new = x.detach().clone()
    x_new[positions] = rows_new
    module.output = with_hidden_states(output, x_new)
    return indices, values


def splice(
    module: Any, dictionary: Payload, mask: Bool[Tensor, "batch seq"] | None = None, error_term: bool = False
) -> tuple[Int[Tensor, "batch seq k"], Float[Tensor, "batch seq k"]]:
    """Replace ``module``'s output at ``mask`` by its reconstruction; returns the codes.

    With ``error_term`` the output keeps its value, ``x_hat + (x - x_hat).detach()``.
    Positions outside ``mask`` (BOS, padding) are left untouched.
    """
    _check_payload(dictionary, needs_every_atom=True)
    output = module.output
    x = hidden_states(output)
    positions = _positions(x, dictionary, mask)
    rows = x[positions]
    indices, values = _encode_rows(dictionary, rows)
    reconstruction = _decode(dictionary, indices, values).to(x.dtype)
    if error_term:
        reconstruction = reconstruction + (rows - reconstruction).detach()
    x_new = x.clone()
    x_new[positions] = reconstruction
    module.output = with_hidden_states(output, x_new)
    return _scatter_codes((indices, values), positions, dictionary.k)


def ablate(
    module: Any, dictionary: Payload, atoms: Sequence[int], mask: Bool[Tensor, "batch seq"] | None = None
) -> tuple[Int[Tensor, "batch seq k"], Float[Tensor, "batch seq k"]]:
    """Remove ``atoms`` from ``module``'s output where they are active: subtract each
    one's coefficient times its direction, leaving every other position as it was.
    Returns the codes before the ablation."""
    _check_payload(dictionary, needs_every_atom=True)
    atoms = [int(atom) for atom in atoms]
    bad = [atom for atom in atoms if not 0 <= atom < dictionary.n_atoms]
    if bad:
        raise ValueError(f"atoms {bad} are not indices of this dictionary (0 to {dictionary.n_atoms - 1}).")
    output = module.output
    x = hidden_states(output)
    positions = _positions(x, dictionary, mask)
    indices, values = _scatter_codes(_encode_rows(dictionary, x[positions]), positions, dictionary.k)
    removed = torch.isin(indices, torch.as_tensor(atoms, dtype=torch.long, device=indices.device))
    active = removed.any(dim=-1)
    delta = _decode(dictionary, indices[active], values[active] * removed[active])
    x_new = x.clone()
    x_new[active] = x[active] - delta.to(x.dtype)
    module.output = with_hidden_states(output, x_new)
    return indices, values


def steer(
    module: Any,
    dictionary: Payload,
    atoms: Sequence[int],
    scale: float | Sequence[float],
    mask: Bool[Tensor, "batch seq"] | None = None,
) -> None:
    """Add ``scale`` times each atom's unit direction to ``module``'s output at ``mask``
    (default: every position of every forward the trace sees). ``atoms`` are indices
    in the full dictionary; the payload needs to hold only them."""
    _check_payload(dictionary, needs_every_atom=False)
    atoms = list(atoms)
    where = {atom: row for row, atom in enumerate(dictionary.ids)}
    missing = [atom for atom in atoms if atom not in where]
    if missing:
        raise ValueError(f"atoms {missing} are not in the payload; make it with payload(itda, atoms={atoms}).")
    scales = [float(scale)] * len(atoms) if isinstance(scale, (int, float)) else [float(s) for s in scale]
    if len(scales) != len(atoms):
        raise ValueError(f"{len(scales)} scales for {len(atoms)} atoms.")
    output = module.output
    x = hidden_states(output)
    positions = _positions(x, dictionary, mask)
    directions, _ = _prepared(dictionary, x.device)
    rows = torch.as_tensor([where[atom] for atom in atoms], dtype=torch.long, device=x.device)
    weights = torch.as_tensor(scales, dtype=torch.float32, device=x.device)
    vector = (weights[:, None] * directions[rows]).sum(dim=0).to(x.dtype)
    module.output = with_hidden_states(output, torch.where(positions[..., None], x + vector, x))


def attribute(
    metric: Float[Tensor, ""], codes: tuple[Int[Tensor, "batch seq k"], Float[Tensor, "batch seq k"]]
) -> Float[Tensor, "batch seq k"]:
    """Gradient times value for each code from :func:`encode` with ``differentiable=True``:
    the first-order estimate of how much ``metric`` drops when that atom is removed
    there (attribution patching). Zero where nothing was encoded."""
    indices, values = codes
    if not values.requires_grad:
        raise ValueError("the codes carry no gradient: make them with encode(..., differentiable=True).")
    (gradient,) = torch.autograd.grad(metric, values, retain_graph=True)
    return (gradient * values).detach().masked_fill(indices < 0, 0.0)


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
    from itda_lens.activations import check_hook_names

    check_hook_names([path], [name for name, _ in model._module.named_modules() if name], what="module")
    return model.get(path)

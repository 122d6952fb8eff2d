"""The operations both backends share: codes with a sentinel, edits, splicing, positions.

:mod:`itda_lens.backends.transformer_lens` and :mod:`itda_lens.backends.nnsight` call these functions, so an
edit means the same on either. They use only torch, the standard library and
:mod:`itda_lens.core.checks` / :mod:`itda_lens.core.pursuit` (themselves torch only), so they run
inside nnsight traces on a server without itda-lens. Other modules import these functions
by name (not the module), so that nnsight ships them by value.

Codes are ``(indices, values)`` of shape ``[batch, pos, k]``. A position that is not
encoded (BOS, padding) holds :data:`NOT_ENCODED` with value 0 in every slot: decoding
gives 0 there and it names no atom.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from itda_lens.core.checks import flag, number
from itda_lens.core.pursuit import decode as weighted_sum

if TYPE_CHECKING:  # annotations only: these functions run inside remote nnsight traces, where jaxtyping is absent
    from jaxtyping import Bool, Float, Int

#: The atom index of a slot at a position that was not encoded (its value is 0).
NOT_ENCODED = -1

#: ``positions`` naming every position: the prompt's and each token ``generate`` adds.
ALL = "all"
#: ``positions`` naming only the tokens ``generate`` adds (with its KV cache).
NEW = "new"

Positions = str | int | Sequence[int] | slice | Tensor


# --------------------------------------------------------------------------- codes
def scatter_codes(
    indices: Int[Tensor, "n k"], values: Float[Tensor, "n k"], encoded: Bool[Tensor, "batch pos"]
) -> tuple[Int[Tensor, "batch pos k"], Float[Tensor, "batch pos k"]]:
    """Codes of the ``n`` encoded positions placed on ``[batch, pos, k]``; the other
    positions hold :data:`NOT_ENCODED` and 0. Gradients flow to ``values``."""
    shape = (*encoded.shape, indices.shape[-1])
    full_indices = torch.full(shape, NOT_ENCODED, dtype=torch.long, device=encoded.device)
    full_indices[encoded] = indices.to(encoded.device, torch.long)
    full_values = values.new_zeros(shape).index_put((*encoded.nonzero().T,), values)
    return full_indices, full_values


def decode(indices: Int[Tensor, "*batch k"], values: Float[Tensor, "*batch k"], atoms: Float[Tensor, "n_atoms d_model"]) -> Float[Tensor, "*batch d_model"]:
    """``sum_j values[..., j] * atoms[indices[..., j]]``; :data:`NOT_ENCODED` slots add nothing."""
    k = indices.shape[-1]
    flat_indices, flat_values = indices.reshape(-1, k), values.reshape(-1, k)
    empty = flat_indices < 0
    out = weighted_sum(flat_indices.masked_fill(empty, 0), flat_values.masked_fill(empty, 0.0), atoms)
    return out.reshape(*indices.shape[:-1], atoms.shape[1])


def dense(indices: Int[Tensor, "*batch k"], values: Float[Tensor, "*batch k"], n_atoms: int) -> Float[Tensor, "*batch n_atoms"]:
    """Codes as ``[..., n_atoms]`` coefficients; :data:`NOT_ENCODED` slots add nothing."""
    empty = indices < 0
    out = values.new_zeros(*indices.shape[:-1], n_atoms)
    return out.scatter_add(-1, indices.masked_fill(empty, 0), values.masked_fill(empty, 0.0))


def check_codes_indices(indices: Tensor, n_atoms: int) -> None:
    """Raise unless every index is an atom of ``n_atoms`` or :data:`NOT_ENCODED`."""
    if indices.numel() and (int(indices.min()) < NOT_ENCODED or int(indices.max()) >= n_atoms):
        raise IndexError(f"the codes hold atom indices outside 0 to {n_atoms - 1} and {NOT_ENCODED} (not encoded); pass codes that encode returned.")


# --------------------------------------------------------------------------- positions
def check_positions(positions: object) -> Positions:
    """``positions`` in the form :func:`position_mask` takes: ``"all"``, ``"new"``, ints
    as a list, a slice or a bool tensor; a ``TypeError`` naming the kinds otherwise."""
    kinds = f"{ALL!r}, {NEW!r}, an int, ints, a slice or a bool mask"
    if positions in (ALL, NEW) or isinstance(positions, slice):
        return positions
    if isinstance(positions, Tensor):
        if positions.is_floating_point() or positions.is_complex():
            raise TypeError(f"positions must be {kinds}; got a {positions.dtype} tensor.")
        return positions if positions.dtype == torch.bool else positions.flatten().tolist()
    if isinstance(positions, numbers.Integral) and not isinstance(positions, bool):
        return [int(positions)]
    if isinstance(positions, Iterable) and not isinstance(positions, (str, bytes)):
        picks = list(positions)
        if picks and all(isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in picks):
            return [int(p) for p in picks]
    raise TypeError(f"positions must be {kinds}; got {positions!r}.")


def position_mask(positions: Positions, batch: int, seq: int, *, generated: bool = False, device: torch.device | str = "cpu") -> Bool[Tensor, "batch seq"]:
    """The positions of one forward pass that ``positions`` picks.

    ``generated`` says the pass is a token ``generate`` added: ``"all"`` and ``"new"``
    pick it, anything else does not. In a prompt pass ``"all"`` picks every position,
    ``"new"`` none, ints (negative count from the end), a slice or a bool mask of shape
    ``[seq]`` or ``[batch, seq]`` pick those.
    """
    positions = check_positions(positions)
    if generated or positions in (ALL, NEW):
        picked = positions in (ALL, NEW) if generated else positions == ALL
        return torch.full((batch, seq), picked, dtype=torch.bool, device=device)
    if isinstance(positions, Tensor):
        if positions.shape not in ((seq,), (batch, seq)):
            raise ValueError(f"a position mask must have shape [{seq}] or [{batch}, {seq}], got {tuple(positions.shape)}.")
        return positions.to(device).expand(batch, seq).clone()
    mask = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    if isinstance(positions, slice):
        mask[:, positions] = True
        return mask
    bad = [p for p in positions if not -seq <= p < seq]
    if bad:
        raise IndexError(f"positions {bad} lie outside the sequence of {seq} positions.")
    mask[:, positions] = True
    return mask


# --------------------------------------------------------------------------- edits
def amounts(atoms: Int[Tensor, " m"], scale: object, relative: bool, typical: Float[Tensor, " n_atoms"] | None, where: str = "") -> list[float]:
    """One steering amount per atom: ``scale`` (a number, or one per atom), times each
    atom's typical coefficient when ``relative``."""
    if isinstance(scale, Tensor) and scale.numel() != 1:
        scale = scale.flatten().tolist()
    if isinstance(scale, Sequence) and not isinstance(scale, str):
        scales = [number(s, "scale") for s in scale]
    else:
        scales = [number(scale, "scale")] * len(atoms)
    if len(scales) != len(atoms):
        raise ValueError(f"{len(scales)} scales for {len(atoms)} atoms; give one scale, or one per atom.")
    if not flag(relative, "relative"):
        return scales
    if typical is None:
        raise ValueError(f"the dictionary{where} is not calibrated: call calibrate(text) first, or steer with relative=False.")
    result = []
    for atom, value in zip(atoms.tolist(), scales):
        unit = float(typical[atom])
        if unit != unit:
            raise ValueError(f"atom {atom} was never active in the calibration text: calibrate on more text or steer with relative=False.")
        result.append(value * unit)
    return result


def edit_codes(
    indices: Int[Tensor, "batch pos k"],
    values: Float[Tensor, "batch pos k"],
    kind: str,
    atoms: Int[Tensor, " m"],
    amounts: Sequence[float],
    where: Bool[Tensor, "batch pos"],
) -> tuple[Int[Tensor, "batch pos k2"], Float[Tensor, "batch pos k2"]]:
    """The codes after one edit at ``where``: ``"ablate"`` sets ``atoms``' coefficients to
    0; ``"clamp"`` sets them to ``amounts``; ``"steer"`` adds ``amounts`` to them. Clamp
    and steer append one slot per atom (:data:`NOT_ENCODED` outside ``where``)."""
    if kind not in ("ablate", "clamp", "steer"):
        raise ValueError(f"kind must be 'ablate', 'clamp' or 'steer', got {kind!r}.")
    atoms = atoms.to(indices.device)
    where = where.to(indices.device)
    if kind in ("ablate", "clamp"):
        values = values.masked_fill(torch.isin(indices, atoms) & where[..., None], 0.0)
    if kind == "ablate":
        return indices, values
    extra_indices = torch.where(where[..., None], atoms, NOT_ENCODED)
    extra_values = where[..., None] * torch.as_tensor(list(amounts), dtype=values.dtype, device=values.device)
    return torch.cat([indices, extra_indices], dim=-1), torch.cat([values, extra_values], dim=-1)


# --------------------------------------------------------------------------- splicing
def reconstruction_error(
    x: Float[Tensor, "batch pos d_model"], reconstruction: Float[Tensor, "batch pos d_model"], encoded: Bool[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos d_model"]:
    """``x - reconstruction`` at the encoded positions, 0 elsewhere, detached."""
    return torch.where(encoded[..., None], x.detach() - reconstruction.detach().to(x.dtype), 0.0)


def splice(
    x: Float[Tensor, "batch pos d_model"],
    reconstruction: Float[Tensor, "batch pos d_model"],
    encoded: Bool[Tensor, "batch pos"],
    error: Float[Tensor, "batch pos d_model"] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """What the model receives: the reconstruction at the encoded positions, ``x``
    elsewhere, plus ``error`` (from :func:`reconstruction_error`) when given."""
    out = torch.where(encoded[..., None], reconstruction.to(x.dtype), x)
    return out if error is None else out + error


def gradient_x_ablation(gradient: Tensor | None, value: Tensor) -> Tensor:
    """``gradient * (0 - value)`` (0 where there is no gradient): the first-order change
    of a metric when ``value`` is set to 0, the attribution both backends report."""
    return torch.zeros_like(value) if gradient is None else gradient * (0 - value)


# --------------------------------------------------------------------------- calibration
def count_coefficients(indices: Int[Tensor, "n k"], values: Float[Tensor, "n k"], sums: Float[Tensor, " n_atoms"], counts: Float[Tensor, " n_atoms"]) -> None:
    """Add each active atom's |coefficient| to ``sums`` and 1 to ``counts`` (in place)."""
    active = (values != 0) & (indices >= 0)
    atoms = indices[active].to(sums.device)
    sums.index_add_(0, atoms, values[active].detach().abs().to(sums))
    counts.index_add_(0, atoms, torch.ones(len(atoms), dtype=counts.dtype, device=counts.device))


def typical_coefficients(sums: Float[Tensor, " n_atoms"], counts: Float[Tensor, " n_atoms"]) -> Float[Tensor, " n_atoms"]:
    """Mean |coefficient| of each atom where active; NaN where never active."""
    return torch.where(counts > 0, sums / counts.clamp_min(1), float("nan")).float()

"""The Gram rows that matching pursuit reads, under a memory budget.

Each step of the ``gram`` matching pursuit (:mod:`itda_lens.core.pursuit`) subtracts the
Gram row ``atoms[i] @ atoms.T`` of the atom ``i`` it chose. :class:`GramRows` holds those
rows in a buffer of at most ``budget_bytes``. When every row fits, all are computed at
once (one product, and the steps never stop to ask which rows are missing). Otherwise
the buffer is a cache: a row is computed when a token first chooses its atom, and when
the buffer is full the rows chosen least often so far make room. Between the two, when
the float32 matrix does not fit but an int8 one does (a quarter of the bytes: 131,072
atoms in 16 GiB), the whole matrix is held :attr:`~GramRows.quantized`, and the compiled
steps use it only to screen atoms, computing exactly the correlations of the few that
may be largest (:func:`itda_lens.core.pursuit_numba.screened_steps`). Encoding is exact
every way; only its speed depends on the rows held.

Quantized rows: activations share a large mean direction ``u`` (most of their Gram
values are far from 0), so ``G[i, j] = a[i] a[j] + n[i] n[j] cos[i, j]``
with ``a = atoms @ u`` (:attr:`~GramRows.along`), ``n`` the norms of the atoms' parts
orthogonal to ``u`` (:attr:`~GramRows.across`) and ``cos`` the cosines of those parts.
The buffer holds ``round(LEVELS * cos)`` in int8: a value is then off by at most
``n[i] n[j] / (2 LEVELS)`` plus float rounding, wherever new atoms are added.

Products are taken at least :data:`MIN_ROWS` by :data:`MIN_ROWS`: on the CPU each value
is then the same whichever atoms it was computed with (``tests/test_gram_rows.py``), so
codes do not depend on what the cache held or on how the dictionary grew. Torch and the
standard library only: it runs inside remote nnsight traces.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from itda_lens.core.pursuit_blocks import padded_width

if TYPE_CHECKING:  # annotations only: jaxtyping is absent on a remote nnsight server
    from jaxtyping import Float, Int

#: The default budget of a dictionary's Gram rows (a sixth of a 24 GiB machine): the
#: whole float32 matrix up to 32,768 atoms, the int8 one up to 65,536; 131,072 atoms
#: need 16 GiB for the int8 matrix (else 8,192 float32 rows are cached).
GRAM_BYTES = 4 << 30

#: The smallest side of the matrix products that compute Gram values.
MIN_ROWS = 16

#: Rows computed per product when many are stored at once.
STORE_ROWS = 1024

#: Quantized rows hold cosines in steps of ``1 / LEVELS``, as int8.
LEVELS = 127

#: The most a quantized Gram value is off beyond its half step, for float32 rounding.
MARGIN = 1e-4


def rows_within(budget_bytes: int, n_atoms: int, element_size: int = 4) -> int:
    """Gram rows of ``n_atoms`` atoms (each :func:`~itda_lens.core.pursuit_blocks.padded_width`
    values of ``element_size`` bytes) that ``budget_bytes`` holds, at most ``n_atoms``."""
    return min(budget_bytes // (padded_width(n_atoms) * element_size), n_atoms)


def products(a: Float[Tensor, "m d_model"], b: Float[Tensor, "n d_model"]) -> Float[Tensor, "m n"]:
    """``a @ b.T``, computed with both sides padded to :data:`MIN_ROWS` rows."""
    short_a, short_b = MIN_ROWS - len(a), MIN_ROWS - len(b)
    if short_a > 0:
        a = torch.cat([a, a[:1].expand(short_a, -1)])
    if short_b > 0:
        b = torch.cat([b, b[:1].expand(short_b, -1)])
    return (a @ b.T)[: len(a) - max(short_a, 0), : len(b) - max(short_b, 0)]


class GramRows:
    """Rows of ``atoms @ atoms.T`` for matching pursuit, in at most ``budget_bytes``.

    Row ``slot[i]`` of :attr:`buffer` holds atom ``i``'s Gram row (-1: not held), zero
    beyond the last atom; :attr:`n_held` rows are held. ``room`` atoms fit before the buffer is made again; a builder
    that appends atoms calls :meth:`grow`. When :attr:`quantized` (only where the
    float32 matrix does not fit and the int8 one does), the buffer is int8 and holds every
    row's cosines times :data:`LEVELS`, rounded (module docstring), with the atoms' mean
    :attr:`direction` and the parts :attr:`along` and :attr:`across` it (zero beyond the
    last atom; all three are None otherwise).
    """

    def __init__(self, atoms: Float[Tensor, "n_atoms d_model"], budget_bytes: int = GRAM_BYTES, room: int | None = None):
        self.budget_bytes = budget_bytes
        self.atoms = atoms
        self.uses = torch.zeros(len(atoms), dtype=torch.long, device=atoms.device)
        #: Times a token's correlations were computed again exactly (quantized rows only).
        self.recomputed = 0
        self._allocate(max(room or 0, len(atoms)))

    @property
    def n_atoms(self) -> int:
        return len(self.atoms)

    @property
    def width(self) -> int:
        """Columns the pursuit reads: one per atom, zero-padded to a whole block."""
        return padded_width(self.n_atoms)

    @property
    def complete(self) -> bool:
        """Whether every atom's row is held (the whole Gram matrix fits the budget)."""
        return self.n_held == self.n_atoms

    def rows(self) -> Float[Tensor, "capacity width"]:
        """The buffer's rows, :attr:`width` columns each (a view)."""
        return self.buffer[:, : self.width]

    def _allocate(self, room: int) -> None:
        """A new buffer with columns for ``room`` atoms, holding every row when they
        all fit (in int8 when only that fits), else none yet."""
        capacity = rows_within(self.budget_bytes, room, self.atoms.element_size())
        # int8 rows need the compiled screening steps: float32 atoms on the CPU, numba installed.
        self.quantized = (
            capacity < room and rows_within(self.budget_bytes, room, 1) == room
            and self.atoms.device.type == "cpu" and self.atoms.dtype == torch.float32 and find_spec("numba") is not None
        )
        self.direction = self.along = self.across = None
        if self.quantized:
            capacity = room
            self.direction = F.normalize(self.atoms.mean(dim=0), dim=0)
            self.along = self.atoms.new_zeros(padded_width(room))
            self.across = self.atoms.new_zeros(padded_width(room))
            self._split(0)
        if capacity == 0:
            raise ValueError(
                f"a Gram budget of {self.budget_bytes} bytes holds no row for {room} atoms; "
                f"give at least {padded_width(room) * self.atoms.element_size()} bytes, or 0 for dense matching pursuit."
            )
        self.room = room
        self.buffer = self.atoms.new_zeros(capacity, padded_width(room), dtype=torch.int8 if self.quantized else None)
        self.slot = torch.full((self.n_atoms,), -1, dtype=torch.long, device=self.atoms.device)
        self.atom_of = torch.full((capacity,), -1, dtype=torch.long, device=self.atoms.device)
        self.n_held = 0
        if self.quantized:
            self._store_quantized()
        elif capacity >= self.n_atoms:
            self._store(torch.arange(self.n_atoms, device=self.atoms.device), torch.arange(self.n_atoms, device=self.atoms.device))

    def _store(self, atoms: Int[Tensor, " a"], slots: Int[Tensor, " a"]) -> None:
        for start in range(0, len(atoms), STORE_ROWS):  # no [a, n_atoms] temporary beside the buffer
            part = slice(start, start + STORE_ROWS)
            rows = atoms[part]
            self.buffer[slots[part], : self.n_atoms] = self._stored(products(self.atoms[rows], self.atoms), rows, slice(0, self.n_atoms))
        self.slot[atoms] = slots
        self.atom_of[slots] = atoms
        self.n_held += len(atoms)

    def _store_quantized(self) -> None:
        """Every row, quantized, in the atoms' order: each block of rows from the diagonal
        on, and its transpose below it (half the products of :meth:`_store`)."""
        n = self.n_atoms
        for start in range(0, n, STORE_ROWS):
            end = min(start + STORE_ROWS, n)
            block = self._stored(products(self.atoms[start:end], self.atoms[start:]), slice(start, end), slice(start, n))
            self.buffer[start:end, start:n] = block
            self.buffer[end:n, start:end] = block[:, end - start :].T
        everything = torch.arange(n, device=self.atoms.device)
        self.slot[:] = everything
        self.atom_of[:n] = everything
        self.n_held = n

    def _split(self, start: int) -> None:
        """:attr:`along` and :attr:`across` of the atoms from ``start`` on."""
        along = self.atoms[start:] @ self.direction
        self.along[start : self.n_atoms] = along
        self.across[start : self.n_atoms] = (self.atoms[start:] - along[:, None] * self.direction).norm(dim=1)

    def _stored(self, values: Float[Tensor, "a b"], rows: Int[Tensor, " a"] | slice, columns: slice) -> Tensor:
        """Gram values of atoms ``rows`` and ``columns`` as the buffer holds them (``values`` is overwritten)."""
        if not self.quantized:
            return values
        values.addr_(self.along[rows], self.along[columns], alpha=-1)
        values.mul_(LEVELS / self.across[rows, None].clamp_min(1e-6)).div_(self.across[None, columns].clamp_min(1e-6))
        return values.round_().clamp_(-LEVELS, LEVELS).to(torch.int8)

    def count(self, indices: Int[Tensor, "n k"]) -> None:
        """Record the atoms an encoding chose: the cache keeps the most chosen."""
        self.uses += torch.bincount(indices.flatten(), minlength=self.n_atoms)

    def fetch(self, wanted: Int[Tensor, " w"]) -> Int[Tensor, " w"]:
        """Hold the rows of the distinct atoms ``wanted`` and return their slots.

        A missing row goes to a free slot, else to the slot of the least-chosen held row
        not wanted. At most ``len(buffer)`` are held: the others' slots stay -1."""
        slots = self.slot[wanted]
        missing = wanted[slots < 0]
        if not len(missing):
            return slots
        free = torch.nonzero(self.atom_of < 0)[:, 0]
        if len(free) < len(missing):
            protected = torch.zeros(len(self.atom_of), dtype=torch.bool, device=wanted.device)
            protected[slots[slots >= 0]] = True
            evictable = torch.nonzero((self.atom_of >= 0) & ~protected)[:, 0]
            n_evict = min(len(missing) - len(free), len(evictable))
            evicted = evictable[torch.topk(self.uses[self.atom_of[evictable]], n_evict, largest=False, sorted=False).indices]
            self.slot[self.atom_of[evicted]] = -1
            self.atom_of[evicted] = -1
            self.n_held -= len(evicted)
            free = torch.cat([free, evicted])
        missing = missing[: len(free)]
        self._store(missing, free[: len(missing)])
        return self.slot[wanted]

    def grow(self, atoms: Float[Tensor, "n_atoms d_model"], room: int | None = None) -> None:
        """Follow the dictionary after atoms were appended: ``atoms`` is all of them,
        the earlier ones first and unchanged. When they outgrow ``room`` the buffer is
        made again for the given ``room`` (default: twice as many)."""
        old, new = self.n_atoms, len(atoms)
        was_complete = self.complete
        self.atoms = atoms
        self.uses = torch.cat([self.uses, self.uses.new_zeros(new - old)])
        if new > self.room:
            self._allocate(max(new, room or 2 * self.room))
            return
        self.slot = torch.cat([self.slot, self.slot.new_full((new - old,), -1)])
        free = torch.nonzero(self.atom_of < 0)[:, 0]
        if was_complete and len(free) >= new - old:  # stays complete: the new rows, and their transposes
            if self.quantized:
                self._split(old)
            block = self._stored(products(atoms[old:new], atoms), slice(old, new), slice(0, new))
            self.buffer[self.slot[:old], old:new] = block[:, :old].T
            self.buffer[free[: new - old], :new] = block
            self.slot[old:new] = free[: new - old]
            self.atom_of[free[: new - old]] = torch.arange(old, new, device=atoms.device)
            self.n_held += new - old
            return
        held = torch.nonzero(self.atom_of >= 0)[:, 0]
        if len(held):
            self.buffer[held, old:new] = products(atoms[self.atom_of[held]], atoms[old:new])

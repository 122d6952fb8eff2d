"""The layout both matching-pursuit kernels (:mod:`itda_lens.core.pursuit` and
:mod:`itda_lens.core.pursuit_numba`) share: correlation rows padded to whole blocks, and
the steps between checks for tokens that may stop early. Standard library only, so it
runs inside remote nnsight traces."""

#: Width of the blocks in which the largest correlation is searched; correlation rows
#: are zero-padded to a multiple of it.
BLOCK = 128

#: With a ``tolerance``, the steps between checks for tokens that may stop.
STOP_EVERY = 4


def padded_width(n_atoms: int) -> int:
    """``n_atoms`` rounded up to a multiple of :data:`BLOCK`."""
    return -(-n_atoms // BLOCK) * BLOCK

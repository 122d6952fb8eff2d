"""The ``gram`` method's matching-pursuit steps, compiled for the CPU with numba.

The steps are those of :func:`itda_lens.core.pursuit._gram_steps`, but each token's whole
pursuit runs in one compiled loop (tokens in parallel). Its correlation row then stays
in the core's cache for all ``k`` steps, where the torch steps make several passes over
every token's row per step. The largest ``|correlation|`` is found on the float32 bit
patterns with the sign bit cleared: for finite floats their integer order is the order
of the magnitudes, and integer maxima vectorise where float ones do not. Ties go to the
first index, as in the torch steps.

Used for float32 tensors on the CPU; :mod:`itda_lens.core.pursuit` falls back to the torch
steps where numba is missing (a remote NDIF server, for one).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from itda_lens.core.pursuit_blocks import BLOCK, STOP_EVERY

_MAGNITUDE = np.int32(0x7FFFFFFF)


def gram_steps(
    correlations: Tensor, gram: Tensor, k: int, enough: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Same inputs and outputs as :func:`itda_lens.core.pursuit._gram_steps`;
    ``correlations`` (float32, contiguous) is overwritten."""
    m, width = correlations.shape
    if gram.stride(1) != 1:
        gram = gram.contiguous()
    # The Gram rows as one flat array and a row stride: a builder's Gram matrix is a view
    # into a larger buffer, which numba would otherwise see as an array of any layout.
    flat = gram.as_strided(((gram.shape[0] - 1) * gram.stride(0) + width,), (1,))
    idx = np.zeros((m, k), np.int64)
    val = np.zeros((m, k), np.float32)
    pair = np.zeros((m, k, k), np.float32)
    ran = np.ones(m, np.bool_)
    limit = np.full(m, np.inf) if enough is None else enough.double().numpy()
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    _steps(correlations.numpy(), flat.numpy(), gram.stride(0), k, limit, idx, val, pair, ran)
    finished = None if ran.all() else torch.from_numpy(np.flatnonzero(ran))
    return torch.from_numpy(idx), torch.from_numpy(val), torch.from_numpy(pair), finished


@njit(cache=True, inline="always")
def _abs_argmax(bits, n_blocks):
    best_block, best = 0, np.int32(-1)
    for block in range(n_blocks):
        top = np.int32(0)
        for j in range(block * BLOCK, (block + 1) * BLOCK):
            magnitude = bits[j] & _MAGNITUDE
            top = magnitude if magnitude > top else top
        if top > best:
            best_block, best = block, top
    for j in range(best_block * BLOCK, (best_block + 1) * BLOCK):
        if bits[j] & _MAGNITUDE == best:
            return j
    return best_block * BLOCK


@njit(parallel=True, cache=True)
def _steps(correlations, gram, stride, k, enough, idx, val, pair, ran):
    m, width = correlations.shape
    for token in prange(m):
        row = correlations[token]
        bits = row.view(np.int32)
        removed = 0.0
        for step in range(k):
            best = _abs_argmax(bits, width // BLOCK)
            coef = row[best]
            idx[token, step] = best
            val[token, step] = coef
            atom = gram[best * stride : best * stride + width]
            for earlier in range(step + 1):
                pair[token, step, earlier] = pair[token, earlier, step] = atom[idx[token, earlier]]
            removed += np.float64(coef) * coef
            if step + 1 == k:
                break
            if (step + 1) % STOP_EVERY == 0 and removed >= enough[token]:
                idx[token, step + 1 :] = idx[token, 0]
                ran[token] = False
                break
            for j in range(width):
                row[j] -= coef * atom[j]

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

from itda_lens.core.gram_rows import GramRows
from itda_lens.core.pursuit_blocks import BLOCK, STOP_EVERY

_MAGNITUDE = np.int32(0x7FFFFFFF)


def gram_steps(
    correlations: Tensor, gram: GramRows, k: int, enough: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Same inputs and outputs as :func:`itda_lens.core.pursuit._gram_steps`;
    ``correlations`` (float32, contiguous) is overwritten.

    A token whose chosen atom's Gram row is not held pauses there; the rows its pause
    needs are fetched (each once for all tokens waiting on it) and the paused tokens go
    on, until every token has finished."""
    m, width = correlations.shape
    buffer = gram.buffer
    # The rows as one flat array and a row stride: the buffer may be wider than ``width``.
    flat = buffer.as_strided(((len(buffer) - 1) * buffer.stride(0) + width,), (1,)) if len(buffer) else buffer.new_zeros(width)
    idx = np.zeros((m, k), np.int64)
    val = np.zeros((m, k), np.float32)
    pair = np.zeros((m, k, k), np.float32)
    ran = np.ones(m, np.bool_)
    limit = np.full(m, np.inf) if enough is None else enough.double().numpy()
    done = np.zeros(m, np.int64)
    removed = np.zeros(m, np.float64)
    need = np.full(m, -1, np.int64)
    active = np.arange(m)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    while len(active):
        _steps(correlations.numpy(), flat.numpy(), buffer.stride(0), gram.slot.numpy(), k, limit, idx, val, pair, ran, active, done, removed, need)
        paused = np.flatnonzero(need >= 0)
        if not len(paused):
            break
        gram.fetch(torch.from_numpy(np.unique(need[paused])))
        active = paused[gram.slot.numpy()[need[paused]] >= 0]
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
def _steps(correlations, gram, stride, slot, k, enough, idx, val, pair, ran, active, done, removed, need):
    width = correlations.shape[1]
    for a in prange(len(active)):
        token = active[a]
        row = correlations[token]
        bits = row.view(np.int32)
        need[token] = -1
        for step in range(done[token], k):
            best = _abs_argmax(bits, width // BLOCK)
            where = slot[best]
            if where < 0:  # pause until the row is fetched; the correlations are unchanged
                need[token] = best
                done[token] = step
                break
            coef = row[best]
            idx[token, step] = best
            val[token, step] = coef
            atom = gram[where * stride : where * stride + width]
            for earlier in range(step + 1):
                pair[token, step, earlier] = pair[token, earlier, step] = atom[idx[token, earlier]]
            removed[token] += np.float64(coef) * coef
            if step + 1 == k:
                break
            if (step + 1) % STOP_EVERY == 0 and removed[token] >= enough[token]:
                idx[token, step + 1 :] = idx[token, 0]
                ran[token] = False
                break
            for j in range(width):
                row[j] -= coef * atom[j]

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

from itda_lens.core.gram_rows import LEVELS, MARGIN, GramRows
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


@njit(cache=True, inline="always")
def _record(idx, val, removed, ran, enough, token, step, k, best, coef):
    """Write a step's atom and coefficient; whether the token is done: its last step, or
    within ``enough`` at a check (its later slots then repeat its first atom)."""
    idx[token, step] = best
    val[token, step] = coef
    removed[token] += np.float64(coef) * coef
    if step + 1 == k:
        return True
    if (step + 1) % STOP_EVERY == 0 and removed[token] >= enough[token]:
        idx[token, step + 1 :] = idx[token, 0]
        ran[token] = False
        return True
    return False


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
            atom = gram[where * stride : where * stride + width]
            for earlier in range(step):
                pair[token, step, earlier] = pair[token, earlier, step] = atom[idx[token, earlier]]
            pair[token, step, step] = atom[best]
            if _record(idx, val, removed, ran, enough, token, step, k, best, coef):
                break
            for j in range(width):
                row[j] -= coef * atom[j]


#: The share of atoms whose correlations a screened step computes exactly at most;
#: beyond it, one product with the whole dictionary recomputes them all. 1/512 was the
#: fastest of 1/32, 1/128 and 1/512 in a scratch timing with 131,072 SmolLM2 atoms (on an
#: earlier version of these steps; the timing script is not kept). Since the first step
#: is exact such pauses are rare (``benchmarks/encode_speed.py`` prints how rare).
SCREENED = 1 / 512

#: Correlations per group whose largest magnitude the screened steps keep.
GROUP = 32


def screened_steps(
    correlations: Tensor, x: Tensor, gram: GramRows, k: int, enough: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The ``gram`` steps over quantized Gram rows (``gram.quantized``): same outputs
    as :func:`gram_steps`, and the same atoms up to float rounding.

    The first step is taken on the exact ``correlations`` (``x @ atoms.T``, overwritten),
    which are then computed again from its residual (one product): its coefficient is
    by far the largest (activations share a large mean direction), and its quantized
    update would widen the bounds the most. From then on they are updated with the
    quantized rows, so atom ``j``'s entry is off by at most ``spread * across[j] + margin``,
    sums over the steps so far (:mod:`itda_lens.core.gram_rows`). Each step computes
    exactly, from the residual, the correlations of the atoms whose entries may be the
    largest within those bounds (the top one's group first, then the groups whose bound
    reaches the best found), and takes the largest. A token whose step would compute
    more than :data:`SCREENED` of them pauses; the paused tokens' correlations are then
    computed exactly (one product), which sets their bounds to 0. The chosen atoms' Gram
    block is computed at the end."""
    m, width = correlations.shape
    n_atoms = gram.n_atoms
    exact = correlations[:, :n_atoms]
    first = exact.abs().argmax(dim=1)  # ties to the first index, as in the compiled steps
    coef = exact.gather(1, first[:, None])
    residual = (x - coef * gram.atoms[first]).numpy()  # float32, as the atoms
    idx = np.zeros((m, k), np.int64)
    val = np.zeros((m, k), np.float32)
    idx[:, 0], val[:, 0] = first.numpy(), coef[:, 0].numpy()
    ran = np.ones(m, np.bool_)
    limit = np.full(m, np.inf) if enough is None else enough.double().numpy()
    done = np.ones(m, np.int64)
    removed = val[:, 0].astype(np.float64) ** 2
    if k > 1:
        torch.mm(torch.from_numpy(residual), gram.atoms.T, out=exact)
    spread = np.zeros(m, np.float64)
    margin = np.zeros(m, np.float64)
    paused = np.zeros(m, np.bool_)
    active = np.arange(m) if k > 1 else np.arange(0)
    atoms = gram.atoms.numpy()
    most = max(1, int(n_atoms * SCREENED))
    along, across = gram.along.numpy(), gram.across.numpy()
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    while len(active):
        _screened(correlations.numpy(), residual, atoms, gram.buffer.numpy(), gram.slot.numpy(), along, across, float(across.max()),
                  most, k, limit, idx, val, ran, active, done, removed, spread, margin, paused)
        active = np.flatnonzero(paused)
        if len(active):
            gram.recomputed += len(active)
            correlations[active, :n_atoms] = torch.from_numpy(residual[active]) @ gram.atoms.T
            spread[active] = margin[active] = 0.0
    finished = None if ran.all() else torch.from_numpy(np.flatnonzero(ran))
    chosen = gram.atoms[torch.from_numpy(idx)]
    return torch.from_numpy(idx), torch.from_numpy(val), chosen @ chosen.transpose(1, 2), finished


@njit(cache=True, fastmath=True)  # not inlined: its own fast-math flags let the sum vectorise
def _dot(a, b):
    total = np.float32(0.0)
    for j in range(len(a)):
        total += a[j] * b[j]
    return total


@njit(cache=True, inline="always")
def _group_top(bits, group):
    """The largest magnitude's bit pattern in a group of ``bits`` (uint32): shifting out
    the sign bit keeps the order of magnitudes, and this maximum vectorises."""
    top = np.uint32(0)
    for j in range(group * GROUP, (group + 1) * GROUP):
        top = max(top, np.uint32(bits[j] << np.uint32(1)))
    return np.int32(top >> np.uint32(1))


@njit(cache=True, inline="always")
def _search(row, r, atoms, across, group, low, spread, margin, n_atoms, best, coef, exact):
    """The exact correlations of a group's atoms whose bound reaches both ``low`` and the
    best so far (``best``, ``coef``; ties to the first index): the new best, and the
    count of exact correlations."""
    for j in range(group * GROUP, min((group + 1) * GROUP, n_atoms)):
        high = abs(np.float64(row[j])) + spread * across[j] + margin
        if high >= low and high >= abs(coef):
            exact += 1
            value = _dot(atoms[j], r)
            if abs(value) > abs(coef) or (abs(value) == abs(coef) and j < best):
                best, coef = j, value
    return best, coef, exact


@njit(parallel=True, cache=True)
def _screened(correlations, residual, atoms, rows, slot, along, across, most_across, most, k, enough, idx, val, ran, active, done, removed, spread, margin, paused):
    n_atoms = atoms.shape[0]
    n_groups = correlations.shape[1] // GROUP
    half_step = 0.5 / LEVELS
    for a in prange(len(active)):
        token = active[a]
        row = correlations[token]
        bits = row.view(np.int32)
        r = residual[token]
        tops = np.empty(n_groups, np.int32)
        top_values = tops.view(np.float32)  # the magnitudes' bit patterns are their float32 values
        unsigned = row.view(np.uint32)
        for group in range(n_groups):
            tops[group] = _group_top(unsigned, group)
        paused[token] = False
        for step in range(done[token], k):
            best_group, best_top = 0, np.int32(-1)
            for group in range(n_groups):
                if tops[group] > best_top:
                    best_group, best_top = group, tops[group]
            top = best_group * GROUP
            while bits[top] & _MAGNITUDE != best_top:
                top += 1
            # The largest exact |correlation| is at least ``low``; atom j may reach it when
            # |row[j]| + spread * across[j] + margin >= low.
            low = abs(np.float64(row[top])) - spread[token] * across[top] - margin[token]
            # Exact correlations: the top's group first, then every group whose bound
            # reaches the best found, until a token would need more than ``most``.
            best, coef, exact = _search(row, r, atoms, across, best_group, low, spread[token], margin[token], n_atoms, n_atoms, np.float32(0.0), 0)
            slack = spread[token] * most_across + margin[token]
            for group in range(n_groups):
                if exact > most:
                    break
                if group != best_group and top_values[group] + slack >= max(low, abs(coef)):
                    best, coef, exact = _search(row, r, atoms, across, group, low, spread[token], margin[token], n_atoms, best, coef, exact)
            if exact > most:  # pause for exact correlations
                paused[token] = True
                done[token] = step
                break
            if _record(idx, val, removed, ran, enough, token, step, k, best, coef):
                break
            chosen = atoms[best]
            for j in range(len(r)):
                r[j] -= coef * chosen[j]
            by_along = coef * along[best]
            by_across = coef * across[best] / np.float32(LEVELS)
            cosines = rows[slot[best]]
            for group in range(n_groups):  # one pass: the group is in cache for its maximum
                for j in range(group * GROUP, (group + 1) * GROUP):
                    row[j] -= by_along * along[j] + by_across * across[j] * cosines[j]
                tops[group] = _group_top(unsigned, group)
            spread[token] += abs(np.float64(coef)) * across[best] * half_step
            margin[token] += abs(np.float64(coef)) * MARGIN

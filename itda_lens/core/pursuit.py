"""Matching pursuit over a dictionary of unit-norm atoms.

Two exact implementations of the same signed k-step matching pursuit (MP):

- ``gram``: one product ``x @ atoms.T`` per token, then each step updates the
  correlations with one row of the Gram matrix ``atoms @ atoms.T``
  (``c <- c - v * G[i]``), since ``atoms @ (x - v * atoms[i]) = c - v * G[i]``.
  A step costs ``n_atoms`` multiply-adds per token instead of ``n_atoms * d_model``.
  The rows come from a :class:`~itda_lens.core.gram_rows.GramRows`: the whole matrix
  when it fits its memory budget, else the whole matrix quantized to int8 when that
  fits (its rows then only screen the atoms; the few correlations that may be largest
  are computed exactly: :func:`itda_lens.core.pursuit_numba.screened_steps`), else a
  cache of the rows chosen most.
  For float32 on the CPU the steps run compiled (:mod:`itda_lens.core.pursuit_numba`) when
  numba is installed.
- ``dense``: the textbook loop, one product with the whole dictionary per step, for
  a Gram budget of 0.

Either can finish with a least-squares refit of the coefficients on the chosen atoms
(the projection of ``x`` onto their span, as in orthogonal matching pursuit), which
never reconstructs worse than the MP coefficients.

Codes travel as ``(indices, values)`` of shape ``[n, k]``. An atom chosen twice keeps
its index in both slots; after a refit the later slot's value is 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from itda_lens.core.gram_rows import GramRows
from itda_lens.core.pursuit_blocks import BLOCK, STOP_EVERY, padded_width

if TYPE_CHECKING:  # annotations only: these kernels run inside remote nnsight traces, where jaxtyping is absent
    from jaxtyping import Float, Int

#: Correlation entries held at once per chunk of tokens (8 MiB in float32: small
#: enough to stay in cache across the k steps on common CPUs).
CHUNK_ELEMENTS = 1 << 21

#: Tokens per chunk at least when Gram rows are made on demand, so that the rows a round
#: of paused tokens needs are made in one product (128 MiB of correlations at 131,072 atoms).
CACHE_CHUNK_TOKENS = 256


#: With a ``tolerance``, a token stops once its MP residual is below
#: ``tolerance - STOP_SLACK`` of its squared norm: the slack covers the float rounding
#: of the residual bookkeeping, so a stopped token is surely within ``tolerance``.
STOP_SLACK = 1e-4


def pursuit(
    x: Float[Tensor, "n d_model"],
    atoms: Float[Tensor, "n_atoms d_model"],
    k: int,
    *,
    gram: GramRows | None = None,
    refit: bool = True,
    chunk_tokens: int | None = None,
    tolerance: float | None = None,
) -> tuple[Int[Tensor, "n k"], Float[Tensor, "n k"]]:
    """Encode ``x`` with ``k`` steps of signed matching pursuit.

    Uses the ``gram`` method when ``gram`` (the Gram rows of ``atoms``) is given, else
    the ``dense`` one; both give the same codes up to float rounding. Tokens are
    processed in chunks of about :data:`CHUNK_ELEMENTS` correlations (or chosen-atom
    entries, for the dense method), so memory does not grow with ``n``.

    ``tolerance`` (``gram`` method only) lets a token stop early, at a check every
    :data:`~itda_lens.core.pursuit_blocks.STOP_EVERY` steps, once its relative error ``||x - x_hat||^2 / ||x||^2`` is
    surely within it; such a token keeps its MP coefficients (no refit) and its later
    slots repeat its first atom with value 0. The builder uses it: a token that stops
    cannot become an atom.
    """
    n_atoms = atoms.shape[0]
    if not 1 <= k <= n_atoms:
        raise ValueError(f"k={k} must be between 1 and the number of atoms ({n_atoms}).")
    if tolerance is not None and not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance is a relative error and must lie in (0, 1), got {tolerance}.")
    width = padded_width(n_atoms)
    if gram is not None and gram.n_atoms != n_atoms:
        raise ValueError(f"gram holds the rows of {gram.n_atoms} atoms, not of these {n_atoms}.")
    if chunk_tokens is None:  # the dense steps also keep the chosen atoms, [chunk, k, d_model]
        per_token = width if gram is not None else max(width, k * atoms.shape[1])
        chunk_tokens = max(1, CHUNK_ELEMENTS // per_token)
        if gram is not None and (gram.quantized or not gram.complete):  # more tokens share each product of rows or correlations
            chunk_tokens = max(chunk_tokens, CACHE_CHUNK_TOKENS)
    steps = _steps_for(x) if gram is not None else None
    if gram is not None and gram.quantized:  # int8 rows exist only where the compiled steps do
        from itda_lens.core.pursuit_numba import screened_steps
    if steps is _gram_steps:  # a step's distinct atoms must all fit the buffer at once
        chunk_tokens = min(chunk_tokens, len(gram.buffer))
    padded_atoms = None if gram is not None else torch.cat([atoms, atoms.new_zeros(width - n_atoms, atoms.shape[1])])
    indices = torch.empty(x.shape[0], k, dtype=torch.long, device=x.device)
    values = torch.empty(x.shape[0], k, dtype=x.dtype, device=x.device)
    # One buffer for every chunk's correlations, zero beyond the last atom (the steps keep it so).
    buffer = x.new_zeros(min(chunk_tokens, x.shape[0]), width) if gram is not None else None
    with torch.no_grad():  # codes are chosen, not differentiated (:func:`coefficients` is)
        for start in range(0, x.shape[0], chunk_tokens):
            chunk = x[start : start + chunk_tokens]
            if gram is not None:
                correlations = buffer[: len(chunk)]
                torch.mm(chunk, atoms.T, out=correlations[:, :n_atoms])
                enough = None if tolerance is None else (1.0 - tolerance + STOP_SLACK) * chunk.double().square().sum(dim=1)
                if gram.quantized:
                    idx, val, pair, ran = screened_steps(correlations, chunk, gram, k, enough)
                else:
                    idx, val, pair, ran = steps(correlations, gram, k, enough)
                gram.count(idx)
            else:
                (idx, val, pair), ran = _dense_steps(chunk, padded_atoms, k), None
            if refit and ran is None:
                val = least_squares_refit(chunk, atoms, idx, pair)
            elif refit and len(ran):
                val[ran] = least_squares_refit(chunk[ran], atoms, idx[ran], pair[ran])
            indices[start : start + chunk_tokens] = idx
            values[start : start + chunk_tokens] = val
    return indices, values


def _steps_for(x: Tensor):
    """The compiled ``gram`` steps for float32 on the CPU when numba is installed, else
    the torch ones."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        try:
            from itda_lens.core import pursuit_numba
        except ImportError:
            return _gram_steps
        return pursuit_numba.gram_steps
    return _gram_steps


def _gram_steps(
    correlations: Float[Tensor, "m width"],
    gram: GramRows,
    k: int,
    enough: Float[Tensor, " m"] | None = None,
) -> tuple[Int[Tensor, "m k"], Float[Tensor, "m k"], Float[Tensor, "m k k"], Int[Tensor, " r"] | None]:
    """The MP steps (``correlations`` is overwritten), also returning the chosen atoms'
    Gram block (read from the rows each step fetches anyway). The rows a step's tokens
    chose are fetched into ``gram`` first (``m`` is at most its buffer's length, so they
    all fit).

    With ``enough``, a token stops once its coefficients' squares (the energy the MP
    steps removed) reach it; its later slots repeat its first atom with value 0. The
    last output lists the tokens that ran all ``k`` steps (``None`` if all did).
    """
    m = correlations.shape[0]
    idx = torch.zeros(m, k, dtype=torch.long, device=correlations.device)
    val = torch.zeros(m, k, dtype=correlations.dtype, device=correlations.device)
    pair = torch.zeros(m, k, k, dtype=correlations.dtype, device=correlations.device)
    rows = torch.empty_like(correlations)
    live = None  # the output rows that the working tensors hold, once some tokens stopped
    c, i, v, p = correlations, idx, val, pair
    for step in range(k):
        if enough is not None and step and step % STOP_EVERY == 0:
            done = v[:, :step].double().square().sum(dim=1) >= enough
            if done.any():
                i[done, step:] = i[done, :1]
                if live is not None:
                    idx[live], val[live], pair[live] = i, v, p
                going = torch.nonzero(~done)[:, 0]
                live = going if live is None else live[going]
                if not len(live):
                    break
                c, i, v, p, enough = c[going], i[going], v[going], p[going], enough[going]
                rows = rows[: len(live)]
        best = _abs_argmax(c)
        coef = c.gather(1, best[:, None])
        i[:, step] = best
        v[:, step] = coef[:, 0]
        if not gram.complete:  # a sync: which rows are missing
            gram.fetch(torch.unique(best))
        slots = gram.slot[best]
        torch.index_select(gram.rows(), 0, slots, out=rows)
        p[:, step, : step + 1] = rows.gather(1, i[:, : step + 1])
        if step + 1 < k:
            c.addcmul_(rows, coef, value=-1.0)
    if live is not None and len(live):
        idx[live], val[live], pair[live] = i, v, p
    return idx, val, pair + pair.tril(diagonal=-1).transpose(1, 2), live


def _dense_steps(
    x: Float[Tensor, "m d_model"], padded_atoms: Float[Tensor, "width d_model"], k: int
) -> tuple[Int[Tensor, "m k"], Float[Tensor, "m k"], Float[Tensor, "m k k"]]:
    """The textbook MP steps, also returning the chosen atoms' Gram block."""
    m = x.shape[0]
    idx = torch.empty(m, k, dtype=torch.long, device=x.device)
    val = torch.empty(m, k, dtype=x.dtype, device=x.device)
    chosen = x.new_empty(m, k, x.shape[1])
    residual = x.clone()
    for step in range(k):
        correlations = residual @ padded_atoms.T
        best = _abs_argmax(correlations)
        coef = correlations.gather(1, best[:, None])
        idx[:, step] = best
        val[:, step] = coef[:, 0]
        chosen[:, step] = padded_atoms[best]
        residual.addcmul_(chosen[:, step], coef, value=-1.0)
    return idx, val, chosen @ chosen.transpose(1, 2)


def _abs_argmax(values: Float[Tensor, "m width"]) -> Int[Tensor, " m"]:
    """``values.abs().argmax(1)`` (first index on ties) for a width that is a multiple
    of :data:`~itda_lens.core.pursuit_blocks.BLOCK`.

    PyTorch's CPU ``argmax`` and ``aminmax`` are an order of magnitude slower than
    ``amax`` and ``amin``; the block with the largest magnitude, then the argmax inside
    it, gives the same index.
    """
    m, width = values.shape
    blocks = values.view(m, width // BLOCK, BLOCK)
    best_block = torch.maximum(blocks.amax(dim=2), blocks.amin(dim=2).neg_()).argmax(dim=1)
    inside = blocks[torch.arange(m, device=values.device), best_block].abs().argmax(dim=1)
    return best_block * BLOCK + inside


def least_squares_refit(
    x: Float[Tensor, "m d_model"], atoms: Float[Tensor, "n_atoms d_model"], idx: Int[Tensor, "m k"], pair: Float[Tensor, "m k k"]
) -> Float[Tensor, "m k"]:
    """Least-squares coefficients of ``x`` on the atoms ``idx``, given their Gram block
    ``pair = atoms[idx] @ atoms[idx].T``."""
    return solve_coefficients(pair, (atoms[idx] @ x[:, :, None])[:, :, 0], idx, refit=True)


def coefficients(
    x: Float[Tensor, "m d_model"],
    atoms: Float[Tensor, "n_atoms d_model"],
    idx: Int[Tensor, "m k"],
    refit: bool = True,
) -> Float[Tensor, "m k"]:
    """The coefficients that :func:`pursuit` gives for the chosen atoms ``idx``,
    recomputed as a differentiable function of ``x`` and ``atoms``."""
    chosen = atoms[idx]
    pair = chosen @ chosen.transpose(1, 2)
    rhs = (chosen @ x[:, :, None])[:, :, 0]
    return solve_coefficients(pair, rhs, idx, refit=refit)


def solve_coefficients(
    pair: Float[Tensor, "m k k"], rhs: Float[Tensor, "m k"], idx: Int[Tensor, "m k"], refit: bool
) -> Float[Tensor, "m k"]:
    """Coefficients from the chosen atoms' Gram block ``pair`` and ``rhs = atoms[idx] @ x``.

    With ``refit`` they solve the normal equations ``pair @ v = rhs`` (in float64, with
    a tiny ridge; a repeated index gets 0). Without it they follow the MP recursion
    ``v_t = rhs_t - sum_{s<t} pair[t, s] v_s``, a unit lower-triangular solve.
    """
    k = idx.shape[1]
    dtype = rhs.dtype
    pair, rhs = pair.double(), rhs.double()
    eye = torch.eye(k, dtype=pair.dtype, device=pair.device)
    if not refit:
        lower = pair.tril(diagonal=-1) + eye
        return torch.linalg.solve_triangular(lower, rhs[:, :, None], upper=False, unitriangular=True)[:, :, 0].to(dtype)
    repeated = (idx[:, :, None] == idx[:, None, :]).tril(diagonal=-1).any(dim=2)
    blocked = repeated[:, :, None] | repeated[:, None, :]
    pair = torch.where(blocked, eye, pair) + 1e-7 * eye
    rhs = rhs.masked_fill(repeated, 0.0)
    factor, info = torch.linalg.cholesky_ex(pair)
    solution = torch.cholesky_solve(rhs[:, :, None], factor)[:, :, 0]
    failed = info != 0
    if failed.any():
        fallback = torch.linalg.lstsq(pair[failed], rhs[failed][:, :, None]).solution[:, :, 0]
        solution = solution.index_put((failed.nonzero()[:, 0],), fallback)
    return solution.to(dtype)


def decode(
    indices: Int[Tensor, "n k"], values: Float[Tensor, "n k"], atoms: Float[Tensor, "n_atoms d_model"]
) -> Float[Tensor, "n d_model"]:
    """``sum_j values[:, j] * atoms[indices[:, j]]`` without a ``[n, k, d_model]`` tensor."""
    return F.embedding_bag(indices, atoms, per_sample_weights=values.to(atoms.dtype), mode="sum")

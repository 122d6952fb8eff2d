"""Representational similarity between two activation matrices on the same tokens.

Every measure takes ``X`` [n_tokens, d1] and ``Y`` [n_tokens, d2] whose rows are the
SAME tokens (row ``i`` of ``X`` and row ``i`` of ``Y`` describe one token) and returns a
Python ``float``.  Inputs may have any floating dtype and live on CPU or CUDA; all
arithmetic is done in float64 on ``X``'s device (``Y`` is moved there; MPS falls back
to CPU because it has no float64).

Inputs are validated: 2-D floating tensors, equal row counts, enough rows, finite
values.  Measures from the CKA/CCA family also reject a matrix whose rows are all
identical (zero variance), for which they are undefined.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "MEASURES",
    "debiased_cka",
    "linear_cka",
    "mutual_knn",
    "pwcca",
    "rbf_cka",
    "relative_representation_similarity",
    "similarity_matrix",
    "svcca",
]

# Float64 elements materialised per row chunk when streaming over tokens (64 MiB).
_CHUNK_ELEMS = 1 << 23
_F64 = torch.float64
_EPS64 = torch.finfo(_F64).eps


# --------------------------------------------------------------------------- helpers


def _check_matrix(A: object, name: str, fn: str) -> None:
    if not isinstance(A, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(A).__name__}")
    if A.ndim != 2:
        raise ValueError(f"{fn}: {name} must be 2-D [n_tokens, d], got shape {tuple(A.shape)}")
    if not A.is_floating_point():
        raise TypeError(f"{fn}: {name} must have a floating-point dtype, got {A.dtype}")
    if A.shape[1] == 0:
        raise ValueError(f"{fn}: {name} must have at least one column, got shape {tuple(A.shape)}")


def _row_step(width: int) -> int:
    return max(1, _CHUNK_ELEMS // max(1, width))


def _check_finite(A: Tensor, name: str, fn: str) -> None:
    step = _row_step(A.shape[1])
    for s in range(0, A.shape[0], step):
        if not bool(torch.isfinite(A[s : s + step]).all()):
            raise ValueError(
                f"{fn}: NaN/inf found in {name} (shape {tuple(A.shape)}); all values must be finite"
            )


def _check_not_constant(A: Tensor, name: str, fn: str) -> None:
    """Raise if every row of ``A`` equals the first row (zero variance)."""
    step = _row_step(A.shape[1])
    first = A[:1]
    for s in range(0, A.shape[0], step):
        if not bool((A[s : s + step] == first).all()):
            return
    raise ValueError(
        f"{fn}: {name} has zero variance (all {A.shape[0]} rows are identical); "
        "the similarity is undefined"
    )


def _validate_pair(X: Tensor, Y: Tensor, fn: str, min_rows: int = 2) -> torch.device:
    """Validate a pair of activation matrices and return the compute device."""
    _check_matrix(X, "X", fn)
    _check_matrix(Y, "Y", fn)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"{fn}: X and Y must have the same number of rows (tokens); got X with shape "
            f"{tuple(X.shape)} and Y with shape {tuple(Y.shape)}"
        )
    if X.shape[0] < min_rows:
        raise ValueError(f"{fn} needs at least {min_rows} rows (tokens), got {X.shape[0]}")
    _check_finite(X, "X", fn)
    _check_finite(Y, "Y", fn)
    dev = X.device
    return torch.device("cpu") if dev.type == "mps" else dev


def _check_int(value: object, name: str, fn: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
    return value


def _check_keep(keep: float, fn: str) -> float:
    keep = float(keep)
    if not (0.0 < keep <= 1.0):
        raise ValueError(f"{fn}: keep must be in (0, 1], got {keep}")
    return keep


def _f64(A: Tensor, dev: torch.device) -> Tensor:
    return A.to(device=dev, dtype=_F64)


def _col_mean(A: Tensor, dev: torch.device, step: int) -> Tensor:
    total = torch.zeros(A.shape[1], dtype=_F64, device=dev)
    for s in range(0, A.shape[0], step):
        total += _f64(A[s : s + step], dev).sum(0)
    return total / A.shape[0]


def _use_token_space(n: int, d1: int, d2: int) -> bool:
    """True when n x n token-space matrices are smaller than the d x d feature-space ones."""
    return 2 * n * n + n * (d1 + d2) < d1 * d1 + d2 * d2 + d1 * d2


def _centered_covs(
    X: Tensor, Y: Tensor, dev: torch.device, row_norms: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Stream over row chunks: Xc^T Xc, Yc^T Yc, Xc^T Yc and optionally ||xc_i||^2, ||yc_i||^2."""
    n, d1 = X.shape
    d2 = Y.shape[1]
    step = _row_step(d1 + d2)
    mx, my = _col_mean(X, dev, step), _col_mean(Y, dev, step)
    cxx = torch.zeros(d1, d1, dtype=_F64, device=dev)
    cyy = torch.zeros(d2, d2, dtype=_F64, device=dev)
    cxy = torch.zeros(d1, d2, dtype=_F64, device=dev)
    a = torch.empty(n, dtype=_F64, device=dev) if row_norms else None
    b = torch.empty(n, dtype=_F64, device=dev) if row_norms else None
    for s in range(0, n, step):
        xc = _f64(X[s : s + step], dev) - mx
        yc = _f64(Y[s : s + step], dev) - my
        cxx.addmm_(xc.T, xc)
        cyy.addmm_(yc.T, yc)
        cxy.addmm_(xc.T, yc)
        if a is not None and b is not None:
            a[s : s + step] = (xc * xc).sum(1)
            b[s : s + step] = (yc * yc).sum(1)
    return cxx, cyy, cxy, a, b


def _centered(A: Tensor, dev: torch.device) -> Tensor:
    A = _f64(A, dev)
    return A - A.mean(0, keepdim=True)


def _hsic_terms(
    X: Tensor, Y: Tensor, dev: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """tr(KL), tr(KK), tr(LL) for centered linear kernels, plus diag(K), diag(L).

    Uses feature-space Gram matrices (O(d^2) memory, streamed over tokens) unless the
    n x n token-space Gram matrices are smaller.
    """
    n, d1 = X.shape
    d2 = Y.shape[1]
    if _use_token_space(n, d1, d2):
        Xc, Yc = _centered(X, dev), _centered(Y, dev)
        K, L = Xc @ Xc.T, Yc @ Yc.T
        a, b = K.diagonal().clone(), L.diagonal().clone()
        return (K * L).sum(), (K * K).sum(), (L * L).sum(), a, b
    cxx, cyy, cxy, a, b = _centered_covs(X, Y, dev, row_norms=True)
    assert a is not None and b is not None
    return (cxy * cxy).sum(), (cxx * cxx).sum(), (cyy * cyy).sum(), a, b


def _subsample(n: int, m: int, seed: int) -> Tensor | None:
    """Deterministic subsample rule shared by rbf_cka and the relative anchors.

    Returns ``None`` (use all rows) if ``m >= n``, else
    ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m]`` sorted
    ascending (CPU generator, so identical on every device).
    """
    if m >= n:
        return None
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)[:m].sort().values


# ------------------------------------------------------------------------------ CKA


@torch.no_grad()
def linear_cka(X: Float[Tensor, "n d1"], Y: Float[Tensor, "n d2"]) -> float:
    """Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations
    Revisited", ICML), biased HSIC estimator.

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centered Xc, Yc.
    Computed from feature-space Gram matrices streamed over token chunks (O(d^2) memory),
    or from n x n token Gram matrices when those are smaller. Returns a value in [0, 1].
    """
    fn = "linear_cka"
    dev = _validate_pair(X, Y, fn)
    _check_not_constant(X, "X", fn)
    _check_not_constant(Y, "Y", fn)
    kl, kk, ll, _, _ = _hsic_terms(X, Y, dev)
    return float((kl / (kk.sqrt() * ll.sqrt())).clamp(0.0, 1.0))


def _unbiased_hsic(kl: Tensor, a: Tensor, b: Tensor, n: int) -> Tensor:
    """n(n-3) * HSIC_1 of Song et al. 2012 for centered linear kernels K, L.

    With K = Xc Xc^T (K 1 = 0), Kt = K - diag(K), a = diag(K), b = diag(L):
    tr(Kt Lt) = tr(KL) - a.b, 1^T Kt 1 = -sum(a), 1^T Kt Lt 1 = a.b, hence
    n(n-3) HSIC_1 = tr(KL) - n/(n-2) a.b + sum(a) sum(b) / ((n-1)(n-2)).
    """
    return kl - (n / (n - 2.0)) * (a @ b) + a.sum() * b.sum() / ((n - 1.0) * (n - 2.0))


@torch.no_grad()
def debiased_cka(X: Float[Tensor, "n d1"], Y: Float[Tensor, "n d2"]) -> float:
    """Debiased linear CKA: CKA with the unbiased HSIC estimator HSIC_1 of Song et al. 2012
    ("Feature Selection via Dependence Maximization", JMLR), as used by Nguyen et al. 2021
    ("Do Wide and Deep Networks Learn the Same Things?", ICLR).

    Exact feature-space form (no n x n matrices; see ``_unbiased_hsic``), O(d^2) memory.
    Needs n >= 4. Can be slightly negative; returns NaN if an unbiased self-HSIC
    estimate is <= 0 (possible for tiny or degenerate samples).
    """
    fn = "debiased_cka"
    dev = _validate_pair(X, Y, fn, min_rows=4)
    _check_not_constant(X, "X", fn)
    _check_not_constant(Y, "Y", fn)
    n = X.shape[0]
    kl, kk, ll, a, b = _hsic_terms(X, Y, dev)
    num = _unbiased_hsic(kl, a, b, n)
    hx = _unbiased_hsic(kk, a, a, n)
    hy = _unbiased_hsic(ll, b, b, n)
    if float(hx) <= 0.0 or float(hy) <= 0.0:
        return math.nan
    return float(num / (hx.sqrt() * hy.sqrt()))


def _median(v: Tensor) -> Tensor:
    """Standard median (mean of the two middle values for an even count)."""
    m = v.numel()
    lo = torch.kthvalue(v, (m + 1) // 2).values
    hi = torch.kthvalue(v, m // 2 + 1).values
    return (lo + hi) / 2


def _rbf_centered_gram(A: Tensor, sigma_frac: float, name: str, fn: str) -> Tensor:
    A = A - A.mean(0, keepdim=True)  # distances are translation invariant; less cancellation
    sq = (A * A).sum(1)
    D2 = (sq[:, None] + sq[None, :] - 2.0 * (A @ A.T)).clamp_min_(0.0)
    D2.fill_diagonal_(0.0)
    m = A.shape[0]
    upper = torch.ones(m, m, dtype=torch.bool, device=A.device).triu_(1)
    med = _median(D2[upper].sqrt())
    if float(med) <= 0.0:
        raise ValueError(
            f"{fn}: median pairwise distance of {name} is 0 (most sampled rows identical); "
            "RBF bandwidth is undefined"
        )
    sigma = sigma_frac * med
    K = torch.exp(-D2 / (2.0 * sigma * sigma))
    return K - K.mean(0, keepdim=True) - K.mean(1, keepdim=True) + K.mean()


@torch.no_grad()
def rbf_cka(
    X: Float[Tensor, "n d1"],
    Y: Float[Tensor, "n d2"],
    sigma_frac: float = 0.8,
    max_tokens: int = 2048,
    seed: int = 0,
) -> float:
    """RBF-kernel CKA (Kornblith et al. 2019), biased HSIC estimator.

    K_ij = exp(-||x_i - x_j||^2 / (2 sigma_X^2)) with sigma_X = sigma_frac * median of the
    Euclidean distances over pairs i < j (computed per matrix); likewise for Y.
    (Kornblith et al.'s code instead takes the median of squared distances including the
    zero diagonal.) If n > max_tokens, the same rows are used for X and Y:
    ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_tokens]``
    sorted ascending. Memory O(max_tokens^2).
    """
    fn = "rbf_cka"
    dev = _validate_pair(X, Y, fn)
    _check_int(max_tokens, "max_tokens", fn, 2)
    if not (math.isfinite(float(sigma_frac)) and float(sigma_frac) > 0.0):
        raise ValueError(f"{fn}: sigma_frac must be a finite positive number, got {sigma_frac}")
    _check_not_constant(X, "X", fn)
    _check_not_constant(Y, "Y", fn)
    idx = _subsample(X.shape[0], max_tokens, seed)
    Xs = X if idx is None else X[idx.to(X.device)]
    Ys = Y if idx is None else Y[idx.to(Y.device)]
    Kc = _rbf_centered_gram(_f64(Xs, dev), float(sigma_frac), "X", fn)
    Lc = _rbf_centered_gram(_f64(Ys, dev), float(sigma_frac), "Y", fn)
    kl, kk, ll = (Kc * Lc).sum(), (Kc * Kc).sum(), (Lc * Lc).sum()
    return float((kl / (kk.sqrt() * ll.sqrt())).clamp(0.0, 1.0))


# ------------------------------------------------------------------------------ CCA


def _n_keep(lam: Tensor, keep: float, n: int, d: int) -> int:
    """Leading directions explaining >= keep of the variance, capped at the numerical rank.

    ``lam`` holds variances (squared singular values), descending. Directions with
    lam <= lam_max * max(n, d) * eps64 count as zero.
    """
    tol = lam[0] * max(n, d) * _EPS64
    rank = max(1, int((lam > tol).sum()))
    frac = torch.cumsum(lam, 0) / lam.sum()
    k = int((frac < keep - 1e-12).sum()) + 1
    return min(k, rank)


def _cca(
    X: Tensor, Y: Tensor, keep: float, dev: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """SVD-reduce each side to ``keep`` of its variance, then CCA.

    Returns rho [r] (canonical correlations, descending, r = min(kx, ky)), P [kx, r],
    Q [ky, r] (singular vectors of Ux^T Uy), and per side the kept variances lam [k] and
    right singular vectors V [d, k] of the centered matrix.
    """
    n, d1 = X.shape
    d2 = Y.shape[1]
    if _use_token_space(n, d1, d2):
        # Thin SVD of the centered data: Xc = U diag(s) V^T.
        Ux, sx, Vhx = torch.linalg.svd(_centered(X, dev), full_matrices=False)
        Uy, sy, Vhy = torch.linalg.svd(_centered(Y, dev), full_matrices=False)
        lx, ly = sx * sx, sy * sy
        kx, ky = _n_keep(lx, keep, n, d1), _n_keep(ly, keep, n, d2)
        Vx, Vy = Vhx[:kx].T, Vhy[:ky].T
        M = Ux[:, :kx].T @ Uy[:, :ky]
    else:
        # Same quantities from streamed covariances: eig(Xc^T Xc) = V diag(s^2) V^T and
        # U = Xc V diag(s)^-1, so Ux^T Uy = diag(sx)^-1 Vx^T (Xc^T Yc) Vy diag(sy)^-1.
        cxx, cyy, cxy, _, _ = _centered_covs(X, Y, dev, row_norms=False)
        lx, Vx = torch.linalg.eigh(cxx)
        ly, Vy = torch.linalg.eigh(cyy)
        lx, Vx = lx.flip(0).clamp_min(0.0), Vx.flip(1)
        ly, Vy = ly.flip(0).clamp_min(0.0), Vy.flip(1)
        kx, ky = _n_keep(lx, keep, n, d1), _n_keep(ly, keep, n, d2)
        Vx, Vy = Vx[:, :kx], Vy[:, :ky]
        Wx = Vx / lx[:kx].sqrt()
        Wy = Vy / ly[:ky].sqrt()
        M = Wx.T @ cxy @ Wy
    P, rho, Qh = torch.linalg.svd(M, full_matrices=False)
    return rho.clamp(0.0, 1.0), P, Qh.T, lx[:kx], Vx, ly[:ky], Vy


@torch.no_grad()
def svcca(X: Float[Tensor, "n d1"], Y: Float[Tensor, "n d2"], keep: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017, "SVCCA: Singular Vector Canonical Correlation Analysis for
    Deep Learning Dynamics and Interpretability", NeurIPS).

    Center each matrix, keep the fewest top singular directions explaining >= ``keep`` of
    its variance (capped at the numerical rank), run CCA between the reduced matrices and
    return the mean of the min(kx, ky) canonical correlations. Symmetric; in [0, 1].
    """
    fn = "svcca"
    dev = _validate_pair(X, Y, fn)
    keep = _check_keep(keep, fn)
    _check_not_constant(X, "X", fn)
    _check_not_constant(Y, "Y", fn)
    rho = _cca(X, Y, keep, dev)[0]
    return float(rho.mean())


@torch.no_grad()
def pwcca(X: Float[Tensor, "n d1"], Y: Float[Tensor, "n d2"], keep: float = 1.0) -> float:
    """Projection-weighted CCA (Morcos et al. 2018, "Insights on representational similarity
    in neural networks with canonical correlation", NeurIPS).

    CCA as in :func:`svcca` (``keep=1.0``: plain CCA on the numerical-rank subspace).
    On the side with fewer kept directions (X on ties), the canonical variates h_i
    (unit-norm, mutually orthogonal n-vectors) get weights
    alpha_i = sum_j |<h_i, z_j>| over the centered original neuron columns z_j;
    returns sum_i alpha_i rho_i / sum_i alpha_i. Not symmetric in general.
    """
    fn = "pwcca"
    dev = _validate_pair(X, Y, fn)
    keep = _check_keep(keep, fn)
    _check_not_constant(X, "X", fn)
    _check_not_constant(Y, "Y", fn)
    rho, P, Q, lx, Vx, ly, Vy = _cca(X, Y, keep, dev)
    # Canonical variates H = U R (R = P or Q) satisfy H^T Zc = R^T diag(sqrt(lam)) V^T.
    if Vx.shape[1] <= Vy.shape[1]:
        proj = P.T @ (lx.sqrt()[:, None] * Vx.T)
    else:
        proj = Q.T @ (ly.sqrt()[:, None] * Vy.T)
    alpha = proj.abs().sum(1)
    return float((alpha * rho).sum() / alpha.sum())


# ------------------------------------------------------------------- neighbourhoods


@torch.no_grad()
def relative_representation_similarity(
    X: Float[Tensor, "n d1"],
    Y: Float[Tensor, "n d2"],
    n_anchors: int = 300,
    seed: int = 0,
    center: bool = False,
    chunk_size: int = 4096,
) -> float:
    """Relative-representation similarity (Moschella et al. 2023, "Relative representations
    enable zero-shot latent space communication", ICLR).

    Each token i becomes r_X(i) = [cos(x_i, x_a)]_{a in A} for a shared anchor row set A
    (the same rows for X and Y); returns mean_i cos(r_X(i), r_Y(i)) over all n tokens
    (anchors included). A = all rows if n_anchors >= n, else
    ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_anchors]``.
    ``center=True`` subtracts each matrix's column mean first (not in the paper).
    Zero-norm rows give cosine 0. Memory O(chunk_size * n_anchors).
    """
    fn = "relative_representation_similarity"
    dev = _validate_pair(X, Y, fn)
    _check_int(n_anchors, "n_anchors", fn, 1)
    _check_int(chunk_size, "chunk_size", fn, 1)
    n = X.shape[0]
    idx = _subsample(n, n_anchors, seed)
    idx = torch.arange(n) if idx is None else idx
    mx = _col_mean(X, dev, _row_step(X.shape[1])) if center else None
    my = _col_mean(Y, dev, _row_step(Y.shape[1])) if center else None

    def rows(A: Tensor, mean: Tensor | None, sel: Tensor | slice) -> Tensor:
        R = _f64(A[sel], dev)
        return F.normalize(R - mean if mean is not None else R, dim=1)

    ax = rows(X, mx, idx.to(X.device))
    ay = rows(Y, my, idx.to(Y.device))
    total = torch.zeros((), dtype=_F64, device=dev)
    for s in range(0, n, chunk_size):
        rx = F.normalize(rows(X, mx, slice(s, s + chunk_size)) @ ax.T, dim=1)
        ry = F.normalize(rows(Y, my, slice(s, s + chunk_size)) @ ay.T, dim=1)
        total += (rx * ry).sum()
    return float(total / n)


@torch.no_grad()
def mutual_knn(
    X: Float[Tensor, "n d1"], Y: Float[Tensor, "n d2"], k: int = 10, chunk_size: int = 1024
) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024, "The Platonic Representation
    Hypothesis", ICML).

    mean_i |kNN_X(i) & kNN_Y(i)| / k, neighbours by cosine similarity among the other
    n - 1 tokens (self excluded). Needs n >= k + 1. Ties (e.g. duplicate rows) are broken
    arbitrarily by ``torch.topk``. Memory O(n * chunk_size) besides float64 copies of X, Y.
    """
    fn = "mutual_knn"
    _check_int(k, "k", fn, 1)
    _check_int(chunk_size, "chunk_size", fn, 1)
    dev = _validate_pair(X, Y, fn, min_rows=k + 1)
    n = X.shape[0]
    Xn = F.normalize(_f64(X, dev), dim=1)
    Yn = F.normalize(_f64(Y, dev), dim=1)
    hits = torch.zeros((), dtype=torch.int64, device=dev)
    for s in range(0, n, chunk_size):
        e = min(n, s + chunk_size)
        rows = torch.arange(e - s, device=dev)
        sx = Xn[s:e] @ Xn.T
        sy = Yn[s:e] @ Yn.T
        sx[rows, rows + s] = -math.inf
        sy[rows, rows + s] = -math.inf
        ix = sx.topk(k, dim=1).indices
        iy = sy.topk(k, dim=1).indices
        hits += (ix[:, :, None] == iy[:, None, :]).sum()
    return float(hits) / (n * k)


# ------------------------------------------------------------------------ registry

MEASURES: dict[str, Callable[..., float]] = {
    "linear_cka": linear_cka,
    "debiased_cka": debiased_cka,
    "rbf_cka": rbf_cka,
    "svcca": svcca,
    "pwcca": pwcca,
    "relative": relative_representation_similarity,
    "mutual_knn": mutual_knn,
}

# Measures with f(X, Y) == f(Y, X); used to fill only one triangle when comparing a
# dict of activations with itself.
_SYMMETRIC = frozenset(MEASURES) - {"pwcca"}


def similarity_matrix(
    acts_a: Mapping[str | int, Float[Tensor, "n _d"]],
    acts_b: Mapping[str | int, Float[Tensor, "n _d"]],
    measure: str = "linear_cka",
    **kwargs: object,
) -> Float[Tensor, "a b"]:
    """Compute ``MEASURES[measure](acts_a[ka], acts_b[kb], **kwargs)`` for every layer pair.

    Returns a float64 CPU tensor [len(acts_a), len(acts_b)]; rows/columns follow the
    dicts' iteration order. When both dicts hold the same tensors and the measure is
    symmetric (all but "pwcca"), only one triangle is computed.
    """
    if not isinstance(measure, str) or measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose one of {sorted(MEASURES)}")
    if len(acts_a) == 0 or len(acts_b) == 0:
        raise ValueError(
            f"similarity_matrix needs non-empty dicts, got {len(acts_a)} and {len(acts_b)} entries"
        )
    fn = MEASURES[measure]
    keys_a, keys_b = list(acts_a), list(acts_b)
    same = measure in _SYMMETRIC and (
        acts_a is acts_b
        or (keys_a == keys_b and all(acts_a[k] is acts_b[k] for k in keys_a))
    )
    out = torch.empty(len(keys_a), len(keys_b), dtype=_F64)
    for i, ka in enumerate(keys_a):
        for j, kb in enumerate(keys_b):
            if same and j < i:
                out[i, j] = out[j, i]
                continue
            try:
                out[i, j] = fn(acts_a[ka], acts_b[kb], **kwargs)
            except (ValueError, TypeError) as err:
                raise type(err)(f"{measure} failed for layer pair ({ka!r}, {kb!r}): {err}") from err
    return out

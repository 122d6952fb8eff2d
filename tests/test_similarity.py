"""Tests for itda_lens.tools.compare.similarity against direct textbook implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import itda_lens.tools.compare.similarity as sim
from itda_lens.tools.compare import (
    MEASURES,
    debiased_cka,
    linear_cka,
    mutual_knn,
    pwcca,
    rbf_cka,
    relative_representation_similarity,
    similarity_matrix,
    svcca,
)

EPS = np.finfo(np.float64).eps

# Shapes (n, d1, d2) that exercise the feature-space and token-space code paths.
FEATURE_SHAPES = [(60, 5, 8), (40, 7, 3)]
TOKEN_SHAPES = [(10, 20, 30), (12, 25, 6)]
ALL_SHAPES = FEATURE_SHAPES + TOKEN_SHAPES


def _pair(n: int, d1: int, d2: int, seed: int = 0, offset: float = 0.0):
    """Correlated random pair (Y partly linear in X) with optional mean offsets."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d1, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(d1, d2, generator=g, dtype=torch.float64)
    Y = Y + 0.7 * torch.randn(n, d2, generator=g, dtype=torch.float64)
    Y = Y * torch.rand(d2, generator=g, dtype=torch.float64) * 3 + 0.1
    return X + offset, Y - 2 * offset


def _orth(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


@pytest.fixture
def small_chunks(monkeypatch):
    """Force the streaming code paths to use many tiny row chunks."""
    monkeypatch.setattr(sim, "_CHUNK_ELEMS", 16)


# ------------------------------------------------------------------ references


def ref_hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2


def ref_cka_from_kernels(K: np.ndarray, L: np.ndarray) -> float:
    return ref_hsic_biased(K, L) / math.sqrt(ref_hsic_biased(K, K) * ref_hsic_biased(L, L))


def ref_linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    return ref_cka_from_kernels(X @ X.T, Y @ Y.T)


def ref_hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """HSIC_1 of Song et al. 2012 (Eq. 5), written out literally."""
    n = K.shape[0]
    Kt = K - np.diag(np.diag(K))
    Lt = L - np.diag(np.diag(L))
    one = np.ones(n)
    term1 = np.trace(Kt @ Lt)
    term2 = (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ Kt @ Lt @ one)
    return float(term1 + term2 - term3) / (n * (n - 3))


def ref_debiased_cka(X: np.ndarray, Y: np.ndarray) -> float:
    K, L = X @ X.T, Y @ Y.T  # uncentered: HSIC_1 is translation invariant
    return ref_hsic_unbiased(K, L) / math.sqrt(ref_hsic_unbiased(K, K) * ref_hsic_unbiased(L, L))


def ref_rbf_kernel(X: np.ndarray, sigma_frac: float) -> np.ndarray:
    n = X.shape[0]
    D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    sigma = sigma_frac * np.median(D[np.triu_indices(n, 1)])
    return np.exp(-(D**2) / (2 * sigma**2))


def ref_rbf_cka(X: np.ndarray, Y: np.ndarray, sigma_frac: float) -> float:
    return ref_cka_from_kernels(ref_rbf_kernel(X, sigma_frac), ref_rbf_kernel(Y, sigma_frac))


def ref_svd_reduce(A: np.ndarray, keep: float) -> tuple[np.ndarray, np.ndarray]:
    """Centered data projected on the top singular directions explaining `keep` variance.

    The numerical-rank cut (variance <= lam_max * max(n, d) * eps) is the documented rule.
    """
    Ac = A - A.mean(0)
    _, s, Vt = np.linalg.svd(Ac, full_matrices=False)
    lam = s**2
    rank = max(1, int((lam > lam[0] * max(A.shape) * EPS).sum()))
    frac = np.cumsum(lam) / lam.sum()
    k = min(int(np.searchsorted(frac, keep - 1e-12)) + 1, rank)
    return Ac @ Vt[:k].T, Ac


def ref_cca(A: np.ndarray, B: np.ndarray):
    """Classical CCA: singular values of Saa^-1/2 Sab Sbb^-1/2 and canonical weights."""

    def inv_sqrt(S):
        w, V = np.linalg.eigh(S)
        return V @ np.diag(w**-0.5) @ V.T

    Ra, Rb = inv_sqrt(A.T @ A), inv_sqrt(B.T @ B)
    u, rho, vt = np.linalg.svd(Ra @ (A.T @ B) @ Rb, full_matrices=False)
    return np.clip(rho, 0, 1), Ra @ u, Rb @ vt.T


def ref_svcca(X: np.ndarray, Y: np.ndarray, keep: float) -> float:
    rho, _, _ = ref_cca(ref_svd_reduce(X, keep)[0], ref_svd_reduce(Y, keep)[0])
    return float(rho.mean())


def ref_pwcca(X: np.ndarray, Y: np.ndarray, keep: float) -> float:
    """Morcos et al. 2018: QR-orthonormalised canonical variates, weights sum_j |<h_i, z_j>|."""
    Xr, Xc = ref_svd_reduce(X, keep)
    Yr, Yc = ref_svd_reduce(Y, keep)
    rho, wa, wb = ref_cca(Xr, Yr)
    H, Z = (Xr @ wa, Xc) if Xr.shape[1] <= Yr.shape[1] else (Yr @ wb, Yc)
    Q, _ = np.linalg.qr(H)
    alpha = np.abs(Q.T @ Z).sum(1)
    return float((alpha * rho).sum() / alpha.sum())


def ref_relative(X: np.ndarray, Y: np.ndarray, anchors: np.ndarray) -> float:
    def cos(u, v):
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    sims = []
    for i in range(X.shape[0]):
        rx = np.array([cos(X[i], X[a]) for a in anchors])
        ry = np.array([cos(Y[i], Y[a]) for a in anchors])
        sims.append(cos(rx, ry))
    return float(np.mean(sims))


def ref_mutual_knn(X: np.ndarray, Y: np.ndarray, k: int) -> float:
    def knn(A):
        An = A / np.linalg.norm(A, axis=1, keepdims=True)
        S = An @ An.T
        np.fill_diagonal(S, -np.inf)
        return [set(np.argsort(-S[i])[:k].tolist()) for i in range(A.shape[0])]

    nx, ny = knn(X), knn(Y)
    return float(np.mean([len(a & b) / k for a, b in zip(nx, ny)]))


# ------------------------------------------------------- agreement with references


@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_linear_cka_matches_gram_hsic(shape):
    assert sim._use_token_space(*shape) == (shape in TOKEN_SHAPES)
    X, Y = _pair(*shape, offset=3.0)
    Xn, Yn = X.numpy(), Y.numpy()
    expected = ref_linear_cka(Xn - Xn.mean(0), Yn - Yn.mean(0))
    assert linear_cka(X, Y) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_debiased_cka_matches_unbiased_hsic(shape):
    X, Y = _pair(*shape, offset=3.0)
    assert debiased_cka(X, Y) == pytest.approx(ref_debiased_cka(X.numpy(), Y.numpy()), abs=1e-9)


def test_streamed_feature_space_paths_match(small_chunks):
    X, Y = _pair(50, 4, 6, offset=5.0)
    Xn, Yn = X.numpy(), Y.numpy()
    expected = ref_linear_cka(Xn - Xn.mean(0), Yn - Yn.mean(0))
    assert linear_cka(X, Y) == pytest.approx(expected, abs=1e-10)
    assert debiased_cka(X, Y) == pytest.approx(ref_debiased_cka(Xn, Yn), abs=1e-9)
    assert svcca(X, Y, keep=0.9) == pytest.approx(ref_svcca(Xn, Yn, 0.9), abs=1e-8)
    assert pwcca(X, Y) == pytest.approx(ref_pwcca(Xn, Yn, 1.0), abs=1e-8)
    anchors = sim._subsample(50, 7, 0).numpy()
    ref = ref_relative(Xn - Xn.mean(0), Yn - Yn.mean(0), anchors)
    assert relative_representation_similarity(X, Y, n_anchors=7, center=True) == pytest.approx(ref, abs=1e-10)


@pytest.mark.parametrize("sigma_frac", [0.5, 0.8, 2.0])
@pytest.mark.parametrize("shape", [(30, 4, 6), (9, 12, 3)])
def test_rbf_cka_matches_explicit_kernels(shape, sigma_frac):
    X, Y = _pair(*shape, offset=1.0)
    expected = ref_rbf_cka(X.numpy(), Y.numpy(), sigma_frac)
    assert rbf_cka(X, Y, sigma_frac=sigma_frac) == pytest.approx(expected, abs=1e-10)


def test_rbf_cka_subsample_rule():
    X, Y = _pair(40, 3, 5)
    idx = torch.randperm(40, generator=torch.Generator().manual_seed(7))[:15]
    expected = ref_rbf_cka(X[idx].numpy(), Y[idx].numpy(), 0.8)
    assert rbf_cka(X, Y, max_tokens=15, seed=7) == pytest.approx(expected, abs=1e-10)
    assert rbf_cka(X, Y, max_tokens=15, seed=7) == rbf_cka(X, Y, max_tokens=15, seed=7)
    assert rbf_cka(X, Y, max_tokens=15, seed=8) != pytest.approx(expected, abs=1e-6)
    assert rbf_cka(X, Y, max_tokens=40) == pytest.approx(ref_rbf_cka(X.numpy(), Y.numpy(), 0.8), abs=1e-10)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_svcca_matches_numpy_reference(shape, keep):
    X, Y = _pair(*shape, offset=2.0)
    assert svcca(X, Y, keep=keep) == pytest.approx(ref_svcca(X.numpy(), Y.numpy(), keep), abs=1e-8)


def _lowrank_pair(n: int, d1: int, d2: int, r1: int, r2: int, seed: int = 0):
    """Exactly low-rank pair (d > n) so that r1 + r2 < n and CCA is non-degenerate."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, max(r1, r2), generator=g, dtype=torch.float64)
    Zy = Z[:, :r2] + 0.5 * torch.randn(n, r2, generator=g, dtype=torch.float64)
    X = Z[:, :r1] @ torch.randn(r1, d1, generator=g, dtype=torch.float64) + 1.0
    Y = Zy @ torch.randn(r2, d2, generator=g, dtype=torch.float64) - 2.0
    return X, Y


@pytest.mark.parametrize("keep", [0.8, 0.95, 1.0])
@pytest.mark.parametrize("shape", FEATURE_SHAPES + [(12, 20, 30, 3, 4), (14, 25, 18, 5, 2)])
def test_pwcca_matches_numpy_reference(shape, keep):
    # PWCCA weights are only unique when canonical correlations are distinct, so the
    # token-space (d > n) cases use low-rank data with r1 + r2 < n.
    X, Y = _pair(*shape, offset=2.0) if len(shape) == 3 else _lowrank_pair(*shape)
    assert sim._use_token_space(*shape[:3]) == (len(shape) == 5)
    assert pwcca(X, Y, keep=keep) == pytest.approx(ref_pwcca(X.numpy(), Y.numpy(), keep), abs=1e-8)
    # Side selection: swapping the arguments must match the reference with swapped args too.
    assert pwcca(Y, X, keep=keep) == pytest.approx(ref_pwcca(Y.numpy(), X.numpy(), keep), abs=1e-8)


@pytest.mark.parametrize("n_anchors", [1, 5, 30, 100])
def test_relative_matches_loop_reference(n_anchors):
    X, Y = _pair(30, 6, 4, offset=0.5)
    idx = sim._subsample(30, n_anchors, 3)
    anchors = np.arange(30) if idx is None else idx.numpy()
    if n_anchors < 30:  # documented anchor rule
        expected_idx = torch.randperm(30, generator=torch.Generator().manual_seed(3))[:n_anchors]
        assert sorted(anchors.tolist()) == sorted(expected_idx.tolist())
    expected = ref_relative(X.numpy(), Y.numpy(), anchors)
    got = relative_representation_similarity(X, Y, n_anchors=n_anchors, seed=3, chunk_size=7)
    assert got == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_mutual_knn_matches_brute_force(k):
    X, Y = _pair(37, 5, 6)
    assert mutual_knn(X, Y, k=k, chunk_size=8) == pytest.approx(ref_mutual_knn(X.numpy(), Y.numpy(), k))
    assert mutual_knn(X, Y, k=k, chunk_size=8) == mutual_knn(X, Y, k=k, chunk_size=100)


# ------------------------------------------------------------ hand-computed cases


def test_hand_case_one_dimensional():
    # Centered x = (-1, 0, 1), y = (0, -1, 1): Pearson r = 1 / 2.
    X = torch.tensor([[1.0], [2.0], [3.0]])
    Y = torch.tensor([[1.0], [0.0], [2.0]])
    assert linear_cka(X, Y) == pytest.approx(0.25)  # linear CKA of 1-D features = r^2
    assert svcca(X, Y) == pytest.approx(0.5)  # single canonical correlation = |r|
    assert pwcca(X, Y) == pytest.approx(0.5)


def test_hand_case_two_rows_cka_is_one():
    # With n = 2 every centered kernel is proportional to [[1, -1], [-1, 1]].
    X = torch.tensor([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]])
    Y = torch.tensor([[5.0], [-2.0]])
    assert linear_cka(X, Y) == pytest.approx(1.0)
    assert rbf_cka(X, Y) == pytest.approx(1.0)


def test_hand_case_relative():
    # Anchors = both rows. r_X = rows of I; r_Y = [1, 1/sqrt2], [1/sqrt2, 1];
    # cos([1, 0], [1, 1/sqrt2]) = 1 / sqrt(3/2) for both tokens.
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    Y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    got = relative_representation_similarity(X, Y, n_anchors=2)
    assert got == pytest.approx(math.sqrt(2.0 / 3.0))


def test_hand_case_mutual_knn():
    # Unit vectors at these angles: cosine kNN = nearest angle.
    # X nn: 0->1, 1->0, 2->1, 3->4, 4->3;  Y nn: 0->2, 1->2, 2->1, 3->1, 4->3.
    # Agreement on tokens 2 and 4 -> 2 / 5.
    def circle(deg):
        r = torch.tensor(deg, dtype=torch.float64) * math.pi / 180
        return torch.stack([r.cos(), r.sin()], 1)

    X = circle([0.0, 10.0, 30.0, 90.0, 95.0])
    Y = circle([0.0, 40.0, 30.0, 90.0, 180.0])
    assert mutual_knn(X, Y, k=1) == pytest.approx(0.4)
    assert mutual_knn(X, Y, k=4) == pytest.approx(1.0)  # k = n - 1: everyone else


def test_debiased_cka_degenerate_self_hsic_is_nan():
    # x = (3, -1, -1, -1): n(n-3) HSIC_1(K, K) = 144 - 2 * 84 + 144 / 6 = 0.
    X = torch.tensor([[3.0], [-1.0], [-1.0], [-1.0]])
    Y = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    assert math.isnan(debiased_cka(X, Y))


# ------------------------------------------------------------------- invariances


def test_linear_cka_invariances():
    X, Y = _pair(50, 6, 9)
    base = linear_cka(X, Y)
    Xt = 3.7 * X @ _orth(6, 1) + 11.0
    Yt = 0.02 * Y @ _orth(9, 2) - 4.0
    assert linear_cka(Xt, Yt) == pytest.approx(base, abs=1e-10)
    assert debiased_cka(Xt, Yt) == pytest.approx(debiased_cka(X, Y), abs=1e-10)
    assert rbf_cka(Xt, Yt) == pytest.approx(rbf_cka(X, Y), abs=1e-10)
    assert linear_cka(X, Y) == pytest.approx(linear_cka(Y, X), abs=1e-12)
    # Not invariant to a general (anisotropic) invertible linear map.
    A = torch.diag(torch.tensor([10.0, 1.0, 1.0, 0.1, 1.0, 1.0], dtype=torch.float64))
    assert abs(linear_cka(X @ A, Y) - base) > 1e-3


def test_cca_invariant_to_invertible_linear_maps():
    X, Y = _pair(80, 5, 7)
    g = torch.Generator().manual_seed(5)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64) + 3 * torch.eye(5, dtype=torch.float64)
    assert svcca(X @ A + 1.0, Y, keep=1.0) == pytest.approx(svcca(X, Y, keep=1.0), abs=1e-8)
    assert svcca(X, Y, keep=0.95) == pytest.approx(svcca(Y, X, keep=0.95), abs=1e-10)


def test_neighbourhood_measures_invariances():
    X, Y = _pair(40, 6, 5)
    scale = torch.rand(40, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.1
    Xt = scale * (X @ _orth(6, 4))  # rotation + positive per-token scaling keep all cosines
    assert relative_representation_similarity(Xt, Y, n_anchors=10) == pytest.approx(
        relative_representation_similarity(X, Y, n_anchors=10), abs=1e-10
    )
    assert mutual_knn(Xt, Y, k=5) == pytest.approx(mutual_knn(X, Y, k=5))
    assert mutual_knn(X, Y, k=5) == pytest.approx(mutual_knn(Y, X, k=5))


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_identical_inputs_give_one(name):
    X, _ = _pair(30, 6, 2, offset=1.0)
    kwargs = {"k": 5} if name == "mutual_knn" else {}
    assert MEASURES[name](X, X.clone(), **kwargs) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name", sorted(MEASURES))
def test_low_precision_inputs_use_float64_internally(name, dtype):
    X, Y = _pair(24, 5, 4)
    Xl, Yl = X.to(dtype), Y.to(dtype)
    kwargs = {"k": 3} if name == "mutual_knn" else {}
    got = MEASURES[name](Xl, Yl, **kwargs)
    assert isinstance(got, float)
    assert got == pytest.approx(MEASURES[name](Xl.double(), Yl.double(), **kwargs), abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("name", sorted(MEASURES))
def test_cuda_matches_cpu(name):
    X, Y = _pair(64, 6, 9)
    kwargs = {"k": 4} if name == "mutual_knn" else {}
    cpu = MEASURES[name](X.float(), Y.float(), **kwargs)
    gpu = MEASURES[name](X.float().cuda(), Y.float().cuda(), **kwargs)
    assert gpu == pytest.approx(cpu, abs=1e-8)


# ------------------------------------------------------------------------ errors


def _kwargs(name):
    return {"k": 2} if name == "mutual_knn" else {}


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_error_row_mismatch_names_both_shapes(name):
    with pytest.raises(ValueError, match=r"same number of rows.*\(10, 3\).*\(9, 4\)"):
        MEASURES[name](torch.randn(10, 3), torch.randn(9, 4), **_kwargs(name))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", sorted(MEASURES))
def test_error_non_finite(name, bad):
    X, Y = torch.randn(10, 3), torch.randn(10, 4)
    Y[3, 1] = bad
    with pytest.raises(ValueError, match=r"NaN/inf found in Y"):
        MEASURES[name](X, Y, **_kwargs(name))
    with pytest.raises(ValueError, match=r"NaN/inf found in X"):
        MEASURES[name](Y, X, **_kwargs(name))


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_error_too_few_rows(name):
    with pytest.raises(ValueError, match=r"needs at least \d+ rows"):
        MEASURES[name](torch.randn(1, 3), torch.randn(1, 4), **_kwargs(name))


def test_error_minimum_rows_specific():
    with pytest.raises(ValueError, match=r"debiased_cka needs at least 4 rows"):
        debiased_cka(torch.randn(3, 2), torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"mutual_knn needs at least 11 rows"):
        mutual_knn(torch.randn(10, 2), torch.randn(10, 2), k=10)


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_error_bad_rank_and_dtype(name):
    with pytest.raises(ValueError, match=r"X must be 2-D"):
        MEASURES[name](torch.randn(10), torch.randn(10, 4), **_kwargs(name))
    with pytest.raises(ValueError, match=r"Y must have at least one column"):
        MEASURES[name](torch.randn(10, 2), torch.randn(10, 0), **_kwargs(name))
    with pytest.raises(TypeError, match=r"floating-point dtype"):
        MEASURES[name](torch.randn(10, 2), torch.ones(10, 4, dtype=torch.int64), **_kwargs(name))
    with pytest.raises(TypeError, match=r"must be a torch.Tensor"):
        MEASURES[name](np.zeros((10, 2)), torch.randn(10, 4), **_kwargs(name))


@pytest.mark.parametrize("name", ["linear_cka", "debiased_cka", "rbf_cka", "svcca", "pwcca"])
def test_error_constant_input(name):
    with pytest.raises(ValueError, match=r"X has zero variance"):
        MEASURES[name](torch.ones(8, 3), torch.randn(8, 2))


def test_error_bad_parameters():
    X, Y = torch.randn(20, 3), torch.randn(20, 4)
    with pytest.raises(ValueError, match=r"keep must be in \(0, 1\]"):
        svcca(X, Y, keep=0.0)
    with pytest.raises(ValueError, match=r"keep must be in \(0, 1\]"):
        pwcca(X, Y, keep=1.5)
    with pytest.raises(ValueError, match=r"sigma_frac"):
        rbf_cka(X, Y, sigma_frac=0.0)
    with pytest.raises(ValueError, match=r"max_tokens must be >= 2"):
        rbf_cka(X, Y, max_tokens=1)
    with pytest.raises(ValueError, match=r"k must be >= 1"):
        mutual_knn(X, Y, k=0)
    with pytest.raises(ValueError, match=r"n_anchors must be >= 1"):
        relative_representation_similarity(X, Y, n_anchors=0)
    Xdup = torch.cat([torch.zeros(15, 3), torch.randn(5, 3)])
    with pytest.raises(ValueError, match=r"median pairwise distance of X is 0"):
        rbf_cka(Xdup, Y)


# --------------------------------------------------------------- similarity_matrix


def _layers(n_layers: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return {i: torch.randn(25, 3 + i, generator=g) for i in range(n_layers)}


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_similarity_matrix_matches_pairwise_calls(name):
    a = _layers(3, 0)
    b = {"emb": torch.randn(25, 4), "out": a[1] @ torch.randn(4, 6)}
    kwargs = {"k": 4} if name == "mutual_knn" else {}
    M = similarity_matrix(a, b, name, **kwargs)
    assert M.shape == (3, 2) and M.dtype == torch.float64 and M.device.type == "cpu"
    for i, ka in enumerate(a):
        for j, kb in enumerate(b):
            assert M[i, j].item() == pytest.approx(MEASURES[name](a[ka], b[kb], **kwargs), abs=1e-12)


def test_similarity_matrix_symmetric_shortcut(monkeypatch):
    acts = _layers(4, 1)
    calls = []

    def counting(X, Y, **kw):
        calls.append(1)
        return linear_cka(X, Y, **kw)

    monkeypatch.setitem(sim.MEASURES, "linear_cka", counting)
    M = similarity_matrix(acts, acts, "linear_cka")
    assert len(calls) == 4 * 5 // 2
    assert torch.equal(M, M.T)
    assert torch.allclose(M.diagonal(), torch.ones(4, dtype=torch.float64))
    full = torch.tensor([[linear_cka(acts[i], acts[j]) for j in acts] for i in acts], dtype=torch.float64)
    assert torch.allclose(M, full, atol=1e-12)

    calls.clear()
    monkeypatch.setitem(sim.MEASURES, "pwcca", lambda X, Y, **kw: calls.append(1) or pwcca(X, Y, **kw))
    similarity_matrix(acts, acts, "pwcca")
    assert len(calls) == 16  # asymmetric measure: every pair computed


def test_similarity_matrix_errors():
    acts = _layers(2, 2)
    with pytest.raises(ValueError, match=r"unknown measure 'cka'"):
        similarity_matrix(acts, acts, "cka")
    with pytest.raises(ValueError, match=r"non-empty"):
        similarity_matrix({}, acts, "linear_cka")
    bad = {"l0": torch.randn(24, 3)}
    with pytest.raises(ValueError, match=r"layer pair \(0, 'l0'\).*same number of rows"):
        similarity_matrix(acts, bad, "linear_cka")

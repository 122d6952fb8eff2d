import sys

import pytest
import torch
import torch.nn.functional as F

import itda_lens
from itda_lens.core import pursuit, pursuit_numba
from itda_lens.core.gram_rows import GramRows


def textbook_mp(x, atoms, k):
    residual = x.clone()
    indices, values = [], []
    for _ in range(k):
        corr = residual @ atoms.T
        best = corr.abs().argmax(dim=1)
        coef = corr[torch.arange(len(x)), best]
        residual -= coef[:, None] * atoms[best]
        indices.append(best)
        values.append(coef)
    return torch.stack(indices, 1), torch.stack(values, 1)


@pytest.fixture
def problem():
    torch.manual_seed(0)
    atoms = F.normalize(torch.randn(700, 48, dtype=torch.float64), dim=1)
    x = torch.randn(90, 48, dtype=torch.float64)
    return x, atoms


def test_gram_and_dense_equal_textbook_mp(problem):
    x, atoms = problem
    want_i, want_v = textbook_mp(x, atoms, 12)
    for gram in (GramRows(atoms), None):
        idx, val = pursuit.pursuit(x, atoms, 12, gram=gram, refit=False)
        assert torch.equal(idx, want_i)
        torch.testing.assert_close(val, want_v)


def test_refit_is_least_squares_on_chosen_atoms(problem):
    x, atoms = problem
    idx, val = pursuit.pursuit(x, atoms, 10, gram=GramRows(atoms), refit=True)
    mp_idx, mp_val = pursuit.pursuit(x, atoms, 10, refit=False)
    assert torch.equal(idx, mp_idx)
    for row in range(5):
        chosen = atoms[idx[row]]
        want = torch.linalg.lstsq(chosen.T, x[row][:, None]).solution[:, 0]
        torch.testing.assert_close(val[row], want, atol=1e-5, rtol=1e-5)
    refit_err = (x - pursuit.decode(idx, val, atoms)).pow(2).sum(1)
    mp_err = (x - pursuit.decode(mp_idx, mp_val, atoms)).pow(2).sum(1)
    assert (refit_err <= mp_err + 1e-9).all() and (refit_err < mp_err).any()


def test_chunking_does_not_change_codes(problem):
    x, atoms = problem
    gram = GramRows(atoms)
    whole = pursuit.pursuit(x, atoms, 8, gram=gram)
    chunked = pursuit.pursuit(x, atoms, 8, gram=gram, chunk_tokens=7)
    assert torch.equal(whole[0], chunked[0])
    torch.testing.assert_close(whole[1], chunked[1])


def test_default_chunks_bound_memory_of_both_methods(monkeypatch):
    # A small dictionary: the dense steps' chosen atoms [chunk, k, d_model], not the
    # correlations [chunk, width], are what must stay within CHUNK_ELEMENTS.
    monkeypatch.setattr(pursuit, "CHUNK_ELEMENTS", 4096)
    atoms = F.normalize(torch.randn(128, 64), dim=1)
    x = torch.randn(300, 64)
    seen = {"gram": [], "dense": []}

    def gram_steps(correlations, *rest):
        seen["gram"].append(correlations.shape[0])
        return pursuit._gram_steps(correlations, *rest)

    def dense_steps(chunk, *rest, _original=pursuit._dense_steps):
        seen["dense"].append(chunk.shape[0])
        return _original(chunk, *rest)

    monkeypatch.setattr(pursuit, "_steps_for", lambda x: gram_steps)
    monkeypatch.setattr(pursuit, "_dense_steps", dense_steps)
    pursuit.pursuit(x, atoms, 8, gram=GramRows(atoms))
    pursuit.pursuit(x, atoms, 8)
    assert max(seen["gram"]) * pursuit.padded_width(128) <= 4096
    assert max(seen["dense"]) * 8 * 64 <= 4096
    assert sum(seen["gram"]) == sum(seen["dense"]) == 300


@pytest.fixture
def problem32():
    torch.manual_seed(1)
    atoms = F.normalize(torch.randn(700, 48), dim=1)
    x = torch.randn(90, 48) * torch.rand(90, 1) * 10
    return x, atoms


def steps_inputs(x, atoms, **options):
    gram = GramRows(atoms, **options)
    correlations = x.new_zeros(len(x), gram.width)
    correlations[:, : len(atoms)] = x @ atoms.T
    return correlations, gram


@pytest.mark.parametrize("tolerance", [None, 0.2])
def test_compiled_steps_equal_torch_steps(problem32, tolerance):
    x, atoms = problem32
    correlations, gram = steps_inputs(x, atoms)
    enough = None if tolerance is None else (1 - tolerance) * x.double().square().sum(1)
    want = pursuit._gram_steps(correlations.clone(), gram, 12, enough)
    got = pursuit_numba.gram_steps(correlations.clone(), gram, 12, enough)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    torch.testing.assert_close(got[2], want[2])
    if tolerance is None:
        assert got[3] is want[3] is None
    else:  # some tokens stop at each check
        assert torch.equal(got[3], want[3]) and 0 < len(want[3]) < len(x)


def test_compiled_steps_read_rows_inside_a_wider_buffer(problem32):
    # The builder keeps its Gram rows in a buffer with room to grow.
    x, atoms = problem32
    correlations, gram = steps_inputs(x, atoms)
    roomy = GramRows(atoms, room=1500)
    assert roomy.buffer.shape[1] > roomy.width
    want = pursuit_numba.gram_steps(correlations.clone(), gram, 10)
    got = pursuit_numba.gram_steps(correlations.clone(), roomy, 10)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("tolerance", [None, 0.2])
def test_a_small_gram_budget_gives_the_same_codes(problem32, monkeypatch, compiled, tolerance):
    # 40 of 700 rows fit: tokens pause for rows, rows are evicted and computed again.
    x, atoms = problem32
    if not compiled:
        monkeypatch.setattr(pursuit, "_steps_for", lambda x: pursuit._gram_steps)
    small = GramRows(atoms, budget_bytes=40 * 768 * 4)
    assert len(small.buffer) == 40 and not small.complete
    want = pursuit.pursuit(x, atoms, 16, gram=GramRows(atoms), tolerance=tolerance)
    got = pursuit.pursuit(x, atoms, 16, gram=small, tolerance=tolerance)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])  # the torch steps take smaller chunks: other rounding
    assert small.n_held == 40 and int(small.uses.sum()) == x.shape[0] * 16


@pytest.mark.parametrize("compiled", [True, False])
def test_tolerance_stops_only_tokens_within_it(problem32, monkeypatch, compiled):
    x, atoms = problem32
    if not compiled:
        monkeypatch.setattr(pursuit, "_steps_for", lambda x: pursuit._gram_steps)
    gram = GramRows(atoms)
    full_idx, full_val = pursuit.pursuit(x, atoms, 16, gram=gram)
    idx, val = pursuit.pursuit(x, atoms, 16, gram=gram, tolerance=0.1)
    error = (x - pursuit.decode(idx, val, atoms)).pow(2).sum(1) / x.pow(2).sum(1)
    stopped = (idx[:, -1] == idx[:, 0]) & (val[:, -1] == 0)
    assert stopped.any() and (~stopped).any()
    assert (error[stopped] <= 0.1).all()
    assert torch.equal(idx[~stopped], full_idx[~stopped])
    torch.testing.assert_close(val[~stopped], full_val[~stopped])


def test_torch_steps_when_numba_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "itda_lens.core.pursuit_numba", None)  # import raises ImportError
    monkeypatch.delattr(itda_lens.core, "pursuit_numba")
    assert pursuit._steps_for(torch.zeros(2, 128)) is pursuit._gram_steps
    assert pursuit._steps_for(torch.zeros(2, 128, dtype=torch.float64)) is pursuit._gram_steps


def test_repeated_atom_gets_zero_after_refit():
    atoms = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=1)
    x = torch.tensor([[3.0, 0.5, 0.0]])
    idx = torch.tensor([[0, 1, 0]])
    val = pursuit.least_squares_refit(x, atoms, idx, atoms[idx] @ atoms[idx].transpose(1, 2))
    assert val[0, 2] == 0
    torch.testing.assert_close(pursuit.decode(idx, val, atoms), x)


@pytest.mark.parametrize("n", [128, 1024, 1152])
def test_abs_argmax_matches_torch(n):
    torch.manual_seed(n)
    values = torch.randn(17, n)
    values[0] = 0.0
    values[1, -1] = -50.0
    values[2, 3] = 9.0
    values[2, n - 1] = -9.0  # a tie: the first index wins
    assert torch.equal(pursuit._abs_argmax(values), values.abs().argmax(dim=1))


@pytest.mark.parametrize("refit", [True, False])
def test_differentiable_coefficients_match(problem, refit):
    x, atoms = problem
    idx, val = pursuit.pursuit(x, atoms, 9, gram=GramRows(atoms), refit=refit)
    x = x.clone().requires_grad_()
    again = pursuit.coefficients(x, atoms, idx, refit=refit)
    torch.testing.assert_close(again, val)
    again.sum().backward()
    assert x.grad.abs().sum() > 0


def test_k_must_fit_dictionary(problem):
    x, atoms = problem
    with pytest.raises(ValueError, match="between 1 and the number of atoms"):
        pursuit.pursuit(x, atoms[:3], 4)
    with pytest.raises(ValueError, match=r"tolerance .* must lie in \(0, 1\)"):
        pursuit.pursuit(x, atoms, 4, gram=GramRows(atoms), tolerance=1.5)


def test_decode_is_weighted_sum(problem):
    x, atoms = problem
    idx = torch.randint(0, len(atoms), (4, 6))
    val = torch.randn(4, 6, dtype=torch.float64)
    want = (val[:, :, None] * atoms[idx]).sum(1)
    torch.testing.assert_close(pursuit.decode(idx, val, atoms), want)


@pytest.mark.parametrize("tolerance", [None, 0.2])
@pytest.mark.parametrize("screened", [None, 1 / 1000])
def test_int8_rows_choose_the_atoms_of_float32_rows(monkeypatch, tolerance, screened):
    # A shared direction, as activations have; with 1/1000 a step that would compute
    # more than two correlations exactly pauses for all of them.
    if screened:
        monkeypatch.setattr(pursuit_numba, "SCREENED", screened)
    torch.manual_seed(3)
    atoms = F.normalize(torch.randn(2000, 48) + 1.0, dim=1)
    x = (torch.randn(120, 48) + 1.0) * torch.rand(120, 1) * 10
    quantized = GramRows(atoms, budget_bytes=2048 * 2000)
    assert quantized.quantized
    want = pursuit.pursuit(x, atoms, 24, gram=GramRows(atoms), tolerance=tolerance)
    got = pursuit.pursuit(x, atoms, 24, gram=quantized, tolerance=tolerance)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    if screened:
        assert quantized.recomputed > 10
    textbook = textbook_mp(x, atoms, 24)
    assert torch.equal(pursuit.pursuit(x, atoms, 24, gram=quantized, refit=False)[0], textbook[0])
    assert torch.equal(pursuit.pursuit(x, atoms, 1, gram=quantized)[0], textbook_mp(x, atoms, 1)[0])  # the exact first step only

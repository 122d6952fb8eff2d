import pytest
import torch
import torch.nn.functional as F

from itda_lens import pursuit


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
    for gram in (pursuit.gram_matrix(atoms), None):
        idx, val = pursuit.pursuit(x, atoms, 12, gram=gram, refit=False)
        assert torch.equal(idx, want_i)
        torch.testing.assert_close(val, want_v)


def test_refit_is_least_squares_on_chosen_atoms(problem):
    x, atoms = problem
    idx, val = pursuit.pursuit(x, atoms, 10, gram=pursuit.gram_matrix(atoms), refit=True)
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
    gram = pursuit.gram_matrix(atoms)
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
    seen = {}
    for method in ("_gram_steps", "_dense_steps"):
        original = getattr(pursuit, method)

        def record(first, *rest, _original=original, _method=method):
            seen.setdefault(_method, []).append(first.shape[0])
            return _original(first, *rest)

        monkeypatch.setattr(pursuit, method, record)
    pursuit.pursuit(x, atoms, 8, gram=pursuit.gram_matrix(atoms))
    pursuit.pursuit(x, atoms, 8)
    assert max(seen["_gram_steps"]) * pursuit.padded_width(128) <= 4096
    assert max(seen["_dense_steps"]) * 8 * 64 <= 4096
    assert sum(seen["_gram_steps"]) == sum(seen["_dense_steps"]) == 300


def test_repeated_atom_gets_zero_after_refit():
    atoms = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=1)
    x = torch.tensor([[3.0, 0.5, 0.0]])
    idx = torch.tensor([[0, 1, 0]])
    val = pursuit.least_squares_refit(x @ atoms.T, idx, atoms[idx] @ atoms[idx].transpose(1, 2))
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
    idx, val = pursuit.pursuit(x, atoms, 9, gram=pursuit.gram_matrix(atoms), refit=refit)
    x = x.clone().requires_grad_()
    again = pursuit.coefficients(x, atoms, idx, refit=refit)
    torch.testing.assert_close(again, val)
    again.sum().backward()
    assert x.grad.abs().sum() > 0


def test_k_must_fit_dictionary(problem):
    x, atoms = problem
    with pytest.raises(ValueError, match="between 1 and the number of atoms"):
        pursuit.pursuit(x, atoms[:3], 4)


def test_decode_is_weighted_sum(problem):
    x, atoms = problem
    idx = torch.randint(0, len(atoms), (4, 6))
    val = torch.randn(4, 6, dtype=torch.float64)
    want = (val[:, :, None] * atoms[idx]).sum(1)
    torch.testing.assert_close(pursuit.decode(idx, val, atoms), want)

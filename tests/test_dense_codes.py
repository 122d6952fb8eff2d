"""Dense codes and the decoder under SAE Lens' names: ``SparseCodes.to_dense`` and ``ITDA.W_dec``."""

from __future__ import annotations

import pytest
import torch

from itda_lens import ITDA, SparseCodes


@pytest.fixture(scope="module")
def itda() -> ITDA:
    torch.manual_seed(0)
    return ITDA.from_atoms(torch.randn(50, 16), k=5)


def test_to_dense_decodes_with_w_dec_and_keeps_two_field_unpacking(itda):
    x = torch.randn(3, 7, 16)
    codes = itda.encode(x)
    indices, values = codes
    dense = codes.to_dense(itda.n_atoms)
    assert dense.shape == (3, 7, itda.n_atoms)
    torch.testing.assert_close(dense, itda.dense(codes))
    torch.testing.assert_close(dense @ itda.W_dec, itda.decode(codes))
    assert itda.W_dec is itda.atoms
    live = dense != 0  # signed coefficients: live means != 0, not > 0
    assert (live.sum(-1) == (values != 0).sum(-1)).all() and (dense < 0).any()
    assert torch.equal(torch.topk(dense.abs(), 1).indices[..., 0], indices.gather(-1, values.abs().argmax(-1, keepdim=True))[..., 0])


def test_positions_not_encoded_are_zero(itda):
    codes = itda.encode(torch.randn(2, 16))
    skipped = SparseCodes(torch.cat([codes.indices, torch.full((1, itda.k), -1)]), torch.cat([codes.values, torch.zeros(1, itda.k)]))
    dense = skipped.to_dense(itda.n_atoms)
    assert (dense[2] == 0).all()
    torch.testing.assert_close(dense[:2], codes.to_dense(itda.n_atoms))


def test_bad_width(itda):
    codes = itda.encode(torch.randn(2, 16))
    top = int(codes.indices.max())
    with pytest.raises(ValueError, match=f"the codes use atom {top} but n_atoms={top}; pass the dictionary's itda.n_atoms"):
        codes.to_dense(top)
    with pytest.raises(TypeError, match="n_atoms must be an int, got"):
        codes.to_dense(itda)

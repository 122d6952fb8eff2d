"""Dictionaries of the reference implementation: their threshold, coefficients and keys."""

from __future__ import annotations

import pytest
import torch

from itda_lens.core.itda import ITDA, relative_error
from itda_lens.core.provenance import Provenance
from itda_lens.core.reference import relative_threshold
from itda_lens.tools.compare import jaccard, jaccard_matrix


def reference_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """The reference's rule, written out: the mean over dimensions of the squared
    difference of the unit vectors."""
    unit = x / x.norm(dim=1, keepdim=True)
    unit_hat = x_hat / x_hat.norm(dim=1, keepdim=True)
    return (unit - unit_hat).pow(2).mean(dim=1)


def test_relative_threshold_adds_what_the_reference_adds_for_projections():
    torch.manual_seed(0)
    d_model, k = 64, 6
    x = torch.randn(4000, d_model, dtype=torch.float64)
    atoms = torch.randn(4000, k, d_model, dtype=torch.float64)
    coefficients = torch.linalg.lstsq(atoms.transpose(1, 2), x[:, :, None]).solution
    x_hat = (atoms.transpose(1, 2) @ coefficients)[:, :, 0]  # the projection of x on its k atoms
    loss = reference_loss(x, x_hat)
    ordered = loss.sort().values
    for rank in (800, 2000, 3600):
        loss_threshold = ((ordered[rank] + ordered[rank + 1]) / 2).item()  # between two tokens' losses
        added_here = relative_error(x, x_hat) > relative_threshold(loss_threshold, d_model)
        added_there = loss > loss_threshold
        assert 0 < int(added_there.sum()) < len(x)
        assert torch.equal(added_here, added_there)


def test_a_threshold_the_reference_never_reaches_has_no_relative_threshold():
    assert relative_threshold(2.0 / 64, 64) is None
    assert relative_threshold(1e-3, 64) == pytest.approx(1 - (1 - 0.032) ** 2)


def _reference(folder, metadata: str):
    folder.mkdir()
    torch.save(torch.randn(6, 8), folder / "atoms.pt")
    torch.save(torch.stack([torch.arange(6), torch.arange(6)], 1), folder / "atom_indices.pt")
    (folder / "metadata.yaml").write_text(metadata)
    return ITDA.load(folder)


def test_a_reference_dictionary_keeps_its_loss_threshold_and_plain_coefficients(tmp_path):
    itda = _reference(tmp_path / "ref", "k: 2\nloss_threshold: 0.01\n")
    assert itda.config.build["loss_threshold"] == 0.01
    assert itda.config.threshold == pytest.approx(1 - (1 - 0.01 * 8 / 2) ** 2)
    assert itda.config.refit is False
    itda.save(tmp_path / "saved")
    assert ITDA.load(tmp_path / "saved").config == itda.config


def test_jaccard_of_sequence_indices_and_document_hashes_is_an_error(tmp_path):
    reference = _reference(tmp_path / "ref", "k: 2\n")
    provenance = Provenance(*(torch.arange(6) for _ in range(5)))
    ours = ITDA.from_atoms(torch.randn(6, 8), k=2, provenance=provenance)
    assert jaccard(ours, ours, by="token") == 1.0 and jaccard(reference, reference, by="token") == 1.0
    for call in (lambda: jaccard(reference, ours, by="token"), lambda: jaccard_matrix([ours], [reference], by="token")):
        with pytest.raises(ValueError, match=r"key their atoms' documents differently \(document hash and reference sequence index\)"):
            call()

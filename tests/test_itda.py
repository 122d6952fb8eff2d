import json

import pytest
import torch
import yaml

from itda_lens import ITDA, FormatError, Provenance


@pytest.fixture
def itda():
    torch.manual_seed(0)
    atoms = torch.randn(300, 32)
    provenance = Provenance(
        doc=torch.arange(300) * 7 - 1000,
        token_index=torch.arange(300),
        char_start=torch.arange(300) * 5,
        char_end=torch.arange(300) * 5 + 4,
        token_id=torch.arange(300) + 10,
        token=[f"t{i}" for i in range(300)],
    )
    return ITDA.from_atoms(atoms, k=8, provenance=provenance, model="toy", hook="blocks.0.hook_resid_post")


def test_from_atoms_normalises(itda):
    torch.testing.assert_close(itda.atoms.norm(dim=1), torch.ones(300))


def test_encode_any_leading_shape(itda):
    x = torch.randn(2, 3, 5, 32)
    codes = itda.encode(x)
    assert codes.indices.shape == (2, 3, 5, 8) and codes.values.shape == (2, 3, 5, 8)
    assert itda.decode(codes).shape == x.shape
    flat = itda.encode(x.reshape(-1, 32))
    assert torch.equal(flat.indices.reshape(2, 3, 5, 8), codes.indices)


def test_error_term_returns_input_and_passes_gradients(itda):
    x = torch.randn(6, 32, requires_grad=True)
    out = itda(x, error_term=True)
    assert torch.equal(out, x.detach()) or (out - x).abs().max() < 1e-5
    out.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    spliced = itda(x.detach())
    assert (spliced - x.detach()).abs().max() > 1e-3


def test_dense_codes(itda):
    codes = itda.encode(torch.randn(4, 32))
    dense = itda.dense(codes)
    assert dense.shape == (4, 300)
    torch.testing.assert_close(dense @ itda.atoms, itda.decode(codes))


def test_bad_inputs(itda):
    with pytest.raises(ValueError, match="width 31 but this dictionary has d_model=32"):
        itda.encode(torch.randn(3, 31))
    x = torch.randn(3, 32)
    x[1, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        itda.encode(x)
    with pytest.raises(ValueError, match="k must be an int from 1 to 300, got 301"):
        itda.encode(torch.randn(3, 32), k=301)
    with pytest.raises(ValueError, match="zero vectors"):
        ITDA.from_atoms(torch.zeros(2, 4))


def test_gram_budget_changes_speed_not_codes(itda):
    x = torch.randn(20, 32)
    with_gram = itda.encode(x)
    assert itda.gram_rows().complete
    itda.gram_bytes = 10 * 384 * 4  # ten rows of 300 atoms, padded to 384 columns
    assert len(itda.gram_rows().buffer) == 10
    cached = itda.encode(x)
    itda.gram_bytes = 0
    assert itda.gram_rows() is None
    without = itda.encode(x)
    assert torch.equal(with_gram.indices, cached.indices) and torch.equal(with_gram.values, cached.values)
    assert torch.equal(with_gram.indices, without.indices)
    torch.testing.assert_close(with_gram.values, without.values)


def test_save_load_roundtrip(itda, tmp_path):
    itda.save(tmp_path / "d")
    loaded = ITDA.load(tmp_path / "d")
    assert torch.equal(loaded.atoms, itda.atoms)
    assert loaded.config == itda.config
    for column in ("doc", "token_index", "char_start", "char_end", "token_id"):
        assert torch.equal(getattr(loaded.provenance, column), getattr(itda.provenance, column))
    assert loaded.provenance.token == itda.provenance.token


def test_save_needs_existing_parent(itda, tmp_path):
    with pytest.raises(FileNotFoundError, match="parent folder"):
        itda.save(tmp_path / "missing" / "d")


def test_corrupted_files_give_clear_errors(itda, tmp_path):
    folder = itda.save(tmp_path / "d")
    data = (folder / "atoms.safetensors").read_bytes()
    (folder / "atoms.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="corrupted or truncated"):
        ITDA.load(folder)
    (folder / "atoms.safetensors").write_bytes(b"garbage")
    with pytest.raises(FormatError, match="corrupted or truncated"):
        ITDA.load(folder)
    itda.save(folder)
    header = json.loads((folder / "config.json").read_text())
    header["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(header))
    with pytest.raises(FormatError, match="format version 99"):
        ITDA.load(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(FormatError, match="corrupted JSON"):
        ITDA.load(folder)
    (folder / "provenance.json").unlink()
    with pytest.raises(FormatError, match="missing"):
        ITDA.load(folder)
    with pytest.raises(FileNotFoundError):
        ITDA.load(tmp_path / "nowhere")


def test_reference_layout_loads_without_unpickling(tmp_path):
    folder = tmp_path / "ref"
    folder.mkdir()
    torch.save(torch.randn(50, 16), folder / "atoms.pt")
    torch.save(torch.stack([torch.arange(50) // 10, torch.arange(50) % 10], 1), folder / "atom_indices.pt")
    (folder / "metadata.yaml").write_text(yaml.safe_dump({"k": 12, "layer": 3, "lm_name": "gpt2", "loss_threshold": 0.01}))
    itda = ITDA.load(folder)
    assert (itda.n_atoms, itda.d_model, itda.k) == (50, 16, 12)
    assert itda.config.hook == "blocks.3.hook_resid_post" and itda.config.model == "gpt2"
    assert itda.provenance.token_index[13] == 3 and itda.provenance.doc[13] == 1


class _Exploit:
    def __reduce__(self):
        return (open, ("/tmp/itda_lens_pwned", "w"))


def test_reference_layout_refuses_pickled_objects(tmp_path):
    import pathlib

    folder = tmp_path / "ref"
    folder.mkdir()
    torch.save({"atoms": _Exploit()}, folder / "atoms.pt")
    marker = pathlib.Path("/tmp/itda_lens_pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(FormatError, match="not a plain tensor file"):
        ITDA.load(folder)
    assert not marker.exists()


def test_provenance_select_refuses_the_not_encoded_sentinel():
    provenance = Provenance.unknown(3)
    assert len(provenance.select([2, 0])) == 2
    with pytest.raises(IndexError, match="not encoded"):
        provenance.select(torch.tensor([0, -1]))

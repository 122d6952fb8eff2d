"""Bad input given to the API directly: each case gets one clear error naming what was
wrong (or, for a file, leaves the files untouched), never a guess, a hang or a wrong result.

Files a dictionary folder points at (FIFOs, links to /dev/zero, folders, huge sparse
files, YAML alias bombs) are tried in one subprocess with a time and memory limit, so a
regression fails these tests instead of hanging or exhausting the suite. Everything else
runs in-process, on the real SmolLM2-135M-Instruct for the TransformerLens and nnsight
verbs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nnsight
import pytest
import torch
from safetensors.torch import save_file

import itda_lens.backends.nnsight as itn
from itda_lens import ITDA, FormatError, ITDAConfig, Provenance
from itda_lens.backends.transformer_lens import attach
from itda_lens.core.ops import position_mask
from itda_lens.tools.attribution import attribute, log_prob, logit_diff, measure_ablations

HOOK = "blocks.3.hook_resid_post"
LAYER = 3
MODEL = "smollm2-135m-instruct"
V1 = Path(__file__).parent / "data" / "format-v1"


# ================================================================== files: special kinds
def _saved_folder(folder: Path) -> Path:
    atoms = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    return ITDA.from_atoms(atoms, k=2).save(folder)


def _reference_folder(folder: Path) -> Path:
    folder.mkdir()
    torch.save(torch.randn(6, 8), folder / "atoms.pt")
    torch.save(torch.stack([torch.arange(6), torch.arange(6)], 1), folder / "atom_indices.pt")
    (folder / "metadata.yaml").write_text("k: 2\nlayer: 1\n")
    return folder


#: A metadata.yaml of 9 levels of 9 aliases: 387 million strings once expanded.
ALIAS_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))

#: (layout, file, what replaces it) -> the start of the FormatError expected.
SPECIAL = {
    **{
        (layout, name, kind): "is not a regular file"
        for layout, names in (
            ("saved", ("config.json", "provenance.json", "atoms.safetensors")),
            ("reference", ("atoms.pt", "atom_indices.pt", "metadata.yaml")),
        )
        for name in names
        for kind in ("fifo", "dev-zero", "folder")
    },
    **{("saved", name, "sparse-8GiB"): "bytes, more than" for name in ("config.json", "provenance.json", "atoms.safetensors")},
    ("reference", "metadata.yaml", "alias-bomb"): "uses YAML aliases",
}


def _replace(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "sparse-8GiB":
        with open(path, "wb") as file:
            file.truncate(8 << 30)
    else:
        path.write_text(ALIAS_BOMB)


def run_special_cases(root: str) -> None:
    """Load every :data:`SPECIAL` case with a 10 s alarm and 2 GiB more address space;
    print ``{case: [error type, message]}`` as JSON. Runs in a subprocess."""
    import resource
    import signal

    def timeout(signum, frame):
        raise TimeoutError("hung for 10 s")

    signal.signal(signal.SIGALRM, timeout)
    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), resource.RLIM_INFINITY))
    results = {}
    for number, (layout, name, kind) in enumerate(SPECIAL):
        folder = Path(root) / f"case{number}"
        (_saved_folder if layout == "saved" else _reference_folder)(folder)
        _replace(folder / name, kind)
        signal.alarm(10)
        try:
            ITDA.load(folder)
            results["/".join((layout, name, kind))] = ["loaded", ""]
        except BaseException as err:  # noqa: BLE001 - every outcome is recorded and judged by the test
            results["/".join((layout, name, kind))] = [type(err).__name__, str(err)]
        finally:
            signal.alarm(0)
    print(json.dumps(results))


@pytest.fixture(scope="module")
def special_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("special")
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), os.environ.get("PYTHONPATH", "")])}
    code = f"import sys; sys.path.insert(0, {str(here)!r}); import test_bad_input_api as t; t.run_special_cases(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero are POSIX")
@pytest.mark.parametrize("case", list(SPECIAL), ids=["/".join(case) for case in SPECIAL])
def test_special_files_are_refused_without_reading(special_results, case):
    kind, message = special_results["/".join(case)]
    assert kind == "FormatError", message
    assert SPECIAL[case] in message and case[1] in message


# ================================================================== files: contents
@pytest.fixture
def saved(tmp_path) -> Path:
    atoms = torch.randn(30, 16, generator=torch.Generator().manual_seed(0))
    provenance = Provenance(*(torch.arange(30) for _ in range(5)), [f"t{i}" for i in range(30)])
    itda = ITDA.from_atoms(atoms, k=4, provenance=provenance, model=MODEL, hook=HOOK, threshold=0.1)
    return itda.save(tmp_path / "dictionary")


def _edit_config(folder: Path, edit) -> None:
    header = json.loads((folder / "config.json").read_text())
    edit(header)
    (folder / "config.json").write_text(json.dumps(header))


def _set(field: str, value):
    return lambda header: header["config"].__setitem__(field, value)


def _set_top(field: str, value):
    return lambda header: header.__setitem__(field, value)


def _drop(field: str):
    return lambda header: header["config"].pop(field)


#: An edit of config.json -> the message expected.
CONFIG_CASES = {
    "k-float": (_set("k", 3.7), r"config field 'k' must be an int, got 3.7"),
    "k-string": (_set("k", "4"), r"config field 'k' must be an int, got '4'"),
    "k-bool": (_set("k", True), r"config field 'k' must be an int, got True"),
    "k-zero": (_set("k", 0), r"config field 'k' must be an int >= 1, got 0"),
    "k-above-n_atoms": (_set("k", 31), r"config field 'k' must be an int from 1 to 30, got 31"),
    "d_model-string": (_set("d_model", "16"), r"config field 'd_model' must be an int"),
    "d_model-zero": (_set("d_model", 0), r"config field 'd_model' must be an int >= 1"),
    "d_model-missing": (_drop("d_model"), r"config field 'd_model' is missing"),
    "dtype-int": (_set("dtype", "int64"), r"config field 'dtype' must be one of float16, bfloat16, float32, float64"),
    "dtype-number": (_set("dtype", 32), r"config field 'dtype' must be one of"),
    "refit-string": (_set("refit", "yes"), r"config field 'refit' must be True or False, got 'yes'"),
    "threshold-above-1": (_set("threshold", 1.5), r"config field 'threshold' is a relative error in \(0, 1\)"),
    "threshold-string": (_set("threshold", "0.1"), r"config field 'threshold' must be a number"),
    "threshold-nan": (_set("threshold", float("nan")), r"config field 'threshold' must be a finite number"),
    "model-number": (_set("model", 5), r"config field 'model' must be a string or None"),
    "hook-list": (_set("hook", ["blocks.3"]), r"config field 'hook' must be a string or None"),
    "build-string": (_set("build", "x"), r"config field 'build' must be a dict"),
    "unknown-field": (_set("sparsity", 3), r"unknown config fields \['sparsity'\]: a newer itda-lens"),
    "config-list": (_set_top("config", [1]), r"field 'config' must be a dict"),
    "n_atoms-string": (_set_top("n_atoms", "30"), r"field 'n_atoms' must be an int"),
    "n_atoms-zero": (_set_top("n_atoms", 0), r"field 'n_atoms' must be an int >= 1"),
    "unknown-top-field": (_set_top("extra", 1), r"unknown fields \['extra'\]: a newer itda-lens"),
    "sha256-missing": (lambda header: header.pop("sha256"), r"field 'sha256' must give the hex SHA-256"),
    "sha256-malformed": (_set_top("sha256", {"atoms.safetensors": "zz", "provenance.json": "00"}), r"field 'sha256' must give"),
}


@pytest.mark.parametrize("edit, message", list(CONFIG_CASES.values()), ids=list(CONFIG_CASES))
def test_config_fields_are_checked_and_named(saved, edit, message):
    _edit_config(saved, edit)
    with pytest.raises(FormatError, match=r"config.json \(format version 2\): " + message):
        ITDA.load(saved)


#: An edit of config.json's header -> the message expected (the version itself is wrong).
VERSION_CASES = {
    "string": ("2", r"has format version '2'; this itda-lens reads versions 1, 2: it is damaged"),
    "bool": (True, r"has format version True"),
    "newer": (3, r"has format version 3; this itda-lens reads versions 1, 2: a newer itda-lens wrote it"),
    "zero": (0, r"has format version 0"),
    "missing": (None, r"has format version None"),
}


@pytest.mark.parametrize("version, message", list(VERSION_CASES.values()), ids=list(VERSION_CASES))
def test_format_version_is_checked(saved, version, message):
    _edit_config(saved, _set_top("format_version", version))
    with pytest.raises(FormatError, match=message):
        ITDA.load(saved)


#: Raw bytes of config.json -> the message expected.
RAW_CONFIG_CASES = {
    "not-json": (b"{not json", "corrupted JSON"),
    "not-utf8": (b"\xff\xfe{}", "corrupted JSON"),
    "deeply-nested": (b"[" * 100_000 + b"]" * 100_000, "corrupted JSON"),
    "a-list": (b"[1, 2]", "is not an itda-lens config"),
    "other-format": (b'{"format": "sae"}', "is not an itda-lens config"),
}


@pytest.mark.parametrize("raw, message", list(RAW_CONFIG_CASES.values()), ids=list(RAW_CONFIG_CASES))
def test_unreadable_config(saved, raw, message):
    (saved / "config.json").write_bytes(raw)
    with pytest.raises(FormatError, match=message):
        ITDA.load(saved)


def _data_start(data: bytes, name: str) -> int:
    size = int.from_bytes(data[:8], "little")
    return 8 + size + json.loads(data[8 : 8 + size])[name]["data_offsets"][0]


def _as_version_1(folder: Path) -> None:
    def edit(header):
        header["format_version"] = 1
        del header["sha256"]

    _edit_config(folder, edit)


def test_a_flipped_sign_in_an_atom_is_detected(saved):
    original = ITDA.load(saved)
    data = bytearray((saved / "atoms.safetensors").read_bytes())
    data[_data_start(data, "atoms") + 4 * 5 + 3] ^= 0x80  # the sign bit of atom 0, value 5 (float32, little-endian)
    (saved / "atoms.safetensors").write_bytes(bytes(data))
    with pytest.raises(FormatError, match="atoms.safetensors does not match the SHA-256 that .*config.json records"):
        ITDA.load(saved)
    _as_version_1(saved)  # without the checksum the flip goes unnoticed: the norm is unchanged
    flipped = ITDA.load(saved)
    assert flipped.atoms[0, 5] == -original.atoms[0, 5] != 0


def test_a_flipped_byte_in_the_provenance_is_detected(saved):
    original = ITDA.load(saved)
    data = bytearray((saved / "atoms.safetensors").read_bytes())
    data[_data_start(data, "provenance.doc") + 8 * 3] ^= 0x01
    (saved / "atoms.safetensors").write_bytes(bytes(data))
    with pytest.raises(FormatError, match="does not match the SHA-256"):
        ITDA.load(saved)
    _as_version_1(saved)
    assert ITDA.load(saved).provenance.doc[3] != original.provenance.doc[3]


def test_a_flipped_byte_in_the_provenance_texts_is_detected(saved):
    text = (saved / "provenance.json").read_bytes()
    (saved / "provenance.json").write_bytes(text.replace(b'"t7"', b'"t8"'))
    with pytest.raises(FormatError, match="provenance.json does not match the SHA-256"):
        ITDA.load(saved)


def _rewrite(folder: Path, tensors: dict | None = None, texts: object = None) -> None:
    """Replace the tensors or the texts, with a checksum that matches (to reach the checks behind it)."""
    if tensors is not None:
        save_file(tensors, str(folder / "atoms.safetensors"))
    if texts is not None:
        (folder / "provenance.json").write_text(json.dumps(texts))

    def edit(header):
        for name in ("atoms.safetensors", "provenance.json"):
            header["sha256"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()

    _edit_config(folder, edit)


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "atoms.safetensors"))


#: A change to the saved tensors or texts (with a matching checksum) -> the message expected.
CONTENT_CASES = {
    "atoms-float64": (lambda t: {**t, "atoms": t["atoms"].double()}, None, r"tensor 'atoms' is \('F64', \[30, 16\]\), but config.json says F32"),
    "atoms-wrong-shape": (lambda t: {**t, "atoms": t["atoms"][:, :8].contiguous()}, None, r"tensor 'atoms' is \('F32', \[30, 8\]\)"),
    "atoms-missing": (lambda t: {k: v for k, v in t.items() if k != "atoms"}, None, r"holds the tensors .*; expected"),
    "extra-tensor": (lambda t: {**t, "bias": torch.zeros(16)}, None, r"holds the tensors .*'bias'"),
    "provenance-float": (lambda t: {**t, "provenance.doc": t["provenance.doc"].float()}, None, r"'provenance.doc' is \('F32'"),
    "atoms-nan": (lambda t: {**t, "atoms": t["atoms"].index_fill(0, torch.tensor([2]), float("nan"))}, None, "atoms contain NaN"),
    "atoms-not-unit": (lambda t: {**t, "atoms": t["atoms"] * 2}, None, "atoms must have unit norm"),
    "texts-list": (None, ["t0"], "provenance texts must be a dict"),
    "texts-numbers": (None, {"token": list(range(30))}, r"provenance texts 'token' must be a list of strings"),
    "texts-short": (None, {"token": ["a"]}, r"provenance list 'token' has 1 entries for 30 atoms"),
}


@pytest.mark.parametrize("tensors, texts, message", list(CONTENT_CASES.values()), ids=list(CONTENT_CASES))
def test_tensors_and_texts_are_checked_against_the_config(saved, tensors, texts, message):
    _rewrite(saved, tensors(_tensors(saved)) if tensors else None, texts)
    with pytest.raises(FormatError, match=message):
        ITDA.load(saved)


def test_truncated_and_padded_tensor_files(saved):
    data = (saved / "atoms.safetensors").read_bytes()
    for broken in (data[:-4], data + b"\0" * 4, data[:6], b"\xff" * 8 + data[8:]):
        (saved / "atoms.safetensors").write_bytes(broken)
        with pytest.raises(FormatError, match="corrupted or truncated"):
            ITDA.load(saved)


def test_a_folder_saved_by_format_version_1_still_loads():
    header = json.loads((V1 / "config.json").read_text())
    assert header["format_version"] == 1 and "sha256" not in header
    itda = ITDA.load(V1)
    expected = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    torch.testing.assert_close(itda.atoms, expected)
    assert (itda.k, itda.config.model, itda.config.threshold) == (3, "toy", 0.2)
    assert itda.provenance.token[1] == "é" and itda.provenance.doc.tolist() == [11, 11, 12, -5, 7, 7]


def test_version_1_messages_name_version_1(tmp_path):
    folder = tmp_path / "v1"
    folder.mkdir()
    for path in V1.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    _edit_config(folder, _set("k", 7))
    with pytest.raises(FormatError, match=r"config.json \(format version 1\): config field 'k' must be an int from 1 to 6, got 7"):
        ITDA.load(folder)


def test_saving_writes_version_2_with_checksums(saved):
    header = json.loads((saved / "config.json").read_text())
    assert header["format_version"] == 2
    for name in ("atoms.safetensors", "provenance.json"):
        assert header["sha256"][name] == hashlib.sha256((saved / name).read_bytes()).hexdigest()


def test_save_refuses_a_build_record_json_cannot_hold(tmp_path):
    itda = ITDA.from_atoms(torch.randn(4, 8), k=2, build={"when": object()})
    with pytest.raises(ValueError, match="config field 'build' must hold only JSON values"):
        itda.save(tmp_path / "d")
    assert not (tmp_path / "d").exists()  # nothing half-written


# ================================================================== files: reference layout
def _metadata(folder: Path, text: str) -> None:
    (folder / "metadata.yaml").write_text(text)


#: metadata.yaml text -> the message expected.
METADATA_CASES = {
    "k-string": ("k: '12'\n", r"metadata.yaml: field 'k' must be an int, got '12'"),
    "k-float": ("k: 3.5\n", r"metadata.yaml: field 'k' must be an int, got 3.5"),
    "k-zero": ("k: 0\n", r"field 'k' must be an int from 1 to 6, got 0"),
    "k-above-n_atoms": ("k: 7\n", r"field 'k' must be an int from 1 to 6, got 7"),
    "layer-negative": ("layer: -1\n", r"field 'layer' must be an int >= 0, got -1"),
    "layer-string": ("layer: three\n", r"field 'layer' must be an int, got 'three'"),
    "loss_threshold-zero": ("loss_threshold: 0\n", r"field 'loss_threshold' must be a number > 0, got 0"),
    "loss_threshold-string": ("loss_threshold: low\n", r"field 'loss_threshold' must be a number, got 'low'"),
    "lm_name-number": ("lm_name: 5\n", r"field 'lm_name' must be a string, got 5"),
    "submodule-list": ("submodule_name: [a]\n", r"field 'submodule_name' must be a string"),
    "a-list": ("- 1\n- 2\n", r"must hold a mapping of fields, got a list"),
    "not-yaml": ("k: [1, 2\n", r"corrupted .*metadata.yaml"),
    "python-object": ("k: !!python/object/apply:os.system ['touch /tmp/itda_lens_yaml_pwned']\n", r"corrupted .*metadata.yaml"),
    "recursive-alias": ("a: &a [*a]\n", r"uses YAML aliases"),
}


@pytest.mark.parametrize("text, message", list(METADATA_CASES.values()), ids=list(METADATA_CASES))
def test_reference_metadata_is_checked(tmp_path, text, message):
    folder = _reference_folder(tmp_path / "ref")
    _metadata(folder, text)
    with pytest.raises(FormatError, match=message):
        ITDA.load(folder)
    assert not Path("/tmp/itda_lens_yaml_pwned").exists()


def test_reference_metadata_dates_are_kept_as_text(tmp_path):
    folder = _reference_folder(tmp_path / "ref")
    _metadata(folder, "k: 3\ncreated: 2024-05-01\n")
    itda = ITDA.load(folder)
    assert itda.k == 3 and itda.config.build["reference_metadata"]["created"] == "2024-05-01"
    itda.save(tmp_path / "saved")  # and it can be saved as JSON
    assert ITDA.load(tmp_path / "saved").config.build == itda.config.build


def test_reference_without_k_takes_at_most_its_atoms(tmp_path):
    folder = _reference_folder(tmp_path / "ref")
    _metadata(folder, "layer: 2\n")
    assert ITDA.load(folder).k == 6  # 6 atoms: k = min(40, 6)


#: What replaces a reference tensor file -> the message expected.
REFERENCE_TENSOR_CASES = {
    "atoms-integers": ("atoms.pt", torch.ones(6, 8, dtype=torch.long), r"must hold a float \[n_atoms, d_model\] tensor, got torch.int64"),
    "atoms-3d": ("atoms.pt", torch.randn(2, 3, 8), r"must hold a float \[n_atoms, d_model\] tensor, got torch.float32 of shape \(2, 3, 8\)"),
    "atoms-a-dict": ("atoms.pt", {"atoms": torch.randn(6, 8)}, r"holds a dict, not a tensor"),
    "atoms-zero-row": ("atoms.pt", torch.zeros(6, 8), r"are zero vectors"),
    "indices-float": ("atom_indices.pt", torch.zeros(6, 2), r"atom_indices.pt must hold integers of shape \(6, 2\), got torch.float32"),
    "indices-shape": ("atom_indices.pt", torch.zeros(5, 2, dtype=torch.long), r"got torch.int64 of shape \(5, 2\)"),
}


@pytest.mark.parametrize("name, value, message", list(REFERENCE_TENSOR_CASES.values()), ids=list(REFERENCE_TENSOR_CASES))
def test_reference_tensors_are_checked(tmp_path, name, value, message):
    folder = _reference_folder(tmp_path / "ref")
    torch.save(value, folder / name)
    with pytest.raises(FormatError, match=message):
        ITDA.load(folder)


# ================================================================== dictionaries made in code
@pytest.fixture(scope="module")
def small() -> ITDA:
    return ITDA.from_atoms(torch.randn(10, 8, generator=torch.Generator().manual_seed(0)), k=3)


#: A call that makes or uses a dictionary -> (error type, message).
ITDA_CASES = {
    "from_atoms-k-float": (lambda d: ITDA.from_atoms(torch.randn(10, 8), k=3.7), TypeError, r"config field 'k' must be an int, got 3.7"),
    "from_atoms-k-bool": (lambda d: ITDA.from_atoms(torch.randn(10, 8), k=True), TypeError, r"config field 'k' must be an int"),
    "from_atoms-k-zero": (lambda d: ITDA.from_atoms(torch.randn(10, 8), k=0), ValueError, r"config field 'k' must be an int >= 1"),
    "from_atoms-k-above-n_atoms": (lambda d: ITDA.from_atoms(torch.randn(10, 8), k=11), ValueError, r"'k' must be an int from 1 to 10, got 11"),
    "from_atoms-dtype-int": (lambda d: ITDA.from_atoms(torch.randn(10, 8), dtype="int8"), ValueError, r"config field 'dtype' must be one of"),
    "from_atoms-refit-string": (lambda d: ITDA.from_atoms(torch.randn(10, 8), k=2, refit="no"), TypeError, r"'refit' must be True or False"),
    "from_atoms-threshold-2": (lambda d: ITDA.from_atoms(torch.randn(10, 8), k=2, threshold=2.0), ValueError, r"relative error in \(0, 1\)"),
    "init-k-above-n_atoms": (lambda d: ITDA(d.atoms, ITDAConfig(d_model=8, k=12)), ValueError, r"'k' must be an int from 1 to 10, got 12"),
    "init-config-dict": (lambda d: ITDA(d.atoms, {"d_model": 8}), TypeError, r"config must be an ITDAConfig"),
    "init-atoms-int": (lambda d: ITDA(d.atoms.long(), ITDAConfig(d_model=8, k=2)), TypeError, r"atoms must be a float tensor"),
    "config-d_model-float": (lambda d: ITDAConfig(d_model=8.0), TypeError, r"config field 'd_model' must be an int"),
    "encode-k-float": (lambda d: d.encode(torch.randn(2, 8), k=2.5), TypeError, r"k must be an int, got 2.5"),
    "encode-k-above-n_atoms": (lambda d: d.encode(torch.randn(2, 8), k=11), ValueError, r"k must be an int from 1 to 10, got 11"),
    "encode-list": (lambda d: d.encode([[0.0] * 8]), TypeError, r"activations must be a tensor"),
    "encode-nan": (lambda d: d.encode(torch.full((2, 8), float("nan"))), ValueError, r"2 activations contain NaN or inf"),
    "encode-inf": (lambda d: d.encode(torch.tensor([[float("inf")] + [0.0] * 7])), ValueError, r"1 activations contain NaN or inf"),
    "decode-minus-two": (lambda d: d.decode((torch.full((2, 3), -2), torch.zeros(2, 3))), IndexError, r"atom indices outside 0 to 9 and -1 \(not encoded\)"),
    "decode-too-large": (lambda d: d.decode((torch.full((2, 3), 10), torch.zeros(2, 3))), IndexError, r"outside 0 to 9"),
    "decode-float-indices": (lambda d: d.decode((torch.zeros(2, 3), torch.zeros(2, 3))), TypeError, r"integer indices and float values"),
    "decode-shapes": (lambda d: d.decode((torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4))), ValueError, r"must have one shape"),
    "dense-too-large": (lambda d: d.dense((torch.full((1, 3), 12), torch.ones(1, 3))), IndexError, r"outside 0 to 9"),
    "forward-error_term-string": (lambda d: d(torch.randn(2, 8), error_term="yes"), TypeError, r"error_term must be True or False"),
}


@pytest.mark.parametrize("call, error, message", list(ITDA_CASES.values()), ids=list(ITDA_CASES))
def test_dictionary_calls_refuse_nonsense(small, call, error, message):
    with pytest.raises(error, match=message):
        call(small)


# ================================================================== TransformerLens verbs
@pytest.fixture(scope="module")
def tl_itda(bridge) -> ITDA:
    """A dictionary of 40 real activations at layer 3 of SmolLM2 (one forward pass)."""
    text = "The capital of France is Paris, and the capital of Germany is Berlin. " * 3
    _, cache = bridge.run_with_cache(bridge.to_tokens(text), names_filter=[HOOK], return_cache_object=False)
    return ITDA.from_atoms(cache[HOOK][0, 1:41], k=4, model=MODEL, hook=HOOK)


@pytest.fixture
def splice(bridge, tl_itda):
    with attach(bridge, tl_itda) as attached:
        yield attached


#: A call on an attached dictionary -> (error type, message).
TL_CASES = {
    "steer-float-atom": (lambda s: s.steer(3.7, 1.0), TypeError, r"atoms must be indices .*got 3.7 \(a float\)"),
    "steer-whole-float-atom": (lambda s: s.steer(3.0, 1.0), TypeError, r"got 3.0 \(a float\)"),
    "steer-bool-atom": (lambda s: s.steer(True, 1.0), TypeError, r"got True \(a bool\)"),
    "steer-string-atom": (lambda s: s.steer("3", 1.0), TypeError, r"got '3' \(a str\)"),
    "steer-float-tensor-atom": (lambda s: s.steer(torch.tensor([3.0]), 1.0), TypeError, r"got a torch.float32 tensor"),
    "steer-bool-tensor-atom": (lambda s: s.steer(torch.tensor([True]), 1.0), TypeError, r"got a torch.bool tensor"),
    "steer-two-atoms-one-scale-each": (lambda s: s.steer([1, 2], [1.0]), ValueError, r"1 scales for 2 atoms; give one scale, or one per atom"),
    "steer-atom-out-of-range": (lambda s: s.steer(40, 1.0), IndexError, r"atoms \[40\] are out of range: the dictionary at blocks.3.hook_resid_post has 40"),
    "steer-nan-scale": (lambda s: s.steer(3, float("nan")), ValueError, r"scale must be a finite number, got nan"),
    "steer-inf-scale": (lambda s: s.steer(3, float("inf")), ValueError, r"scale must be a finite number, got inf"),
    "steer-string-scale": (lambda s: s.steer(3, "2"), TypeError, r"scale must be a number, got '2'"),
    "steer-relative-string": (lambda s: s.steer(3, 1.0, relative="yes"), TypeError, r"relative must be True or False"),
    "steer-None-positions": (lambda s: s.steer(3, 1.0, positions=None), TypeError, r"positions must be 'all', 'new', an int"),
    "steer-float-positions": (lambda s: s.steer(3, 1.0, positions=[1.5]), TypeError, r"positions must be 'all', 'new', an int, ints, a slice"),
    "steer-float-tensor-positions": (lambda s: s.steer(3, 1.0, positions=torch.tensor([1.0])), TypeError, r"positions must be .*torch.float32 tensor"),
    "steer-string-positions": (lambda s: s.steer(3, 1.0, positions="0"), TypeError, r"positions must be"),
    "clamp-nan-value": (lambda s: s.clamp(3, float("nan")), ValueError, r"value must be a finite number, got nan"),
    "clamp-inf-value": (lambda s: s.clamp(3, float("-inf")), ValueError, r"value must be a finite number, got -inf"),
    "clamp-float-atom": (lambda s: s.clamp(3.7, 1.0), TypeError, r"got 3.7 \(a float\)"),
    "clamp-two-atoms": (lambda s: s.clamp([1, 2], 1.0), ValueError, r"clamp takes one atom"),
    "ablate-float-atom": (lambda s: s.ablate(3.7), TypeError, r"got 3.7 \(a float\)"),
    "ablate-float-in-list": (lambda s: s.ablate([1, 2.5]), TypeError, r"2.5 \(a float\) is not one"),
    "ablate-no-atoms": (lambda s: s.ablate([]), ValueError, r"give at least one atom"),
    "ablate-bool-positions": (lambda s: s.ablate(1, positions=True), TypeError, r"positions must be"),
}


@pytest.mark.parametrize("call, error, message", list(TL_CASES.values()), ids=list(TL_CASES))
def test_transformer_lens_edits_refuse_nonsense(splice, call, error, message):
    with pytest.raises(error, match=message):
        call(splice)
    assert splice._edits == []  # nothing half-applied


#: A call of attach -> (error type, message).
ATTACH_CASES = {
    "error_term-string": (lambda m, d: attach(m, d, error_term="no"), TypeError, r"error_term must be True or False, got 'no'"),
    "dense_codes-number": (lambda m, d: attach(m, d, dense_codes=1), TypeError, r"dense_codes must be True or False"),
    "hook-number": (lambda m, d: attach(m, d, 3), TypeError, r"hook must be a hook name"),
    "a-payload": (lambda m, d: attach(m, itn.payload(d)), TypeError, r"attach takes an ITDA, got Payload"),
    "exclude-float": (lambda m, d: attach(m, d, exclude_tokens=[1.5]), TypeError, r"exclude_tokens must be token ids"),
}


@pytest.mark.parametrize("call, error, message", list(ATTACH_CASES.values()), ids=list(ATTACH_CASES))
def test_attach_refuses_nonsense(bridge, tl_itda, call, error, message):
    from itda_lens.backends.transformer_lens import attachments

    with pytest.raises(error, match=message):
        call(bridge, tl_itda)
    assert attachments(bridge) == {}  # nothing left attached


#: A call of an attribution function on an attached dictionary -> (error type, message).
ATTRIBUTION_CASES = {
    "measure-float-atom": (lambda m: measure_ablations(m, "Hello there", 3.7, "loss"), TypeError, r"got 3.7 \(a float\)"),
    "measure-float-in-group": (lambda m: measure_ablations(m, "Hello there", [[1, 2.5]], "loss"), TypeError, r"2.5 \(a float\) is not one"),
    "measure-float-tensor": (lambda m: measure_ablations(m, "Hello", torch.tensor([1.0]), "loss"), TypeError, r"torch.float32 tensor"),
    "measure-error_term-string": (lambda m: measure_ablations(m, "Hello there", 3, "loss", error_term="on"), TypeError, r"error_term must be True or False"),
    "attribute-float-tokens": (lambda m: attribute(m, torch.zeros(1, 4), "loss"), ValueError, r"integer token ids"),
}


@pytest.mark.parametrize("call, error, message", list(ATTRIBUTION_CASES.values()), ids=list(ATTRIBUTION_CASES))
def test_attribution_refuses_nonsense(bridge, splice, call, error, message):
    with pytest.raises(error, match=message):
        call(bridge)
    assert splice._edits == [] and splice.error_term is False  # nothing half-applied


#: A call that needs no model -> (error type, message).
PLAIN_CASES = {
    "logit_diff-float-token": (lambda: logit_diff(3.5, 2), TypeError, r"correct must be an int, got 3.5"),
    "log_prob-string-token": (lambda: log_prob("Paris"), TypeError, r"token must be an int, got 'Paris'"),
    "log_prob-float-position": (lambda: log_prob(5, position=-1.0), TypeError, r"position must be an int, got -1.0"),
    "position_mask-float": (lambda: position_mask([0.5], 1, 4), TypeError, r"positions must be"),
}


@pytest.mark.parametrize("call, error, message", list(PLAIN_CASES.values()), ids=list(PLAIN_CASES))
def test_metrics_and_positions_refuse_nonsense(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_the_valid_calls_still_work(bridge, tl_itda, splice):
    """The checks refuse only nonsense: numpy and tensor integers are atoms, tensors scales."""
    import numpy as np

    tokens = bridge.to_tokens("The capital of France is")
    with torch.no_grad():
        plain = bridge(tokens)
        with splice.steer(np.int64(3), torch.tensor(8.0)):
            steered = bridge(tokens)
        with splice.steer(torch.tensor(3), 8.0, positions=torch.tensor([1, 2])):
            steered_int_tensor = bridge(tokens)
    assert (steered - plain).abs().max() > 1e-3 and (steered_int_tensor - plain).abs().max() > 1e-3


# ================================================================== nnsight verbs
@pytest.fixture(scope="module")
def lm(nnsight_model):
    return nnsight_model


@pytest.fixture(scope="module")
def ids(lm):
    return torch.tensor([[lm.tokenizer.bos_token_id, *lm.tokenizer("The capital of France is").input_ids]])


def _layer(lm):
    return lm.model.layers[LAYER]


#: A call inside a trace (lm, payload, ids) -> (error type, message).
NNSIGHT_CASES = {
    "steer-float-atom": (lambda lm, p, i: itn.steer(_layer(lm), p, [3.7], 1.0), TypeError, r"3.7 \(a float\) is not one"),
    "steer-bool-atom": (lambda lm, p, i: itn.steer(_layer(lm), p, [True], 1.0), TypeError, r"True \(a bool\) is not one"),
    "steer-string-atoms": (lambda lm, p, i: itn.steer(_layer(lm), p, "3", 1.0), TypeError, r"got '3' \(a str\)"),
    "steer-float-tensor-atoms": (lambda lm, p, i: itn.steer(_layer(lm), p, torch.tensor([3.0]), 1.0), TypeError, r"torch.float32 tensor"),
    "steer-out-of-range": (lambda lm, p, i: itn.steer(_layer(lm), p, [40], 1.0), IndexError, r"atoms \[40\] are out of range"),
    "steer-nan-scale": (lambda lm, p, i: itn.steer(_layer(lm), p, [3], float("nan")), ValueError, r"scale must be a finite number, got nan"),
    "steer-inf-in-scales": (lambda lm, p, i: itn.steer(_layer(lm), p, [3, 4], [1.0, float("inf")]), ValueError, r"scale must be a finite number, got inf"),
    "steer-string-scale": (lambda lm, p, i: itn.steer(_layer(lm), p, [3], "1"), TypeError, r"scale must be a number, got '1'"),
    "ablate-float-atom": (lambda lm, p, i: itn.ablate(_layer(lm), p, [2.5]), TypeError, r"2.5 \(a float\) is not one"),
    "ablate-out-of-range": (lambda lm, p, i: itn.ablate(_layer(lm), p, [-1]), IndexError, r"atoms \[-1\] are out of range"),
    "splice-float-mask": (lambda lm, p, i: itn.splice(_layer(lm), p, mask=torch.ones(i.shape)), TypeError, r"mask must be a bool tensor"),
    "splice-mask-of-twos": (lambda lm, p, i: itn.splice(_layer(lm), p, mask=torch.full(i.shape, 2)), ValueError, r"must hold only 0 and 1"),
    "splice-mask-list": (lambda lm, p, i: itn.splice(_layer(lm), p, mask=[[True]]), TypeError, r"mask must be a bool tensor"),
    "splice-error_term-string": (lambda lm, p, i: itn.splice(_layer(lm), p, error_term="no"), TypeError, r"error_term must be True or False"),
    "encode-differentiable-number": (lambda lm, p, i: itn.encode(_layer(lm), p, differentiable=1), TypeError, r"differentiable must be True or False"),
    "splice-a-plain-module": (lambda lm, p, i: itn.splice(lm._module.model.layers[LAYER], p), TypeError, r"pass a module's envoy"),
    "steer-partial-payload": (
        lambda lm, p, i: itn.steer(_layer(lm), itn.Payload(p.atoms[3:4], [3], p.n_atoms, p.k), 3, 1.0),
        ValueError,
        r"needs every atom.*error_term=True",
    ),
}


@pytest.mark.parametrize("call, error, message", list(NNSIGHT_CASES.values()), ids=list(NNSIGHT_CASES))
def test_nnsight_verbs_refuse_nonsense(lm, tl_itda, ids, call, error, message):
    dictionary = itn.payload(tl_itda)
    with pytest.raises(error, match=message):
        with lm.trace(ids):
            call(lm, dictionary, ids)


#: A call of payload() -> (error type, message).
PAYLOAD_CASES = {
    "float-atom": (lambda d: itn.payload(d, atoms=[1.5]), TypeError, r"1.5 \(a float\) is not one"),
    "out-of-range": (lambda d: itn.payload(d, atoms=[40]), IndexError, r"atoms \[40\] are out of range"),
    "no-atoms": (lambda d: itn.payload(d, atoms=[]), ValueError, r"give at least one atom"),
    "dtype-int-name": (lambda d: itn.payload(d, dtype="int8"), ValueError, r"dtype must be one of float16, bfloat16"),
    "dtype-int": (lambda d: itn.payload(d, dtype=torch.int8), TypeError, r"dtype must be a float type"),
    "max_bytes-negative": (lambda d: itn.payload(d, max_bytes=-1), ValueError, r"max_bytes must be an int >= 0"),
    "Payload-k-zero": (lambda d: itn.Payload(d.atoms, list(range(40)), 40, 0), ValueError, r"k must be an int from 1 to 40, got 0"),
}


@pytest.mark.parametrize("call, error, message", list(PAYLOAD_CASES.values()), ids=list(PAYLOAD_CASES))
def test_payload_refuses_nonsense(tl_itda, call, error, message):
    with pytest.raises(error, match=message):
        call(tl_itda)


def _how(lm, mode):
    from test_nnsight import ServerSimulation

    return {"backend": ServerSimulation(lm)} if mode == "server" else {"remote": mode}


@pytest.mark.parametrize("mode", [False, "server"])
def test_nnsight_encoding_of_nan_activations_raises_as_transformer_lens_does(lm, tl_itda, ids, mode):
    dictionary = itn.payload(tl_itda)
    with pytest.raises(ValueError, match="1 activations contain NaN or inf; check the model's dtype and inputs") as nnsight_error:
        with lm.trace(ids, **_how(lm, mode)):
            x = itn.hidden_states(lm.model.layers[LAYER].output)
            x[0, 2, 5] = float("nan")
            codes = itn.encode(lm.model.layers[LAYER], dictionary)
            nnsight.save(codes)
    with pytest.raises(ValueError) as tl_error:
        tl_itda.encode(torch.full((1, tl_itda.d_model), float("nan")))
    assert str(nnsight_error.value) == str(tl_error.value)


@pytest.mark.parametrize("mode", [False, "server"])
def test_an_nnsight_splice_off_the_residual_stream_warns_as_transformer_lens_does(bridge, lm, tl_itda, ids, mode):
    dictionary = itn.payload(tl_itda)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with lm.trace(ids, **_how(lm, mode)):
            itn.splice(lm.model.layers[LAYER].mlp, dictionary)
            itn.splice(lm.model.layers[LAYER].mlp, dictionary)  # warned once per module
            itn.splice(lm.model.layers[LAYER], dictionary)  # where it was built: no warning
            logits = lm.output.logits.save()
    assert logits.shape[1] == ids.shape[1]
    nnsight_messages = [str(w.message) for w in caught if "the dictionary was built" in str(w.message)]
    assert nnsight_messages == ["the dictionary was built at hook 'blocks.3.hook_resid_post', not 'blocks.3.hook_mlp_out'."]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attach(bridge, tl_itda, "blocks.3.hook_mlp_out").detach()
    assert [str(w.message) for w in caught if "the dictionary was built" in str(w.message)] == nnsight_messages


def test_an_nnsight_dictionary_of_another_model_warns(lm, tl_itda, ids):
    other = ITDA.from_atoms(tl_itda.atoms, k=4, model="gpt2", hook=HOOK)
    with pytest.warns(UserWarning, match=r"the dictionary was built for model 'gpt2', not '.*smollm2-135m-instruct'"):
        with lm.trace(ids):
            itn.splice(lm.model.layers[LAYER], itn.payload(other))

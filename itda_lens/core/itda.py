"""The ITDA dictionary: unit-norm atoms taken from real activations, with provenance.

An ITDA encodes an activation ``x`` as ``k`` signed coefficients on its atoms, chosen by
matching pursuit (:mod:`itda_lens.core.pursuit`), and decodes it as their weighted sum.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import safetensors.torch
import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError
from torch import Tensor, nn

from itda_lens.core import checks, ops, pursuit, reference
from itda_lens.core.config import BuildSettings
from itda_lens.core.files import MAX_CONFIG_BYTES, FormatError, read_regular_file
from itda_lens.core.gram_rows import GRAM_BYTES, GramRows
from itda_lens.core.provenance import COLUMNS, Provenance

#: The version :meth:`ITDA.save` writes. Version 2 added the ``sha256`` of the files
#: to ``config.json``; version 1 folders (without it) still load.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CONFIG_FILE = "config.json"
ATOMS_FILE = "atoms.safetensors"
TEXTS_FILE = "provenance.json"

#: ``provenance.json`` may hold this many bytes per atom (plus :data:`MAX_CONFIG_BYTES`):
#: a token and two contexts of 160 characters take at most 4 KiB, even escaped.
MAX_TEXT_BYTES_PER_ATOM = 64 << 10
#: The largest header of ``atoms.safetensors`` read (one with our seven entries takes 1 KiB).
MAX_SAFETENSORS_HEADER = 1 << 20

#: Float types a dictionary may hold, with their safetensors names.
FLOAT_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64"}


def _parse_json(data: bytes, path: Path) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FormatError(f"corrupted JSON in {path}: {err}") from err


@dataclass
class ITDAConfig:
    """What an ITDA is and how it encodes.

    ``threshold`` is the relative reconstruction error ``||x - x_hat||^2 / ||x||^2``
    above which the builder added an activation as a new atom (``None`` if unknown).
    ``refit`` re-solves the coefficients on the chosen atoms by least squares.
    ``dtype`` is one of :data:`FLOAT_DTYPES`. Each field's type is checked when the
    config is made (``k`` against the atoms when the :class:`ITDA` is made).
    """

    d_model: int
    k: int = BuildSettings.k
    threshold: float | None = None
    model: str | None = None
    hook: str | None = None
    refit: bool = BuildSettings.refit
    dtype: str = "float32"
    build: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks.integer(self.d_model, "config field 'd_model'", low=1)
        checks.integer(self.k, "config field 'k'", low=1)
        if self.threshold is not None:
            threshold = checks.number(self.threshold, "config field 'threshold'")
            if not 0.0 < threshold < 1.0:
                raise ValueError(f"config field 'threshold' is a relative error in (0, 1) or None, got {threshold}.")
        for name in ("model", "hook"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise TypeError(f"config field {name!r} must be a string or None, got {getattr(self, name)!r}.")
        checks.flag(self.refit, "config field 'refit'")
        if not isinstance(self.dtype, str) or self.dtype not in FLOAT_DTYPES:
            raise ValueError(f"config field 'dtype' must be one of {', '.join(FLOAT_DTYPES)}, got {self.dtype!r}.")
        if not isinstance(self.build, dict):
            raise TypeError(f"config field 'build' must be a dict, got {type(self.build).__name__}.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ITDAConfig:
        """The config saved as ``data``; unknown or wrongly typed fields raise."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}: a newer itda-lens wrote them; upgrade itda-lens.")
        if "d_model" not in data:
            raise ValueError("config field 'd_model' is missing.")
        return cls(**data)


class SparseCodes(NamedTuple):
    """Sparse codes: ``k`` atom indices and their coefficients per activation.

    Coefficients are signed: an atom is active where its coefficient is ``!= 0``, not
    ``> 0``. A negative index marks a position that was not encoded (coefficient 0).
    """

    indices: Int[Tensor, "*batch k"]
    values: Float[Tensor, "*batch k"]

    def to_dense(self, n_atoms: int) -> Float[Tensor, "*batch n_atoms"]:
        """The codes as a dense ``[..., n_atoms]`` tensor, SAE Lens' feature activations
        (``itda.encode(x).to_dense(itda.n_atoms)``); positions not encoded are all 0."""
        n_atoms = checks.integer(n_atoms, "n_atoms", low=1)
        if self.indices.numel() and int(self.indices.max()) >= n_atoms:
            raise ValueError(f"the codes use atom {int(self.indices.max())} but n_atoms={n_atoms}; pass the dictionary's itda.n_atoms.")
        return ops.dense(self.indices.long(), self.values, n_atoms)


class ITDA(nn.Module):
    """A dictionary of ``n_atoms`` unit-norm atoms of width ``d_model``.

    Encoding reads Gram rows of the atoms held in at most :attr:`gram_bytes` bytes
    (default :data:`~itda_lens.core.gram_rows.GRAM_BYTES`; 0: dense matching pursuit,
    no Gram rows); set it to trade memory for speed.
    """

    atoms: Float[Tensor, "n_atoms d_model"]

    def __init__(self, atoms: Float[Tensor, "n_atoms d_model"], config: ITDAConfig, provenance: Provenance | None = None):
        super().__init__()
        if not isinstance(config, ITDAConfig):
            raise TypeError(f"config must be an ITDAConfig, got {type(config).__name__}.")
        if not isinstance(atoms, Tensor) or not atoms.is_floating_point():
            raise TypeError(f"atoms must be a float tensor, got {getattr(atoms, 'dtype', type(atoms).__name__)}.")
        if provenance is not None and not isinstance(provenance, Provenance):
            raise TypeError(f"provenance must be a Provenance, got {type(provenance).__name__}.")
        if atoms.dim() != 2 or atoms.shape[1] != config.d_model:
            raise ValueError(f"atoms must have shape [n_atoms, {config.d_model}], got {tuple(atoms.shape)}.")
        if atoms.shape[0] == 0:
            raise ValueError("an ITDA needs at least one atom.")
        checks.integer(config.k, "config field 'k'", 1, atoms.shape[0])
        if not torch.isfinite(atoms).all():
            raise ValueError("atoms contain NaN or inf values.")
        norms = atoms.float().norm(dim=1)
        if (norms - 1).abs().max() > 1e-2:
            raise ValueError("atoms must have unit norm; use ITDA.from_atoms to normalise them.")
        provenance = provenance if provenance is not None else Provenance.unknown(atoms.shape[0])
        if len(provenance) != atoms.shape[0]:
            raise ValueError(f"{len(provenance)} provenance records for {atoms.shape[0]} atoms.")
        self.config = config
        self.provenance = provenance
        self.register_buffer("atoms", atoms.to(getattr(torch, config.dtype)).contiguous())
        self._gram_rows: GramRows | None = None
        self._gram_bytes = GRAM_BYTES

    @classmethod
    def from_atoms(
        cls,
        atoms: Float[Tensor, "n_atoms d_model"],
        k: int = BuildSettings.k,
        provenance: Provenance | None = None,
        **config: Any,
    ) -> ITDA:
        """A dictionary from directions of your own; they are normalised to unit norm.
        ``config`` holds the other :class:`ITDAConfig` fields (``dtype`` defaults to
        the atoms' float type, else float32)."""
        atoms = torch.as_tensor(atoms)
        if atoms.dim() != 2:
            raise ValueError(f"atoms must have shape [n_atoms, d_model], got {tuple(atoms.shape)}.")
        if not atoms.is_floating_point():
            atoms = atoms.float()
        norms = atoms.norm(dim=1, keepdim=True)
        if (norms == 0).any():
            raise ValueError(f"atoms {torch.nonzero(norms[:, 0] == 0)[:, 0].tolist()[:10]} are zero vectors.")
        dtype = config.pop("dtype", atoms.dtype)
        dtype = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
        cfg = ITDAConfig(d_model=atoms.shape[1], k=k, dtype=dtype, **config)
        return cls(atoms / norms, cfg, provenance)

    # ----------------------------------------------------------------- shape
    @property
    def n_atoms(self) -> int:
        return self.atoms.shape[0]

    @property
    def d_model(self) -> int:
        return self.atoms.shape[1]

    @property
    def k(self) -> int:
        return self.config.k

    @property
    def W_dec(self) -> Float[Tensor, "n_atoms d_model"]:
        """The atoms, under SAE Lens' name for a decoder: ``codes.to_dense(n_atoms) @ W_dec``
        decodes, and ``W_dec[atom]`` is the direction to steer with."""
        return self.atoms

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        self._gram_rows = None
        return super()._apply(fn, recurse)

    @property
    def gram_bytes(self) -> int:
        """The memory budget of the Gram rows encoding reads, in bytes (0: none)."""
        return self._gram_bytes

    @gram_bytes.setter
    def gram_bytes(self, value: int) -> None:
        self._gram_bytes = checks.integer(value, "gram_bytes", low=0)
        self._gram_rows = None

    def gram_rows(self) -> GramRows | None:
        """The Gram rows encoding reads (made on first use), or ``None`` when
        :attr:`gram_bytes` is 0."""
        if not self._gram_bytes:
            return None
        if self._gram_rows is None:
            self._gram_rows = GramRows(self.atoms, self._gram_bytes)
        return self._gram_rows

    # ------------------------------------------------------- encode / decode
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"activations must be a tensor [..., d_model], got {type(x).__name__}.")
        if x.dim() == 0 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"activations have width {x.shape[-1] if x.dim() else 'none'} but this dictionary has d_model={self.d_model} "
                f"(built for model={self.config.model!r}, hook={self.config.hook!r}); "
                "use a dictionary built for this hook point."
            )
        if x.device != self.atoms.device:
            raise ValueError(f"activations are on {x.device} but the dictionary is on {self.atoms.device}; call itda.to({str(x.device)!r}).")

    def _check_codes(self, codes: SparseCodes) -> SparseCodes:
        if not isinstance(codes, tuple) or len(codes) != 2 or not all(isinstance(part, Tensor) for part in codes):
            raise TypeError("codes must be (indices, values) tensors, as encode returns them.")
        indices, values = codes
        if indices.dtype not in (torch.int64, torch.int32) or not values.is_floating_point():
            raise TypeError(f"codes must be integer indices and float values, got {indices.dtype} and {values.dtype}.")
        if indices.shape != values.shape or indices.dim() == 0:
            raise ValueError(f"indices {tuple(indices.shape)} and values {tuple(values.shape)} must have one shape [..., k].")
        ops.check_codes_indices(indices, self.n_atoms)
        return SparseCodes(indices.long(), values)

    def encode(self, x: Float[Tensor, "*batch d_model"], k: int | None = None) -> SparseCodes:
        """Sparse codes of ``x``: ``k`` (default ``config.k``) atoms per activation."""
        self._check_input(x)
        k = checks.integer(self.k if k is None else k, "k", 1, self.n_atoms)
        flat = x.reshape(-1, self.d_model).to(self.atoms.dtype)
        checks.finite_activations(flat)
        with torch.no_grad():
            indices, values = pursuit.pursuit(flat, self.atoms, k, gram=self.gram_rows(), refit=self.config.refit)
        if torch.is_grad_enabled() and (flat.requires_grad or self.atoms.requires_grad):
            values = pursuit.coefficients(flat, self.atoms, indices, refit=self.config.refit)
        shape = (*x.shape[:-1], k)
        return SparseCodes(indices.reshape(shape), values.reshape(shape))

    def decode(self, codes: SparseCodes) -> Float[Tensor, "*batch d_model"]:
        """The weighted sum of the coded atoms (:data:`~itda_lens.core.ops.NOT_ENCODED` slots add nothing)."""
        return ops.decode(*self._check_codes(codes), self.atoms)

    def forward(self, x: Float[Tensor, "*batch d_model"], error_term: bool = False) -> Float[Tensor, "*batch d_model"]:
        """The reconstruction of ``x``; with ``error_term`` it is ``x`` exactly in value,
        ``x_hat + (x - x_hat).detach()``, so gradients reach the codes."""
        x_hat = self.decode(self.encode(x)).to(x.dtype)
        if checks.flag(error_term, "error_term"):
            return x_hat + (x - x_hat).detach()
        return x_hat

    def dense(self, codes: SparseCodes) -> Float[Tensor, "*batch n_atoms"]:
        """Codes as a dense ``[..., n_atoms]`` tensor (only when you ask for it)."""
        return ops.dense(*self._check_codes(codes), self.n_atoms)

    # ---------------------------------------------------------------- storage
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``atoms.safetensors`` and ``provenance.json``;
        ``config.json`` (written last) records the SHA-256 of the other two."""
        directory = Path(directory)
        if not directory.parent.exists():
            raise FileNotFoundError(f"cannot save to {directory}: its parent folder {directory.parent} does not exist.")
        tensors = {"atoms": self.atoms.detach().cpu().contiguous(), **self.provenance.tensors()}
        atoms = safetensors.torch.save(tensors, metadata={"format_version": str(FORMAT_VERSION)})
        texts = json.dumps(self.provenance.texts()).encode("utf-8")
        if len(texts) > _max_text_bytes(self.n_atoms):
            raise ValueError(f"the provenance texts take {len(texts):,} bytes, more than {MAX_TEXT_BYTES_PER_ATOM:,} per atom; shorten them.")
        checksums = {ATOMS_FILE: hashlib.sha256(atoms).hexdigest(), TEXTS_FILE: hashlib.sha256(texts).hexdigest()}
        header = {"format": "itda-lens", "format_version": FORMAT_VERSION, "n_atoms": self.n_atoms, "sha256": checksums, "config": asdict(self.config)}
        try:
            config = json.dumps(header, indent=2).encode("utf-8")
        except (TypeError, ValueError) as err:
            raise ValueError(f"config field 'build' must hold only JSON values (str, numbers, lists, dicts): {err}") from err
        if len(config) > MAX_CONFIG_BYTES:
            raise ValueError(f"the config takes {len(config):,} bytes, more than {MAX_CONFIG_BYTES:,}; shorten config.build.")
        directory.mkdir(exist_ok=True)
        (directory / ATOMS_FILE).write_bytes(atoms)
        (directory / TEXTS_FILE).write_bytes(texts)
        (directory / CONFIG_FILE).write_bytes(config)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> ITDA:
        """Load a dictionary saved by :meth:`save` (format version 1 or 2), or one in the
        reference implementation's layout (``atoms.pt``, ``atom_indices.pt``,
        ``metadata.yaml``). Nothing is unpickled.

        Every file is checked before it is used: it must be a regular file of a size its
        format allows, the config's fields must have their types, the tensors the shapes
        and types the config gives, and (version 2) the files the SHA-256 recorded in
        ``config.json``, so a flipped bit is found. Any failure is a :class:`FormatError`.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no dictionary folder at {directory}.")
        if not (directory / CONFIG_FILE).exists() and (directory / reference.ATOMS_FILE).exists():
            return cls.from_reference(directory).to(device)
        missing = [name for name in (CONFIG_FILE, ATOMS_FILE, TEXTS_FILE) if not (directory / name).exists()]
        if missing:
            raise FormatError(f"{directory} is not an itda-lens dictionary: missing {missing}.")
        version, n_atoms, config, checksums = _read_header(directory / CONFIG_FILE)
        code, width = FLOAT_DTYPES[config.dtype], getattr(torch, config.dtype).itemsize
        expected = {"atoms": (code, [n_atoms, config.d_model]), **{f"provenance.{name}": ("I64", [n_atoms]) for name in COLUMNS}}
        data_bytes = n_atoms * config.d_model * width + len(COLUMNS) * n_atoms * 8
        atoms_path = directory / ATOMS_FILE
        data = read_regular_file(atoms_path, 8 + MAX_SAFETENSORS_HEADER + data_bytes)
        _check_safetensors(data, expected, atoms_path)
        texts_path = directory / TEXTS_FILE
        raw_texts = read_regular_file(texts_path, _max_text_bytes(n_atoms))
        for path, content in ((atoms_path, data), (texts_path, raw_texts)):
            if checksums is not None and hashlib.sha256(content).hexdigest() != checksums[path.name]:
                raise FormatError(
                    f"{path} does not match the SHA-256 that {directory / CONFIG_FILE} records: it changed after it "
                    "was saved (a flipped bit, an edit, a partial copy); copy or build the dictionary again."
                )
        try:
            tensors = safetensors.torch.load(data)
        except SafetensorError as err:
            raise FormatError(f"corrupted or truncated {atoms_path}: {err}") from err
        texts = _parse_json(raw_texts, texts_path)
        try:
            provenance = Provenance.from_saved(tensors, texts)
            itda = cls(tensors["atoms"], config, provenance)
        except (TypeError, ValueError) as err:
            raise FormatError(f"inconsistent dictionary in {directory} (format version {version}): {err}") from err
        return itda.to(device)

    @classmethod
    def from_reference(cls, directory: str | Path) -> ITDA:
        """A dictionary saved by the reference implementation (see :mod:`itda_lens.core.reference`)."""
        found = reference.read_reference(directory)
        try:
            return cls.from_atoms(found.atoms, found.k, found.provenance, refit=False, **found.config)
        except ValueError as err:
            raise FormatError(f"inconsistent reference dictionary in {directory}: {err}") from err

    def extra_repr(self) -> str:
        return f"n_atoms={self.n_atoms}, d_model={self.d_model}, k={self.k}, model={self.config.model!r}, hook={self.config.hook!r}"


def relative_error(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
    """``||x - x_hat||^2 / ||x||^2`` per row (the builder's rule for adding atoms)."""
    return (x - x_hat).pow(2).sum(-1) / x.pow(2).sum(-1).clamp_min(torch.finfo(x.dtype).tiny)


def _max_text_bytes(n_atoms: int) -> int:
    return n_atoms * MAX_TEXT_BYTES_PER_ATOM + MAX_CONFIG_BYTES


def _read_header(path: Path) -> tuple[int, int, ITDAConfig, dict[str, str] | None]:
    """The format version, atom count, config and checksums (``None`` in version 1)
    of a ``config.json``, each checked."""
    header = _parse_json(read_regular_file(path, MAX_CONFIG_BYTES), path)
    if not isinstance(header, dict) or header.get("format") != "itda-lens":
        raise FormatError(f"{path} is not an itda-lens config.")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
        hint = "a newer itda-lens wrote it: upgrade itda-lens." if newer else "it is damaged."
        raise FormatError(
            f"{path.parent} has format version {version!r}; this itda-lens reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: {hint}"
        )
    where = f"{path} (format version {version})"
    fields_here = {"format", "format_version", "n_atoms", "config"} | ({"sha256"} if version >= 2 else set())
    unknown = sorted(set(header) - fields_here)
    if unknown:
        raise FormatError(f"{where}: unknown fields {unknown}: a newer itda-lens wrote them; upgrade itda-lens.")
    try:
        n_atoms = checks.integer(header.get("n_atoms"), "field 'n_atoms'", low=1)
        if not isinstance(header.get("config"), dict):
            raise TypeError(f"field 'config' must be a dict, got {header.get('config')!r}.")
        config = ITDAConfig.from_dict(header["config"])
        checks.integer(config.k, "config field 'k'", 1, n_atoms)
    except (TypeError, ValueError) as err:
        raise FormatError(f"{where}: {err}") from err
    if version < 2:
        return version, n_atoms, config, None
    checksums = header.get("sha256")
    names = {ATOMS_FILE, TEXTS_FILE}
    if (
        not isinstance(checksums, dict)
        or set(checksums) != names
        or not all(isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v) for v in checksums.values())
    ):
        raise FormatError(f"{where}: field 'sha256' must give the hex SHA-256 of {sorted(names)}, got {checksums!r}.")
    return version, n_atoms, config, checksums


def _check_safetensors(data: bytes, expected: dict[str, tuple[str, list[int]]], path: Path) -> None:
    """Raise unless ``data`` is a safetensors file whose header lists exactly the tensors
    ``expected`` (name: dtype code, shape) and whose length its header accounts for."""
    if len(data) < 8:
        raise FormatError(f"corrupted or truncated {path}: {len(data)} bytes.")
    size = int.from_bytes(data[:8], "little")
    if size > min(MAX_SAFETENSORS_HEADER, len(data) - 8):
        raise FormatError(f"corrupted or truncated {path}: its header claims {size:,} bytes.")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise FormatError(f"corrupted or truncated {path}: its header is not JSON ({err}).") from err
    if not isinstance(header, dict):
        raise FormatError(f"corrupted or truncated {path}: its header is not a JSON object.")
    header.pop("__metadata__", None)
    if set(header) != set(expected):
        raise FormatError(f"{path} holds the tensors {sorted(header)}; expected {sorted(expected)}.")
    end = 0
    for name, (code, shape) in expected.items():
        entry = header[name]
        if not isinstance(entry, dict) or entry.get("dtype") != code or entry.get("shape") != shape:
            got = (entry.get("dtype"), entry.get("shape")) if isinstance(entry, dict) else entry
            raise FormatError(f"{path}: tensor {name!r} is {got}, but config.json says {code} of shape {shape}.")
        offsets = entry.get("data_offsets")
        if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets):
            end = max(end, offsets[1])
    if 8 + size + end != len(data):
        raise FormatError(f"corrupted or truncated {path}: {len(data):,} bytes where its header accounts for {8 + size + end:,}.")

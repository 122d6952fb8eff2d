"""The ITDA dictionary: unit-norm atoms taken from real activations, with provenance.

An ITDA encodes an activation ``x`` as ``k`` signed coefficients on its atoms, chosen by
matching pursuit (:mod:`itda_lens.pursuit`), and decodes it as their weighted sum.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from itda_lens import pursuit
from itda_lens.provenance import Provenance

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
ATOMS_FILE = "atoms.safetensors"
TEXTS_FILE = "provenance.json"

#: Largest Gram matrix kept for the fast encoder; above it encoding uses ``dense`` MP.
GRAM_MAX_BYTES = 2 << 30


class FormatError(ValueError):
    """A saved dictionary that is missing, corrupted or of another format."""


@dataclass
class ITDAConfig:
    """What an ITDA is and how it encodes.

    ``threshold`` is the relative reconstruction error ``||x - x_hat||^2 / ||x||^2``
    above which the builder added an activation as a new atom (``None`` if unknown).
    ``refit`` re-solves the coefficients on the chosen atoms by least squares.
    """

    d_model: int
    k: int = 40
    threshold: float | None = None
    model: str | None = None
    hook: str | None = None
    refit: bool = True
    dtype: str = "float32"
    build: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ITDAConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FormatError(f"unknown config fields {unknown}; this file needs a newer itda-lens.")
        return cls(**data)


class SparseCodes(NamedTuple):
    """Sparse codes: ``k`` atom indices and their coefficients per activation."""

    indices: Int[Tensor, "*batch k"]
    values: Float[Tensor, "*batch k"]


class ITDA(nn.Module):
    """A dictionary of ``n_atoms`` unit-norm atoms of width ``d_model``."""

    atoms: Float[Tensor, "n_atoms d_model"]

    def __init__(self, atoms: Float[Tensor, "n_atoms d_model"], config: ITDAConfig, provenance: Provenance | None = None):
        super().__init__()
        if atoms.dim() != 2 or atoms.shape[1] != config.d_model:
            raise ValueError(f"atoms must have shape [n_atoms, {config.d_model}], got {tuple(atoms.shape)}.")
        if atoms.shape[0] == 0:
            raise ValueError("an ITDA needs at least one atom.")
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
        self._gram: Tensor | None = None

    @classmethod
    def from_atoms(
        cls,
        atoms: Float[Tensor, "n_atoms d_model"],
        k: int = 40,
        provenance: Provenance | None = None,
        **config: Any,
    ) -> ITDA:
        """A dictionary from directions of your own; they are normalised to unit norm."""
        atoms = torch.as_tensor(atoms)
        if atoms.dim() != 2:
            raise ValueError(f"atoms must have shape [n_atoms, d_model], got {tuple(atoms.shape)}.")
        norms = atoms.norm(dim=1, keepdim=True)
        if (norms == 0).any():
            raise ValueError(f"atoms {torch.nonzero(norms[:, 0] == 0)[:, 0].tolist()[:10]} are zero vectors.")
        dtype = config.pop("dtype", str(atoms.dtype).removeprefix("torch."))
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

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        self._gram = None
        return super()._apply(fn, recurse)

    def gram(self) -> Float[Tensor, "n_atoms width"] | None:
        """The cached (padded) Gram matrix of the atoms, or ``None`` when it would exceed
        :data:`GRAM_MAX_BYTES` (then encoding uses dense matching pursuit)."""
        if self.n_atoms * pursuit.padded_width(self.n_atoms) * self.atoms.element_size() > GRAM_MAX_BYTES:
            return None
        if self._gram is None:
            self._gram = pursuit.gram_matrix(self.atoms)
        return self._gram

    # ------------------------------------------------------- encode / decode
    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"activations have width {x.shape[-1]} but this dictionary has d_model={self.d_model} "
                f"(built for model={self.config.model!r}, hook={self.config.hook!r}); "
                "use a dictionary built for this hook point."
            )
        if x.device != self.atoms.device:
            raise ValueError(f"activations are on {x.device} but the dictionary is on {self.atoms.device}; call itda.to({str(x.device)!r}).")

    def encode(self, x: Float[Tensor, "*batch d_model"], k: int | None = None) -> SparseCodes:
        """Sparse codes of ``x``: ``k`` (default ``config.k``) atoms per activation."""
        self._check_input(x)
        k = self.k if k is None else k
        if k > self.n_atoms:
            raise ValueError(f"k={k} is larger than the dictionary ({self.n_atoms} atoms); pass k <= {self.n_atoms}.")
        flat = x.reshape(-1, self.d_model).to(self.atoms.dtype)
        if not torch.isfinite(flat).all():
            bad = (~torch.isfinite(flat)).any(dim=1).sum().item()
            raise ValueError(f"{bad} activations contain NaN or inf; check the model's dtype and inputs.")
        with torch.no_grad():
            indices, values = pursuit.pursuit(flat, self.atoms, k, gram=self.gram(), refit=self.config.refit)
        if torch.is_grad_enabled() and (flat.requires_grad or self.atoms.requires_grad):
            values = pursuit.coefficients(flat, self.atoms, indices, refit=self.config.refit)
        shape = (*x.shape[:-1], k)
        return SparseCodes(indices.reshape(shape), values.reshape(shape))

    def decode(self, codes: SparseCodes) -> Float[Tensor, "*batch d_model"]:
        """The weighted sum of the coded atoms."""
        indices, values = codes
        k = indices.shape[-1]
        out = pursuit.decode(indices.reshape(-1, k), values.reshape(-1, k), self.atoms)
        return out.reshape(*indices.shape[:-1], self.d_model)

    def forward(self, x: Float[Tensor, "*batch d_model"], error_term: bool = False) -> Float[Tensor, "*batch d_model"]:
        """The reconstruction of ``x``; with ``error_term`` it is ``x`` exactly in value,
        ``x_hat + (x - x_hat).detach()``, so gradients reach the codes."""
        x_hat = self.decode(self.encode(x)).to(x.dtype)
        if error_term:
            return x_hat + (x - x_hat).detach()
        return x_hat

    def dense(self, codes: SparseCodes) -> Float[Tensor, "*batch n_atoms"]:
        """Codes as a dense ``[..., n_atoms]`` tensor (only when you ask for it)."""
        indices, values = codes
        out = values.new_zeros(*indices.shape[:-1], self.n_atoms)
        return out.scatter_add_(-1, indices, values)

    # ---------------------------------------------------------------- storage
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``atoms.safetensors`` and ``provenance.json``."""
        directory = Path(directory)
        if not directory.parent.exists():
            raise FileNotFoundError(f"cannot save to {directory}: its parent folder {directory.parent} does not exist.")
        directory.mkdir(exist_ok=True)
        tensors = {"atoms": self.atoms.detach().cpu().contiguous(), **self.provenance.tensors()}
        save_file(tensors, str(directory / ATOMS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        (directory / TEXTS_FILE).write_text(json.dumps(self.provenance.texts()))
        header = {"format": "itda-lens", "format_version": FORMAT_VERSION, "n_atoms": self.n_atoms, "config": asdict(self.config)}
        (directory / CONFIG_FILE).write_text(json.dumps(header, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> ITDA:
        """Load a dictionary saved by :meth:`save`, or one in the reference
        implementation's layout (``atoms.pt``, ``atom_indices.pt``, ``metadata.yaml``).
        Nothing is unpickled."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no dictionary folder at {directory}.")
        if not (directory / CONFIG_FILE).exists() and (directory / "atoms.pt").exists():
            from itda_lens.reference import load_reference

            return load_reference(directory).to(device)
        missing = [name for name in (CONFIG_FILE, ATOMS_FILE, TEXTS_FILE) if not (directory / name).exists()]
        if missing:
            raise FormatError(f"{directory} is not an itda-lens dictionary: missing {missing}.")
        try:
            header = json.loads((directory / CONFIG_FILE).read_text())
            texts = json.loads((directory / TEXTS_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise FormatError(f"corrupted JSON in {directory}: {err}") from err
        if not isinstance(header, dict) or header.get("format") != "itda-lens":
            raise FormatError(f"{directory / CONFIG_FILE} is not an itda-lens config.")
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise FormatError(f"{directory} has format version {version}; this itda-lens reads version {FORMAT_VERSION}.")
        try:
            tensors = load_file(str(directory / ATOMS_FILE), device=str(device))
        except (SafetensorError, OSError) as err:
            raise FormatError(f"corrupted or truncated {directory / ATOMS_FILE}: {err}") from err
        if "atoms" not in tensors:
            raise FormatError(f"{directory / ATOMS_FILE} has no 'atoms' tensor.")
        config = ITDAConfig.from_dict(header["config"])
        atoms = tensors["atoms"]
        if header.get("n_atoms") != atoms.shape[0]:
            raise FormatError(f"{directory} says {header.get('n_atoms')} atoms but holds {atoms.shape[0]}.")
        try:
            provenance = Provenance.from_saved({k: v.cpu() for k, v in tensors.items()}, texts)
            return cls(atoms, config, provenance)
        except ValueError as err:
            raise FormatError(f"inconsistent dictionary in {directory}: {err}") from err

    def extra_repr(self) -> str:
        return f"n_atoms={self.n_atoms}, d_model={self.d_model}, k={self.k}, model={self.config.model!r}, hook={self.config.hook!r}"


def relative_error(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
    """``||x - x_hat||^2 / ||x||^2`` per row (the builder's rule for adding atoms)."""
    return (x - x_hat).pow(2).sum(-1) / x.pow(2).sum(-1).clamp_min(torch.finfo(x.dtype).tiny)



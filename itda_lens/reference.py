"""Dictionaries saved by the ITDA paper's reference code, loaded without unpickling.

That layout is a folder with ``atoms.pt`` (``[n_atoms, d_model]``), ``atom_indices.pt``
(``[n_atoms, 2]``: sequence index and token position in the reference's own dataset
order) and ``metadata.yaml``. Tensors are read with ``torch.load(weights_only=True)``
and YAML with ``yaml.safe_load``. The sequence index becomes the provenance ``doc``, so
``by="token"`` comparisons reproduce the paper's Jaccard index between such files.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import yaml

from itda_lens.itda import ITDA, FormatError
from itda_lens.provenance import Provenance


def _load_tensor(path: Path) -> torch.Tensor:
    try:
        value = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise FormatError(f"{path} is not a plain tensor file (or is corrupted): {err}") from err
    if not isinstance(value, torch.Tensor):
        raise FormatError(f"{path} holds a {type(value).__name__}, not a tensor.")
    return value


def load_reference(directory: str | Path) -> ITDA:
    """An :class:`ITDA` from a reference-layout folder."""
    directory = Path(directory)
    atoms = _load_tensor(directory / "atoms.pt")
    if atoms.dim() != 2:
        raise FormatError(f"{directory / 'atoms.pt'} must hold a [n_atoms, d_model] tensor, got shape {tuple(atoms.shape)}.")
    metadata = {}
    if (directory / "metadata.yaml").exists():
        try:
            metadata = yaml.safe_load((directory / "metadata.yaml").read_text()) or {}
        except yaml.YAMLError as err:
            raise FormatError(f"corrupted {directory / 'metadata.yaml'}: {err}") from err
    provenance = Provenance.unknown(atoms.shape[0])
    if (directory / "atom_indices.pt").exists():
        indices = _load_tensor(directory / "atom_indices.pt").long()
        if indices.shape != (atoms.shape[0], 2):
            raise FormatError(f"atom_indices.pt has shape {tuple(indices.shape)}; expected ({atoms.shape[0]}, 2).")
        provenance.doc, provenance.token_index = indices[:, 0].clone(), indices[:, 1].clone()
    layer = metadata.get("layer")
    hook = metadata.get("submodule_name") or (f"blocks.{layer}.hook_resid_post" if layer is not None else None)
    return ITDA.from_atoms(
        atoms.float(),
        k=int(metadata.get("k", 40)),
        provenance=provenance,
        model=metadata.get("lm_name"),
        hook=hook,
        build={"reference_metadata": metadata, "doc": "reference sequence index"},
    )

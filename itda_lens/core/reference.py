"""Dictionaries saved by the ITDA paper's reference code, loaded without unpickling.

That layout is a folder with ``atoms.pt`` (``[n_atoms, d_model]``), ``atom_indices.pt``
(``[n_atoms, 2]``: sequence index and token position in the reference's own dataset
order) and ``metadata.yaml``. Each file is read only if it is a regular file of a sane
size (see :func:`itda_lens.core.files.read_regular_file`). Tensors are read with
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers and
refuses any other object; YAML with ``yaml.safe_load``, after refusing aliases (a few
hundred bytes of them can expand to gigabytes). The sequence index becomes the
provenance ``doc``, so ``by="token"`` comparisons reproduce the paper's Jaccard index
between such files.

Of the metadata, ``k`` (an int from 1 to ``n_atoms``; default the smaller of
``BuildSettings.k`` and ``n_atoms``), ``layer`` (an int >= 0),
``loss_threshold`` (a number > 0), ``submodule_name`` and ``lm_name`` (strings) are used
and checked; the whole mapping is kept in ``config.build["reference_metadata"]``.

The reference adds an activation as an atom when ``mean((x/|x| - x_hat/|x_hat|)^2)``, a
mean over the ``d_model`` dimensions, exceeds ``loss_threshold``; itda-lens when the
relative error ``||x - x_hat||^2 / ||x||^2`` exceeds ``threshold``.
:func:`relative_threshold` converts the first into the second, and the dictionary read
keeps both (``config.build["loss_threshold"]`` and ``config.threshold``). The reference
encodes with plain matching-pursuit coefficients: ``refit`` is off in its config.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from jaxtyping import Float
from torch import Tensor

from itda_lens.core import checks
from itda_lens.core.config import BuildSettings
from itda_lens.core.files import MAX_CONFIG_BYTES, FormatError, read_regular_file
from itda_lens.core.provenance import Provenance

#: The file whose presence (without a ``config.json``) marks the reference layout.
ATOMS_FILE = "atoms.pt"

#: The largest ``atoms.pt`` or ``atom_indices.pt`` read.
MAX_TENSOR_BYTES = 16 << 30

#: ``config.build["doc"]`` of a dictionary read here: its ``provenance.doc`` is the
#: reference's sequence index, not a document hash.
DOC_KIND = "reference sequence index"


def relative_threshold(loss_threshold: float, d_model: int) -> float | None:
    """The relative-error threshold that adds the same atoms as the reference's
    ``loss_threshold`` when ``x_hat`` is the exact projection of ``x`` on its atoms;
    ``None`` when the reference would never add one.

    For unit vectors ``||u - v||^2 = 2 - 2 cos``, so the reference adds ``x`` when
    ``cos(x, x_hat) < 1 - loss_threshold * d_model / 2``. For a projection
    ``||x - x_hat||^2 / ||x||^2 = 1 - cos^2`` with ``cos >= 0``, so this is
    ``threshold = 1 - (1 - loss_threshold * d_model / 2)^2``. (Plain matching pursuit
    stops short of the projection, so there the two rules only nearly agree.)
    """
    cos = 1.0 - loss_threshold * d_model / 2.0
    if cos <= 0.0:
        return None
    return 1.0 - cos * cos


def _load_tensor(path: Path) -> torch.Tensor:
    data = read_regular_file(path, MAX_TENSOR_BYTES)
    try:
        value = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise FormatError(f"{path} is not a plain tensor file (or is corrupted): {err}") from err
    if not isinstance(value, torch.Tensor):
        raise FormatError(f"{path} holds a {type(value).__name__}, not a tensor.")
    return value


def _load_metadata(path: Path) -> dict[str, Any]:
    """``metadata.yaml`` as a JSON-compatible dict."""
    try:
        text = read_regular_file(path, MAX_CONFIG_BYTES).decode("utf-8")
        if any(isinstance(token, yaml.AliasToken) for token in yaml.scan(text, Loader=yaml.SafeLoader)):
            raise FormatError(f"{path} uses YAML aliases (*name); write the values out in full.")
        metadata = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        raise FormatError(f"corrupted {path}: {err}") from err
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise FormatError(f"{path} must hold a mapping of fields, got a {type(metadata).__name__}.")
    try:  # dates and other YAML scalars become strings
        return json.loads(json.dumps(metadata, default=str))
    except (TypeError, ValueError) as err:
        raise FormatError(f"{path} holds values that cannot be kept in config.json: {err}") from err


class ReferenceDictionary(NamedTuple):
    """What a reference-layout folder holds, checked; ``config`` holds the other
    :class:`~itda_lens.core.itda.ITDAConfig` fields (``model``, ``hook``, ``threshold``,
    ``build``)."""

    atoms: Float[Tensor, "n_atoms d_model"]
    k: int
    provenance: Provenance
    config: dict[str, Any]


def read_reference(directory: str | Path) -> ReferenceDictionary:
    """The atoms, ``k``, provenance and config of a reference-layout folder (see the
    module doc); :meth:`itda_lens.core.itda.ITDA.load` makes them a dictionary."""
    directory = Path(directory)
    atoms = _load_tensor(directory / ATOMS_FILE)
    if atoms.dim() != 2 or not atoms.is_floating_point():
        raise FormatError(
            f"{directory / ATOMS_FILE} must hold a float [n_atoms, d_model] tensor, got {atoms.dtype} of shape {tuple(atoms.shape)}."
        )
    n_atoms = atoms.shape[0]
    metadata = _load_metadata(directory / "metadata.yaml") if (directory / "metadata.yaml").exists() else {}
    where = directory / "metadata.yaml"
    try:
        k = metadata.get("k")
        k = checks.integer(min(BuildSettings.k, n_atoms) if k is None else k, "field 'k'", 1, n_atoms)
        layer = metadata.get("layer")
        layer = None if layer is None else checks.integer(layer, "field 'layer'", low=0)
        loss_threshold = metadata.get("loss_threshold")
        if loss_threshold is not None and not checks.number(loss_threshold, "field 'loss_threshold'") > 0:
            raise ValueError(f"field 'loss_threshold' must be a number > 0, got {loss_threshold!r}.")
        for name in ("submodule_name", "lm_name"):
            if metadata.get(name) is not None and not isinstance(metadata[name], str):
                raise TypeError(f"field {name!r} must be a string, got {metadata[name]!r}.")
    except (TypeError, ValueError) as err:
        raise FormatError(f"{where}: {err}") from err
    provenance = Provenance.unknown(n_atoms)
    if (directory / "atom_indices.pt").exists():
        indices = _load_tensor(directory / "atom_indices.pt")
        if indices.shape != (n_atoms, 2) or indices.is_floating_point() or indices.dtype == torch.bool:
            raise FormatError(
                f"atom_indices.pt must hold integers of shape ({n_atoms}, 2), got {indices.dtype} of shape {tuple(indices.shape)}."
            )
        provenance.doc, provenance.token_index = indices[:, 0].long().clone(), indices[:, 1].long().clone()
    hook = metadata.get("submodule_name") or (f"blocks.{layer}.hook_resid_post" if layer is not None else None)
    config = {
        "model": metadata.get("lm_name"),
        "hook": hook,
        "threshold": None if loss_threshold is None else relative_threshold(loss_threshold, atoms.shape[1]),
        "build": {"reference_metadata": metadata, "doc": DOC_KIND, "loss_threshold": loss_threshold},
    }
    return ReferenceDictionary(atoms.float(), k, provenance, config)

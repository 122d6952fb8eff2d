"""Checks of what users pass to a dictionary, shared by the TransformerLens and nnsight
verbs (encode, splice, ablate, clamp, steer, attribute).

Each check returns the value in the type the code uses, or raises one clear error that
names the argument: a ``TypeError`` for a value of the wrong kind (an atom index that is
a float, a scale that is a string), a ``ValueError`` for a value out of its domain (NaN,
``k`` above the number of atoms), an ``IndexError`` for an atom that the dictionary does
not have. Nothing is rounded or coerced: ``3.7`` is not atom 3.

These functions use only torch and the standard library, so the nnsight functions can
call them inside a trace that runs on a server without itda-lens.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor


def _shown(value: object) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} (a {type(value).__name__})"


def integer(value: object, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (either bound optional); bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_shown(value)}.")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"from {low} to {high}" if low is not None and high is not None else f">= {low}" if low is not None else f"<= {high}"
        raise ValueError(f"{name} must be an int {span}, got {value}.")
    return value


def number(value: object, name: str) -> float:
    """``value`` (a real number or a one-element tensor) as a finite float."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_complex and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {_shown(value)}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}.")
    return value


def flag(value: object, name: str) -> bool:
    """``value`` if it is a bool (a string such as ``"no"`` is not taken as true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {_shown(value)}.")
    return value


def hook(hook: object, recorded: str | None) -> str:
    """``hook``, or else the hook point the dictionary ``recorded``; a clear error when
    neither names one."""
    hook = hook or recorded
    if hook is None:
        raise ValueError("the dictionary does not record its hook point; pass hook=, e.g. 'blocks.15.hook_resid_post'.")
    if not isinstance(hook, str):
        raise TypeError(f"hook must be a hook name such as 'blocks.15.hook_resid_post', got {hook!r}.")
    return hook


def atom_indices(atoms: object, n_atoms: int, where: str = "") -> Tensor:
    """``atoms`` (an int, ints, or an integer tensor) as a 1-d int64 tensor on the CPU,
    each an index of a dictionary of ``n_atoms`` atoms. ``where`` names that dictionary
    in the message (``" at blocks.3.hook_resid_post"``)."""
    kinds = "an int, a sequence of ints or an integer tensor"
    if isinstance(atoms, Tensor):
        if atoms.dtype == torch.bool or atoms.is_floating_point() or atoms.is_complex():
            raise TypeError(f"atoms must be indices ({kinds}), got a {atoms.dtype} tensor.")
        picks = atoms.detach().flatten().to("cpu", torch.long)
    elif isinstance(atoms, numbers.Integral) and not isinstance(atoms, bool):
        picks = torch.tensor([int(atoms)])
    elif isinstance(atoms, Iterable) and not isinstance(atoms, (str, bytes)):
        items = list(atoms)
        wrong = [a for a in items if isinstance(a, bool) or not isinstance(a, numbers.Integral)]
        if wrong:
            raise TypeError(f"atoms must be indices ({kinds}); {_shown(wrong[0])} is not one.")
        picks = torch.tensor([int(a) for a in items], dtype=torch.long)
    else:
        raise TypeError(f"atoms must be indices ({kinds}), got {_shown(atoms)}.")
    if len(picks) == 0:
        raise ValueError("give at least one atom.")
    bad = picks[(picks < 0) | (picks >= n_atoms)].tolist()
    if bad:
        raise IndexError(f"atoms {bad[:10]} are out of range: the dictionary{where} has {n_atoms} atoms (0 to {n_atoms - 1}).")
    return picks


def finite_activations(x: Tensor) -> None:
    """Raise if a row of ``x`` ``[n, d_model]`` holds NaN or inf."""
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(dim=-1).sum().item()
        raise ValueError(f"{bad} activations contain NaN or inf; check the model's dtype and inputs.")


def _model_key(name: str) -> str:
    # "HuggingFaceTB/SmolLM2-135M-Instruct", a local folder of that name and the short name
    # "smollm2-135m-instruct" are one model.
    return name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower()


def warn_if_elsewhere(
    built_model: str | None, model: str | None, built_hook: str | None, hook: str, same_hook: bool, stacklevel: int = 2
) -> None:
    """Warn when a dictionary built for ``built_model`` at ``built_hook`` is used on
    ``model`` at ``hook`` (``same_hook``: the caller found them to be one activation).
    Models are compared by their last path component, ignoring case."""
    if built_model and model and _model_key(built_model) != _model_key(model):
        warnings.warn(f"the dictionary was built for model {built_model!r}, not {model!r}.", stacklevel=stacklevel + 1)
    if built_hook and not same_hook:
        warnings.warn(f"the dictionary was built at hook {built_hook!r}, not {hook!r}.", stacklevel=stacklevel + 1)

"""ITDA dictionaries inside TransformerLens models (``HookedTransformer`` and
``TransformerBridge``), through ordinary hook functions."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from itda_lens.itda import ITDA


def check_compatible(model, itda: ITDA, hook: str) -> None:
    """Raise if ``hook`` is not a hook point of ``model`` or has another width than
    ``itda``; warn if the dictionary was built for another model or hook."""
    from itda_lens.activations import check_hook_names

    check_hook_names([hook], list(model.hook_dict))
    width = model.cfg.d_model
    if width != itda.d_model:
        raise ValueError(
            f"the dictionary has width {itda.d_model} but {hook} has width {width}: it was built for "
            f"model={itda.config.model!r}, hook={itda.config.hook!r}."
        )
    model_name = getattr(model.cfg, "model_name", None)
    if itda.config.model and model_name and itda.config.model != model_name:
        warnings.warn(f"the dictionary was built for model {itda.config.model!r}, not {model_name!r}.", stacklevel=3)
    if itda.config.hook and itda.config.hook != hook:
        warnings.warn(f"the dictionary was built at hook {itda.config.hook!r}, not {hook!r}.", stacklevel=3)


def replace_hook(
    replacement: Float[Tensor, "batch seq d_model"], mask: Bool[Tensor, "batch seq"]
) -> Callable[[Tensor, object], Tensor]:
    """A hook function that puts ``replacement`` in place of the activation at ``mask``."""

    def hook_fn(activation: Tensor, hook=None) -> Tensor:
        mask_here = mask.to(activation.device)[..., None]
        return torch.where(mask_here, replacement.to(activation.device, activation.dtype), activation)

    return hook_fn

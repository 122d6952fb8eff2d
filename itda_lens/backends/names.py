"""TransformerLens hook names and nnsight module paths, for common architectures.

A module path names a submodule of the Hugging Face model (``model.layers.15``) and
means its output; a path ending in ``.input`` means its first input
(``model.layers.15.input``), as nnsight's ``model.get(path)`` reads it. Hook names may
be TransformerLens' legacy spelling (``blocks.15.hook_resid_post``) or
TransformerBridge's canonical one (``blocks.15.hook_out``); :func:`hook_name` returns
the legacy spelling.

Sites and their module paths in Llama-style models (llama, mistral, mixtral, qwen2,
qwen3, gemma, gemma2, gemma3_text), GPT-2 and GPT-NeoX:

=========== =========================== ================================== ===================
site        TransformerLens             Llama-style                        GPT-2
=========== =========================== ================================== ===================
resid_pre   blocks.i.hook_resid_pre     model.layers.i.input               transformer.h.i.input
resid_mid   blocks.i.hook_resid_mid     model.layers.i.post_attention_     transformer.h.i.ln_2.input
                                        layernorm.input
resid_post  blocks.i.hook_resid_post    model.layers.i                     transformer.h.i
attn_out    blocks.i.hook_attn_out      model.layers.i.self_attn           transformer.h.i.attn
mlp_out     blocks.i.hook_mlp_out       model.layers.i.mlp                 transformer.h.i.mlp
embed       hook_embed                  model.embed_tokens                 transformer.wte
ln_final    ln_final.hook_out           model.norm                         transformer.ln_f
=========== =========================== ================================== ===================

Gemma 2 and 3 normalise the attention and MLP outputs before adding them to the
residual stream; their ``attn_out`` and ``mlp_out`` are those normed outputs (as in
``HookedTransformer``), and Gemma 1 and 2 scale the embedding outside the embedding
module, so ``hook_embed`` is not mapped for them (use ``blocks.0.hook_resid_pre``).
"""

from __future__ import annotations

import difflib
import re

#: TransformerLens spellings of each site; the first is the legacy one :func:`hook_name` returns.
_HOOKS: dict[str, tuple[str, ...]] = {
    "resid_pre": ("blocks.{i}.hook_resid_pre", "blocks.{i}.hook_in"),
    "resid_mid": ("blocks.{i}.hook_resid_mid",),
    "resid_post": ("blocks.{i}.hook_resid_post", "blocks.{i}.hook_out"),
    "attn_out": ("blocks.{i}.hook_attn_out", "blocks.{i}.attn.hook_out"),
    "mlp_out": ("blocks.{i}.hook_mlp_out", "blocks.{i}.mlp.hook_out"),
    "embed": ("hook_embed", "embed.hook_out"),
    "pos_embed": ("hook_pos_embed", "pos_embed.hook_out"),
    "ln_final": ("ln_final.hook_out",),
}

_LLAMA = {
    "resid_pre": "model.layers.{i}.input",
    "resid_mid": "model.layers.{i}.post_attention_layernorm.input",
    "resid_post": "model.layers.{i}",
    "attn_out": "model.layers.{i}.self_attn",
    "mlp_out": "model.layers.{i}.mlp",
    "embed": "model.embed_tokens",
    "ln_final": "model.norm",
}
_GEMMA2 = {
    **_LLAMA,
    "resid_mid": "model.layers.{i}.pre_feedforward_layernorm.input",
    "attn_out": "model.layers.{i}.post_attention_layernorm",
    "mlp_out": "model.layers.{i}.post_feedforward_layernorm",
}
_GPT2 = {
    "resid_pre": "transformer.h.{i}.input",
    "resid_mid": "transformer.h.{i}.ln_2.input",
    "resid_post": "transformer.h.{i}",
    "attn_out": "transformer.h.{i}.attn",
    "mlp_out": "transformer.h.{i}.mlp",
    "embed": "transformer.wte",
    "pos_embed": "transformer.wpe",
    "ln_final": "transformer.ln_f",
}
_GPT_NEOX = {
    "resid_pre": "gpt_neox.layers.{i}.input",
    "resid_post": "gpt_neox.layers.{i}",
    "attn_out": "gpt_neox.layers.{i}.attention",
    "mlp_out": "gpt_neox.layers.{i}.mlp",
    "embed": "gpt_neox.embed_in",
    "ln_final": "gpt_neox.final_layer_norm",
}

#: Module paths of each site, by Hugging Face ``config.model_type``.
LAYOUTS: dict[str, dict[str, str]] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "mixtral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": {key: value for key, value in _LLAMA.items() if key != "embed"},
    "gemma2": {key: value for key, value in _GEMMA2.items() if key != "embed"},
    "gemma3_text": _GEMMA2,
    "gpt2": _GPT2,
    "gpt_neox": _GPT_NEOX,
}


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(\d+)") + "$")


def architecture(model) -> str:
    """The ``config.model_type`` of ``model`` (an nnsight ``LanguageModel``, a
    ``transformers`` model, its config, or the model type itself), checked to be one
    this module maps."""
    if isinstance(model, str):
        model_type = model
    else:
        config = getattr(model, "config", model)
        model_type = getattr(config, "model_type", None)
        if model_type is None:
            raise ValueError(f"cannot tell the architecture of {type(model).__name__}: it has no config.model_type.")
    if model_type not in LAYOUTS:
        raise ValueError(
            f"no hook-name mapping for architecture {model_type!r} (known: {', '.join(sorted(LAYOUTS))}); "
            "give nnsight module paths such as 'model.layers.15' instead of TransformerLens hook names."
        )
    return model_type


def is_hook_name(name: str) -> bool:
    """Whether ``name`` is spelled like a TransformerLens hook name."""
    return name.startswith(("blocks.", "hook_", "embed.", "pos_embed.", "ln_final."))


def module_path(hook: str, model) -> str:
    """The nnsight module path of a TransformerLens hook name in ``model``'s architecture."""
    layout = LAYOUTS[architecture(model)]
    for site, spellings in _HOOKS.items():
        for spelling in spellings:
            match = _pattern(spelling).match(hook)
            if match is None:
                continue
            if site not in layout:
                raise ValueError(f"hook {hook!r} has no module in {architecture(model)} models; see itda_lens.backends.names for the sites mapped.")
            return layout[site].format(i=match.group(1)) if match.groups() else layout[site]
    known = [spelling.format(i=0) for spellings in _HOOKS.values() for spelling in spellings]
    close = difflib.get_close_matches(hook, known, n=3, cutoff=0.5)
    hint = f" Close: {', '.join(close)}." if close else ""
    raise ValueError(f"{hook!r} is not a TransformerLens hook name that itda_lens maps to a module.{hint}")


def hook_name(path: str, model) -> str:
    """The TransformerLens hook name (legacy spelling) of an nnsight module path."""
    layout = LAYOUTS[architecture(model)]
    for site, template in layout.items():
        match = _pattern(template).match(path)
        if match is not None:
            legacy = _HOOKS[site][0]
            return legacy.format(i=match.group(1)) if match.groups() else legacy
    raise ValueError(f"module path {path!r} is no TransformerLens hook point in {architecture(model)} models.")


def to_module_path(name: str, model) -> str:
    """``name`` as a module path: hook names are mapped, module paths returned as given."""
    return module_path(name, model) if is_hook_name(name) else name

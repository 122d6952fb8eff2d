"""TransformerLens hook names <-> nnsight module paths."""

from __future__ import annotations

import pytest
import torch

from itda_lens.backends import names
from itda_lens.backends.nnsight_source import NnsightSource

SITES = {
    "blocks.2.hook_resid_pre": "model.layers.2.input",
    "blocks.2.hook_resid_mid": "model.layers.2.post_attention_layernorm.input",
    "blocks.2.hook_resid_post": "model.layers.2",
    "blocks.2.hook_attn_out": "model.layers.2.self_attn",
    "blocks.2.hook_mlp_out": "model.layers.2.mlp",
    "hook_embed": "model.embed_tokens",
    "ln_final.hook_out": "model.norm",
}
CANONICAL = {
    "blocks.2.hook_in": "blocks.2.hook_resid_pre",
    "blocks.2.hook_out": "blocks.2.hook_resid_post",
    "blocks.2.attn.hook_out": "blocks.2.hook_attn_out",
    "blocks.2.mlp.hook_out": "blocks.2.hook_mlp_out",
    "embed.hook_out": "hook_embed",
}


def test_llama_names_both_ways():
    for hook, path in SITES.items():
        assert names.module_path(hook, "llama") == path
        assert names.hook_name(path, "llama") == hook
    for canonical, legacy in CANONICAL.items():
        assert names.module_path(canonical, "llama") == names.module_path(legacy, "llama")


def test_other_architectures():
    assert names.module_path("blocks.7.hook_resid_post", "gpt2") == "transformer.h.7"
    assert names.module_path("hook_pos_embed", "gpt2") == "transformer.wpe"
    assert names.hook_name("gpt_neox.layers.3.attention", "gpt_neox") == "blocks.3.hook_attn_out"
    assert names.module_path("blocks.1.hook_mlp_out", "gemma2") == "model.layers.1.post_feedforward_layernorm"
    assert names.module_path("blocks.1.hook_resid_post", "qwen3") == "model.layers.1"
    assert names.to_module_path("model.layers.4", "mistral") == "model.layers.4"


def _tiny(model_type):
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, vocab_size=64, head_dim=8)
    if model_type == "gpt2":
        settings = dict(n_embd=16, n_layer=2, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0)
    elif model_type == "gpt_neox":
        settings = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=64)
    elif model_type == "mixtral":
        settings.update(num_local_experts=2, num_experts_per_tok=1)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings))


@pytest.mark.parametrize("model_type", sorted(names.LAYOUTS))
def test_every_mapped_module_exists(model_type):
    model = _tiny(model_type)
    assert names.architecture(model) == model_type
    modules = dict(model.named_modules())
    for site, template in names.LAYOUTS[model_type].items():
        path = template.format(i=1)
        assert path.removesuffix(".input") in modules, (model_type, site, path)
        assert names.module_path(names.hook_name(path, model), model) == path


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="known: gemma.*give nnsight module paths"):
        names.module_path("blocks.0.hook_resid_post", "bloom")
    with pytest.raises(ValueError, match="Close: blocks.0.hook_resid_post"):
        names.module_path("blocks.0.hook_resid_postt", "llama")
    with pytest.raises(ValueError, match="no module in gemma2"):
        names.module_path("hook_embed", "gemma2")
    with pytest.raises(ValueError, match="no TransformerLens hook point"):
        names.hook_name("lm_head", "llama")


def test_same_activations_from_either_library(nnsight_model, bridge, tokenizer):
    """The real SmolLM2: each hook name read through TransformerLens equals the mapped module read through nnsight."""
    tokens = torch.tensor([[tokenizer.bos_token_id, *tokenizer("The quick brown fox jumps over the lazy dog.").input_ids]])
    hooks = [*SITES, *CANONICAL]
    _, cache = bridge.run_with_cache(tokens, names_filter=hooks, return_cache_object=False)
    source = NnsightSource(nnsight_model, list(SITES))
    assert source.modules == list(SITES.values())
    activations = source(tokens)
    for hook in SITES:
        torch.testing.assert_close(activations[hook], cache[hook], atol=2e-4, rtol=1e-4, msg=hook)
    for canonical, legacy in CANONICAL.items():
        torch.testing.assert_close(cache[canonical], cache[legacy], atol=0, rtol=0)

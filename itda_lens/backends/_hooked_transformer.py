"""Build a TransformerLens 3.x ``HookedTransformer`` from an in-memory HF model, offline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import transformer_lens
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["hooked_transformer_from_hf"]

_SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
_MAX_N_CTX = 2048


def _rope_parameters(config: Any) -> dict[str, Any]:
    # transformers >= 5 keeps rope_theta and scaling in `rope_parameters`;
    # older configs use top-level `rope_theta` and `rope_scaling`.
    params: dict[str, Any] = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None)
    if scaling:
        params = {**dict(scaling), **params}
    theta = getattr(config, "rope_theta", None)
    if theta is not None:
        params.setdefault("rope_theta", theta)
    params.setdefault("rope_theta", 10000.0)
    return params


def hooked_transformer_from_hf(
    hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> transformer_lens.HookedTransformer:
    """Convert a Llama-architecture HF causal LM into an equivalent ``HookedTransformer``.

    The configuration is read from ``hf_model.config`` and the weights are copied
    without folding or centering, so logits and every residual-stream activation
    match the HF model (``blocks.{i}.hook_resid_post`` equals
    ``hidden_states[i + 1]``). Nothing is fetched from the Hub for the model;
    TransformerLens may re-load the tokenizer from its own ``name_or_path`` to
    turn on BOS prepending. The context length is capped at 2048 positions. The result is in eval mode, on the HF model's device
    and dtype.

    Raises:
        ImportError: if transformer-lens 3.x is not installed.
        ValueError: if the architecture is not supported, or the model uses
            biases or a RoPE scaling type that the conversion cannot represent.
    """
    architecture = type(hf_model).__name__
    if architecture not in _SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"Unsupported architecture {architecture!r}; supported: "
            f"{', '.join(_SUPPORTED_ARCHITECTURES)}."
        )
    config = hf_model.config
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("Llama models with attention or MLP biases are not supported.")
    rope = _rope_parameters(config)
    rope_type = str(rope.get("rope_type") or rope.get("type") or "default").lower()
    if rope_type not in ("default", "llama3"):
        raise ValueError(
            f"Unsupported RoPE type {rope_type!r}; supported: 'default', 'llama3'."
        )

    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        from transformer_lens.pretrained.weight_conversions import convert_llama_weights
    except ImportError as exc:
        raise ImportError(
            "hooked_transformer_from_hf needs transformer-lens>=3,<4 (HookedTransformer)."
        ) from exc

    n_heads = int(config.num_attention_heads)
    d_head = int(getattr(config, "head_dim", None) or config.hidden_size // n_heads)
    n_kv_heads = int(getattr(config, "num_key_value_heads", None) or n_heads)
    parameter = next(hf_model.parameters())
    cfg_dict: dict[str, Any] = {
        "d_model": int(config.hidden_size),
        "d_head": d_head,
        "n_heads": n_heads,
        "n_key_value_heads": n_kv_heads if n_kv_heads != n_heads else None,
        "d_mlp": int(config.intermediate_size),
        "n_layers": int(config.num_hidden_layers),
        "n_ctx": min(int(config.max_position_embeddings), _MAX_N_CTX),
        "d_vocab": int(config.vocab_size),
        "eps": float(config.rms_norm_eps),
        "act_fn": str(config.hidden_act),
        "normalization_type": "RMS",
        "final_rms": True,
        "gated_mlp": True,
        "positional_embedding_type": "rotary",
        "rotary_dim": d_head,
        "rotary_base": float(rope["rope_theta"]),
        "rotary_adjacent_pairs": False,
        "original_architecture": architecture,
        "default_prepend_bos": True,
        "dtype": parameter.dtype,
        "device": str(parameter.device),
    }
    if rope_type == "llama3":
        cfg_dict.update(
            use_NTK_by_parts_rope=True,
            NTK_original_ctx_len=int(
                rope.get("original_max_position_embeddings", config.max_position_embeddings)
            ),
            NTK_by_parts_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            NTK_by_parts_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            NTK_by_parts_factor=float(rope.get("factor", 1.0)),
        )
    cfg = HookedTransformerConfig(**cfg_dict)

    # lm_head.weight is the (possibly tied) unembedding; the conversion copies it to W_U.
    state_dict = convert_llama_weights(hf_model, cfg)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=True)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return model.eval()

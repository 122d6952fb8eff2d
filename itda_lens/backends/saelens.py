"""ITDA dictionaries as SAE Lens SAEs, for ``HookedSAETransformer`` and ``SAETransformerBridge``.

Needs ``sae-lens`` (which needs TransformerLens < 4)::

    from itda_lens.backends.saelens import ITDASAE, hooked_sae_transformer, sae_transformer_bridge
    model = hooked_sae_transformer(load_model(backend="hooked_transformer"))  # or sae_transformer_bridge(load_model())
    model.add_sae(ITDASAE.from_itda(itda), use_error_term=True)

There the dictionary behaves like any SAE: its feature activations
(``hook_sae_acts_pre`` / ``hook_sae_acts_post``) are the codes as a dense
``[..., n_atoms]`` tensor; the decoder ``W_dec`` is the atoms and the encoder ``W_enc``
its transpose (the atoms' correlations; the codes themselves come from matching pursuit).
Coefficients are signed (about a third are negative): an atom is live where its
activation is ``!= 0``, so count with ``acts != 0`` and rank with ``acts.abs()``.
``ITDASAE`` is registered with SAE Lens as architecture ``"itda"``: ``save_model`` and
``SAE.load_from_disk`` round-trip it.

SAE Lens applies an SAE at every position unless ``add_sae(..., exclude_special_tokens=...)``
says otherwise. The models that :func:`hooked_sae_transformer` and
:func:`sae_transformer_bridge` make leave BOS alone for an ``ITDASAE``, as
:func:`itda_lens.backends.transformer_lens.attach` does: there ``exclude_special_tokens=False``
(SAE Lens' default) means the tokenizer's BOS, ``[]`` encodes every position and ``True``
skips every special token. In a plain ``HookedSAETransformer`` pass
``exclude_special_tokens=[model.tokenizer.bos_token_id]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from sae_lens import SAE, HookedSAETransformer, SAEConfig, SAETransformerBridge
from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class
from sae_lens.saes.sae import SAEMetadata
from sae_lens.util import get_special_token_ids
from torch import Tensor, nn

from itda_lens.core import checks
from itda_lens.core.config import DEFAULT_BUILD
from itda_lens.core.itda import ITDA, ITDAConfig
from itda_lens.core.provenance import Provenance

ARCHITECTURE = "itda"


@dataclass
class ITDASAEConfig(SAEConfig):
    """SAELens configuration of an ITDA: ``k`` atoms per activation, ``refit`` as in
    :class:`itda_lens.ITDAConfig`."""

    k: int = DEFAULT_BUILD.k
    refit: bool = DEFAULT_BUILD.refit
    apply_b_dec_to_input: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.integer(self.k, "k", 1, self.d_sae)
        checks.flag(self.refit, "refit")

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class ITDASAE(SAE[ITDASAEConfig]):
    """An ITDA dictionary behind SAELens' ``SAE`` interface; make one with :meth:`from_itda`."""

    def __init__(self, cfg: ITDASAEConfig, use_error_term: bool = False, provenance: Provenance | None = None):
        super().__init__(cfg, use_error_term)
        self.__dict__["provenance"] = provenance if provenance is not None else Provenance.unknown(cfg.d_sae)
        self.__dict__["_itda"] = None

    @classmethod
    def from_itda(cls, itda: ITDA, hook: str | None = None, model_name: str | None = None) -> ITDASAE:
        """The SAE of ``itda`` at ``hook`` (default: the hook it was built at)."""
        if not isinstance(itda, ITDA):
            raise TypeError(f"from_itda takes an ITDA, got {type(itda).__name__}.")
        hook = checks.hook(hook, itda.config.hook)
        metadata = SAEMetadata(hook_name=hook, model_name=model_name or itda.config.model, prepend_bos=True)
        cfg = ITDASAEConfig(
            d_in=itda.d_model,
            d_sae=itda.n_atoms,
            dtype=itda.config.dtype,
            device=str(itda.atoms.device),
            k=itda.k,
            refit=itda.config.refit,
            metadata=metadata,
        )
        sae = cls(cfg, provenance=itda.provenance)
        with torch.no_grad():
            sae.W_dec.copy_(itda.atoms)
        return sae

    # The encoder is tied to the decoder.
    @property
    def W_enc(self) -> Float[Tensor, "d_in d_sae"]:  # type: ignore[override]
        return self.W_dec.T

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "W_enc":
            raise AttributeError("an ITDA's W_enc is W_dec.T; set W_dec instead.")
        super().__setattr__(name, value)

    def initialize_weights(self) -> None:
        self.W_dec = nn.Parameter(torch.zeros(self.cfg.d_sae, self.cfg.d_in, dtype=self.dtype, device=self.device))
        self.b_dec = nn.Parameter(torch.zeros(self.cfg.d_in, dtype=self.dtype, device=self.device))

    @property
    def itda(self) -> ITDA:
        """The dictionary, sharing ``W_dec``'s storage (rebuilt when ``W_dec`` changes)."""
        weights = self.W_dec
        key = (weights.data_ptr(), weights._version, weights.device, weights.dtype, self.cfg.k, self.cfg.refit)
        cached = self.__dict__["_itda"]
        if cached is None or cached[0] != key:
            meta = self.cfg.metadata
            config = ITDAConfig(
                d_model=self.cfg.d_in,
                k=self.cfg.k,
                refit=self.cfg.refit,
                model=meta.model_name,
                hook=meta.hook_name,
                dtype=str(weights.dtype).removeprefix("torch."),
            )
            cached = (key, ITDA(weights.detach(), config, self.provenance))
            self.__dict__["_itda"] = cached
        return cached[1]

    def to_itda(self) -> ITDA:
        """A standalone copy of the dictionary (with its provenance)."""
        itda = self.itda
        return ITDA(itda.atoms.clone(), ITDAConfig(**{**itda.config.__dict__}), self.provenance)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """The sparse codes of ``x`` as a dense tensor (SAELens' feature activations)."""
        sae_in = self.process_sae_in(x)
        itda = self.itda
        acts = itda.dense(itda.encode(sae_in))
        return self.hook_sae_acts_post(self.hook_sae_acts_pre(acts))

    def decode(self, feature_acts: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """``feature_acts @ W_dec`` (plus ``b_dec``, which is 0 unless you set it)."""
        out = feature_acts @ self.W_dec + self.b_dec
        out = self.run_time_activation_norm_fn_out(self.hook_sae_recons(out))
        return self.reshape_fn_out(out, self.d_head)

    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError("an ITDA's atoms have unit norm already; there is nothing to fold.")

    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        raise NotImplementedError("an ITDA's encoder is tied to its unit-norm atoms; scaling cannot be folded into it.")

    def fold_activation_whitening(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("an ITDA's encoder is tied to its unit-norm atoms; whitening cannot be folded into it.")


if ARCHITECTURE not in SAE_CLASS_REGISTRY:
    register_sae_class(ARCHITECTURE, ITDASAE, ITDASAEConfig)


def _bos_by_default(model, sae: SAE, exclude_special_tokens: bool | list[int]) -> bool | list[int]:
    """What ``add_sae`` excludes: for an :class:`ITDASAE`, SAE Lens' default ``False``
    becomes the tokenizer's BOS; anything else is kept."""
    if exclude_special_tokens is not False or not isinstance(sae, ITDASAE):
        return exclude_special_tokens
    bos = getattr(model.tokenizer, "bos_token_id", None)
    return [] if bos is None else [bos]


class ITDAHookedSAETransformer(HookedSAETransformer):
    """A ``HookedSAETransformer`` that leaves BOS alone for an :class:`ITDASAE` unless
    ``exclude_special_tokens`` says otherwise; make one with :func:`hooked_sae_transformer`."""

    def add_sae(self, sae: SAE, use_error_term: bool | None = None, exclude_special_tokens: bool | list[int] = False) -> None:
        super().add_sae(sae, use_error_term, _bos_by_default(self, sae, exclude_special_tokens))


class ITDASAETransformerBridge(SAETransformerBridge):
    """An ``SAETransformerBridge`` that leaves BOS alone for an :class:`ITDASAE` unless
    ``add_sae(..., exclude_special_tokens=...)`` says otherwise, with the meaning
    ``HookedSAETransformer.add_sae`` gives it; make one with :func:`sae_transformer_bridge`."""

    def add_sae(self, sae: SAE, use_error_term: bool | None = None, exclude_special_tokens: bool | list[int] = False) -> None:
        super().add_sae(sae, use_error_term)
        wrapper = self._acts_to_saes.get(sae.cfg.metadata.hook_name)
        if wrapper is not None and wrapper.sae is sae:  # add_sae skips a hook it cannot find
            wrapper.exclude_special_tokens = _bos_by_default(self, sae, exclude_special_tokens)

    def forward(self, input, *args: Any, **kwargs: Any) -> Any:
        """``TransformerBridge.forward``, with the excluded positions of each SAE's tokens
        passed to it as SAE Lens' token mask."""
        wrappers = [w for w in self._acts_to_saes.values() if w.exclude_special_tokens is not False]
        tokens = input if isinstance(input, Tensor) else None
        if wrappers and isinstance(input, (str, list)):
            tokens = self.to_tokens(input, prepend_bos=kwargs.get("prepend_bos"), padding_side=kwargs.get("padding_side"))
        if tokens is None or tokens.is_floating_point():
            wrappers = []
        for wrapper in wrappers:
            excluded = wrapper.exclude_special_tokens
            ids = get_special_token_ids(self.tokenizer) if excluded is True else list(excluded)
            wrapper.set_token_mask(torch.isin(tokens, torch.tensor(ids, dtype=tokens.dtype, device=tokens.device)))
        try:
            return super().forward(input, *args, **kwargs)
        finally:
            for wrapper in wrappers:
                wrapper.set_token_mask(None)

    @classmethod
    def _adopt(cls, bridge) -> ITDASAETransformerBridge:
        bridge.__class__ = cls
        bridge._acts_to_saes = {}
        bridge._transcoder_output_hooks = {}
        return bridge


def hooked_sae_transformer(model) -> ITDAHookedSAETransformer:
    """An :class:`ITDAHookedSAETransformer` with the weights, config and tokenizer of a
    ``HookedTransformer`` (such as ``load_model(backend="hooked_transformer")``)."""
    import copy

    from transformer_lens import HookedTransformer

    if isinstance(model, ITDAHookedSAETransformer):
        return model
    if not isinstance(model, HookedTransformer):
        raise TypeError(f"expected a HookedTransformer, got {type(model).__name__}; SAE Lens needs TransformerLens < 4.")
    sae_model = ITDAHookedSAETransformer(copy.deepcopy(model.cfg), tokenizer=model.tokenizer)
    sae_model.load_state_dict(model.state_dict())
    return sae_model.to(next(model.parameters()).device).eval()


def sae_transformer_bridge(bridge) -> ITDASAETransformerBridge:
    """``bridge`` (a TransformerLens 3 ``TransformerBridge``, such as ``load_model()``)
    turned into an :class:`ITDASAETransformerBridge` in place, as
    ``SAETransformerBridge.boot_transformers`` does with the bridges it boots."""
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(bridge, ITDASAETransformerBridge):
        return bridge
    if not isinstance(bridge, TransformerBridge) or isinstance(bridge, SAETransformerBridge):
        raise TypeError(f"expected a TransformerBridge without SAEs, got {type(bridge).__name__}; make it with load_model().")
    return ITDASAETransformerBridge._adopt(bridge)

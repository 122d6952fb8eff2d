"""Shared fixtures: the real embedded SmolLM2-135M-Instruct and the shared WikiText text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from itda_lens.core.config import BuildSettings

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "wikitext-2" / "valid.txt"


@pytest.fixture(scope="session")
def wikitext() -> Path:
    if not WIKITEXT.exists():
        pytest.skip(f"the shared corpus is not at {WIKITEXT}")
    return WIKITEXT


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The embedded SmolLM2 tokenizer alone (byte-level BPE, 49k tokens, spaces attached to words)."""
    try:
        from transformers import AutoTokenizer

        from itda_lens.backends.models import embedded_model_path

        return AutoTokenizer.from_pretrained(embedded_model_path())
    except (ModuleNotFoundError, OSError) as err:
        pytest.skip(f"the embedded SmolLM2 tokenizer is not available: {err}")


@pytest.fixture(scope="session")
def bridge():
    """SmolLM2-135M-Instruct as a TransformerLens TransformerBridge."""
    from itda_lens.backends.models import load_model

    torch.manual_seed(0)
    return load_model(backend="transformer_lens")


@pytest.fixture(scope="session")
def tokenizer(bridge):
    return bridge.tokenizer


@pytest.fixture(scope="session")
def nnsight_model():
    """SmolLM2-135M-Instruct as an nnsight LanguageModel (its own copy of the weights)."""
    import warnings

    from itda_lens.backends.models import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LanguageModel is a deprecated alias of TransformersModel in nnsight 0.8
        return load_model(backend="nnsight")


@pytest.fixture(scope="session")
def hooked_transformer():
    """SmolLM2-135M-Instruct as a TransformerLens 3.x HookedTransformer (skipped on 4.x)."""
    from itda_lens.backends.models import load_model

    pytest.importorskip("transformer_lens", reason="TransformerLens is not installed")
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        pytest.skip("HookedTransformer lives in TransformerLens 3.x")
    return load_model(backend="hooked_transformer")


@pytest.fixture(scope="session")
def dictionaries(bridge, wikitext):
    """Small real dictionaries at blocks.3 and blocks.15.hook_resid_post, built from 3,000
    training tokens of WikiText."""
    from itda_lens.core.activations import TransformerLensSource
    from itda_lens.core.build import build
    from itda_lens.core.text import file_documents, select_split, token_batches

    hooks = ["blocks.3.hook_resid_post", "blocks.15.hook_resid_post"]
    batches = token_batches(select_split(file_documents(wikitext), "train"), bridge.tokenizer, 64, 8, 3000)
    return build(TransformerLensSource(bridge, hooks), batches, BuildSettings(k=16, threshold=0.15), progress=False).dictionaries


@pytest.fixture(scope="session")
def hf_model():
    """SmolLM2-135M-Instruct as a plain transformers model, its own copy of the weights."""
    from itda_lens.backends.models import load_model

    return load_model(backend="hf")

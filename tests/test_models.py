"""Loading models by name: the embedded default, and one clear error for anything else."""

from __future__ import annotations

import pytest

from itda_lens.backends.models import check_device, check_dtype, load_hf, load_model


@pytest.mark.parametrize(
    "name, message",
    [
        ("no such model", "'no such model' is not a model folder or a Hugging Face id"),
        ("nobody/no-such-model", "not in the Hugging Face cache and the Hub cannot be reached|there is no model 'nobody/no-such-model'"),
        (".", "is a path but not a model folder"),
        ("README.md", "is a path but not a model folder"),
    ],
)
def test_names_that_are_not_models_get_one_clear_error(name, message):
    with pytest.raises(ValueError, match=message):
        load_hf(name)


@pytest.mark.parametrize("dtype", ["int8", "float33", "torch.float32", ""])
def test_dtypes_that_are_not_float_types_are_refused(dtype):
    with pytest.raises(ValueError, match="dtype must be one of float32, float16, bfloat16, float64"):
        check_dtype(dtype)


@pytest.mark.parametrize("device, message", [("cdu", "is not a device name"), ("cuda:7", "CUDA GPU")])
def test_devices_this_machine_lacks_are_refused(device, message):
    pytest.importorskip("torch")
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(ValueError, match=message):
        check_device(device)


def test_unknown_backends_are_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        load_model(backend="tensorflow")


def test_the_embedded_model_loads_in_the_dtype_asked_for():
    model, tokenizer = load_hf(dtype="bfloat16")
    assert next(model.parameters()).dtype.is_floating_point and str(next(model.parameters()).dtype) == "torch.bfloat16"
    assert tokenizer.bos_token_id is not None

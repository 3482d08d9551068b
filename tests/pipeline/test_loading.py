"""Loading a saved causal LM and its tokenizer; device and dtype resolution."""

from __future__ import annotations

import pytest
import torch

from tests.methods import tiny
from xtf_kernels.pipeline import load_causal_lm
from xtf_kernels.pipeline import load_tokenizer
from xtf_kernels.pipeline.loading import resolve_device
from xtf_kernels.pipeline.loading import resolve_dtype

pytest.importorskip("transformers")


def test_load_a_saved_model_and_tokenizer(tmp_path):
    model = tiny.model("qwen2", num_layers=1)
    model.save_pretrained(tmp_path)
    tiny.data().tokenizer.to_transformers().save_pretrained(tmp_path)
    loaded = load_causal_lm(tmp_path, device="cpu", dtype="auto")
    assert not loaded.training and loaded.dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert load_causal_lm(tmp_path, device="cpu", dtype="bfloat16").dtype == torch.bfloat16
    tokenizer = load_tokenizer(tmp_path)
    text = "Tom has 12 pens"
    assert tokenizer.encode(text, add_special_tokens=False) == tiny.data().tokenizer.encode(text)


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_causal_lm(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        load_causal_lm(tmp_path / "file")
    with pytest.raises(ValueError, match="no transformers model config"):
        load_causal_lm(tmp_path)
    with pytest.raises(ValueError, match="cannot load a tokenizer"):
        load_tokenizer(tmp_path)


def test_device_and_dtype_resolution():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", cpu)
    assert resolve_device("cpu") == cpu
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")

"""Embeddings and JSONL readers: each format round-trips, each malformed input gets a one-line named error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from xtf_kernels.fidelity import load_embeddings
from xtf_kernels.fidelity import read_jsonl_texts
from xtf_kernels.fidelity.files import file_kind

EMBEDDINGS = torch.arange(21, dtype=torch.float32).reshape(7, 3)


@pytest.mark.parametrize(
    "name, save",
    [
        ("e.npy", lambda path: np.save(path, EMBEDDINGS.numpy())),
        ("e.pt", lambda path: torch.save(EMBEDDINGS, path)),
        ("dict.pt", lambda path: torch.save({"embeddings": EMBEDDINGS, "ids": torch.arange(7)}, path)),
        ("e.safetensors", lambda path: save_file({"anything": EMBEDDINGS}, path)),
        ("two.safetensors", lambda path: save_file({"embeddings": EMBEDDINGS, "norms": EMBEDDINGS.sum(1)}, path)),
    ],
)
def test_embeddings_round_trip(tmp_path, name, save):
    path = tmp_path / name
    save(path)
    assert file_kind(path) == "embeddings"
    assert torch.equal(load_embeddings(path), EMBEDDINGS)


def test_embeddings_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_embeddings(tmp_path / "missing.npy")
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="cannot read embeddings from .*broken.npy"):
        load_embeddings(tmp_path / "broken.npy")
    save_file({"a": EMBEDDINGS, "b": EMBEDDINGS.clone()}, tmp_path / "ambiguous.safetensors")
    with pytest.raises(ValueError, match=r"holds tensors \['a', 'b'\]"):
        load_embeddings(tmp_path / "ambiguous.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list"):
        load_embeddings(tmp_path / "list.pt")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="cannot read embeddings"):  # pickles are never loaded
        load_embeddings(tmp_path / "objects.npy")
    with pytest.raises(ValueError, match="unsupported file type .csv"):
        file_kind(tmp_path / "e.csv")


def test_jsonl_texts_join_the_chosen_fields(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": "2+2?", "response": "4", "id": 1}, {"prompt": "hi", "response": "hello", "id": 2}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    assert file_kind(path) == "text"
    assert read_jsonl_texts(path, ["prompt", "response"]) == ["2+2?\n4", "hi\nhello"]
    assert read_jsonl_texts(path, ["response"]) == ["4", "hello"]


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"text": "a"}\n{"text": ', "line 2 is not valid JSON"),
        ('{"text": "a"}\n[1, 2]\n', "line 2 is a list"),
        ('{"text": "a"}\n{"body": "b"}\n', r"line 2 has no field 'text' \(fields: \['body'\]\)"),
        ('{"text": 3}\n', "line 1: field 'text' is a int"),
        ("\n\n", "holds no JSONL records"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_jsonl_texts(path)

"""Read the sample sets the auditor compares from files: embeddings (.npy, .pt, .safetensors) or JSONL text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

EMBEDDING_SUFFIXES = (".npy", ".pt", ".safetensors")
TEXT_SUFFIXES = (".jsonl",)
# Name of the tensor to use when a .pt / .safetensors file holds several.
EMBEDDINGS_KEY = "embeddings"


def file_kind(path: str | Path) -> str:
    """"embeddings" or "text" by suffix; ValueError for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in EMBEDDING_SUFFIXES:
        return "embeddings"
    if suffix in TEXT_SUFFIXES:
        return "text"
    raise ValueError(
        f"{str(path)!r}: unsupported file type {suffix or '(no suffix)'}; use embeddings "
        f"({', '.join(EMBEDDING_SUFFIXES)}) or JSONL text ({', '.join(TEXT_SUFFIXES)})"
    )


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file")
    return path


def load_embeddings(path: str | Path) -> torch.Tensor:
    """A 2-D array of embeddings (n, d) from .npy, .pt (torch.save) or .safetensors, as a CPU tensor.

    A .pt / .safetensors file holds one tensor, or several of which the one named ``"embeddings"`` is used
    (a .pt file may also hold that dict). Pickled objects are never executed (numpy allow_pickle=False,
    torch.load weights_only=True). Shape, dtype and finiteness are checked by the estimator.
    """
    path = _existing_file(path)
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise ValueError(f"{str(path)!r} is not an embeddings file ({', '.join(EMBEDDING_SUFFIXES)})")
    try:
        if suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if suffix == ".pt":
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file

            loaded = load_file(path)
    except Exception as exc:  # noqa: BLE001 - numpy, torch and safetensors each raise their own types
        raise ValueError(f"cannot read embeddings from {str(path)!r}: {str(exc).strip().splitlines()[0]}") from exc
    if isinstance(loaded, torch.Tensor):
        return loaded
    if isinstance(loaded, dict):
        tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        if EMBEDDINGS_KEY in tensors:
            return tensors[EMBEDDINGS_KEY]
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        raise ValueError(
            f"{str(path)!r} holds tensors {sorted(tensors)}; save one tensor, or name the one to use "
            f"{EMBEDDINGS_KEY!r}"
        )
    raise ValueError(f"{str(path)!r} holds a {type(loaded).__name__}, expected a tensor of embeddings (n, d)")


def read_jsonl_texts(path: str | Path, fields: Sequence[str] = ("text",)) -> list[str]:
    """One text per non-empty JSONL line: the string values of ``fields`` joined with a newline.

    ValueError names the line (1-based) that is not a JSON object, lacks a field or has a non-string value.
    """
    path = _existing_file(path)
    if isinstance(fields, str) or len(fields) == 0:
        raise ValueError(f"fields must be a non-empty sequence of field names, got {fields!r}")
    texts = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{str(path)!r} line {number} is not valid JSON: {exc.msg}") from exc
            if not isinstance(record, dict):
                raise ValueError(f"{str(path)!r} line {number} is a {type(record).__name__}, expected a JSON object")
            parts = []
            for name in fields:
                if name not in record:
                    raise ValueError(
                        f"{str(path)!r} line {number} has no field {name!r} (fields: {sorted(record)}); "
                        "choose the text field(s) to read"
                    )
                if not isinstance(record[name], str):
                    raise ValueError(
                        f"{str(path)!r} line {number}: field {name!r} is a {type(record[name]).__name__}, "
                        "expected a string"
                    )
                parts.append(record[name])
            texts.append("\n".join(parts))
    if not texts:
        raise ValueError(f"{str(path)!r} holds no JSONL records")
    return texts

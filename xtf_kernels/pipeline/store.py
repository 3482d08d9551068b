"""On-disk layout of scoring results: safetensors shards and a JSON manifest, written atomically, validated
on read (no pickle anywhere).

    <out_dir>/manifest.json              format, fingerprints, config, one entry per complete shard
    <out_dir>/state.safetensors          what the dataset pass learned (e.g. XTF's S_TR per vocabulary id)
    <out_dir>/shard-00000.safetensors    per-token scores of samples [first_sample, first_sample + n)

Shard i always holds samples [i * shard_size, min((i + 1) * shard_size, N)), whoever scored it, so shards
are the unit of work of a distributed run and of resumption with any number of ranks. A shard holds
``lengths`` (n,) int64, ``dropped_by`` (T,) uint8 (T = sum of lengths) and one ``score/<name>`` (T,) fp32
per score, samples concatenated in order; its safetensors metadata names its index, first sample, the
data and config fingerprints and ``content_sha256``, a sha256 of its tensors, so a shard found on disk
proves by itself that it is complete, unmodified and for this data and config (a rank killed before rank 0
listed its shards loses nothing). Every file is written to a temporary name in the same folder, fsynced and
renamed over the target (``os.replace``), so a reader sees either the old or the new file, never a partial
one. Only rank 0 writes the manifest; it lists the shards known complete (all of them, in order, once
``complete``) with each file's sha256, checked on read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import torch

from .._atomic import atomic_write_bytes
from ..errors import CorruptFileError
from .fingerprint import FORMAT_VERSION

MANIFEST = "manifest.json"
STATE_FILE = "state.safetensors"
MANIFEST_FORMAT = "xtf-scores"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _safetensors():
    try:
        from safetensors import torch as safetensors_torch
    except ImportError as exc:
        raise ImportError("writing and reading scoring results needs safetensors: pip install safetensors") from exc
    return safetensors_torch


def write_tensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Atomically write CPU tensors as safetensors; returns the file's sha256."""
    data = _safetensors().save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def content_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)};".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def write_shard(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """:func:`write_tensors` with ``content_sha256`` added to the metadata; returns the file's sha256."""
    return write_tensors(path, tensors, {**metadata, "content_sha256": content_digest(tensors)})


def _header_metadata(path: str, data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors file's JSON header (8-byte little-endian size, then the JSON)."""
    if len(data) < 8:
        raise CorruptFileError(f"{path} is truncated ({len(data)} bytes)")
    size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8: 8 + size])
    except (ValueError, UnicodeDecodeError):
        raise CorruptFileError(f"{path} has no valid safetensors header (truncated or modified)") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def check_found_shard(path: str, expected: dict[str, str], lengths: list[int], score_names: list[str]) -> dict:
    """Validate a shard file found on disk against what it must be; returns its manifest entry.

    Args:
        expected: metadata it must carry ("index", "first_sample", "data_fingerprint", "config_fingerprint").
        lengths: the lengths of its samples, from the data.

    Raises:
        CorruptFileError: unreadable, truncated, modified, or written for other data / config / samples.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise CorruptFileError(f"{path} cannot be read: {exc}") from None
    metadata = _header_metadata(path, data)
    for key, value in expected.items():
        if metadata.get(key) != value:
            raise CorruptFileError(f"{path}: metadata {key} is {metadata.get(key)!r}, expected {value!r}")
    tensors = read_tensors(path, None, data=data)
    if metadata.get("content_sha256") != content_digest(tensors):
        raise CorruptFileError(f"{path}: its tensors do not match their recorded sha256 (modified)")
    entry = {"file": os.path.basename(path), "first_sample": int(expected["first_sample"]),
             "num_samples": len(lengths), "num_tokens": sum(lengths), "sha256": hashlib.sha256(data).hexdigest()}
    validate_shard(path, tensors, entry, score_names)
    if tensors["lengths"].tolist() != lengths:
        raise CorruptFileError(f"{path}: its sample lengths differ from the data's")
    return entry


def read_tensors(path: str, sha256: str | None, *, data: bytes | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (or of its bytes ``data``, already read), after checking its sha256
    (CorruptFileError on any problem)."""
    if data is None:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise CorruptFileError(f"{path} is listed in the manifest but missing") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CorruptFileError(f"{path} does not match the checksum in the manifest (truncated or modified)")
    try:
        return _safetensors().load(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file
        raise CorruptFileError(f"{path} is not a valid safetensors file: {exc}") from None


def write_manifest(out_dir: str, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False)
    atomic_write_bytes(os.path.join(out_dir, MANIFEST), text.encode())


_MANIFEST_KEYS = {
    "format": str, "version": int, "method": str, "config": dict, "rule_names": list, "score_names": list,
    "data_fingerprint": str, "config_fingerprint": str, "models": dict, "num_samples": int, "num_tokens": int,
    "shard_size": int, "shards": list, "state": (dict, type(None)), "global_topk": (dict, type(None)),
    "complete": bool, "source": dict, "throughput": (dict, type(None)),
}
_SHARD_KEYS = {"file": str, "first_sample": int, "num_samples": int, "num_tokens": int, "sha256": str}


def read_manifest(out_dir: str) -> dict:
    """The validated manifest of ``out_dir`` (FileNotFoundError if there is none, CorruptFileError if bad)."""
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no scoring results in {out_dir} ({MANIFEST} not found)")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT and \
            manifest.get("version") != FORMAT_VERSION:
        raise CorruptFileError(f"{path}: results format version {manifest.get('version')}, this xtf_kernels "
                               f"reads version {FORMAT_VERSION}; score again into another folder or with overwrite")
    _check_fields(path, manifest, _MANIFEST_KEYS)
    if manifest["format"] != MANIFEST_FORMAT:
        raise CorruptFileError(f"{path}: format is {manifest['format']!r}, expected {MANIFEST_FORMAT!r}")
    size, total = manifest["shard_size"], manifest["num_samples"]
    if size < 1 or total < 1:
        raise CorruptFileError(f"{path}: shard_size {size} and num_samples {total} must be positive")
    previous = -1
    for position, shard in enumerate(manifest["shards"]):
        _check_fields(f"{path} shard {position}", shard, _SHARD_KEYS)
        index, rest = divmod(shard["first_sample"], size)
        if rest or index <= previous or shard["file"] != shard_name(index) or \
                shard["num_samples"] != min(size, total - shard["first_sample"]):
            raise CorruptFileError(f"{path}: shard entry {position} ({shard['file']}, first sample "
                                   f"{shard['first_sample']}, {shard['num_samples']} samples) is out of order "
                                   f"for shards of {size} of {total} samples")
        previous = index
    done = sum(shard["num_samples"] for shard in manifest["shards"])
    if manifest["complete"] and done != total:
        raise CorruptFileError(f"{path}: marked complete but its shards hold {done} of {total} samples")
    return manifest


def _check_fields(where: str, record, schema: dict) -> None:
    if not isinstance(record, dict):
        raise CorruptFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key, kind in schema.items():
        if key not in record:
            raise CorruptFileError(f"{where}: missing field {key!r}")
        if not isinstance(record[key], kind) or (kind is int and isinstance(record[key], bool)):
            raise CorruptFileError(f"{where}: field {key!r} has the wrong type ({type(record[key]).__name__})")


def shard_tensors(num_samples: int, lengths: list[int], dropped_by: list[torch.Tensor],
                  scores: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The tensors of one shard from per-sample pieces."""
    if len(lengths) != num_samples:
        raise ValueError(f"{len(lengths)} lengths for {num_samples} samples")
    out = {"lengths": torch.tensor(lengths, dtype=torch.int64),
           "dropped_by": torch.cat(dropped_by).to(torch.uint8) if dropped_by else torch.zeros(0, dtype=torch.uint8)}
    for name, pieces in scores.items():
        out[f"score/{name}"] = torch.cat(pieces).float() if pieces else torch.zeros(0)
    return out


def validate_shard(path: str, tensors: dict[str, torch.Tensor], entry: dict, score_names: list[str]) -> None:
    """CorruptFileError unless the shard has the schema and sizes its manifest entry promises."""
    lengths = tensors.get("lengths")
    if lengths is None or lengths.dtype != torch.int64 or lengths.dim() != 1:
        raise CorruptFileError(f"{path}: missing or malformed 'lengths'")
    if lengths.numel() != entry["num_samples"] or int(lengths.sum()) != entry["num_tokens"]:
        raise CorruptFileError(f"{path}: holds {lengths.numel()} samples / {int(lengths.sum())} tokens, the manifest "
                               f"says {entry['num_samples']} / {entry['num_tokens']}")
    expected = {"lengths", "dropped_by", *(f"score/{n}" for n in score_names)}
    if set(tensors) != expected:
        raise CorruptFileError(f"{path}: tensors {sorted(tensors)} != expected {sorted(expected)}")
    for key in expected - {"lengths"}:
        value = tensors[key]
        dtype = torch.uint8 if key == "dropped_by" else torch.float32
        if value.dtype != dtype or tuple(value.shape) != (entry["num_tokens"],):
            raise CorruptFileError(f"{path}: {key} is {value.dtype} {tuple(value.shape)}, expected {dtype} "
                                   f"({entry['num_tokens']},)")


def json_float(value: float) -> float | None:
    """A float for JSON (None for NaN / inf, which strict JSON cannot hold)."""
    return value if math.isfinite(value) else None

"""Fingerprints (sha256, hex) of tokenised data, of models and of a scoring config.

- data: the sha256 of the samples' digests in order, a sample's digest being the sha256 of its length,
  input ids and labels (int64 little-endian); so any change of a token, a label, the order or the tokenizer
  changes it. Hashing digests rather than the samples themselves lets each rank of a distributed run
  digest only its own samples (32 bytes each are gathered), with the same result as one process.
- model: its class, its config (JSON, sorted keys), every parameter's name, shape and dtype, and each
  parameter's float64 sum and sum of squares printed to 8 significant digits (rounded so that the same
  weights on another device, reduced in another order, give the same fingerprint).
- config: the scorer's knobs, the fingerprints of its models by role and the result format version.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from ..datasets.samples import TokenizedSample
from ..methods._causal_lm import unwrap

FORMAT_VERSION = 2  # 2: data fingerprint over per-sample digests, self-validating shards


class DataFingerprint:
    """Incremental fingerprint of a stream of samples: ``update`` each sample in order, then ``hexdigest``."""

    def __init__(self):
        self._hash = hashlib.sha256(b"xtf-data-v2")
        self.num_samples = 0
        self.num_tokens = 0

    def update(self, sample: TokenizedSample) -> None:
        self.update_digest(sample_digest(sample), len(sample))

    def update_digest(self, digest: bytes, length: int) -> None:
        """Add a sample known by its :func:`sample_digest` and length (a distributed run's gathered digests)."""
        self._hash.update(digest)
        self.num_samples += 1
        self.num_tokens += int(length)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def sample_digest(sample: TokenizedSample) -> bytes:
    """32-byte sha256 of one sample's length, input ids and labels (int64 little-endian)."""
    ids = sample.input_ids.detach().cpu().numpy().astype("<i8", copy=False)
    labels = sample.labels.detach().cpu().numpy().astype("<i8", copy=False)
    digest = hashlib.sha256(np.int64(ids.size).astype("<i8").tobytes())
    digest.update(ids.tobytes())
    digest.update(labels.tobytes())
    return digest.digest()


def data_fingerprint(samples) -> str:
    """Fingerprint of an iterable of :class:`~xtf_kernels.datasets.TokenizedSample`."""
    fingerprint = DataFingerprint()
    for sample in samples:
        fingerprint.update(sample)
    return fingerprint.hexdigest()


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> str:
    inner = unwrap(model)
    digest = hashlib.sha256(type(inner).__name__.encode())
    config = getattr(inner, "config", None)
    if config is not None:
        settings = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
        settings.pop("_attn_implementation_internal", None)  # how attention runs, not what it computes
        settings.pop("transformers_version", None)
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, param in inner.named_parameters():
        total, squares = _moments(param.detach())
        digest.update(f"{name}|{tuple(param.shape)}|{param.dtype}|{total:.8e}|{squares:.8e};".encode())
    return digest.hexdigest()


def _moments(values: torch.Tensor, chunk: int = 1 << 24) -> tuple[float, float]:
    """float64 sum and sum of squares, 16M elements at a time (at most 128 MiB of float64 scratch)."""
    total = torch.zeros((), dtype=torch.float64, device=values.device)
    squares = torch.zeros((), dtype=torch.float64, device=values.device)
    for part in values.reshape(-1).split(chunk):
        part = part.double()
        total += part.sum()
        squares += part.square().sum()
    return float(total), float(squares)


def config_fingerprint(config: dict, models: dict[str, str]) -> str:
    """Fingerprint of a scorer's ``config_dict()`` and its models' fingerprints by role."""
    payload = {"format_version": FORMAT_VERSION, "config": config, "models": models}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

"""Reading scoring results back: per-sample scores and rule flags, and applying the masks to the data.

:class:`ScoreResult` opens a results folder written by :func:`xtf_kernels.pipeline.score_dataset`,
validates every file it reads (:class:`~xtf_kernels.errors.CorruptFileError`), and refuses to apply masks
to data whose fingerprint differs from the scored data's
(:class:`~xtf_kernels.errors.FingerprintMismatchError`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .. import select
from .._atomic import atomic_open
from ..datasets.samples import SampleSource
from ..datasets.samples import TokenizedSample
from ..datasets.samples import as_source
from ..errors import CorruptFileError
from ..errors import FingerprintMismatchError
from ..methods.base import SampleScores
from . import export
from . import store
from .fingerprint import DataFingerprint


@dataclass(frozen=True)
class Shard:
    """One shard's samples, concatenated. lengths: (n,) int64; scores: name -> (T,) fp32 (NaN where not
    scored); dropped_by: (T,) uint8 with every rule applied (the pool-wide top k included)."""

    index: int
    first_sample: int
    lengths: torch.Tensor
    scores: dict[str, torch.Tensor]
    dropped_by: torch.Tensor

    def samples(self, rule_names: tuple[str, ...]) -> Iterator[SampleScores]:
        start = 0
        for length in self.lengths.tolist():
            end = start + length
            yield SampleScores({k: v[start:end] for k, v in self.scores.items()}, self.dropped_by[start:end],
                               rule_names)
            start = end


def _guard_samples(lengths: torch.Tensor, dropped_by: torch.Tensor, scores: dict[str, torch.Tensor], topk: dict,
                   safeguards) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample safeguards on a shard's flat (T,) rule bits after the pool-wide rule: bits cleared where a
    safeguard keeps a token, the ``guard`` score updated (the noisiest token is the one the top k ranks last)."""
    from ..methods.safeguards import guard_sample_drops

    flags, guard = dropped_by.clone(), scores["guard"].clone()
    ranking = torch.nan_to_num(scores[topk["score"]])
    noise = -ranking if topk["largest"] else ranking
    start = 0
    for length in lengths.tolist():
        end = start + length
        piece = slice(start, end)
        valid = ~torch.isnan(guard[piece])
        kept_dropped, new_guard = guard_sample_drops((flags[piece] != 0)[None], valid[None], noise[piece][None],
                                                     guard[piece][None], safeguards)
        flags[piece] = torch.where(kept_dropped[0], flags[piece], torch.zeros_like(flags[piece]))
        guard[piece] = new_guard[0]
        start = end
    return flags, {**scores, "guard": guard}


def safeguards_of(manifest: dict):
    """The :class:`~xtf_kernels.methods.safeguards.Safeguards` a result was scored under (None if its config
    records none, or its scores have no ``guard``)."""
    settings = manifest["config"].get("safeguards")
    if not isinstance(settings, dict) or "guard" not in manifest["score_names"]:
        return None
    from ..methods.safeguards import Safeguards

    return Safeguards(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})


def _global_rule(manifest: dict, index: int, scores: torch.Tensor) -> torch.Tensor:
    """(T,) uint8: the top-k rule's bit on the scored tokens of shard ``index`` outside the pool's top k."""
    topk = manifest["global_topk"]
    value = topk["value"] if topk["value"] is not None else float("nan")
    ties_left = max(0, topk["ties"] - topk["ties_before"][index])
    threshold = select.TopKThreshold(value, ties_left, topk["keep"], topk["total"], topk["largest"])
    valid = ~torch.isnan(scores)
    kept = threshold.masker()(torch.nan_to_num(scores), valid)
    bit = 1 << manifest["rule_names"].index(topk["rule"])
    return (valid & ~kept).to(torch.uint8) * bit


def final_flags(manifest: dict, index: int, lengths: torch.Tensor, scores: dict[str, torch.Tensor],
                dropped_by: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Shard ``index``'s (T,) uint8 rule bits and scores as a filter applies them: the pool-wide top-k rule of
    ``manifest["global_topk"]`` (if any) added, then the per-sample safeguards the config asks for after it (a
    per-sample drop cap, ``all_dropped="keep"``): what :func:`~xtf_kernels.methods.safeguards.finalize` does
    after the in-memory top k, per sample, so the masks read back equal the in-memory ones.

    Args:
        lengths: (n,) int64 sample lengths; scores: name -> (T,) fp32; dropped_by: (T,) uint8 as written.
    """
    topk = manifest["global_topk"]
    if topk is None:
        return dropped_by, scores
    dropped_by = dropped_by | _global_rule(manifest, index, scores[topk["score"]])
    safeguards = safeguards_of(manifest)
    if safeguards is not None and (safeguards.max_sample_drop is not None or safeguards.all_dropped == "keep"):
        dropped_by, scores = _guard_samples(lengths, dropped_by, scores, topk, safeguards)
    return dropped_by, scores


class ScoreResult:
    """The scoring results in ``out_dir``.

    Attributes:
        manifest: the validated manifest (see :mod:`xtf_kernels.pipeline.store`).
        method, config, rule_names, score_names, data_fingerprint, config_fingerprint, num_samples,
        num_tokens: from the manifest.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = os.fspath(out_dir)
        self.manifest = store.read_manifest(self.out_dir)
        self.method: str = self.manifest["method"]
        self.config: dict = self.manifest["config"]
        self.rule_names: tuple[str, ...] = tuple(self.manifest["rule_names"])
        self.score_names: tuple[str, ...] = tuple(self.manifest["score_names"])
        self.data_fingerprint: str = self.manifest["data_fingerprint"]
        self.config_fingerprint: str = self.manifest["config_fingerprint"]
        self.num_samples: int = self.manifest["num_samples"]
        self.num_tokens: int = self.manifest["num_tokens"]
        self._checked_sources: list[SampleSource] = []  # sources already hashed and found equal to the scored data

    @property
    def complete(self) -> bool:
        return self.manifest["complete"]

    def _require_complete(self) -> None:
        if not self.complete:
            done = sum(s["num_samples"] for s in self.manifest["shards"])
            raise CorruptFileError(f"{self.out_dir} holds an unfinished run ({done} of {self.num_samples} samples "
                                   "scored); run score_dataset / `xtf score` again to resume it")

    def state(self) -> dict[str, torch.Tensor]:
        """What the dataset pass learned (e.g. XTF's ``s_tr`` (V,), ``tr_thresholds``), validated."""
        entry = self.manifest["state"]
        if entry is None:
            return {}
        return store.read_tensors(os.path.join(self.out_dir, entry["file"]), entry["sha256"])

    def read_shard(self, index: int, *, apply_global: bool = True) -> Shard:
        """Shard ``index``, validated; ``apply_global`` adds the pool-wide top-k rule to ``dropped_by``, then
        the per-sample safeguards the config asks for after it (see :func:`final_flags`)."""
        entry = self.manifest["shards"][index]
        path = os.path.join(self.out_dir, entry["file"])
        tensors = store.read_tensors(path, entry["sha256"])
        store.validate_shard(path, tensors, entry, list(self.score_names))
        scores = {name: tensors[f"score/{name}"] for name in self.score_names}
        dropped_by = tensors["dropped_by"]
        if apply_global:
            dropped_by, scores = final_flags(self.manifest, index, tensors["lengths"], scores, dropped_by)
        return Shard(index, entry["first_sample"], tensors["lengths"], scores, dropped_by)

    def shards(self) -> Iterator[Shard]:
        """Every shard in order (the run must be complete)."""
        self._require_complete()
        for index in range(len(self.manifest["shards"])):
            yield self.read_shard(index)

    def iter_samples(self) -> Iterator[SampleScores]:
        """One :class:`~xtf_kernels.methods.SampleScores` per sample, in order (one shard in memory at a time)."""
        for shard in self.shards():
            yield from shard.samples(self.rule_names)

    def check_data(self, data, tokenizer=None, *, max_length: int | None = None) -> SampleSource:
        """The data as a :class:`~xtf_kernels.datasets.SampleSource`, after checking it is the scored data
        (one pass over it; a SampleSource this result already checked is returned at once).

        Raises:
            FingerprintMismatchError: the tokenised data (ids, labels, order, count) differs.
        """
        source = as_source(data, tokenizer, max_length=max_length)
        if any(source is checked for checked in self._checked_sources):
            return source
        fingerprint = DataFingerprint()
        for sample in source:
            fingerprint.update(sample)
        if fingerprint.hexdigest() != self.data_fingerprint:
            raise FingerprintMismatchError(
                f"the data ({fingerprint.num_samples} samples, {fingerprint.num_tokens} tokens, fingerprint "
                f"{fingerprint.hexdigest()[:12]}) is not the data scored in {self.out_dir} ({self.num_samples} "
                f"samples, {self.num_tokens} tokens, fingerprint {self.data_fingerprint[:12]}); masks apply only "
                "to the exact tokenised data they were computed on (same file, tokenizer and max_length)"
            )
        self._checked_sources.append(source)
        return source

    def apply(self, data, tokenizer=None, *, max_length: int | None = None) -> Iterator[TokenizedSample]:
        """The samples of ``data`` with label -100 on every dropped token, in order, streamed.

        The fingerprint is checked (one pass over ``data``) before anything is returned.
        """
        self._require_complete()
        source = self.check_data(data, tokenizer, max_length=max_length)
        return self._masked(source)

    def _masked(self, source: SampleSource) -> Iterator[TokenizedSample]:
        for sample, scored in self._paired(source):
            yield sample.with_labels(scored.masked_labels(sample.labels))

    def scored_samples(self, data, tokenizer=None, *, max_length: int | None = None
                       ) -> Iterator[tuple[TokenizedSample, SampleScores]]:
        """(sample, its :class:`~xtf_kernels.methods.SampleScores`) of ``data`` in order, streamed, after the
        fingerprint check (one pass over ``data``)."""
        self._require_complete()
        source = self.check_data(data, tokenizer, max_length=max_length)
        return self._paired(source)

    def _paired(self, source: SampleSource) -> Iterator[tuple[TokenizedSample, SampleScores]]:
        for sample, scored in zip(source, self.iter_samples(), strict=True):
            if scored.dropped_by.numel() != len(sample):
                raise CorruptFileError(f"{self.out_dir}: a sample has {len(sample)} tokens but its scores "
                                       f"{scored.dropped_by.numel()}")
            yield sample, scored

    def write_filtered(self, data, path: str | os.PathLike, *, tokenizer=None, max_length: int | None = None,
                       format: str | None = None) -> int:
        """Write the masked data to ``path`` atomically; returns the number of samples.

        Args:
            format: "jsonl" (one ``{"input_ids", "labels"}`` object per line, streamed), "safetensors"
                (``input_ids`` / ``labels`` (T,) int64 concatenated and ``offsets`` (N + 1,) int64, held in
                memory), "dataset" (a ``datasets`` save_to_disk folder) or "parquet", the last two with the
                columns of :mod:`xtf_kernels.pipeline.export` (labels, completion_mask, token_weights,
                dropped_by, score_<name>); default from the extension (.safetensors, .parquet, a trailing
                path separator for a dataset folder, else jsonl).
        """
        path = os.fspath(path)
        if format is None:
            format = ("safetensors" if path.endswith(".safetensors") else "parquet" if path.endswith(".parquet")
                      else "dataset" if path.endswith(os.sep) else "jsonl")
        if format not in ("jsonl", "safetensors", *export.FORMATS):
            raise ValueError(f"format must be 'jsonl', 'safetensors', 'dataset' or 'parquet', got {format!r}")
        if format in export.FORMATS:
            return export.write(self, self.scored_samples(data, tokenizer, max_length=max_length),
                                path.rstrip(os.sep), format)
        masked = self.apply(data, tokenizer, max_length=max_length)
        if format == "safetensors":
            ids, labels, offsets = [], [], [0]
            for sample in masked:
                ids.append(sample.input_ids)
                labels.append(sample.labels)
                offsets.append(offsets[-1] + len(sample))
            empty = torch.zeros(0, dtype=torch.int64)
            store.write_tensors(path, {"input_ids": torch.cat(ids) if ids else empty,
                                       "labels": torch.cat(labels) if labels else empty,
                                       "offsets": torch.tensor(offsets, dtype=torch.int64)},
                                {"format": "xtf-filtered", "data_fingerprint": self.data_fingerprint,
                                 "config_fingerprint": self.config_fingerprint})
            return len(offsets) - 1
        count = 0
        with atomic_open(path, "w", encoding="utf-8") as out:
            for sample in masked:
                out.write(json.dumps({"input_ids": sample.input_ids.tolist(), "labels": sample.labels.tolist()})
                          + "\n")
                count += 1
        return count

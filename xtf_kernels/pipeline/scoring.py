"""Score a dataset end to end: streaming, batched, sharded, resumable.

:func:`score_dataset` runs a :class:`~xtf_kernels.methods.TokenScorer` over a dataset:

1. dataset pass: fingerprints the tokenised data and feeds the scorer's dataset statistics (XTF's domain
   vector); no model forward;
2. scoring pass: samples in order, ``shard_size`` at a time; inside a shard, batches of similar length
   (sorted, so little padding) under ``torch.no_grad``; each finished shard is written atomically and the
   manifest updated, so an interrupted run resumes from the last complete shard;
3. finalisation: a pool-wide top k (Token Cleaning) takes its exact threshold from
   :class:`xtf_kernels.select.StreamingTopK` over the shards on disk, recorded in the manifest.
Memory is bounded by one shard of scores plus one batch of activations. The models run in the dtype they
are in: load them in bfloat16 on a GPU (``xtf score`` does by default).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from .. import select
from ..datasets.samples import TokenizedSample
from ..datasets.samples import as_source
from ..datasets.samples import collate
from ..errors import FingerprintMismatchError
from ..methods.base import TokenScorer
from ..methods.base import split_batch
from . import store
from .fingerprint import FORMAT_VERSION
from .fingerprint import DataFingerprint
from .fingerprint import config_fingerprint
from .fingerprint import model_fingerprint
from .result import ScoreResult


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def score_dataset(
    scorer: TokenScorer,
    data,
    out_dir: str | os.PathLike,
    *,
    tokenizer=None,
    max_length: int | None = None,
    batch_size: int = 8,
    max_batch_tokens: int | None = None,
    shard_size: int = 1024,
    overwrite: bool = False,
    progress: bool = True,
    source_info: dict | None = None,
) -> ScoreResult:
    """Score every response token of ``data`` with ``scorer`` and write the results to ``out_dir``.

    Args:
        scorer: e.g. :class:`~xtf_kernels.methods.XTFScorer` or :class:`~xtf_kernels.methods.TokenCleaningScorer`.
        data: tokenised samples in any form :func:`xtf_kernels.datasets.as_source` takes (a list, a dataset, a
            JSONL path; prompt / response text needs ``tokenizer``).
        out_dir: results folder (created). If it already holds results for the same data and config, the run
            resumes after the last complete shard (or returns at once if complete); for other data or config
            it raises FingerprintMismatchError unless ``overwrite``.
        max_length: truncate samples to this many tokens.
        batch_size / max_batch_tokens: samples per forward pass, and an optional cap on padded tokens.
        shard_size: samples per shard (the unit of resumption and of memory).
        overwrite: discard results already in ``out_dir``.
        progress: tqdm progress bars.
        source_info: JSON-serialisable notes kept in the manifest (e.g. the data and model paths).

    Returns:
        the :class:`~xtf_kernels.pipeline.ScoreResult` of ``out_dir``.
    """
    if not isinstance(scorer, TokenScorer):
        raise TypeError(f"scorer must be a TokenScorer (e.g. XTFScorer), got {type(scorer).__name__}")
    _check_positive("batch_size", batch_size)
    _check_positive("shard_size", shard_size)
    if max_batch_tokens is not None:
        _check_positive("max_batch_tokens", max_batch_tokens)
    out_dir = os.fspath(out_dir)
    source = as_source(data, tokenizer, max_length=max_length)
    os.makedirs(out_dir, exist_ok=True)

    # 1. dataset pass: fingerprint + the scorer's dataset statistics
    fingerprint = DataFingerprint()
    if scorer.needs_dataset_pass:
        scorer.begin_dataset_pass()
    for sample in _progress(source, progress, desc=f"{scorer.name}: dataset pass", unit="sample"):
        fingerprint.update(sample)
        if scorer.needs_dataset_pass:
            scorer.observe(sample)
    if fingerprint.num_samples == 0:
        raise ValueError("the dataset is empty")
    if scorer.needs_dataset_pass:
        scorer.end_dataset_pass()
    models = {role: model_fingerprint(model) for role, model in scorer.models().items()}
    manifest = {
        "format": store.MANIFEST_FORMAT, "version": FORMAT_VERSION, "method": scorer.name,
        "config": scorer.config_dict(), "rule_names": list(scorer.rule_names),
        "score_names": list(scorer.score_names), "data_fingerprint": fingerprint.hexdigest(),
        "config_fingerprint": config_fingerprint(scorer.config_dict(), models), "models": models,
        "num_samples": fingerprint.num_samples, "num_tokens": fingerprint.num_tokens, "shard_size": shard_size,
        "shards": [], "state": None, "global_topk": None, "complete": False, "source": dict(source_info or {}),
    }
    manifest = _resume_or_start(out_dir, manifest, overwrite)
    if manifest["complete"]:
        return ScoreResult(out_dir)
    if manifest["state"] is None:
        state = scorer.state_tensors()
        if state:
            sha = store.write_tensors(os.path.join(out_dir, store.STATE_FILE), state, {"format": "xtf-state"})
            manifest["state"] = {"file": store.STATE_FILE, "sha256": sha}
        store.write_manifest(out_dir, manifest)

    # 2. scoring pass, shard by shard
    done = sum(s["num_samples"] for s in manifest["shards"])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"{scorer.name}: scoring", unit="sample", total=fingerprint.num_samples, initial=done)
    with torch.no_grad():
        for shard_samples in _shards(source, shard_size, skip=done):
            index = len(manifest["shards"])
            _write_shard(out_dir, manifest, index, done, shard_samples, scorer, batch_size, max_batch_tokens)
            done += len(shard_samples)
            if bar is not None:
                bar.update(len(shard_samples))
    if bar is not None:
        bar.close()
    if done != fingerprint.num_samples:
        raise FingerprintMismatchError(f"the data changed while it was being scored ({done} samples read, "
                                       f"{fingerprint.num_samples} in the dataset pass)")

    # 3. finalisation: the pool-wide top k
    spec = scorer.global_topk
    if spec is not None:
        manifest["global_topk"] = _global_topk(out_dir, manifest, spec)
    manifest["complete"] = True
    store.write_manifest(out_dir, manifest)
    return ScoreResult(out_dir)


def _resume_or_start(out_dir: str, manifest: dict, overwrite: bool) -> dict:
    if not os.path.exists(os.path.join(out_dir, store.MANIFEST)):
        return manifest
    if overwrite:
        _remove_results(out_dir)
        return manifest
    previous = store.read_manifest(out_dir)
    for key, what in (("data_fingerprint", "data"), ("config_fingerprint", "config or models")):
        if previous[key] != manifest[key]:
            raise FingerprintMismatchError(
                f"{out_dir} holds results for different {what} ({key} {previous[key][:12]} != "
                f"{manifest[key][:12]}); use another folder or overwrite=True (`xtf score --overwrite`)"
            )
    # Same data and config: keep the complete shards (each is checked when read back) and continue.
    previous["source"] = manifest["source"]
    result = ScoreResult(out_dir)
    for index in range(len(previous["shards"])):
        result.read_shard(index, apply_global=False)
    return previous


def _remove_results(out_dir: str) -> None:
    for name in os.listdir(out_dir):
        if name == store.MANIFEST or name == store.STATE_FILE or (name.startswith("shard-")
                                                                 and name.endswith(".safetensors")):
            os.unlink(os.path.join(out_dir, name))


def _shards(source, shard_size: int, skip: int) -> Iterator[list[TokenizedSample]]:
    group: list[TokenizedSample] = []
    for position, sample in enumerate(source):
        if position < skip:
            continue
        group.append(sample)
        if len(group) == shard_size:
            yield group
            group = []
    if group:
        yield group


def _length_groups(lengths: list[int], batch_size: int, max_tokens: int | None) -> Iterator[list[int]]:
    """Sample indices in order of length, cut into batches of <= batch_size samples and <= max_tokens padded
    tokens (a sample longer than max_tokens gets a batch of its own)."""
    group: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        width = lengths[index]  # ascending order: the newest sample is the widest
        if group and (len(group) == batch_size or (max_tokens is not None and width * (len(group) + 1) > max_tokens)):
            yield group
            group = []
        group.append(index)
    if group:
        yield group


def _write_shard(out_dir: str, manifest: dict, index: int, first_sample: int, samples: list[TokenizedSample],
                 scorer: TokenScorer, batch_size: int, max_batch_tokens: int | None) -> None:
    # Batches of similar length waste little padding; right padding keeps each sample's scores independent
    # of its batch, so the results are put back in sample order.
    per_sample = [None] * len(samples)
    device = scorer.device
    for indices in _length_groups([len(s) for s in samples], batch_size, max_batch_tokens):
        batch = collate([samples[i] for i in indices], scorer.pad_token_id).to(device)
        for i, result in zip(indices, split_batch(scorer.score_batch(batch), batch.lengths, scorer.rule_names)):
            per_sample[i] = result
    tensors = store.shard_tensors(
        len(samples), [len(s) for s in samples], [r.dropped_by for r in per_sample],
        {name: [r.scores[name] for r in per_sample] for name in scorer.score_names},
    )
    name = store.shard_name(index)
    sha = store.write_tensors(os.path.join(out_dir, name), tensors,
                              {"format": "xtf-score-shard", "first_sample": str(first_sample),
                               "data_fingerprint": manifest["data_fingerprint"]})
    manifest["shards"].append({"file": name, "first_sample": first_sample, "num_samples": len(samples),
                               "num_tokens": int(tensors["lengths"].sum()), "sha256": sha})
    store.write_manifest(out_dir, manifest)


def _global_topk(out_dir: str, manifest: dict, spec) -> dict:
    result = ScoreResult(out_dir)

    def chunks():
        for index in range(len(manifest["shards"])):
            scores = result.read_shard(index, apply_global=False).scores[spec.score]
            valid = ~torch.isnan(scores)
            yield torch.nan_to_num(scores), valid

    threshold = select.StreamingTopK(spec.k, largest=spec.largest).threshold(chunks)
    ties_before, seen = [], 0
    for scores, valid in chunks():
        ties_before.append(seen)
        seen += int(((scores == threshold.value) & valid).sum())
    return {"score": spec.score, "k": spec.k, "largest": spec.largest, "rule": spec.rule,
            "value": store.json_float(threshold.value), "ties": threshold.ties, "keep": threshold.keep,
            "total": threshold.total, "ties_before": ties_before}

"""Applying masks: only to the data they were computed on; every file validated on read; atomic writes."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.methods import tiny
from xtf_kernels._atomic import atomic_write_bytes
from xtf_kernels.datasets import as_source
from xtf_kernels.errors import CorruptFileError
from xtf_kernels.errors import FingerprintMismatchError
from xtf_kernels.methods import XTFScorer
from xtf_kernels.pipeline import ScoreResult
from xtf_kernels.pipeline import score_dataset

pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scores")
    samples = tiny.data(10).samples
    score_dataset(XTFScorer(tiny.model("llama")), samples, folder, shard_size=4, progress=False)
    return folder, samples


def copy_of(folder, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_apply_masks_matching_data(scored):
    folder, samples = scored
    result = ScoreResult(folder)
    masked = list(result.apply(samples))
    for sample, new, scores in zip(samples, masked, result.iter_samples()):
        assert torch.equal(new.input_ids, sample.input_ids)
        assert torch.equal(new.labels == -100, (sample.labels == -100) | scores.dropped)


def test_apply_refuses_other_data(scored):
    folder, samples = scored
    result = ScoreResult(folder)
    changed = list(samples)
    first = changed[0]
    changed[0] = first.with_labels(torch.where(torch.arange(len(first)) == len(first) - 1,
                                               torch.full_like(first.labels, -100), first.labels))
    for other in (changed, samples[:-1], list(reversed(samples))):
        with pytest.raises(FingerprintMismatchError, match="not the data scored"):
            result.apply(other)


def test_write_filtered_jsonl_and_safetensors(scored, tmp_path):
    folder, samples = scored
    result = ScoreResult(folder)
    expected = list(result.apply(samples))
    assert result.write_filtered(samples, tmp_path / "out.jsonl") == len(samples)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["labels"] for r in rows] == [s.labels.tolist() for s in expected]
    # the filtered JSONL is itself valid pipeline input
    assert [s.labels.tolist() for s in as_source(str(tmp_path / "out.jsonl"))] == [r["labels"] for r in rows]
    result.write_filtered(samples, tmp_path / "out.safetensors")
    tensors = safetensors_torch.load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(tensors["labels"], torch.cat([s.labels for s in expected]))
    assert tensors["offsets"].tolist()[-1] == sum(len(s) for s in samples)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_corrupt_shard_is_detected(scored, tmp_path):
    folder = copy_of(scored[0], tmp_path)
    shard = folder / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = ScoreResult(folder)
    result.read_shard(0)
    with pytest.raises(CorruptFileError, match="checksum"):
        result.read_shard(1)
    shard.unlink()
    with pytest.raises(CorruptFileError, match="missing"):
        result.read_shard(1)


def test_truncated_or_inconsistent_manifest_is_detected(scored, tmp_path):
    folder = copy_of(scored[0], tmp_path)
    manifest_path = folder / "manifest.json"
    text = manifest_path.read_text()
    manifest_path.write_text(text[: len(text) // 2])
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        ScoreResult(folder)
    manifest = json.loads(text)
    manifest["shards"][1]["first_sample"] = 5
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptFileError, match="out of order"):
        ScoreResult(folder)
    manifest = json.loads(text)
    del manifest["data_fingerprint"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptFileError, match="missing field"):
        ScoreResult(folder)
    with pytest.raises(FileNotFoundError, match="no scoring results"):
        ScoreResult(tmp_path / "nowhere")


def test_shard_with_the_wrong_schema_is_detected(scored, tmp_path):
    folder = copy_of(scored[0], tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    tensors = safetensors_torch.load_file(str(folder / "shard-00000.safetensors"))
    tensors["score/kn"] = tensors["score/kn"][:-1]  # one token short
    data = safetensors_torch.save(tensors)
    (folder / "shard-00000.safetensors").write_bytes(data)
    import hashlib

    manifest["shards"][0]["sha256"] = hashlib.sha256(data).hexdigest()  # a consistent but wrong file
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptFileError, match="score/kn"):
        ScoreResult(folder).read_shard(0)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    atomic_write_bytes(str(target), b"old")

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)  # fails after the new bytes were written to the temp file
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(str(target), b"new contents")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]  # no temporary file left behind

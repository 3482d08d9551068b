"""xtf_kernels/ops/_cuda/build_info.py: the build record is validated on read."""

from __future__ import annotations

import json

import pytest

from xtf_kernels.errors import CorruptFileError
from xtf_kernels.ops._cuda.build_info import read_build_info

CUDA_RECORD = {
    "schema": 1,
    "version": "0.1.0+cu130",
    "built": True,
    "reason": None,
    "cuda_version": "13.0",
    "archs": [80, 90],
    "ptx_arch": 90,
    "nvcc": "/usr/local/cuda/bin/nvcc",
    "nvcc_flags": ["-O3", "-gencode=arch=compute_90,code=sm_90"],
    "host_compiler": "g++ (GCC) 12.2.0",
    "python": "3.12.4",
    "platform": "linux-x86_64",
    "git_sha": "0123456789abcdef0123456789abcdef01234567",
    "built_at": "2026-01-02T03:04:05+00:00",
}
PURE_RECORD = CUDA_RECORD | {
    "version": "0.1.0", "built": False, "reason": "nvcc not found at build time", "cuda_version": None,
    "archs": [], "ptx_arch": None, "nvcc": None, "nvcc_flags": [], "host_compiler": None, "git_sha": None,
}


def _write(tmp_path, record) -> object:
    path = tmp_path / "build_info.json"
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


def test_cuda_record_round_trips(tmp_path):
    info = read_build_info(_write(tmp_path, CUDA_RECORD))
    assert info.built and info.archs == (80, 90) and info.ptx_arch == 90
    assert info.cuda_runtime_version == 13000
    assert info.nvcc_flags == tuple(CUDA_RECORD["nvcc_flags"])


def test_pure_record_round_trips(tmp_path):
    info = read_build_info(_write(tmp_path, PURE_RECORD))
    assert not info.built and info.reason == "nvcc not found at build time"
    assert info.cuda_runtime_version is None and info.archs == ()


def test_missing_record_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_build_info(tmp_path / "absent.json")


@pytest.mark.parametrize(
    "record, message",
    [
        ('{"schema": 1, "version": ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({k: v for k, v in CUDA_RECORD.items() if k != "archs"}, "missing keys ['archs']"),
        (CUDA_RECORD | {"schema": 2}, "schema 2 is not the supported 1"),
        (CUDA_RECORD | {"schema": True}, "'schema' has type bool"),
        (CUDA_RECORD | {"built": "yes"}, "'built' has type str"),
        (CUDA_RECORD | {"archs": [80, "90"]}, "'archs' must be positive integers"),
        (CUDA_RECORD | {"archs": [80, True]}, "'archs' must be positive integers"),
        (CUDA_RECORD | {"ptx_arch": 80}, "ptx_arch = max(archs)"),
        (CUDA_RECORD | {"archs": []}, "needs archs"),
        (CUDA_RECORD | {"cuda_version": "13"}, "'cuda_version' like '13.0'"),
        (CUDA_RECORD | {"git_sha": "abc"}, "not a 40-hex commit"),
        (CUDA_RECORD | {"built_at": "yesterday"}, "not an ISO 8601 time"),
        (CUDA_RECORD | {"nvcc_flags": ["-O3", 3]}, "'nvcc_flags' must be strings"),
        (PURE_RECORD | {"reason": None}, "must say why"),
    ],
    ids=["truncated", "array", "missing-key", "schema", "bool-schema", "built-type", "arch-str", "arch-bool",
         "ptx", "no-archs", "cuda-version", "sha", "date", "flags", "no-reason"],
)
def test_corrupt_records_are_rejected_with_the_reason(tmp_path, record, message):
    path = _write(tmp_path, record)
    with pytest.raises(CorruptFileError) as info:
        read_build_info(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_non_utf8_record_is_corrupt(tmp_path):
    path = tmp_path / "build_info.json"
    path.write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(CorruptFileError, match="not UTF-8"):
        read_build_info(path)

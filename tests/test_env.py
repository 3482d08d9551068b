"""xtf_kernels/env.py (``python -m xtf_kernels.env``, ``xtf env``): the report, and how it treats the build record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from xtf_kernels import env
from xtf_kernels.ops._cuda import build_info

ROOT = Path(__file__).resolve().parents[1]
CUDA_RECORD = {
    "schema": 1, "version": "0.1.0+cu130", "built": True, "reason": None, "cuda_version": "13.0",
    "archs": [80, 90], "ptx_arch": 90, "nvcc": "/usr/local/cuda/bin/nvcc", "nvcc_flags": ["-O3"],
    "host_compiler": "g++ (GCC) 12.2.0", "python": "3.12.4", "platform": "linux-x86_64",
    "git_sha": "0123456789abcdef0123456789abcdef01234567", "built_at": "2026-01-02T03:04:05+00:00",
}
PURE_RECORD = CUDA_RECORD | {
    "version": "0.1.0", "built": False, "reason": "nvcc not found at build time (set CUDA_HOME or put nvcc on PATH)",
    "cuda_version": None, "archs": [], "ptx_arch": None, "nvcc": None, "host_compiler": None,
}
FAKE_MODULE = SimpleNamespace(
    __file__="/site-packages/xtf_kernels/_C.so",
    cuda_runtime_version=lambda: 13000,
    compiled_archs=lambda: [800, 900],
    cuda_driver_version=lambda: 0,
)


@pytest.fixture
def record(tmp_path, monkeypatch):
    """Points the report at a scratch build record; call with a dict, a string (raw contents) or None (absent)."""
    path = tmp_path / "build_info.json"
    monkeypatch.setattr(build_info, "BUILD_INFO_PATH", path)

    def write(contents):
        if contents is not None:
            path.write_text(contents if isinstance(contents, str) else json.dumps(contents))
        return path

    return write


@pytest.fixture
def module_present(monkeypatch):
    monkeypatch.setattr(env, "extension_unavailable_reason", lambda: None)
    monkeypatch.setattr(env, "extension", lambda: FAKE_MODULE)


@pytest.fixture
def module_absent(monkeypatch):
    reason = "the compiled extension xtf_kernels._C is not built"
    monkeypatch.setattr(env, "extension_unavailable_reason", lambda: reason)


def _report(capsys, *args) -> tuple[int, str]:
    status = env.main(list(args))
    return status, capsys.readouterr().out


def test_missing_record_is_said_clearly(record, module_absent, capsys):
    path = record(None)
    status, out = _report(capsys)
    assert "build record   MISSING: no build record" in out and str(path) in out
    assert status == 0 and "PROBLEM" not in out


def test_corrupt_record_is_a_problem(record, module_absent, capsys):
    record('{"schema": 1, "built": tru')
    status, out = _report(capsys)
    assert "build record   CORRUPT:" in out and "not valid JSON" in out
    assert "PROBLEM        the build record is corrupt" in out
    assert status == 1


def test_pure_build_without_module_is_consistent(record, module_absent, capsys):
    record(PURE_RECORD)
    status, out = _report(capsys)
    assert "no CUDA extension: nvcc not found at build time" in out
    assert "extension      not available: the compiled extension xtf_kernels._C is not built" in out
    assert status == 0 and "PROBLEM" not in out


def test_cuda_build_whose_module_is_gone_is_a_problem(record, module_absent, capsys):
    record(CUDA_RECORD)
    status, out = _report(capsys)
    assert "PROBLEM        the build record says the extension was built, but it does not import" in out
    assert status == 1


def test_cuda_build_with_its_module(record, module_present, capsys):
    record(CUDA_RECORD)
    status, out = _report(capsys)
    assert "built        CUDA 13.0, SASS for sm 80, 90 + PTX for sm 90" in out
    assert "xtf_kernels._C imports: CUDA runtime 13.0 (static), device code for sm [80, 90]" in out
    assert "NVIDIA driver: none found" in out
    assert "source       git 0123456789abcdef0123456789abcdef01234567, built 2026-01-02T03:04:05+00:00" in out
    assert status == 0 and "PROBLEM" not in out


def test_module_built_differently_from_the_record_is_a_problem(record, module_present, capsys):
    record(CUDA_RECORD | {"archs": [90], "ptx_arch": 90, "cuda_version": "12.8"})
    status, out = _report(capsys)
    assert "PROBLEM        the module was built with CUDA 13.0, the record says 12.8" in out
    assert "PROBLEM        the module holds device code for [80, 90], the record says [90]" in out
    assert status == 1


def test_module_without_a_cuda_record_is_a_problem(record, module_present, capsys):
    record(PURE_RECORD)
    status, out = _report(capsys)
    assert "an extension module is present (/site-packages/xtf_kernels/_C.so) but the build record says" in out
    assert status == 1


def test_json_report(record, module_present, capsys):
    record(CUDA_RECORD)
    status, out = _report(capsys, "--json")
    report = json.loads(out)
    assert status == 0 and report["problems"] == []
    assert report["build"]["status"] == "ok" and report["build"]["record"]["archs"] == [80, 90]
    assert report["extension"] == {"imports": True, "path": FAKE_MODULE.__file__, "cuda_runtime": "13.0",
                                   "archs": [80, 90], "driver_cuda": None}
    assert set(report["backends"]["availability"]) == {"torch", "triton", "cuda"}
    assert report["backends"]["availability"]["torch"] is None


def test_command_line_entry_points_print_the_same_report():
    """`python -m xtf_kernels.env` and `python -m xtf_kernels env` on this checkout, whatever its build state."""
    module_run = subprocess.run([sys.executable, "-m", "xtf_kernels.env"], cwd=ROOT, capture_output=True, text=True)
    cli_run = subprocess.run([sys.executable, "-m", "xtf_kernels", "env"], cwd=ROOT, capture_output=True, text=True)
    json_run = subprocess.run([sys.executable, "-m", "xtf_kernels.env", "--json"], cwd=ROOT, capture_output=True,
                              text=True)
    report = json.loads(json_run.stdout)
    expected_status = 1 if report["problems"] else 0
    assert module_run.returncode == cli_run.returncode == json_run.returncode == expected_status, module_run.stderr
    assert module_run.stdout == cli_run.stdout
    for heading in ("xtf_kernels ", "python ", "torch ", "triton ", "transformers ", "device ", "extension ",
                    "build record ", f"backends on {report['backends']['device']}:"):
        assert any(line.startswith(heading) for line in module_run.stdout.splitlines()), heading
    for name, reason in report["backends"]["availability"].items():
        assert f"  {name:<12} {'available' if reason is None else 'unavailable: ' + reason}" in module_run.stdout

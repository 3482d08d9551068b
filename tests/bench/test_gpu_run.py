"""benchmarks/gpu_run.sh --dry-run: the GPU run rehearsed on the CPU, every step's command, import and path,
with the six output files a device tool brings back, and the committed results file left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from xtf_kernels.bench.store import read_rows

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_run.sh"
OUTPUTS = ["checks.jsonl", "gpu_results.csv", "logs.tar.gz", "profile.txt", "summary.txt", "sweep.txt"]
CHECKS = {"path_vs_float64", "misaligned_hidden", "n_times_v_over_2_31", "per_token_all_options",
          "token_logprobs_all_options", "memory_pressure", "out_dtype_forms"}


def _run(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1", XTF_GPU_RUN_BUDGET_S="300")
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400, check=False)


@pytest.mark.slow  # ~40 s on 2 idle cores, 60 s at load 9 (7 Python processes importing torch); CI runs it
def test_dry_run_rehearses_every_step(tmp_path):
    data = ROOT / "benchmarks" / "data" / "results.csv"
    before = data.read_bytes() if data.exists() else None
    done = _run("--dry-run", out=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == OUTPUTS
    assert (data.read_bytes() if data.exists() else None) == before, "a dry run must not add rows to the data"

    summary = (tmp_path / "summary.txt").read_text()
    assert "xtf-cuda" in summary and "xtf-torch" in summary  # the run's table, both groups
    for step in ("checks", "bench", "bench2", "profile", "sweep", "tier"):
        assert any(line.startswith(step + " ") and "  ok  " in line for line in summary.splitlines()), step
    checks = [json.loads(line) for line in (tmp_path / "checks.jsonl").read_text().splitlines()]
    assert {c["check"] for c in checks} == CHECKS and all(c["dry_run"] for c in checks)
    assert all(c["bitwise_repeat"] for c in checks if c["check"] == "path_vs_float64")
    statuses = {row.provider: row.status for row in read_rows(tmp_path / "gpu_results.csv")}
    assert statuses == {"xtf-torch": "ok", "xtf-triton-chunked": "missing", "xtf-triton-fused": "missing",
                        "xtf-cuda": "missing", "liger": "missing", "cce": "missing", "cce-exact": "missing"}
    assert "GEMM" in (tmp_path / "profile.txt").read_text()
    assert "crossover" in (tmp_path / "sweep.txt").read_text()
    with tarfile.open(tmp_path / "logs.tar.gz") as logs:
        names = {Path(name).name for name in logs.getnames()}
    assert {"gpu_run.log", "checks.log", "checks.xml", "bench.log", "bench2.log", "profile.json", "sweep.json",
            "tier.log"} <= names


def test_unknown_step_is_refused(tmp_path):
    done = _run("benchmark", out=tmp_path)
    assert done.returncode == 2 and "unknown argument 'benchmark'" in done.stdout


def test_without_a_gpu_the_real_run_stops_at_once(tmp_path):
    done = _run("checks", out=tmp_path)
    assert done.returncode == 1 and "--dry-run" in done.stdout
    assert not any(tmp_path.iterdir())

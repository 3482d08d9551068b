import json

import pytest
import torch

from xtf_kernels.bench import worker
from xtf_kernels.bench.cases import Case
from xtf_kernels.bench.providers import PROVIDERS
from xtf_kernels.bench.providers.base import Provider

CASE = Case(tokens=37, hidden=16, vocab=301, dtype="float32")


def job(provider: str, **overrides) -> dict:
    spec = {"case": CASE.to_dict(), "provider": provider, "device": "cpu", "seed": 0, "warmup": 1, "repeats": 2,
            "memory": True}
    spec.update(overrides)
    return spec


def test_a_runnable_job_gives_samples_and_memory():
    result = worker.run_job(job("xtf-torch"), single=False)
    assert result["status"] == "ok", result["reason"]
    assert len(result["samples_ms"]) == 2 and all(ms > 0 for ms in result["samples_ms"])
    assert result["extra_bytes"] > 0 and result["peak_bytes"] > result["extra_bytes"]
    assert result["rss_extra_bytes"] is None  # only meaningful in a one-job process


def test_a_peer_that_cannot_run_here_is_reported_missing_with_the_reason():
    result = worker.run_job(job("liger"), single=True)
    assert result["status"] == "missing"
    assert "CUDA" in result["reason"]
    assert result["samples_ms"] == []


def test_a_failing_provider_is_an_error_row_not_a_crash(monkeypatch):
    def build(inputs, case):
        def step():
            raise RuntimeError("kernel exploded\nsecond line")

        return step

    broken = Provider("broken", "peer", "p", None, lambda d, c: None, build)
    monkeypatch.setitem(PROVIDERS, "broken", broken)
    result = worker.run_job(job("broken"), single=True)
    assert result["status"] == "error"
    assert result["reason"] == "RuntimeError: kernel exploded second line"


def test_allocation_failures_count_as_oom():
    assert worker._is_oom(MemoryError())
    assert worker._is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"))
    assert worker._is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert not worker._is_oom(ValueError("shape mismatch"))


def test_main_prints_one_result_line_per_job(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(worker, "cap_address_space", lambda: None)  # do not cap the test process
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([job("xtf-torch", memory=False, repeats=1), job("cce")]))
    assert worker.main([str(path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(worker.RESULT_PREFIX)]
    results = [json.loads(line[len(worker.RESULT_PREFIX):]) for line in lines]
    assert [(r["provider"], r["status"]) for r in results] == [("xtf-torch", "ok"), ("cce", "missing")]
    assert results[0]["peak_bytes"] is None


@pytest.mark.parametrize("content", ["[]", "{}"])
def test_main_rejects_an_empty_or_wrong_job_file(tmp_path, content):
    path = tmp_path / "jobs.json"
    path.write_text(content)
    assert worker.main([str(path)]) == 2
    assert worker.main([]) == 2

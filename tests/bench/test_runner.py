import statistics

import pytest
import torch

from xtf_kernels.bench import runner
from xtf_kernels.bench.cases import Case
from xtf_kernels.bench.providers import get_provider
from xtf_kernels.bench.runner import RunSettings
from xtf_kernels.bench.runner import SuiteEntry

CASE = Case(tokens=37, hidden=16, vocab=301, dtype="float32", keep=0.5)


def result(status="ok", samples=(), loads=(), peak=None, extra=None, rss=None, reason=""):
    return {"provider": "xtf-torch", "status": status, "reason": reason, "samples_ms": list(samples),
            "loads_1m": list(loads), "peak_bytes": peak, "extra_bytes": extra, "mem_method": "m" if peak else "",
            "rss_extra_bytes": rss}


def info():
    return runner._run_info(torch.device("cpu"))


def test_rows_take_the_median_over_rounds_and_the_first_memory_figure():
    results = [result(samples=[4.0, 1.0], loads=[1.0, 2.0], peak=3 * 2**30, extra=2**30, rss=2**29),
               result(samples=[2.0], loads=[3.0], rss=2**30)]
    row = runner._row(info(), CASE, get_provider("xtf-torch"), results, warmup=1)
    assert row.status == "ok" and row.samples == 3
    assert row.ms == 2.0 and (row.ms_min, row.ms_max) == (1.0, 4.0)
    assert row.samples_ms == "4.000;1.000;2.000"
    assert row.tflops == pytest.approx(6 * 18 * 16 * 301 / 2e-3 / 1e12)
    assert (row.peak_gib, row.extra_gib, row.rss_extra_gib) == (3.0, 1.0, 1.0)
    assert row.load_1m == pytest.approx(2.0)
    assert (row.kept_tokens, row.keep, row.device_type) == (18, 0.5, "cpu")


def test_a_failed_round_marks_the_row_and_keeps_the_other_samples():
    results = [result(samples=[5.0]), result(status="oom", reason="DefaultCPUAllocator: can't allocate memory")]
    row = runner._row(info(), CASE, get_provider("xtf-torch"), results, warmup=1)
    assert row.status == "oom" and row.ms == 5.0
    assert row.reason.startswith("1 of 2 rounds failed | DefaultCPUAllocator")


def test_missing_rows_carry_the_reason():
    row = runner._row(info(), CASE, get_provider("cce"), [result(status="missing", reason="needs CUDA")], 1)
    assert (row.status, row.reason, row.ms, row.tflops, row.family) == ("missing", "needs CUDA", None, None, "peer")


def test_timeout_becomes_a_row_status():
    jobs = [runner._job(CASE, get_provider("xtf-torch"), RunSettings.for_device(torch.device("cpu")), False)]
    (out,) = runner._spawn(jobs, get_provider("xtf-torch"), timeout_s=0.05)
    assert out["status"] == "timeout" and "0 s" in out["reason"]


def test_run_end_to_end_in_worker_processes():
    logs, recorded = [], []
    settings = RunSettings.for_device(torch.device("cpu"), warmup=0, repeats=2)
    rows = runner.run([SuiteEntry(CASE, ("xtf-torch", "liger"))], settings, log=logs.append,
                      on_rows=lambda part: recorded.append([(r.provider, r.status) for r in part]))
    assert [(r.provider, r.status) for r in rows] == [("xtf-torch", "ok"), ("liger", "missing")]
    # Each row is handed over once, when complete: the unavailable peer before any worker starts.
    assert recorded == [[("liger", "missing")], [("xtf-torch", "ok")]]
    ok = rows[0]
    samples = [float(s) for s in ok.samples_ms.split(";")]
    assert ok.samples == 2 and ok.ms == pytest.approx(statistics.median(samples), abs=1e-3)
    assert ok.extra_gib > 0 and ok.rss_extra_gib is not None
    assert ok.git_sha == runner.git_sha() and ok.xtf
    assert any("liger" in line and "missing" in line for line in logs)


def test_cpu_rounds_alternate_the_provider_order(monkeypatch):
    order = []

    def fake_spawn(jobs, provider, timeout_s):
        order.append(provider.name)
        return [result(samples=[1.0]) for _ in jobs]

    monkeypatch.setattr(runner, "_spawn", fake_spawn)
    settings = RunSettings.for_device(torch.device("cpu"), rounds=3)
    runner.run([SuiteEntry(CASE, ("xtf-torch", "torch-materialised"))], settings, log=lambda m: None)
    assert order == ["xtf-torch", "torch-materialised", "torch-materialised", "xtf-torch", "xtf-torch",
                     "torch-materialised"]


def test_settings_validation_and_device_defaults():
    cpu = RunSettings.for_device(torch.device("cpu"))
    cuda = RunSettings.for_device(torch.device("cuda"), repeats=7)
    assert (cpu.warmup, cpu.repeats) == (1, 3)
    assert (cuda.warmup, cuda.repeats) == (3, 7)
    with pytest.raises(ValueError, match="repeats"):
        RunSettings.for_device(torch.device("cpu"), repeats=0)


from xtf_kernels.bench.targets import TARGETS
from xtf_kernels.bench.targets import evaluate
from xtf_kernels.bench.targets import find

from .rows import make_row

CPU = dict(device_type="cpu", hidden=512, vocab=128256, dtype="float32", mode="fwd_bwd")


def cpu_rows(fused_ms=100.0, fused_extra=1.0, keep40_ms=40.0):
    return [
        make_row(provider="xtf-torch", tokens=8192, kept_tokens=8192, ms=fused_ms, extra_gib=fused_extra, **CPU),
        make_row(provider="torch-materialised", family="peer", tokens=8192, kept_tokens=8192, ms=90.0,
                 extra_gib=12.0, **CPU),
        make_row(provider="xtf-torch", tokens=8192, keep=0.4, kept_tokens=3277, ms=keep40_ms, extra_gib=0.9, **CPU),
    ]


def test_cpu_targets_pass_and_miss():
    verdicts = {v.name: v for v in evaluate(cpu_rows())}
    assert set(verdicts) == {"cpu-memory", "cpu-time", "cpu-keep40"}
    assert verdicts["cpu-memory"].passed and abs(verdicts["cpu-memory"].measured - 1 / 12) < 1e-12
    assert verdicts["cpu-time"].passed and abs(verdicts["cpu-time"].measured - 100 / 90) < 1e-12
    assert verdicts["cpu-keep40"].passed
    missed = {v.name: v for v in evaluate(cpu_rows(fused_ms=200.0, fused_extra=2.0, keep40_ms=120.0))}
    assert not any(v.passed for v in missed.values())
    assert missed["cpu-time"].describe().startswith("MISS  CPU N 8192: xtf-torch time / materialised: measured 2.222")


def test_rows_that_did_not_run_give_no_verdict():
    rows = cpu_rows()
    rows[1] = make_row(provider="torch-materialised", family="peer", tokens=8192, kept_tokens=8192,
                       status="oom", reason="x", ms=None, **CPU)
    assert {v.name for v in evaluate(rows)} == {"cpu-keep40"}
    assert find(rows, "torch-materialised") is None


def test_gpu_rate_targets_are_lower_bounds():
    gpu = dict(device_type="cuda", model="llama3-8b", hidden=4096, vocab=128256, dtype="bfloat16", tokens=16384,
               kept_tokens=16384)
    rows = [make_row(provider="xtf-auto", mode="fwd_bwd", ms=80.0, tflops=660.0, extra_gib=2.0, **gpu),
            make_row(provider="cce", family="peer", mode="fwd_bwd", ms=90.0, extra_gib=1.5, **gpu),
            make_row(provider="xtf-auto", mode="fwd", ms=30.0, tflops=600.0, **gpu)]
    verdicts = {v.name: v for v in evaluate(rows)}
    assert verdicts["gpu-tflops"].passed and not verdicts["gpu-fwd-tflops"].passed
    assert verdicts["gpu-vs-peers"].passed and abs(verdicts["gpu-vs-peers"].measured - 80 / 90) < 1e-12
    assert verdicts["gpu-default-memory"].passed and abs(verdicts["gpu-default-memory"].measured - 2 / 1.5) < 1e-12
    assert len({t.name for t in TARGETS}) == len(TARGETS)


def test_exact_peer_and_published_quack_targets():
    gpu = dict(device_type="cuda", model="llama3-8b", hidden=4096, vocab=128256, dtype="bfloat16", mode="fwd_bwd")
    rows = [make_row(provider="xtf-auto", tokens=16384, kept_tokens=16384, ms=80.0, device="NVIDIA H200", **gpu),
            make_row(provider="cce-exact", family="peer", tokens=16384, kept_tokens=16384, ms=100.0, **gpu),
            make_row(provider="xtf-auto", tokens=4096, kept_tokens=4096, ms=20.0, device="NVIDIA H200", **gpu)]
    verdicts = {v.name: v for v in evaluate(rows)}
    assert verdicts["gpu-vs-cce-exact"].passed and abs(verdicts["gpu-vs-cce-exact"].measured - 0.8) < 1e-12
    assert not verdicts["gpu-4k-vs-quack"].passed and abs(verdicts["gpu-4k-vs-quack"].measured - 20 / 17.3) < 1e-12
    # The published figure is an H200's: another GPU gets no verdict.
    rows[2] = make_row(provider="xtf-auto", tokens=4096, kept_tokens=4096, ms=20.0, device="NVIDIA A100", **gpu)
    assert "gpu-4k-vs-quack" not in {v.name for v in evaluate(rows)}

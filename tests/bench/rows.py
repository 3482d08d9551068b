"""A valid results row with overridable fields, for the bench tests."""

from xtf_kernels.bench.store import ResultRow


def make_row(**overrides) -> ResultRow:
    fields = dict(
        run_id="20261121T000000Z-1", timestamp="2026-11-21T00:00:00+00:00", device="CPU", device_type="cpu",
        torch="2.13.0", triton="3.6.0", xtf="0.1.0", git_sha="abc", provider="xtf-torch", family="xtf",
        path="torch", peer_version="0.1.0", model="", mode="fwd_bwd", dtype="float32", tokens=8, hidden=4,
        vocab=16, softcap=None, keep=1.0, kept_tokens=8, status="ok", reason="", ms=1.5, ms_min=1.0,
        ms_max=2.0, samples=3, samples_ms="1.0;1.5;2.0", warmup=1, tflops=1e-6, peak_gib=0.1, extra_gib=0.05,
        rss_extra_gib=None, mem_method="m", load_1m=0.5, loads_1m="0.5", threads=2,
    )
    fields.update(overrides)
    return ResultRow(**fields)

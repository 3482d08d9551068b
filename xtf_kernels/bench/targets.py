"""The performance targets the package is held to, checked against the rows of one run.

Each target is a ratio or a rate computed from measured rows and compared with a bound; a target whose
rows are not in the run (another device, a provider missing) is left out of the verdicts.

CPU (fp32, H 512, V 128256, forward + backward, the torch backend "xtf-torch"):
    N 8192: extra peak memory <= 1/8 of materialised PyTorch's; time <= 1.3x materialised;
            keeping 40% of the tokens (token_weights) takes <= 0.55x the time of keeping all.
    N 4096: faster than torch's chunked F.linear_cross_entropy at <= 1.25x its extra memory.
GPU (bf16, Llama-3-8B head H 4096, V 128256, N 16384, the default "xtf-auto"):
    forward + backward >= 650 TFLOP/s (6NHV / time) and not slower than the fastest peer, nor than Cut
    Cross-Entropy's exact mode (the like-for-like peer: CCE's default skips gradient tiles);
    fused Triton path's extra memory within 1.1x CCE's; the default's within 1.5x the lowest peer's;
    60% of the tokens kept: <= 0.65x the time of all; forward-only >= 650 TFLOP/s (2NHV / time);
    frozen lm_head <= 0.7x the time of the full backward.
GPU, N 4096, on an H200 only: within 1.1x QuACK's published 17.3 ms (shared/anchors.md: QuACK chunked linear
    cross-entropy, H200, 4096 x 4096 x 128256, bf16, forward + backward). QuACK is not run here (its CuTe DSL
    wheels exceed what the GPU machine can be sent), so this one compares with a published figure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from .store import ResultRow


class TargetResult(NamedTuple):
    name: str
    text: str
    measured: float
    bound: float
    at_most: bool
    passed: bool

    def describe(self) -> str:
        sign = "<=" if self.at_most else ">="
        verdict = "PASS" if self.passed else "MISS"
        return f"{verdict}  {self.text}: measured {self.measured:.3f} (target {sign} {self.bound:g})"


class Target(NamedTuple):
    name: str
    text: str
    bound: float
    at_most: bool
    measure: Callable[[list[ResultRow]], float | None]


def find(rows: list[ResultRow], provider: str, **fields) -> ResultRow | None:
    """The first row of ``provider`` with status ok whose columns equal ``fields``."""
    for row in rows:
        if row.provider == provider and row.status == "ok" and all(getattr(row, k) == v for k, v in fields.items()):
            return row
    return None


def _ratio(rows, metric: str, top: tuple[str, dict], bottom: tuple[str, dict]) -> float | None:
    a, b = find(rows, top[0], **top[1]), find(rows, bottom[0], **bottom[1])
    if a is None or b is None:
        return None
    x, y = getattr(a, metric), getattr(b, metric)
    return None if x is None or not y else x / y


def _metric(rows, metric: str, provider: str, fields: dict) -> float | None:
    row = find(rows, provider, **fields)
    return None if row is None else getattr(row, metric)


def _over_best(rows, metric: str, provider: str, fields: dict, *, peers_only: bool) -> float | None:
    row = find(rows, provider, **fields)
    if row is None or getattr(row, metric) is None:
        return None
    others = [
        getattr(r, metric) for r in rows
        if r.status == "ok" and (r.family == "peer" or not peers_only) and getattr(r, metric)
        and all(getattr(r, k) == v for k, v in fields.items())
    ]
    return getattr(row, metric) / min(others) if others else None


_CPU = dict(device_type="cpu", hidden=512, vocab=128256, dtype="float32", mode="fwd_bwd")
_CPU_8K = dict(_CPU, tokens=8192, keep=1.0)
_CPU_8K_40 = dict(_CPU, tokens=8192, keep=0.4)
_CPU_4K = dict(_CPU, tokens=4096, keep=1.0)
_GPU = dict(device_type="cuda", model="llama3-8b", hidden=4096, vocab=128256, dtype="bfloat16", tokens=16384)
_GPU_FB = dict(_GPU, mode="fwd_bwd", keep=1.0)
_GPU_4K = dict(_GPU_FB, tokens=4096)
QUACK_H200_4K_MS = 17.3


def _over_published(rows, provider: str, fields: dict, published_ms: float, device: str) -> float | None:
    """ms of ``provider`` over a published time, only for rows measured on ``device`` (e.g. "H200")."""
    row = find(rows, provider, **fields)
    if row is None or row.ms is None or device not in row.device:
        return None
    return row.ms / published_ms

TARGETS: tuple[Target, ...] = (
    Target("cpu-memory", "CPU N 8192: xtf-torch extra memory / materialised", 1 / 8, True,
           lambda r: _ratio(r, "extra_gib", ("xtf-torch", _CPU_8K), ("torch-materialised", _CPU_8K))),
    Target("cpu-time", "CPU N 8192: xtf-torch time / materialised", 1.3, True,
           lambda r: _ratio(r, "ms", ("xtf-torch", _CPU_8K), ("torch-materialised", _CPU_8K))),
    Target("cpu-keep40", "CPU N 8192: xtf-torch time keeping 40% / keeping all", 0.55, True,
           lambda r: _ratio(r, "ms", ("xtf-torch", _CPU_8K_40), ("xtf-torch", _CPU_8K))),
    Target("cpu-vs-torch-chunked-time", "CPU N 4096: xtf-torch time / torch chunked F.linear_cross_entropy",
           1.0, True, lambda r: _ratio(r, "ms", ("xtf-torch", _CPU_4K), ("torch-chunked", _CPU_4K))),
    Target("cpu-vs-torch-chunked-memory", "CPU N 4096: xtf-torch extra memory / torch chunked", 1.25, True,
           lambda r: _ratio(r, "extra_gib", ("xtf-torch", _CPU_4K), ("torch-chunked", _CPU_4K))),
    Target("gpu-tflops", "GPU Llama-3 N 16384 fwd+bwd: xtf-auto TFLOP/s (6NHV)", 650.0, False,
           lambda r: _metric(r, "tflops", "xtf-auto", _GPU_FB)),
    Target("gpu-vs-peers", "GPU Llama-3 N 16384 fwd+bwd: xtf-auto time / fastest peer", 1.0, True,
           lambda r: _over_best(r, "ms", "xtf-auto", _GPU_FB, peers_only=True)),
    Target("gpu-vs-cce-exact", "GPU Llama-3 N 16384 fwd+bwd: xtf-auto time / CCE exact mode", 1.0, True,
           lambda r: _ratio(r, "ms", ("xtf-auto", _GPU_FB), ("cce-exact", _GPU_FB))),
    Target("gpu-4k-vs-quack", "GPU (H200) Llama-3 N 4096 fwd+bwd: xtf-auto time / QuACK's published 17.3 ms", 1.1,
           True, lambda r: _over_published(r, "xtf-auto", _GPU_4K, QUACK_H200_4K_MS, "H200")),
    Target("gpu-fused-memory", "GPU Llama-3 N 16384: fused Triton path extra memory / CCE's", 1.1, True,
           lambda r: _ratio(r, "extra_gib", ("xtf-triton-fused", _GPU_FB), ("cce", _GPU_FB))),
    Target("gpu-default-memory", "GPU Llama-3 N 16384: xtf-auto extra memory / lowest peer's", 1.5, True,
           lambda r: _over_best(r, "extra_gib", "xtf-auto", _GPU_FB, peers_only=True)),
    Target("gpu-keep60", "GPU Llama-3 N 16384: xtf-auto time keeping 60% / keeping all", 0.65, True,
           lambda r: _ratio(r, "ms", ("xtf-auto", dict(_GPU_FB, keep=0.6)), ("xtf-auto", _GPU_FB))),
    Target("gpu-fwd-tflops", "GPU Llama-3 N 16384 forward-only: xtf-auto TFLOP/s (2NHV)", 650.0, False,
           lambda r: _metric(r, "tflops", "xtf-auto", dict(_GPU, mode="fwd", keep=1.0))),
    Target("gpu-frozen", "GPU Llama-3 N 16384: xtf-auto time frozen lm_head / full backward", 0.7, True,
           lambda r: _ratio(r, "ms", ("xtf-auto", dict(_GPU, mode="frozen", keep=1.0)), ("xtf-auto", _GPU_FB))),
)


def evaluate(rows: list[ResultRow]) -> list[TargetResult]:
    """Verdicts for every target whose rows are present in ``rows`` (one run)."""
    results = []
    for target in TARGETS:
        measured = target.measure(rows)
        if measured is None:
            continue
        passed = measured <= target.bound if target.at_most else measured >= target.bound
        results.append(TargetResult(target.name, target.text, measured, target.bound, target.at_most, passed))
    return results

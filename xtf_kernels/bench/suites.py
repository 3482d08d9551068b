"""The standard case sets.

gpu          the side-by-side run on a GPU (bf16): the Llama-3-8B head (H 4096, V 128256) at N = 4096 and
             16384, the Gemma-2-2B head (H 2304, V 256000, softcap 30) at N = 8192, and at N = 16384 on
             the Llama-3 head: frozen lm_head, 60% of the tokens kept, forward-only; every provider.
gpu-run      the benchmark step of benchmarks/gpu_run.sh, sized to its time budget: the Llama-3-8B head at
             N = 4096 and 16384 with every provider, and at N = 16384 the frozen lm_head, 60% of the tokens
             kept and forward-only with xtf's default and fastest-candidate paths and the fused peers.
dry-run      the CPU rehearsal of gpu-run: one tiny case, xtf's torch backend; the GPU-only peers report
             themselves missing.
cpu-targets  the CPU measurements the targets speak of (fp32, H 512, V 128256, forward + backward): the
             torch backend against materialised PyTorch at N = 8192 (all tokens, and 40% kept), and against
             torch's chunked F.linear_cross_entropy at N = 4096. Minutes per case on 2 cores.
cpu-quick    a small CPU comparison (N 2048, H 512, V 32768, fp32) that runs in seconds.
"""

from __future__ import annotations

from .cases import Case
from .runner import SuiteEntry

GPU_PROVIDERS: tuple[str, ...] = (
    "xtf-auto", "xtf-torch", "xtf-triton-fused", "xtf-triton-chunked", "xtf-cuda",
    "liger", "cce", "cce-exact", "torch-chunked", "torch-compile", "torch-materialised",
)
# The providers of gpu-run's frozen / 60%-kept / forward-only cases: xtf's default and the candidates for
# its fastest path, and the peers that never form the full logits.
GPU_RUN_VARIANT_PROVIDERS: tuple[str, ...] = (
    "xtf-auto", "xtf-triton-chunked", "xtf-triton-fused", "xtf-cuda", "liger", "cce", "cce-exact",
)
CPU_PROVIDERS: tuple[str, ...] = ("xtf-torch", "torch-chunked", "torch-materialised")


def gpu_suite() -> list[SuiteEntry]:
    def llama(tokens: int, **options) -> Case:
        return Case.for_model("llama3-8b", tokens, dtype="bfloat16", **options)

    cases = [
        llama(4096),
        llama(16384),
        Case.for_model("gemma2-2b", 8192, dtype="bfloat16"),
        llama(16384, mode="frozen"),
        llama(16384, keep=0.6),
        llama(16384, mode="fwd"),
    ]
    return [SuiteEntry(case, GPU_PROVIDERS) for case in cases]


def gpu_run_suite() -> list[SuiteEntry]:
    def llama(tokens: int, **options) -> Case:
        return Case.for_model("llama3-8b", tokens, dtype="bfloat16", **options)

    return [
        SuiteEntry(llama(4096), GPU_PROVIDERS),
        SuiteEntry(llama(16384), GPU_PROVIDERS),
        SuiteEntry(llama(16384, mode="frozen"), GPU_RUN_VARIANT_PROVIDERS),
        SuiteEntry(llama(16384, keep=0.6), GPU_RUN_VARIANT_PROVIDERS),
        SuiteEntry(llama(16384, mode="fwd"), GPU_RUN_VARIANT_PROVIDERS),
    ]


def dry_run_suite() -> list[SuiteEntry]:
    case = Case(tokens=64, hidden=32, vocab=512, dtype="float32")
    # xtf-torch runs; the rest are GPU-only and report themselves missing without a worker process.
    return [SuiteEntry(case, ("xtf-torch", "xtf-triton-chunked", "xtf-triton-fused", "xtf-cuda", "liger", "cce",
                              "cce-exact"))]


def cpu_targets_suite() -> list[SuiteEntry]:
    def head(tokens: int, **options) -> Case:
        return Case(tokens=tokens, hidden=512, vocab=128256, dtype="float32", **options)

    return [
        SuiteEntry(head(8192), ("xtf-torch", "torch-materialised")),
        SuiteEntry(head(8192, keep=0.4), ("xtf-torch",)),
        SuiteEntry(head(4096), CPU_PROVIDERS),
    ]


def cpu_quick_suite() -> list[SuiteEntry]:
    def small(mode: str) -> Case:
        return Case(tokens=2048, hidden=512, vocab=32768, dtype="float32", mode=mode)

    return [SuiteEntry(small("fwd_bwd"), CPU_PROVIDERS), SuiteEntry(small("fwd"), CPU_PROVIDERS)]


SUITES = {
    "gpu": gpu_suite, "gpu-run": gpu_run_suite, "dry-run": dry_run_suite, "cpu-targets": cpu_targets_suite,
    "cpu-quick": cpu_quick_suite,
}


def suite(name: str) -> list[SuiteEntry]:
    if name not in SUITES:
        raise ValueError(f"suite must be one of {sorted(SUITES)}, got {name!r}")
    return SUITES[name]()

"""Forward-only (no_grad) of per-token log-probs / the loss against the peers (pytest-benchmark).

xtf times ``token_logprobs`` and materialised PyTorch ``log_softmax(...).gather``, both per token; the
peers, which have no per-token output, time their loss under no_grad. Outputs are checked against a
float64 reference (per token, 0 at dropped tokens; or the mean cross-entropy over kept tokens).
"""

from __future__ import annotations

import pytest
from bench_checks import assert_near
from bench_checks import provider_params
from bench_checks import reference_logprobs
from bench_checks import reference_loss

from xtf_kernels.bench.cases import Case

CPU_PROVIDERS = ("xtf-torch", "torch-chunked", "torch-materialised")
CUDA_PROVIDERS = (
    "xtf-auto", "xtf-torch", "xtf-triton-fused", "xtf-triton-chunked", "xtf-cuda",
    "liger", "cce", "cce-exact", "torch-chunked", "torch-compile", "torch-materialised",
)
_REL = {"float32": 1e-4, "bfloat16": 5e-2}


def _cases(device: str) -> list[Case]:
    tokens, hidden, vocab = (97, 48, 1000) if device == "cpu" else (1023, 256, 5003)
    return [
        Case(tokens=tokens, hidden=hidden, vocab=vocab, dtype="float32", mode="fwd"),
        Case(tokens=tokens, hidden=hidden, vocab=vocab, dtype="bfloat16", mode="fwd", keep=0.5, softcap=30.0),
    ]


@pytest.mark.parametrize("case_index", range(2), ids=["fwd", "fwd-keep50-softcap-bf16"])
@pytest.mark.parametrize("target", provider_params(CPU_PROVIDERS, CUDA_PROVIDERS))
def test_bench_forward_only(measure_case, target, case_index):
    name, device = target
    case = _cases(device)[case_index]
    inputs, out = measure_case(name, device, case)
    rel = _REL[case.dtype]
    assert inputs.hidden.grad is None and inputs.weight.grad is None
    if out.dim() == 0:
        assert_near(out, reference_loss(inputs, case)[0], rel, f"{name} loss")
    else:
        assert out.shape == (case.tokens,)
        assert_near(out, reference_logprobs(inputs, case), rel, f"{name} log-probs")

"""Forward + backward of the fused loss against its peers (pytest-benchmark; small shapes).

Modes: fwd_bwd (gradients to hidden and weight), frozen lm_head (hidden only), and tokens dropped
(half kept through token_weights for xtf, ignore_index for the peers). Each case also checks the loss
and gradients against a float64 materialised reference.
"""

from __future__ import annotations

import pytest
from bench_checks import assert_near
from bench_checks import provider_params
from bench_checks import reference_loss

from xtf_kernels.bench.cases import Case

CPU_PROVIDERS = ("xtf-torch", "torch-chunked", "torch-materialised")
CUDA_PROVIDERS = (
    "xtf-auto", "xtf-torch", "xtf-triton-fused", "xtf-triton-chunked", "xtf-cuda",
    "liger", "cce", "cce-exact", "torch-chunked", "torch-compile", "torch-materialised",
)
# fp32 inputs: fp32 accumulation everywhere; bf16 inputs: the logits are rounded to bf16 on the way.
_REL = {"float32": 1e-4, "bfloat16": 5e-2}


def _cases(device: str) -> list[Case]:
    tokens, hidden, vocab = (97, 48, 1000) if device == "cpu" else (1023, 256, 5003)
    return [
        Case(tokens=tokens, hidden=hidden, vocab=vocab, dtype="float32"),
        Case(tokens=tokens, hidden=hidden, vocab=vocab, dtype="bfloat16", mode="frozen", keep=0.5),
        Case(tokens=tokens, hidden=hidden, vocab=vocab, dtype="float32", keep=0.5, softcap=30.0),
    ]


@pytest.mark.parametrize("case_index", range(3), ids=["fwd_bwd", "frozen-keep50-bf16", "keep50-softcap"])
@pytest.mark.parametrize("target", provider_params(CPU_PROVIDERS, CUDA_PROVIDERS))
def test_bench_loss_forward_backward(measure_case, target, case_index):
    name, device = target
    case = _cases(device)[case_index]
    inputs, loss = measure_case(name, device, case)
    ref_loss, ref_hidden_grad, ref_weight_grad = reference_loss(inputs, case)
    rel = _REL[case.dtype]
    assert_near(loss, ref_loss, rel, f"{name} loss")
    assert_near(inputs.hidden.grad, ref_hidden_grad, rel, f"{name} d_hidden")
    if case.mode == "frozen":
        assert inputs.weight.grad is None, f"{name} formed a weight gradient for a frozen lm_head"
    else:
        assert_near(inputs.weight.grad, ref_weight_grad, rel, f"{name} d_weight")

"""The two-model influence delta, fused (one pass over V for both heads) and chunked, against float64."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from tests.ops._triton.head_reference import random_head
from tests.ops._triton.head_reference import reference_head_pass
from xtf_kernels.ops.spec import HeadSpec

pytestmark = pytest.mark.interpret


@pytest.fixture(scope="module")
def delta_paths(triton_interpret):
    from xtf_kernels.ops._triton.influence import chunked_influence_delta
    from xtf_kernels.ops._triton.influence import fused_influence_delta

    return {
        "fused": fused_influence_delta,
        "chunked": lambda base, ref, targets, spec: chunked_influence_delta(base, ref, targets, spec, chunk_size=5),
    }


def _reference_delta(base, ref, targets, spec):
    logprob = []
    for hidden, weight, bias in (base, ref):
        out = reference_head_pass(hidden, weight, bias, targets, spec)
        logprob.append(out.target_logit - out.lse)
    return logprob[1] - logprob[0]


@pytest.mark.parametrize("path", ["fused", "chunked"])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                    (torch.float16, torch.float32)], ids=["fp32", "fp16", "fp16-vs-fp32"])
@pytest.mark.parametrize("spec", [HeadSpec(), HeadSpec(softcap=2.5, inv_temperature=1 / 0.7),
                                  HeadSpec(softcap=2.5, inv_temperature=1 / 0.7, logit_scale=3.0)],
                         ids=["plain", "softcap+temperature", "softcap+temperature+logit_scale"])
def test_matches_reference(delta_paths, path, dtypes, spec):
    """Heads with different H (31 and 20) and a bias on one side only, V = 123."""
    *base, targets = random_head(13, 31, 123, dtypes[0], bias=True, seed=1)
    *ref, _ = random_head(13, 20, 123, dtypes[1], seed=2)
    delta = delta_paths[path](tuple(base), tuple(ref), targets, spec)
    assert delta.dtype == torch.float32 and delta.shape == (13,)
    assert_close(delta, _reference_delta(base, ref, targets, spec), dtypes[0])


@pytest.mark.parametrize("path", ["fused", "chunked"])
def test_same_head_gives_exact_zero(delta_paths, path):
    *head, targets = random_head(13, 31, 123, torch.float32)
    delta = delta_paths[path](tuple(head), tuple(head), targets, HeadSpec(softcap=2.5))
    assert torch.all(delta == 0)


@pytest.mark.parametrize("path", ["fused", "chunked"])
def test_single_row_and_tiny_vocabulary(delta_paths, path):
    *base, targets = random_head(1, 7, 3, torch.float32, seed=3)
    *ref, _ = random_head(1, 5, 3, torch.float32, seed=4)
    delta = delta_paths[path](tuple(base), tuple(ref), targets, HeadSpec())
    assert_close(delta, _reference_delta(base, ref, targets, HeadSpec()))

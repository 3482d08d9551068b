"""The scorers on a CUDA device in bfloat16 (Triton attention_received where available) against float32 eager
references on the same GPU. Run on a GPU machine: ``python -m pytest -m cuda tests/methods``."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.methods import tiny
from xtf_kernels.datasets import collate
from xtf_kernels.methods import TokenCleaningScorer
from xtf_kernels.methods import XTFConfig
from xtf_kernels.methods import XTFScorer
from xtf_kernels.methods import score_samples

pytestmark = pytest.mark.cuda
pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_xtf_bf16_on_cuda_matches_fp32_eager(arch):
    model32 = tiny.model(arch).cuda()
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    samples = tiny.data().samples
    results = score_samples(XTFScorer(model16, XTFConfig()), samples, batch_size=4)
    eager = copy.deepcopy(model32)
    eager.set_attn_implementation("eager")
    batch = collate(samples).to("cuda")
    with torch.no_grad():
        out = eager(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True)
    real = batch.attention_mask.double()
    later = real.flip(-1).cumsum(-1).flip(-1).clamp(min=1)
    ri = sum(((a.double() * real[:, None, :, None]).sum(2) / later[:, None]).mean(1) for a in out.attentions)
    ri = ri / len(out.attentions)
    logp = torch.log_softmax(out.logits.double()[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    for row, result in enumerate(results):
        valid = samples[row].response_mask.cuda()
        length = len(samples[row])
        torch.testing.assert_close(result.scores["ri"].cuda()[valid].double(), ri[row, :length][valid],
                                   atol=2e-3, rtol=3e-2)
        kn = 1 - torch.cat([torch.zeros(1, device="cuda", dtype=torch.float64), logp[row, : length - 1]]).exp()
        torch.testing.assert_close(result.scores["kn"].cuda()[valid].double(), kn[valid], atol=2e-2, rtol=2e-2)


def test_token_cleaning_bf16_on_cuda():
    base32 = tiny.model("llama")
    ref32 = tiny.perturbed(base32, seed=1)
    base, ref = base32.cuda().to(torch.bfloat16), ref32.cuda().to(torch.bfloat16)
    results = score_samples(TokenCleaningScorer(base, ref), tiny.data().samples)
    scored = sum(int((~torch.isnan(r.scores["influence"])).sum()) for r in results)
    kept = sum(int((~torch.isnan(r.scores["influence"]) & ~r.dropped).sum()) for r in results)
    assert kept == 6 * scored // 10

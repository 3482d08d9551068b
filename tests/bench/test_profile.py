"""The profiler breakdown: kernel names to categories, and one profiled CPU step whose categories add up."""

from __future__ import annotations

import json

import pytest
import torch

from xtf_kernels.bench.cases import Case
from xtf_kernels.bench.inputs import make_inputs
from xtf_kernels.bench.profile import category
from xtf_kernels.bench.profile import profile_step
from xtf_kernels.bench.providers import get_provider


@pytest.mark.parametrize("name,expected", [
    ("nvjet_tst_256x128_64x4_2x1_v_bz_coopA_TNT", "GEMM"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1", "GEMM"),
    ("aten::addmm_", "GEMM"),
    ("_row_kernel", "row kernel"),
    ("void xtf::row_finalize_kernel<__nv_bfloat16>(xtf::RowFinalizeParams)", "row kernel"),
    ("_statistics_kernel", "fused"),
    ("_grad_weight_kernel", "fused"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "fill"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "copy / elementwise"),
    ("Memcpy DtoD (Device -> Device)", "copy / elementwise"),
    ("void at::native::reduce_kernel<512, 1>", "reduction"),
    ("aten::cat", "other"),
])
def test_categories(name, expected):
    assert category(name) == expected


def test_profile_of_one_cpu_step_adds_up():
    case = Case(tokens=64, hidden=16, vocab=300, dtype="float32")
    inputs = make_inputs(case, "cpu")
    breakdown = profile_step(get_provider("xtf-torch").build(inputs, case), torch.device("cpu"), warmup=1, repeats=2)
    assert breakdown.total_ms > 0 and breakdown.step_ms > 0
    assert sum(breakdown.by_category.values()) == pytest.approx(breakdown.total_ms)
    assert breakdown.by_category.get("GEMM", 0) > 0  # the three matmuls of the chunk
    assert "GEMM" in breakdown.table() and json.loads(breakdown.to_json())["device"] == "cpu"

"""The cuBLAS forms the chunked paths call (engine.py): ``torch.mm(a, b, out_dtype=float32, out=buf)`` and the
in-place ``torch.addmm(acc, a, b, out_dtype=float32, out=acc)`` (pytorch issue 154086 reports wrong results
for addmm with out_dtype and out=), against float64, into outputs poisoned with NaN. These forms exist from
torch 2.8 (the package's floor). The CPU rehearsal runs them on the meta device (shapes and dtypes only:
``aten::mm.dtype`` has CUDA and meta kernels, no CPU one)."""

from __future__ import annotations

import pytest
import torch

from .support import relative_error

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_mm_and_inplace_addmm_with_fp32_output(target, dtype, report):
    device = torch.device("meta") if target.dry_run else target.device
    m, k, n = target.size(4096, 48), target.size(4096, 32), target.size(8192, 80)
    gen = torch.Generator(device=target.device).manual_seed(5)
    a = torch.randn(m, k, generator=gen, device=target.device).to(dtype).to(device)
    b = torch.randn(k, n, generator=gen, device=target.device).to(dtype).to(device)
    acc0 = torch.randn(m, n, generator=gen, device=target.device).to(device)

    out = torch.full((m, n), float("nan"), device=device)
    torch.mm(a, b, out_dtype=torch.float32, out=out)
    acc = acc0.clone()
    torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    assert out.dtype == acc.dtype == torch.float32 and out.shape == acc.shape == (m, n)
    if device.type == "meta":
        report("out_dtype_forms", dtype=str(dtype), rehearsal="meta device: shapes and dtypes only")
        return
    product = a.double() @ b.double()
    errors = {"mm": relative_error(out, product), "addmm_inplace": relative_error(acc, acc0.double() + product)}
    report("out_dtype_forms", dtype=str(dtype), rel_err=errors)
    # fp32 accumulation of exact 16-bit products: fp32 rounding only.
    assert max(errors.values()) <= 1e-5, errors

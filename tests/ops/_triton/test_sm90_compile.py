"""The Triton kernels compile for a Hopper GPU (sm_90) with their default launch configurations, without
register spills and within the shared memory of one multiprocessor: checked on a machine without a GPU.

The drivers run on ``meta`` tensors at the Llama-3 head shape (H 4096, V 128256) with every kernel replaced
by a recorder; each recorded launch is then compiled ahead of time with ``triton.compile`` for sm_90 (the
signature specialised the way the JIT would: 16-byte aligned pointers, multiples of 16, unit strides as
constants) and the cubin's resource usage is read with the ``cuobjdump`` shipped with Triton. This catches
what the interpreter cannot: type errors of the compiled path, tile shapes ``tl.dot`` rejects, spills.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("ahead-of-time compilation needs the compiled (non-interpreter) kernels", allow_module_level=True)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from xtf_kernels.ops._triton import backend  # noqa: E402
from xtf_kernels.ops._triton import fused_backward  # noqa: E402
from xtf_kernels.ops._triton import fused_forward  # noqa: E402
from xtf_kernels.ops._triton import influence  # noqa: E402
from xtf_kernels.ops._triton import row_kernel  # noqa: E402
from xtf_kernels.ops.spec import HeadSpec  # noqa: E402
from xtf_kernels.ops.spec import RowGrads  # noqa: E402

SM90 = GPUTarget("cuda", 90, 32)
SM90_SHARED_BYTES = 232448  # 227 KiB of shared memory per block on H100 / H200
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64"}
KERNELS = {
    row_kernel: ("_row_kernel",),
    fused_forward: ("_statistics_kernel", "_target_logit_kernel"),
    fused_backward: ("_grad_hidden_kernel", "_grad_weight_kernel"),
    influence: ("_influence_kernel", "_delta_row_kernel"),
}

pytestmark = pytest.mark.skipif(
    not CUOBJDUMP.exists() or shutil.which("ptxas") is None and not (CUOBJDUMP.parent / "ptxas").exists(),
    reason="Triton's NVIDIA toolchain (ptxas, cuobjdump) is not installed",
)


class Recorder:
    """Stands in for a JIT kernel: ``kernel[grid](*args, **kwargs)`` records the launch."""

    def __init__(self, kernel, launches):
        self.kernel = kernel
        self.launches = launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.kernel, args, kwargs))


@pytest.fixture
def launches(monkeypatch):
    recorded = []
    for module, names in KERNELS.items():
        for name in names:
            monkeypatch.setattr(module, name, Recorder(getattr(module, name), recorded))
    return recorded


def _specialise(kernel, args, kwargs):
    """(signature, constexprs, attrs, options) as the JIT would specialise this launch."""
    params = kernel.params
    options = {key: kwargs.pop(key) for key in ("num_warps", "num_stages") if key in kwargs}
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(params):
        value = args[index] if index < len(args) else kwargs[param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + TRITON_DTYPES[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            if value == 1:
                signature[param.name] = "constexpr"
                constexprs[param.name] = 1
                continue
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[param.name] = "fp32"
    return signature, constexprs, attrs, options


def _resources(compiled) -> dict[str, int]:
    cubin = Path(os.environ.get("TMPDIR", "/tmp")) / f"xtf_sm90_{os.getpid()}.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    try:
        dump = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", str(cubin)], capture_output=True,
                              text=True, check=True).stdout
    finally:
        cubin.unlink()
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|LOCAL):(\d+)", dump)}


def _check_compiles(launches):
    assert launches, "no kernel was launched"
    for kernel, args, kwargs in launches:
        signature, constexprs, attrs, options = _specialise(kernel, args, dict(kwargs))
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=SM90, options=options)
        usage = _resources(compiled)
        name = f"{kernel.__name__} {constexprs}"
        assert usage["STACK"] == 0 and usage["LOCAL"] == 0, f"{name} spills registers: {usage}"
        assert compiled.metadata.shared <= SM90_SHARED_BYTES, f"{name} needs {compiled.metadata.shared} B shared"
        if _rewrites_what_it_read(kernel.__name__, constexprs):
            # The explicit CTA barrier ordering a read-add-write / in-place write (fused_backward.py,
            # row_kernel.py) is in the kernel as written, before any compiler pass could add or drop one.
            assert "gpu.barrier" in compiled.asm["ttir"], f"{name}: no explicit barrier before its rewrites"


def _rewrites_what_it_read(kernel_name: str, constexprs: dict) -> bool:
    """Kernels whose threads rewrite memory other threads of the CTA read: the fused backward's accumulators
    and the row kernel's in-place gradient."""
    if kernel_name == "_grad_hidden_kernel":
        return True
    if kernel_name == "_grad_weight_kernel":
        return bool(constexprs["NEED_WEIGHT"])
    return kernel_name == "_row_kernel" and bool(constexprs["WRITE_F32"])


def _llama_head(dtype):
    hidden = torch.empty(4096, 4096, dtype=dtype, device="meta")
    weight = torch.empty(128256, 4096, dtype=dtype, device="meta")
    bias = torch.empty(128256, dtype=dtype, device="meta")
    targets = torch.empty(4096, dtype=torch.int64, device="meta")
    return hidden, weight, bias, targets


def _meta_rows(rows):
    return torch.empty(rows, device="meta")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("path", ["fused", "chunked"])
def test_head_pass_kernels_compile_for_sm90(launches, monkeypatch, path, dtype):
    """The specialisations the public ops launch, each with every option they can take."""
    monkeypatch.setenv("XTF_TRITON_PATH", path)
    hidden, weight, bias, targets = _llama_head(dtype)
    rows = hidden.shape[0]
    loss_spec = HeadSpec(softcap=30.0, label_smoothing=0.1, z_loss=1e-4)
    logprob_spec = HeadSpec(softcap=30.0, inv_temperature=0.7)
    grads = RowGrads(loss=_meta_rows(rows))
    every = dict(need_grad_hidden=True, need_grad_weight=True, need_grad_bias=True)
    # linear_cross_entropy, mean / sum: statistics and gradients in one pass.
    backend.head_pass(hidden, weight, bias, targets, loss_spec, want_mean_logit=True, grads=grads, **every)
    # linear_cross_entropy, reduction="none": the recomputing backward given the forward's lse.
    backend.head_pass(hidden, weight, bias, targets, loss_spec, grads=grads, lse=_meta_rows(rows), **every)
    # token_logprobs with entropy: forward, then the backward through log-prob, entropy and lse.
    backend.head_pass(hidden, weight, bias, targets, logprob_spec, want_entropy=True)
    backend.head_pass(hidden, weight, bias, targets, logprob_spec, grads=RowGrads(None, *(_meta_rows(rows),) * 3),
                      lse=_meta_rows(rows), entropy=_meta_rows(rows), **every)
    # Every option of the op contract at once: logit scale, class weights, argmax (token accuracy).
    every_spec = HeadSpec(softcap=30.0, label_smoothing=0.1, z_loss=1e-4, logit_scale=0.5)
    class_weights = torch.empty(weight.shape[0], device="meta")
    backend.head_pass(hidden, weight, bias, targets, every_spec, want_mean_logit=True, want_argmax=True,
                      class_weights=class_weights, grads=grads, **every)
    backend.head_pass(hidden, weight, bias, targets, logprob_spec, want_entropy=True, want_argmax=True)
    # Plain cross-entropy without bias (the common case).
    backend.head_pass(hidden, weight, None, targets, HeadSpec(), grads=grads, need_grad_hidden=True,
                      need_grad_weight=True)
    _check_compiles(launches)


@pytest.mark.parametrize("path", ["fused", "chunked"])
def test_influence_kernels_compile_for_sm90(launches, monkeypatch, path):
    monkeypatch.setenv("XTF_TRITON_PATH", path)
    hidden, weight, bias, targets = _llama_head(torch.bfloat16)
    ref_hidden = torch.empty(4096, 2048, dtype=torch.bfloat16, device="meta")
    ref_weight = torch.empty(128256, 2048, dtype=torch.bfloat16, device="meta")
    backend.influence_delta((hidden, weight, bias), (ref_hidden, ref_weight, None), targets, HeadSpec(softcap=30.0))
    _check_compiles(launches)

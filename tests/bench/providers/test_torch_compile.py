"""The compiled chunk loop's logic (chunking, d_weight accumulation, mean scaling, frozen and no-grad
paths) against float64 autograd. torch.compile itself is replaced by the eager function here: compiling
costs tens of seconds per shape on a 2-core machine; the GPU benchmark cases run it compiled."""

import pytest
import torch
import torch.nn.functional as F

from xtf_kernels.bench.providers import torch_compile


@pytest.fixture(autouse=True)
def eager(monkeypatch):
    def uncompiled(argnums):
        fn = torch_compile._chunk_loss
        return fn if argnums is None else torch.func.grad_and_value(fn, argnums=argnums)

    monkeypatch.setattr(torch_compile, "_compiled", uncompiled)


def inputs(frozen=False, softcap=None):
    torch.manual_seed(0)
    hidden = torch.randn(37, 12, requires_grad=True)
    weight = (torch.randn(101, 12) / 4).requires_grad_(not frozen)
    targets = torch.randint(0, 101, (37,))
    targets[::3] = -100
    return hidden, weight, targets, softcap


def reference(hidden, weight, targets, softcap):
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    logits = h @ w.t()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    loss = F.cross_entropy(logits, targets, ignore_index=-100)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_loss_and_gradients_match_float64(softcap):
    hidden, weight, targets, cap = inputs(softcap=softcap)
    loss = torch_compile.compiled_chunked_loss(hidden, weight, targets, cap)
    (loss * 3.0).backward()
    ref_loss, ref_h, ref_w = reference(hidden, weight, targets, cap)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden.grad.double(), 3.0 * ref_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(weight.grad.double(), 3.0 * ref_w, rtol=1e-4, atol=1e-6)


def test_frozen_weight_gets_no_gradient():
    hidden, weight, targets, cap = inputs(frozen=True)
    torch_compile.compiled_chunked_loss(hidden, weight, targets, cap).backward()
    _loss, ref_h, _ref_w = reference(hidden, weight, targets, cap)
    assert weight.grad is None
    torch.testing.assert_close(hidden.grad.double(), ref_h, rtol=1e-4, atol=1e-6)


def test_no_grad_loss():
    hidden, weight, targets, cap = inputs()
    with torch.no_grad():
        loss = torch_compile.compiled_chunked_loss(hidden, weight, targets, cap)
    torch.testing.assert_close(loss.double(), reference(hidden, weight, targets, cap)[0], rtol=1e-5, atol=1e-6)

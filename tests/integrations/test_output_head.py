"""head_loss: the fused loss computed inside the output embedding's forward, through the wrappers it may sit
in, against the float64 reference."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import assert_close
from tests.reference import reference_linear_cross_entropy
from xtf_kernels.integrations.output_head import HeadLossRequest
from xtf_kernels.integrations.output_head import UnsupportedModelError
from xtf_kernels.integrations.output_head import head_loss
from xtf_kernels.integrations.output_head import output_head_leaves

HIDDEN, VOCAB = 31, 123


def _case(bias: bool = True, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(HIDDEN, VOCAB, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(VOCAB, HIDDEN, generator=generator) * 0.3)
        if bias:
            head.bias.copy_(torch.randn(VOCAB, generator=generator))
    hidden = torch.randn(3, 47, HIDDEN, generator=generator, requires_grad=True)
    targets = torch.randint(0, VOCAB, (3, 47), generator=generator)
    targets[:, :5] = -100
    token_weights = torch.rand(3, 47, generator=generator)
    return head, hidden, targets, token_weights


def _reference_grads(head, hidden, targets, **options):
    leaves = [hidden.detach().double().requires_grad_(), head.weight.detach().double().requires_grad_()]
    bias = None if head.bias is None else head.bias.detach().double().requires_grad_()
    loss = reference_linear_cross_entropy(*leaves, targets, bias=bias, **options)
    loss.backward()
    return loss, leaves[0].grad, leaves[1].grad, None if bias is None else bias.grad


def test_head_loss_on_a_linear_matches_the_reference_with_every_gradient():
    head, hidden, targets, token_weights = _case()
    options = dict(token_weights=token_weights, softcap=2.5, z_loss=1e-3, num_items_in_batch=90)
    loss = head_loss(head, hidden, targets, **options)
    loss.backward()
    expected, d_hidden, d_weight, d_bias = _reference_grads(head, hidden, targets, **options)
    assert_close(loss, expected, msg="loss")
    assert_close(hidden.grad, d_hidden, grad=True, msg="hidden")
    assert_close(head.weight.grad, d_weight, grad=True, msg="weight")
    assert_close(head.bias.grad, d_bias, grad=True, msg="bias")


def test_a_frozen_head_gets_no_weight_gradient():
    head, hidden, targets, _ = _case(bias=False)
    head.weight.requires_grad_(False)
    head_loss(head, hidden, targets).backward()
    assert head.weight.grad is None
    _, d_hidden, _, _ = _reference_grads(head, hidden, targets)
    assert_close(hidden.grad, d_hidden, grad=True, msg="hidden")


def test_the_request_aware_head_behaves_as_before_for_ordinary_calls():
    head, hidden, _, _ = _case()
    before = copy.deepcopy(head)
    output_head_leaves(head)
    assert isinstance(head, nn.Linear) and type(head).__name__ == "Linear" and type(head) is not nn.Linear
    assert torch.equal(head(hidden), before(hidden))
    assert head.state_dict().keys() == before.state_dict().keys()
    assert torch.equal(copy.deepcopy(head)(hidden), before(hidden))
    output_head_leaves(head)  # idempotent: the class is derived once
    assert type(head).__mro__[1] is nn.Linear
    restored = pickle.loads(pickle.dumps(head))  # the derived class cannot be found by name: it is rebuilt
    assert type(restored) is type(head) and torch.equal(restored(hidden), before(hidden))


def test_loss_fn_receives_the_weight_bias_and_options():
    head, hidden, targets, _ = _case()
    seen = {}

    def loss_fn(h, weight, t, *, bias, scale):
        seen.update(weight=weight, bias=bias, scale=scale)
        return (F.linear(h, weight, bias).logsumexp(-1) * (t != -100)).sum() * scale

    loss = head_loss(head, hidden, targets, loss_fn=loss_fn, scale=0.5)
    assert seen["weight"] is head.weight and seen["bias"] is head.bias and seen["scale"] == 0.5
    assert_close(loss, (F.linear(hidden, head.weight, head.bias).logsumexp(-1) * (targets != -100)).sum() * 0.5)


def test_the_request_is_opaque_to_pytree_traversals():
    """Engines tree-map over call arguments (FSDP2 casts floating inputs for mixed precision); the request's
    token weights must not be reached."""
    from torch.utils._pytree import tree_flatten

    request = HeadLossRequest(torch.zeros(3, dtype=torch.long), token_weights=torch.ones(3))
    leaves, _ = tree_flatten((torch.ones(2), request))
    assert len(leaves) == 2 and leaves[1] is request


def test_activation_checkpoint_wrapper_forwards_the_request():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    head, hidden, targets, _ = _case()
    wrapped = checkpoint_wrapper(head)
    loss = head_loss(wrapped, hidden, targets)
    loss.backward()
    expected, d_hidden, d_weight, _ = _reference_grads(head, hidden, targets)
    assert_close(loss, expected)
    assert_close(hidden.grad, d_hidden, grad=True, msg="hidden")
    assert_close(head.weight.grad, d_weight, grad=True, msg="weight")


def test_modules_to_save_wrapper_uses_the_active_copy_or_the_original_when_disabled():
    pytest.importorskip("peft")
    from peft.utils.other import ModulesToSaveWrapper

    head, hidden, targets, _ = _case()
    wrapper = ModulesToSaveWrapper(head, "default")
    copy_head = wrapper.modules_to_save["default"]
    with torch.no_grad():
        copy_head.weight.mul_(2.0)
    assert_close(head_loss(wrapper, hidden, targets), _reference_grads(copy_head, hidden, targets)[0], msg="active")
    wrapper.enable_adapters(False)
    assert_close(head_loss(wrapper, hidden, targets), _reference_grads(head, hidden, targets)[0], msg="disabled")


def test_autocast_computes_in_the_autocast_dtype_like_f_linear():
    head, hidden, targets, _ = _case(bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head_loss(head, hidden, targets)
    expected = reference_linear_cross_entropy(hidden.bfloat16(), head.weight.bfloat16(), targets)
    assert loss.dtype == torch.float32
    assert_close(loss, expected, torch.bfloat16)
    loss.backward()
    assert head.weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32


def test_heads_the_fused_loss_cannot_reproduce_are_refused():
    _, hidden, targets, _ = _case()
    with pytest.raises(UnsupportedModelError, match="not an nn.Linear"):
        head_loss(nn.Embedding(VOCAB, HIDDEN), hidden, targets)
    with pytest.raises(UnsupportedModelError, match="nn.Module"):
        output_head_leaves("lm_head")
    quantised = nn.Linear(HIDDEN, VOCAB, bias=False)
    quantised.weight = nn.Parameter(torch.zeros(VOCAB, HIDDEN, dtype=torch.int8), requires_grad=False)
    with pytest.raises(UnsupportedModelError, match="quantised"):
        head_loss(quantised, hidden, targets)
    peft = pytest.importorskip("peft")
    lora_model = peft.get_peft_model(nn.Sequential(nn.Linear(HIDDEN, VOCAB)), peft.LoraConfig(target_modules=["0"]))
    with pytest.raises(UnsupportedModelError, match="PEFT adapter layer"):
        head_loss(lora_model.base_model.model[0], hidden, targets)

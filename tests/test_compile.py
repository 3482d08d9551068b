"""torch.compile: the fused ops compile with fullgraph=True (no graph break inside the loss) and give the
eager values and gradients; torch.library.opcheck on every custom op (schema, fake / meta kernels, autograd
registration, AOT dispatch with dynamic shapes)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from xtf_kernels.functional import linear_cross_entropy
from xtf_kernels.functional import token_logprobs

# Inductor compiles C++ kernels per graph: 15-40 s for the step below on a loaded 2-core CPU (one shape only);
# the other backends take a few seconds and also run a second shape (dynamic-shape recompile).
BACKENDS = ["eager", "aot_eager", "inductor"]


def _inputs(rows: int, hidden: int = 16, vocab: int = 53, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden, generator=generator, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=generator) * 0.5).requires_grad_()
    b = torch.randn(vocab, generator=generator, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    targets[::5] = -100
    token_weights = torch.rand(rows, generator=generator)
    token_weights[1] = 0.0
    upstream = torch.randn(rows, generator=generator)
    return h, w, b, targets, token_weights, upstream


def _training_step(h, w, b, targets, token_weights, upstream):
    """Every path at once: mean with token weights and num_items, per-token losses with an arbitrary upstream
    gradient (the recomputing backward), token log-probs with entropy and lse."""
    mean = linear_cross_entropy(h, w, targets, bias=b, token_weights=token_weights, num_items_in_batch=11,
                                softcap=3.0, z_loss=1e-3)
    per_token = linear_cross_entropy(h, w, targets, token_weights=token_weights, reduction="none",
                                     label_smoothing=0.1)
    out = token_logprobs(h, w, targets, bias=b, temperature=0.7, return_entropy=True, return_lse=True)
    total = mean + (per_token * upstream).sum() + (out.logprobs * upstream).sum() + out.entropy.sum() \
        + 0.1 * out.lse.sum()
    return total, mean.detach(), per_token.detach(), out.logprobs.detach()


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_step_matches_eager_without_graph_breaks(backend):
    torch._dynamo.reset()
    compiled = torch.compile(_training_step, backend=backend, fullgraph=True)
    sizes = (37,) if backend == "inductor" else (37, 23)  # the second size recompiles with dynamic shapes
    for rows in sizes:
        eager_inputs, compiled_inputs = _inputs(rows), _inputs(rows)
        expected = _training_step(*eager_inputs)
        actual = compiled(*compiled_inputs)
        for name, a, e in zip(("total", "mean", "none", "logprobs"), actual, expected):
            assert_close(a, e, msg=name)
        expected[0].backward()
        actual[0].backward()
        for name, a, e in zip(("hidden", "weight", "bias"), compiled_inputs[:3], eager_inputs[:3]):
            assert_close(a.grad, e.grad, grad=True, msg=f"grad {name}")


def _step_with_outputs(h, w, b, targets, token_weights, upstream):
    """The newer options and outputs in one step: class weights, logit scale, shift, z-loss / accuracy /
    argmax outputs, log-prob argmax and mean logit."""
    class_weights = torch.linspace(0.5, 1.5, w.shape[0])
    out = linear_cross_entropy(h.unsqueeze(0), w, targets.unsqueeze(0), bias=b,
                               token_weights=token_weights.unsqueeze(0),
                               class_weights=class_weights, logit_scale=0.8, z_loss=1e-3, shift=True,
                               return_z_loss=True, return_token_accuracy=True, return_predicted_tokens=True)
    per_token = linear_cross_entropy(h, w, targets, class_weights=class_weights, reduction="none",
                                     label_smoothing=0.1, return_predicted_tokens=True)
    lp = token_logprobs(h, w, targets, logit_scale=1.2, return_predicted_tokens=True, return_mean_logit=True)
    total = out.loss + (per_token.loss * upstream).sum() + (lp.logprobs * upstream).sum()
    return (total, out.z_loss, out.token_accuracy, out.predicted_tokens, per_token.predicted_tokens,
            lp.predicted_tokens, lp.mean_logit)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_step_with_new_outputs_matches_eager(backend):
    torch._dynamo.reset()
    compiled = torch.compile(_step_with_outputs, backend=backend, fullgraph=True)
    eager_inputs, compiled_inputs = _inputs(37), _inputs(37)
    expected = _step_with_outputs(*eager_inputs)
    actual = compiled(*compiled_inputs)
    for index, (a, e) in enumerate(zip(actual, expected)):
        if e.dtype == torch.int64:
            assert torch.equal(a, e), f"output {index}"
        else:
            assert_close(a, e, msg=f"output {index}")
    expected[0].backward()
    actual[0].backward()
    for name, a, e in zip(("hidden", "weight", "bias"), compiled_inputs[:3], eager_inputs[:3]):
        assert_close(a.grad, e.grad, grad=True, msg=f"grad {name}")


def test_compiled_patched_model_training_step_is_one_graph():
    pytest.importorskip("transformers")
    from tests.integrations.tiny_models import batch
    from tests.integrations.tiny_models import tiny_model
    from tests.integrations.tiny_models import twin
    from xtf_kernels.integrations.transformers import apply_xtf_kernels

    torch._dynamo.reset()
    reference = tiny_model("gemma2")
    patched = apply_xtf_kernels(twin(reference))
    inputs = batch()
    compiled = torch.compile(patched, backend="aot_eager", fullgraph=True)
    actual = compiled(**inputs, token_weights=torch.ones(inputs["labels"].shape))
    expected = reference(**inputs)
    assert actual.logits is None
    assert_close(actual.loss, expected.loss)
    actual.loss.backward()
    expected.loss.backward()
    for (name, p), q in zip(reference.named_parameters(), patched.parameters()):
        assert_close(q.grad, p.grad, grad=True, msg=name)


# --------------------------------------------------------------------------------------------------
# opcheck
# --------------------------------------------------------------------------------------------------


def _leaves(rows: int = 13, hidden: int = 8, vocab: int = 21, *, all_ignored: bool = False):
    h, w, b, targets, token_weights, upstream = _inputs(rows, hidden, vocab, seed=3)
    if all_ignored:
        targets = torch.full_like(targets, -100)
    return h, w, b, targets, token_weights, upstream


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("all_ignored", [False, True])
def test_opcheck_linear_cross_entropy(reduction, all_ignored):
    h, w, b, targets, token_weights, _ = _leaves(all_ignored=all_ignored)
    num_items = torch.tensor(9.0) if reduction == "mean" else None
    class_weights = torch.rand(w.shape[0], generator=torch.Generator().manual_seed(5))
    args = (h, w, b, targets, token_weights, class_weights, num_items, -100, reduction, 2.0, 1.5, 0.1, 1e-3, True,
            True, True, True, True, "torch", 0)
    torch.library.opcheck(torch.ops.xtf.linear_cross_entropy.default, args)
    frozen = (h, w.detach(), None, targets, None, None, None, -100, reduction, 0.0, 1.0, 0.0, 0.0, False, False,
              True, False, False, "torch", 4)
    torch.library.opcheck(torch.ops.xtf.linear_cross_entropy.default, frozen)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("max_kept", [10, 20])  # sync-free mode: 9 kept rows gathered into 10 slots; masked
def test_opcheck_sync_free_mode(reduction, max_kept):
    h, w, b, targets, token_weights, _ = _leaves()
    args = (h, w, b, targets, token_weights, None, None, -100, reduction, 2.0, 1.5, 0.1, 1e-3, True, True, True,
            True, True, "torch", 4, max_kept)
    torch.library.opcheck(torch.ops.xtf.linear_cross_entropy.default, args)
    torch.library.opcheck(torch.ops.xtf.token_logprobs.default,
                          (h, w, b, targets, -100, 2.0, 1.3, 0.7, True, True, True, "torch", 4, max_kept))


@pytest.mark.parametrize("want_extras", [False, True])
def test_opcheck_token_logprobs(want_extras):
    h, w, b, targets, _, _ = _leaves()
    torch.library.opcheck(
        torch.ops.xtf.token_logprobs.default,
        (h, w, b, targets, -100, 2.0, 1.3, 0.7, want_extras, want_extras, want_extras, "torch", 0),
    )


def test_opcheck_influence_delta():
    h, w, _, targets, _, _ = _leaves()
    ref_hidden, ref_weight = torch.randn(13, 5), torch.randn(21, 5)
    torch.library.opcheck(
        torch.ops.xtf.influence_delta.default,
        (h.detach(), w.detach(), None, ref_hidden, ref_weight, torch.randn(21), targets, -100, 0.0, 1.0, "torch", 0),
    )


def test_opcheck_head_backward():
    h, w, b, targets, token_weights, upstream = _leaves()
    lse = torch.logsumexp(h.detach() @ w.detach().T + b.detach(), -1)
    entropy = torch.rand(13)
    class_weights = torch.rand(w.shape[0], generator=torch.Generator().manual_seed(5))
    args = (h.detach(), w.detach(), b.detach(), targets, token_weights, class_weights, lse, entropy, upstream,
            upstream.flip(0), upstream.abs(), None, -100, 0.0, 0.8, 1.0, 0.1, 1e-3, True, True, True, "torch", 0)
    torch.library.opcheck(torch.ops.xtf.head_backward.default, args)

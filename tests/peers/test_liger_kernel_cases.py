"""Liger-Kernel's fused-linear-cross-entropy cases (tests/peers/cases.py) run against linear_cross_entropy.

Expected values are Liger's semantics computed in float64 from the same inputs, held to Liger's own
tolerances. Where xtf_kernels differs on purpose the test checks the documented behaviour instead:
- "mean" with class weights and z-loss: Liger divides the cross-entropy by the target classes' weights but
  its z-loss term by the number of kept tokens (a TODO in its kernel); xtf_kernels divides the whole
  per-token loss, z-loss included, by one denominator (the target classes' weights), so that the row
  gradient stays one formula. The difference is exactly z_sum * (1 / sum_w - 1 / count), checked below.
- every target ignored: 0.0 and zero gradients, where ``F.cross_entropy``'s mean (and Liger's) is NaN; a
  micro-batch of prompt tokens only must not poison a gradient-accumulation step.
- negative class weights (Liger's functional test draws them from randn): rejected with a ValueError,
  since they make the "mean" denominator meaningless and flip a token's gradient.
- predicted tokens at ignored positions: ignore_index, where Liger writes -1.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import xtf_kernels as xk
from tests.helpers import assert_predictions
from tests.helpers import backend_features
from tests.peers.cases import LIGER_EVERYTHING
from tests.peers.cases import liger_cases
from tests.reference import reference_linear_cross_entropy_outputs

CASES = liger_cases()


def _inputs(shape, dtype, bias, options, device, seed=0):
    batch, length, hidden_size, vocab = shape
    gen = torch.Generator().manual_seed(seed)
    rows = batch * length
    x = torch.randn(rows, hidden_size, generator=gen).to(dtype)
    weight = torch.rand(vocab, hidden_size, generator=gen).to(dtype)
    bias_t = torch.rand(vocab, generator=gen).to(dtype) if bias else None
    class_weights = torch.rand(vocab, generator=gen) if options["class_weights"] else None
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    count = int(torch.randint(1, rows // 2, (1,), generator=gen))
    targets[torch.randperm(rows, generator=gen)[:count]] = options["ignore_index"]
    leaves = [t.to(device).requires_grad_() for t in (x, weight, bias_t) if t is not None]
    return leaves, targets.to(device), None if class_weights is None else class_weights.to(device)


def _liger_expected(leaves, targets, class_weights, reduction, options):
    """Liger's reference semantics in float64: F.cross_entropy(weight=, label_smoothing=, ignore_index=) plus
    the z-loss term, which its "mean" divides by the number of kept tokens."""
    x, weight, *bias = (t.detach().double().cpu() for t in leaves)
    logits = x @ weight.T + (bias[0] if bias else 0.0)
    if options["softcap"]:
        logits = options["softcap"] * torch.tanh(logits / options["softcap"])
    targets = targets.cpu()
    cw = None if class_weights is None else class_weights.double().cpu()
    ce = F.cross_entropy(logits, targets, weight=cw, ignore_index=options["ignore_index"], reduction=reduction,
                         label_smoothing=options["label_smoothing"])
    kept = targets != options["ignore_index"]
    z_rows = torch.where(kept, options["z_loss"] * torch.logsumexp(logits, -1) ** 2, 0.0)
    z_term = z_rows.sum() / kept.sum() if reduction == "mean" else z_rows.sum()
    return ce + z_term, z_term, z_rows.sum(), kept.sum(), (1.0 if cw is None else cw[targets[kept]].sum())


def _close(actual, expected, atol, rtol, msg):
    torch.testing.assert_close(actual.detach().double().cpu(), expected.double(), atol=atol, rtol=rtol,
                               msg=lambda m: f"{msg}\n{m}")


@pytest.mark.parametrize("shape,reduction,dtype,atol,rtol,bias,options", CASES)
def test_liger_correctness_case(impl, shape, reduction, dtype, atol, rtol, bias, options):
    if dtype not in impl.dtypes:
        pytest.skip(f"{dtype} not tested on {impl}")
    if options["class_weights"] and not {"class_weights", "argmax"} <= backend_features(impl.backend):
        pytest.skip(f"{impl} does not declare class_weights / argmax")
    if impl.interpret and shape[2] > 64:
        pytest.skip("the large shape is too slow under the Triton interpreter")
    leaves, targets, class_weights = _inputs(shape, dtype, bias, options, impl.device)
    returns = {}
    if options["class_weights"]:
        returns = dict(return_z_loss=True, return_token_accuracy=True, return_predicted_tokens=True)
    out = xk.linear_cross_entropy(
        *leaves[:2], targets, bias=leaves[2] if bias else None, class_weights=class_weights,
        ignore_index=options["ignore_index"], reduction=reduction, label_smoothing=options["label_smoothing"],
        z_loss=options["z_loss"], softcap=options["softcap"], backend=impl.backend, **returns,
    )
    loss = out.loss if returns else out
    liger_loss, liger_z, z_sum, count, weight_sum = _liger_expected(leaves, targets, class_weights, reduction,
                                                                    options)
    if reduction == "mean" and class_weights is not None and options["z_loss"]:
        # The one documented difference (module docstring): our z-loss term shares the weighted denominator.
        shift = z_sum * (1.0 / weight_sum - 1.0 / count)
        liger_loss, liger_z = liger_loss + shift, liger_z + shift
    _close(loss, liger_loss, atol, rtol, "loss")
    if returns:
        _close(out.z_loss, liger_z, atol, rtol, "z_loss")
        kept = targets.cpu() != options["ignore_index"]
        x, weight, *b = (t.detach().double().cpu() for t in leaves)
        logits = x @ weight.T + (b[0] if b else 0.0)
        logits = options["softcap"] * torch.tanh(logits / options["softcap"])
        assert_predictions(out.predicted_tokens, logits, kept, options["ignore_index"])
        accuracy = ((out.predicted_tokens.cpu() == targets.cpu()) & kept).sum() / kept.sum()
        _close(out.token_accuracy, accuracy, 1e-6, 0.0, "token accuracy (Liger: correct / non-ignored)")

    # Every gradient against the float64 reference of the documented semantics, at Liger's tolerances.
    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in leaves]
    expected = reference_linear_cross_entropy_outputs(
        ref_leaves[0], ref_leaves[1], targets.cpu(), bias=ref_leaves[2] if bias else None,
        class_weights=None if class_weights is None else class_weights.cpu(), ignore_index=options["ignore_index"],
        reduction=reduction, softcap=options["softcap"], label_smoothing=options["label_smoothing"],
        z_loss=options["z_loss"],
    ).loss
    got = torch.autograd.grad(loss, leaves)
    want = torch.autograd.grad(expected, ref_leaves)
    for name, g, w in zip(("hidden", "weight", "bias"), got, want):
        _close(g, w, atol, rtol, f"grad {name}")


def test_every_target_ignored_gives_zero_not_nan(impl):
    leaves, targets, class_weights = _inputs((4, 47, 31, 123), torch.float32, True, LIGER_EVERYTHING, impl.device)
    targets = torch.full_like(targets, 42)
    with torch.no_grad():
        torch_mean = F.cross_entropy(torch.randn(targets.shape[0], 123), targets.cpu(), ignore_index=42)
    assert torch.isnan(torch_mean)  # what torch (and Liger, which follows it) returns
    if "class_weights" not in backend_features(impl.backend):
        class_weights = None
    loss = xk.linear_cross_entropy(*leaves[:2], targets, bias=leaves[2], class_weights=class_weights,
                                   ignore_index=42, z_loss=1e-4, label_smoothing=0.1, softcap=30.0,
                                   backend=impl.backend)
    assert loss.item() == 0.0
    assert all(torch.all(g == 0) for g in torch.autograd.grad(loss, leaves))


def test_negative_class_weights_are_rejected(impl):
    if "class_weights" not in backend_features(impl.backend):
        pytest.skip(f"{impl} does not declare class_weights")
    leaves, targets, _ = _inputs((4, 47, 31, 123), torch.float32, False, LIGER_EVERYTHING, impl.device)
    class_weights = torch.randn(123, generator=torch.Generator().manual_seed(1)).to(impl.device)
    with pytest.raises(ValueError, match="class_weights must be finite and >= 0"):
        xk.linear_cross_entropy(*leaves, targets, class_weights=class_weights, ignore_index=42,
                                backend=impl.backend)


def test_predicted_tokens_at_ignored_positions_are_ignore_index(impl):
    if "argmax" not in backend_features(impl.backend):
        pytest.skip(f"{impl} does not declare argmax")
    leaves, targets, _ = _inputs((4, 47, 31, 123), torch.float32, False, LIGER_EVERYTHING, impl.device)
    out = xk.linear_cross_entropy(*leaves, targets, ignore_index=42, return_predicted_tokens=True,
                                  backend=impl.backend)
    logits = leaves[0].detach().double() @ leaves[1].detach().double().T
    assert_predictions(out.predicted_tokens, logits, targets != 42, 42)
    assert torch.all(out.predicted_tokens[targets == 42] == 42)

"""Semantics of the newer options beyond the reference grid: 16-bit inputs at fp32-level error, float64 and
gradcheck, argmax ties, what token accuracy counts, class weights against torch itself, shift, the typed
error of backends that do not declare an option, and the module form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import xtf_kernels as xk
from tests.cases import make_case
from tests.helpers import assert_close
from tests.helpers import backend_features
from tests.reference import reference_linear_cross_entropy
from tests.reference import reference_linear_cross_entropy_outputs
from tests.reference import reference_logits
from tests.reference import reference_token_logprobs_outputs
from xtf_kernels.errors import BackendUnavailableError


def _errors(impl, hidden, weight, targets):
    """Max |error| against float64 of the per-token loss, log-prob and entropy for these inputs."""
    out = xk.token_logprobs(hidden, weight, targets, return_entropy=True, backend=impl.backend)
    loss = xk.linear_cross_entropy(hidden, weight, targets, reduction="none", softcap=3.0, backend=impl.backend)
    hidden64, weight64 = hidden.detach().double().cpu(), weight.detach().double().cpu()
    expected = reference_linear_cross_entropy(hidden64, weight64, targets.cpu(), reduction="none", softcap=3.0)
    logprobs, entropy, _lse, _, _ = reference_token_logprobs_outputs(hidden64, weight64, targets.cpu())
    return {name: (got.double().cpu() - want).abs().max().item()
            for name, got, want in (("loss", loss, expected), ("logprobs", out.logprobs, logprobs),
                                    ("entropy", out.entropy, entropy))}


@pytest.mark.parametrize("budget_mb", [None, 1], ids=["whole-weight", "vocab-blocks"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16bit_inputs_have_fp32_level_error(impl, dtype, budget_mb, monkeypatch):
    """bf16 / fp16 inputs: logits, log-sum-exp and per-token outputs accumulated in fp32, so their error
    against float64 is that of fp32 inputs holding the same values (rounding the logits to bf16 gave 7.6e-3
    on the loss here; fp32 gives ~3e-6, ~9e-5 on the entropy, whose sum p z cancels against lse ~ 20).

    A 1 MiB chunk budget makes the CPU path upcast the 2 MiB fp32 weight in two vocabulary blocks.
    """
    if dtype not in impl.dtypes:
        pytest.skip(f"{dtype} not tested on {impl}")
    if budget_mb is not None:
        if impl.device != "cpu" or impl.interpret:
            pytest.skip("the vocabulary blocks are the CPU torch path's")
        monkeypatch.setenv("XTF_CHUNK_MEMORY_MB", str(budget_mb))
    rows = 16 if impl.interpret else 64  # ~30 s at 64 rows under the Triton interpreter
    case = make_case((rows,), 512, 1000, dtype=dtype, device=impl.device, ignore_fraction=0.0, logit_std=4.0)
    low = _errors(impl, case.hidden, case.weight, case.targets)
    fp32 = _errors(impl, case.hidden.float(), case.weight.float(), case.targets)
    for name in low:
        assert low[name] <= 1.5 * fp32[name] + 2e-6, f"{name}: {low[name]:.2e} vs fp32 inputs {fp32[name]:.2e}"
    assert low["loss"] < 2e-5


def test_16bit_weight_blocks_do_not_change_gradients(monkeypatch):
    """The blocked fp32 upcast gives the same loss and gradients as the whole-weight upcast (up to fp32
    summation order)."""
    results = []
    for budget in (None, "1"):
        if budget is None:
            monkeypatch.delenv("XTF_CHUNK_MEMORY_MB", raising=False)
        else:
            monkeypatch.setenv("XTF_CHUNK_MEMORY_MB", budget)
        case = make_case((37,), 512, 1000, dtype=torch.bfloat16, bias=True, token_weights=True)
        loss = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, bias=case.bias,
                                       token_weights=case.token_weights, label_smoothing=0.1, backend="torch")
        results.append((loss, *torch.autograd.grad(loss, case.leaves())))
    for whole, blocked in zip(*results):
        torch.testing.assert_close(blocked.float(), whole.float(), atol=1e-6, rtol=1e-2)


# --------------------------------------------------------------------------------------------------
# float64 and gradcheck (torch backend)
# --------------------------------------------------------------------------------------------------


def _float64_case():
    """(3, 4) tokens, H 5, V 7, float64 leaves, token and class weights, some ignored targets."""
    return make_case((3, 4), 5, 7, dtype=torch.float64, bias=True, token_weights=True, class_weights=True,
                     ignore_fraction=0.15, seed=11)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_linear_cross_entropy(reduction):
    case = _float64_case()
    options = dict(token_weights=case.token_weights, class_weights=case.class_weights, reduction=reduction,
                   softcap=2.0, logit_scale=1.3, label_smoothing=0.2, z_loss=0.05, backend="torch")

    def loss(hidden, weight, bias):
        return xk.linear_cross_entropy(hidden, weight, case.targets, bias=bias, **options)

    assert loss(*case.leaves()).dtype == torch.float64
    assert torch.autograd.gradcheck(loss, case.leaves(), eps=1e-6, atol=1e-8)


def test_gradcheck_linear_cross_entropy_shift():
    case = _float64_case()

    def loss(hidden, weight, bias):
        return xk.linear_cross_entropy(hidden, weight, case.targets, bias=bias, token_weights=case.token_weights,
                                       shift=True, reduction="none", backend="torch")

    assert torch.autograd.gradcheck(loss, case.leaves(), eps=1e-6, atol=1e-8)


def test_gradcheck_token_logprobs():
    case = _float64_case()

    def outputs(hidden, weight, bias):
        out = xk.token_logprobs(hidden, weight, case.targets, bias=bias, temperature=0.8, softcap=3.0,
                                logit_scale=0.7, return_entropy=True, return_lse=True, backend="torch")
        return out.logprobs, out.entropy, out.lse

    assert all(x.dtype == torch.float64 for x in outputs(*case.leaves()))
    assert torch.autograd.gradcheck(outputs, case.leaves(), eps=1e-6, atol=1e-8)


def test_influence_delta_float64_matches_reference():
    case = _float64_case()
    ref_hidden = torch.randn(3, 4, 6, dtype=torch.float64)
    ref_weight = torch.randn(7, 6, dtype=torch.float64)
    delta = xk.influence_delta((case.hidden.detach(), case.weight.detach()), (ref_hidden, ref_weight), case.targets,
                               temperature=1.4, backend="torch")
    base_lp = reference_token_logprobs_outputs(case.hidden.detach(), case.weight.detach(), case.targets,
                                               temperature=1.4)[0]
    ref_lp = reference_token_logprobs_outputs(ref_hidden, ref_weight, case.targets, temperature=1.4)[0]
    assert delta.dtype == torch.float64
    assert_close(delta, ref_lp - base_lp, torch.float64)


# --------------------------------------------------------------------------------------------------
# argmax, token accuracy, z-loss term
# --------------------------------------------------------------------------------------------------


def test_argmax_ties_pick_the_first_index(impl):
    """Vocabulary rows 2, 5 and 6 are identical and maximal for every token: torch.argmax picks 2."""
    if "argmax" not in backend_features(impl.backend):
        pytest.skip(f"{impl} does not declare argmax")
    torch.manual_seed(3)
    weight = torch.randn(9, 8) * 0.1
    direction = torch.randn(8)
    weight[[2, 5, 6]] = direction
    hidden = direction.expand(5, 8) * 4.0 + torch.randn(5, 8) * 0.01
    targets = torch.tensor([5, 2, -100, 6, 1])
    out = xk.linear_cross_entropy(hidden.to(impl.device), weight.to(impl.device), targets.to(impl.device),
                                  reduction="none", return_predicted_tokens=True, return_token_accuracy=True,
                                  backend=impl.backend)
    materialised = (hidden @ weight.T).argmax(-1)
    assert torch.equal(materialised, torch.full((5,), 2))
    assert out.predicted_tokens.tolist() == [2, 2, -100, 2, 2]
    assert out.token_accuracy.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    logprob_out = xk.token_logprobs(hidden.to(impl.device), weight.to(impl.device), targets.to(impl.device),
                                    return_predicted_tokens=True, backend=impl.backend)
    assert torch.equal(logprob_out.predicted_tokens.cpu(), out.predicted_tokens.cpu())


def test_token_accuracy_counts_kept_tokens_unweighted(impl):
    """Accuracy = correct kept tokens / kept tokens: token and class weights do not weigh it, a zero token
    weight drops the token from both counts, num_items_in_batch does not enter."""
    if not {"argmax", "class_weights"} <= backend_features(impl.backend):
        pytest.skip(f"{impl} does not declare argmax and class_weights")
    case = make_case((40,), 16, 6, device=impl.device, token_weights=True, class_weights=True, logit_std=3.0)
    logits = reference_logits(case.hidden.detach().cpu(), case.weight.detach().cpu())
    predicted = logits.argmax(-1)
    targets = case.targets.cpu().clone()
    targets[:10] = predicted[:10]  # make some tokens correct for sure
    kept = (targets != -100) & (case.token_weights.cpu() != 0)
    expected = ((predicted == targets) & kept).sum().item() / kept.sum().item()
    for reduction, num_items in (("mean", None), ("mean", 1000), ("sum", None)):
        out = xk.linear_cross_entropy(case.hidden, case.weight, targets.to(impl.device),
                                      token_weights=case.token_weights, class_weights=case.class_weights,
                                      reduction=reduction, num_items_in_batch=num_items, return_token_accuracy=True,
                                      backend=impl.backend)
        assert out.predicted_tokens is None and out.z_loss is None
        assert out.token_accuracy.shape == () and abs(out.token_accuracy.item() - expected) < 1e-6
    nothing = xk.linear_cross_entropy(case.hidden, case.weight, torch.full_like(targets, -100).to(impl.device),
                                      return_token_accuracy=True, return_z_loss=True, backend=impl.backend)
    assert nothing.token_accuracy.item() == 0.0 and nothing.z_loss.item() == 0.0 and nothing.loss.item() == 0.0


def test_z_loss_output_is_the_loss_difference(impl):
    case = make_case((47,), 31, 123, device=impl.device, token_weights=True)
    common = dict(token_weights=case.token_weights, label_smoothing=0.1, backend=impl.backend)
    for reduction in ("mean", "sum", "none"):
        with_z = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, z_loss=1e-2, reduction=reduction,
                                         return_z_loss=True, **common)
        without = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, reduction=reduction, **common)
        torch.testing.assert_close(with_z.loss - without, with_z.z_loss, atol=1e-5, rtol=1e-4)
        assert with_z.z_loss.grad_fn is None
        off = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, reduction=reduction,
                                      return_z_loss=True, **common)
        assert torch.all(off.z_loss == 0)


# --------------------------------------------------------------------------------------------------
# class weights against torch itself, shift against slicing
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label_smoothing", [0.0, 0.25])
def test_class_weights_mean_equals_torch_cross_entropy(impl, label_smoothing):
    """Our "mean" with class weights is torch's: divided by the sum of the target classes' weights."""
    if "class_weights" not in backend_features(impl.backend):
        pytest.skip(f"{impl} does not declare class_weights")
    case = make_case((53,), 24, 37, device=impl.device, class_weights=True, ignore_fraction=0.3)
    loss = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, class_weights=case.class_weights,
                                   label_smoothing=label_smoothing, backend=impl.backend)
    logits = reference_logits(case.hidden.detach().cpu(), case.weight.detach().cpu())
    expected = F.cross_entropy(logits, case.targets.cpu(), weight=case.class_weights.cpu().double(),
                               ignore_index=-100, label_smoothing=label_smoothing)
    assert_close(loss, expected)


@pytest.mark.parametrize("shift", [True, 2, 5])
def test_shift_equals_slicing_and_leaves_the_last_positions_without_gradient(impl, shift):
    """shift=n (True = 1; an int as Cut Cross-Entropy's) is hidden[..., :-n] against targets[..., n:]."""
    n = int(shift)
    case = make_case((3, 17), 31, 123, device=impl.device, token_weights=True)
    for reduction in ("mean", "none"):
        shifted = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, token_weights=case.token_weights,
                                          shift=shift, reduction=reduction, backend=impl.backend)
        hidden = case.hidden.detach()[:, :-n].requires_grad_()
        sliced = xk.linear_cross_entropy(hidden, case.weight, case.targets[:, n:],
                                         token_weights=case.token_weights[:, n:], reduction=reduction,
                                         backend=impl.backend)
        assert shifted.shape == sliced.shape == ((3, 17 - n) if reduction == "none" else ())
        torch.testing.assert_close(shifted, sliced, atol=1e-6, rtol=1e-6)
        (grad_shifted,) = torch.autograd.grad(shifted.sum(), case.hidden)
        (grad_sliced,) = torch.autograd.grad(sliced.sum(), hidden)
        assert torch.all(grad_shifted[:, -n:] == 0)
        torch.testing.assert_close(grad_shifted[:, :-n], grad_sliced, atol=1e-6, rtol=1e-5)
    logprobs = xk.token_logprobs(case.hidden.detach(), case.weight.detach(), case.targets, shift=shift,
                                 backend=impl.backend)
    unshifted = xk.token_logprobs(case.hidden.detach()[:, :-n], case.weight.detach(), case.targets[:, n:],
                                  backend=impl.backend)
    assert logprobs.shape == (3, 17 - n)
    torch.testing.assert_close(logprobs, unshifted, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_shift_offset_every_output_against_float64(impl, reduction):
    """shift=3 with token weights, z-loss, accuracy and predicted tokens; token_logprobs' entropy, lse, argmax
    and mean logit: each against the float64 reference on the sliced inputs."""
    case = make_case((3, 17), 31, 123, device=impl.device, token_weights=True)
    out = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, token_weights=case.token_weights,
                                  shift=3, z_loss=1e-3, reduction=reduction, return_z_loss=True,
                                  return_token_accuracy=True, return_predicted_tokens=True, backend=impl.backend)
    hidden64, weight64 = (t.detach().cpu().double() for t in (case.hidden, case.weight))
    expected = reference_linear_cross_entropy_outputs(hidden64, weight64, case.targets.cpu(),
                                                      token_weights=case.token_weights.cpu(), shift=3, z_loss=1e-3,
                                                      reduction=reduction)
    assert out.predicted_tokens.shape == (3, 14)
    assert_close(out.loss, expected.loss)
    assert_close(out.z_loss, expected.z_loss)
    assert_close(out.token_accuracy, expected.token_accuracy)
    assert torch.equal(out.predicted_tokens.cpu(), expected.predicted_tokens)
    logprobs = xk.token_logprobs(case.hidden.detach(), case.weight.detach(), case.targets, shift=3,
                                 return_entropy=True, return_lse=True, return_predicted_tokens=True,
                                 return_mean_logit=True, backend=impl.backend)
    for ours, reference in zip(logprobs, reference_token_logprobs_outputs(hidden64, weight64, case.targets.cpu(),
                                                                          shift=3)):
        assert ours.shape == (3, 14)
        if ours.is_floating_point():
            assert_close(ours, reference)
        else:
            assert torch.equal(ours.cpu(), reference)


def test_shift_zero_is_no_shift():
    case = make_case((3, 17), 31, 123, device="cpu")
    for shift in (0, False):
        torch.testing.assert_close(xk.linear_cross_entropy(case.hidden, case.weight, case.targets, shift=shift,
                                                           reduction="none", backend="torch"),
                                   xk.linear_cross_entropy(case.hidden, case.weight, case.targets, reduction="none",
                                                           backend="torch"), atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------
# backends that do not declare an option; the module form
# --------------------------------------------------------------------------------------------------

UNDECLARED = {
    "logit_scale": dict(logit_scale=2.0),
    "class_weights": dict(class_weights=True),
    "argmax": dict(return_predicted_tokens=True),
    "float64": dict(dtype=torch.float64),
}


@pytest.mark.parametrize("feature", list(UNDECLARED))
def test_undeclared_feature_raises_typed_error(impl, feature):
    if feature in backend_features(impl.backend):
        pytest.skip(f"{impl} declares {feature} (tested against the reference)")
    options = dict(UNDECLARED[feature])
    case = make_case((9,), 8, 17, dtype=options.pop("dtype", torch.float32), device=impl.device)
    if options.pop("class_weights", False):
        options["class_weights"] = torch.ones(17, device=impl.device)
    with pytest.raises(BackendUnavailableError, match=feature) as info:
        xk.linear_cross_entropy(case.hidden, case.weight, case.targets, backend=impl.backend, **options)
    assert "backend='torch' does" in info.value.reason


def test_module_options_match_functional(impl):
    if not {"class_weights", "logit_scale", "argmax"} <= backend_features(impl.backend):
        pytest.skip(f"{impl} does not declare every option")
    case = make_case((4, 12), 31, 123, device=impl.device, token_weights=True, class_weights=True)
    options = dict(logit_scale=0.8, z_loss=1e-3, label_smoothing=0.1, shift=True, return_z_loss=True,
                   return_token_accuracy=True, return_predicted_tokens=True, backend=impl.backend)
    module = xk.LinearCrossEntropyLoss(class_weights=case.class_weights, **options)
    got = module(case.hidden, case.weight, case.targets, case.token_weights)
    want = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, token_weights=case.token_weights,
                                   class_weights=case.class_weights, **options)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert "class_weights" in dict(module.named_buffers())
    assert "logit_scale=0.8" in repr(module) and "shift=True" in repr(module)


def test_softcap_is_exact_for_small_arguments(impl):
    """softcap(y) = s tanh(y / s) to fp32 rounding when y / s is small: tanh formed as (1 - e) / (1 + e) with
    e = exp(-2x) loses ~3e-8 / x relative (7e-5 at x = 1e-4). All raw logits are positive here, so the mean
    logit has no cancellation and shows the softcap's relative error directly."""
    gen = torch.Generator().manual_seed(5)
    hidden = torch.rand(24, 8, generator=gen) * 0.1
    weight = torch.rand(61, 8, generator=gen) * 0.1  # raw logits in (0, 0.08]: y / s in (0, 1.6e-3]
    targets = torch.randint(0, 61, (24,), generator=gen)
    options = dict(softcap=50.0, temperature=0.9)
    if "logit_scale" in backend_features(impl.backend):
        options["logit_scale"] = 1.1
    out = xk.token_logprobs(hidden.to(impl.device), weight.to(impl.device), targets.to(impl.device),
                            return_mean_logit=True, return_lse=True, backend=impl.backend, **options)
    expected = reference_token_logprobs_outputs(hidden.double(), weight.double(), targets, **options)
    relative = ((out.mean_logit.double().cpu() - expected[4]) / expected[4]).abs().max().item()
    assert relative < 2e-6, f"mean logit relative error {relative:.2e}: the softcap is not exact to fp32"
    assert_close(out.lse, expected[2], msg="lse")

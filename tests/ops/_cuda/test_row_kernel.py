"""xtf_kernels/ops/_cuda/row_kernel.py: the CUDA row kernels against a float64 reference.

The reference differentiates the four per-row outputs (cross-entropy with label smoothing and z-loss,
log p(target), entropy, log-sum-exp) with autograd through ``F.cross_entropy`` / ``log_softmax`` in
float64, sharing nothing with the kernels or xtf_kernels/ops/spec.py. GPU tests carry the cuda marker
(run by csrc/gpu_check.sh); the split heuristic and the argument checks run on the CPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from xtf_kernels.ops._cuda.row_kernel import MIN_SLICE
from xtf_kernels.ops._cuda.row_kernel import _merge_argmax
from xtf_kernels.ops._cuda.row_kernel import row_pass
from xtf_kernels.ops._cuda.row_kernel import vocab_splits
from xtf_kernels.ops.spec import HeadSpec
from xtf_kernels.ops.spec import RowGrads

HAS_CUDA = torch.cuda.is_available()


def gpu_test(fn):
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")(fn))


# --------------------------------------------------------------------------------------------------
# CPU: the split heuristic and the argument checks
# --------------------------------------------------------------------------------------------------


def test_vocab_splits_examples():
    assert vocab_splits(2048, 128256, 132, 32) == 1  # a large chunk: one block per row
    assert vocab_splits(1, 128256, 132, 32) == 31  # one row: 31 slices of >= 4096 logits
    assert vocab_splits(10, 128256, 132, 32) == 31
    assert vocab_splits(100, 128256, 132, 32) == 6  # ceil(4 * 132 / 100)
    assert vocab_splits(1, 100, 132, 32) == 1  # small vocabulary: never split
    assert vocab_splits(0, 128256, 132, 32) == 1
    assert vocab_splits(1, 10**7, 132, 32) == 32  # capped: one warp merges a row's partials


@given(rows=st.integers(0, 10**5), vocab=st.integers(1, 10**6), sms=st.integers(1, 200), cap=st.integers(1, 32))
def test_vocab_splits_bounds(rows, vocab, sms, cap):
    splits = vocab_splits(rows, vocab, sms, cap)
    assert 1 <= splits <= cap
    assert splits == 1 or vocab // splits >= MIN_SLICE


def test_merge_argmax_takes_the_first_slice_holding_the_maximum():
    """The driver's merge of per-slice argmaxes (slices in column order): ties go to the earlier slice."""
    maxima = torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [float("-inf")] * 3, [0.0, -1.0, 5.0]])
    partials = torch.stack([maxima, *(torch.zeros_like(maxima),) * 3], -1)  # RowPartial: max first
    slice_argmax = torch.tensor([[0, 11, 25], [3, 12, 20], [0, 10, 20], [4, 13, 29]])
    assert _merge_argmax(partials, slice_argmax).tolist() == [11, 3, 0, 29]
    assert _merge_argmax(partials[:, :1], slice_argmax[:, :1]).tolist() == [0, 3, 0, 4]  # one slice: no merge


def test_rejects_cpu_and_wrong_dtype_logits():
    targets = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="z must be a CUDA tensor"):
        row_pass(torch.zeros(3, 5), targets, HeadSpec())
    with pytest.raises(TypeError, match="z must be a 2-D float32 logits chunk"):
        row_pass(torch.zeros(3, 5, dtype=torch.float64), targets, HeadSpec())
    with pytest.raises(TypeError, match="z must be a 2-D float32 logits chunk"):
        row_pass(torch.zeros(15), targets, HeadSpec())


# --------------------------------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------------------------------

ALL_GRADS = ("loss", "logprob", "entropy", "lse")


def reference_rows(y, targets, spec: HeadSpec, grads: dict[str, torch.Tensor] | None, class_weights=None):
    """float64 (lse, target logit, mean logit, entropy, dL/dy or None, term scale) for raw logits y (C, V).

    The term scale is the largest magnitude fp32 adds up in dz = p (A + D z) + B [j == t] + C w, so the
    absolute error to expect of a gradient whose true value is small (e.g. exactly 0 at V = 1). With class
    weights the loss is torch's ``F.cross_entropy(weight=...)`` and the mean logit (1 / V) sum w z.
    """
    y = y.detach().double().cpu().requires_grad_(grads is not None)
    t = targets.cpu()
    weight = None if class_weights is None else class_weights.double().cpu()
    scaled = y * spec.logit_scale
    z = (spec.softcap * torch.tanh(scaled / spec.softcap) if spec.softcap else scaled) * spec.inv_temperature
    lse = torch.logsumexp(z, 1)
    log_p = torch.log_softmax(z, 1)
    entropy = -(log_p.exp() * log_p).sum(1)
    target_logit = z.gather(1, t[:, None]).squeeze(1)
    grad, terms = None, 0.0
    if grads is not None:
        loss = F.cross_entropy(z, t, weight=weight, reduction="none", label_smoothing=spec.label_smoothing)
        loss = loss + spec.z_loss * lse**2
        outputs = {"loss": loss, "logprob": target_logit - lse, "entropy": entropy, "lse": lse}
        total = sum((g.double().cpu() * outputs[name]).sum() for name, g in grads.items())
        (grad,) = torch.autograd.grad(total, y)
        size = {name: g.double().cpu().abs() for name, g in grads.items()}
        zero = torch.zeros_like(lse)
        largest_w = 1.0 if weight is None else weight.abs().max().item()
        row_terms = (size.get("loss", zero) * largest_w * (1 + 2 * spec.z_loss * lse.abs())
                     + size.get("logprob", zero) + size.get("lse", zero) + size.get("entropy", zero) * (1 + entropy))
        terms = row_terms.max().item()
    mean = (z if weight is None else z * weight).mean(1)
    return lse.detach(), target_logit.detach(), mean.detach(), entropy.detach(), grad, terms


def _close(actual, expected, what, *, atol=2e-5, rtol=2e-4, terms=0.0):
    """|actual - expected| <= atol * max(max |expected|, 1e-3) + 1e-6 * terms + rtol * |expected|.

    1e-6 * terms is ~16 fp32 roundings of the largest term of the gradient formula.
    """
    actual = actual.detach().double().cpu()
    scale = max(expected.abs().max().item(), 1e-3) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, atol=atol * scale + 1e-6 * terms, rtol=rtol,
                               msg=lambda m: f"{what}\n{m}")


def _logits(rows, vocab, *, scale=3.0, seed=0, offset=0, pad=0):
    """(rows, vocab) fp32 CUDA logits; ``offset`` / ``pad`` make a view whose rows start unaligned."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    storage = torch.randn(rows, vocab + offset + pad, generator=gen, device="cuda") * scale
    return storage[:, offset:offset + vocab]


def _targets(rows, vocab, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed + 1)
    return torch.randint(vocab, (rows,), generator=gen, device="cuda")


def _row_grads(rows, names, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed + 2)
    return {name: torch.randn(rows, generator=gen, device="cuda") for name in names}


SPECS = {
    "plain": HeadSpec(),
    "softcap": HeadSpec(softcap=5.0),
    "temperature": HeadSpec(inv_temperature=1 / 0.7),
    "smoothing": HeadSpec(label_smoothing=0.1),
    "z_loss": HeadSpec(z_loss=1e-3),
    "all": HeadSpec(softcap=4.0, inv_temperature=1 / 1.3, label_smoothing=0.2, z_loss=3e-3),
}
# (rows, vocab): V % 4 != 0 (unaligned rows), tiny V, and few rows over a large V (split rows).
SHAPES = [(47, 123), (5, 1), (3, 7), (64, 256), (1, 40003), (3, 70001)]


@gpu_test
@pytest.mark.parametrize("rows,vocab", SHAPES)
@pytest.mark.parametrize("spec_name", list(SPECS))
def test_statistics_match_reference(rows, vocab, spec_name):
    spec = SPECS[spec_name]
    z = _logits(rows, vocab)
    targets = _targets(rows, vocab)
    before = z.clone()
    lse, target_logit, mean, entropy, grad = row_pass(z, targets, spec, want_entropy=True, want_mean_logit=True)
    ref = reference_rows(before, targets, spec, None)
    for name, got, expected in zip(("lse", "target", "mean", "entropy"), (lse, target_logit, mean, entropy), ref[:4]):
        _close(got, expected, f"{name} {rows}x{vocab} {spec_name}")
    assert grad is None
    assert torch.equal(z, before), "a statistics-only pass must not write the logits"


@gpu_test
@pytest.mark.parametrize("rows,vocab", SHAPES)
@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("grad_names", [("loss",), ALL_GRADS], ids=["loss", "all-grads"])
def test_gradient_in_place_matches_reference(rows, vocab, spec_name, grad_names):
    spec = SPECS[spec_name]
    z = _logits(rows, vocab, seed=rows)
    targets = _targets(rows, vocab, seed=rows)
    grads = _row_grads(rows, grad_names, seed=rows)
    ref = reference_rows(z, targets, spec, grads)
    lse, target_logit, mean, entropy, grad = row_pass(
        z, targets, spec, want_mean_logit=spec.label_smoothing > 0, grads=RowGrads(**grads),
    )
    assert grad is z
    _close(lse, ref[0], "lse")
    _close(target_logit, ref[1], "target logit")
    _close(grad, ref[4], f"dL/dy {rows}x{vocab} {spec_name} {grad_names}", terms=ref[5])


@gpu_test
@pytest.mark.parametrize("rows,vocab", [(47, 123), (2, 50001)])
@pytest.mark.parametrize("with_entropy_grad", [False, True])
def test_recompute_with_known_lse_matches_reference(rows, vocab, with_entropy_grad):
    """The backward path: lse (and entropy) from the forward, the statistics kernel skipped."""
    spec = SPECS["all"]
    z = _logits(rows, vocab, seed=3)
    targets = _targets(rows, vocab, seed=3)
    names = ALL_GRADS if with_entropy_grad else ("loss", "logprob")
    grads = _row_grads(rows, names, seed=3)
    ref = reference_rows(z, targets, spec, grads)
    lse_in = ref[0].float().cuda()
    entropy_in = ref[3].float().cuda() if with_entropy_grad else None
    lse, target_logit, _, _, grad = row_pass(z, targets, spec, grads=RowGrads(**grads), lse=lse_in, entropy=entropy_in)
    assert lse is lse_in
    _close(target_logit, ref[1], "target logit read before the gradient overwrote it")
    _close(grad, ref[4], "dL/dy", terms=ref[5])


@gpu_test
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("keep_fp32", [False, True])
@pytest.mark.parametrize("vocab", [131, 256])
@pytest.mark.parametrize("layout", ["aligned", "unaligned-logits", "unaligned-half"])
def test_gradient_into_half_buffer(half, keep_fp32, vocab, layout):
    """Rounded 16-bit gradient: 8-byte stores when both buffers' rows line up, element stores otherwise."""
    rows = 37
    z = _logits(rows, vocab, seed=5, offset=1, pad=2) if layout == "unaligned-logits" else _logits(rows, vocab, seed=5)
    targets = _targets(rows, vocab, seed=5)
    grads = _row_grads(rows, ALL_GRADS, seed=5)
    before = z.clone()
    ref = reference_rows(z, targets, SPECS["all"], grads)
    start = 1 if layout == "unaligned-half" else 0
    half_storage = torch.full((rows, vocab + 3 * start), float("nan"), dtype=half, device="cuda")
    grad_out = half_storage[:, start:start + vocab]
    *_, grad = row_pass(z, targets, SPECS["all"], grads=RowGrads(**grads), grad_out=grad_out, keep_fp32_grad=keep_fp32)
    assert grad is (z if keep_fp32 else grad_out)
    tolerance = dict(atol=2e-3, rtol=2e-3) if half == torch.float16 else dict(atol=1e-2, rtol=1e-2)
    _close(grad_out, ref[4], f"{half} gradient", **tolerance, terms=ref[5])
    if keep_fp32:
        _close(z, ref[4], "fp32 gradient", terms=ref[5])
    else:
        assert torch.equal(z, before), "keep_fp32_grad=False must leave the fp32 logits alone"
    outside = torch.ones(half_storage.shape[1], dtype=torch.bool)
    outside[start:start + vocab] = False
    assert torch.isnan(half_storage[:, outside.cuda()].float()).all(), "writes outside grad_out"


@gpu_test
def test_known_lse_without_gradient_still_finds_every_target():
    """Statistics skipped, no gradient: the target logit comes from whichever vocabulary slice holds it."""
    z = _logits(2, 40003, seed=9)
    targets = torch.tensor([40000, 3], device="cuda")  # the last slice and the first of split rows
    ref = reference_rows(z, targets, HeadSpec(), None)
    lse, target_logit, *_ = row_pass(z, targets, HeadSpec(), lse=ref[0].float().cuda())
    _close(target_logit, ref[1], "target logit")


@gpu_test
def test_extreme_logits_stay_finite():
    z = torch.tensor([[1e4, -1e4, 9990.0, 0.0, 1e4 - 1.0], [-5e3, -5e3, -5e3, -5e3, -4e3]], device="cuda")
    targets = torch.tensor([2, 4], device="cuda")
    grads = _row_grads(2, ("loss", "logprob", "lse"))
    ref = reference_rows(z, targets, SPECS["smoothing"], grads)
    lse, target_logit, mean, entropy, grad = row_pass(
        z, targets, SPECS["smoothing"], want_entropy=True, want_mean_logit=True, grads=RowGrads(**grads),
    )
    for got in (lse, target_logit, mean, entropy, grad):
        assert torch.isfinite(got).all()
    _close(lse, ref[0], "lse", atol=1e-6)
    _close(grad, ref[4], "dL/dy", terms=ref[5])


@gpu_test
def test_target_outside_vocabulary_gives_nan_not_a_stray_read():
    z = _logits(3, 9)
    targets = torch.tensor([2, -1, 9], device="cuda")
    _, target_logit, *_ = row_pass(z, targets, HeadSpec())
    assert torch.isfinite(target_logit[0]) and torch.isnan(target_logit[1:]).all()


@gpu_test
def test_masked_vocabulary_entries():
    """-inf raw logits (a vocabulary entry masked through the bias) drop out of the statistics."""
    z = _logits(4, 33)
    z[:, 5] = float("-inf")
    targets = torch.tensor([0, 1, 2, 3], device="cuda")
    lse, _, _, entropy, _ = row_pass(z, targets, HeadSpec(), want_entropy=True)
    kept = torch.cat([z[:, :5], z[:, 6:]], 1)
    ref = reference_rows(kept, targets, HeadSpec(), None)
    _close(lse, ref[0], "lse")
    _close(entropy, ref[3], "entropy")


@gpu_test
def test_runs_on_the_current_stream():
    stream = torch.cuda.Stream()
    z = _logits(64, 1000)
    targets = _targets(64, 1000)
    ref = reference_rows(z, targets, HeadSpec(), None)
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        lse, *_ = row_pass(z, targets, HeadSpec())
    stream.synchronize()
    _close(lse, ref[0], "lse on a side stream")


@gpu_test
def test_rejects_bad_companions():
    z = _logits(3, 5)
    with pytest.raises(TypeError, match="targets must be torch.int64"):
        row_pass(z, torch.zeros(3, dtype=torch.int32, device="cuda"), HeadSpec())
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\)"):
        row_pass(z, torch.zeros(4, dtype=torch.int64, device="cuda"), HeadSpec())
    with pytest.raises(ValueError, match="targets must be on cuda"):
        row_pass(z, torch.zeros(3, dtype=torch.int64), HeadSpec())
    with pytest.raises(TypeError, match="grads.loss must be torch.float32"):
        row_pass(z, torch.zeros(3, dtype=torch.int64, device="cuda"), HeadSpec(),
                 grads=RowGrads(loss=torch.ones(3, dtype=torch.float64, device="cuda")))
    with pytest.raises(ValueError, match="grad_out must be a float16 / bfloat16 tensor"):
        row_pass(z, torch.zeros(3, dtype=torch.int64, device="cuda"), HeadSpec(),
                 grads=RowGrads(loss=torch.ones(3, device="cuda")), grad_out=torch.empty(3, 5, device="cuda"))


def _class_weights(vocab, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed + 3)
    weights = torch.rand(vocab, generator=gen, device="cuda") * 1.75 + 0.25
    weights[::7] = 0.0
    return weights


@gpu_test
@pytest.mark.parametrize("rows,vocab", SHAPES)
@pytest.mark.parametrize("known_lse", [False, True])
def test_logit_scale_class_weights_and_argmax(rows, vocab, known_lse):
    """Every new option at once (logit scale, class weights with label smoothing, argmax) with every upstream
    gradient, on split rows too; the recomputing backward given the forward's lse."""
    spec = SPECS["all"]._replace(logit_scale=0.37)
    z = _logits(rows, vocab, seed=11)
    targets = _targets(rows, vocab, seed=11)
    targets[0] = 0  # a target whose class weight is 0
    weights = _class_weights(vocab, seed=11)
    grads = _row_grads(rows, ALL_GRADS, seed=11)
    ref = reference_rows(z, targets, spec, grads, weights)
    raw = z.clone()
    known = dict(lse=ref[0].float().cuda(), entropy=ref[3].float().cuda()) if known_lse else {}
    lse, target_logit, mean, entropy, grad, argmax = row_pass(
        z, targets, spec, want_entropy=True, want_mean_logit=True, grads=RowGrads(**grads), want_argmax=True,
        class_weights=weights, **known,
    )
    for name, got, expected in zip(("lse", "target", "mean", "entropy"), (lse, target_logit, mean, entropy), ref[:4]):
        _close(got, expected, f"{name} {rows}x{vocab}")
    _close(grad, ref[4], f"dL/dy {rows}x{vocab}", terms=ref[5])
    scaled = raw.double() * spec.logit_scale
    final = spec.softcap * torch.tanh(scaled / spec.softcap) * spec.inv_temperature
    assert torch.equal(argmax, final.argmax(1))


@gpu_test
def test_argmax_ties_across_vocabulary_slices():
    """Equal maxima in different slices of a split row (3 rows over 70001 logits: several slices each)."""
    z = _logits(3, 70001, seed=12)
    z[0, [5, 40000]] = 100.0
    z[1, [69999, 70000]] = 100.0
    z[2] = float("-inf")
    targets = torch.zeros(3, dtype=torch.int64, device="cuda")
    *_, argmax = row_pass(z, targets, HeadSpec(), want_argmax=True)
    assert argmax.tolist() == [5, 69999, 0]


@gpu_test
def test_entropy_exact_at_large_logits():
    """Logits 1e4 + O(1): entropy and its gradient to O(1) fp32 rounding (shifted sums, p from max and sum)."""
    z = 1e4 + _logits(8, 5000, scale=2.0, seed=13)
    targets = _targets(8, 5000, seed=13)
    grads = _row_grads(8, ("loss", "entropy"), seed=13)
    ref = reference_rows(z, targets, HeadSpec(), grads)
    *_, entropy, grad = row_pass(z, targets, HeadSpec(), want_entropy=True, grads=RowGrads(**grads))
    _close(entropy, ref[3], "entropy", atol=2e-6, rtol=2e-6)
    _close(grad, ref[4], "dL/dy", terms=ref[5])


@gpu_test
def test_rejects_bad_class_weights():
    z = _logits(3, 5)
    targets = torch.zeros(3, dtype=torch.int64, device="cuda")
    with pytest.raises(ValueError, match=r"class_weights must have shape \(5,\)"):
        row_pass(z, targets, HeadSpec(), class_weights=torch.ones(4, device="cuda"))
    with pytest.raises(TypeError, match="class_weights must be torch.float32"):
        row_pass(z, targets, HeadSpec(), class_weights=torch.ones(5, dtype=torch.float64, device="cuda"))

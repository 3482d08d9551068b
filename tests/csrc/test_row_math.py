"""csrc/xtf_row_math.h on the CPU: the row math the CUDA kernels run, against float64 PyTorch.

The header is plain C++ under a host compiler; tests/csrc/row_math_check.cpp drives it (one command per
line, see that file) and this test compares its fp32 results with independent float64 references:
``torch.logsumexp`` / ``log_softmax`` for the statistics and autograd through ``F.cross_entropy`` for the
gradient, so the formula of xtf_kernels/ops/spec.py is checked, not restated. Runs in the cpu tier; needs
g++ (or $CXX).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
CHECK_SOURCE = Path(__file__).with_name("row_math_check.cpp")
COMPILER = os.environ.get("CXX") or "g++"


@pytest.fixture(scope="module")
def row_math(tmp_path_factory):
    """Runs row_math_check on lines of commands; returns one list of floats per line."""
    if shutil.which(COMPILER) is None:
        pytest.skip(f"no host C++ compiler ({COMPILER}) to build the row-math check")
    binary = tmp_path_factory.mktemp("row_math") / "row_math_check"
    subprocess.run(
        [COMPILER, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'csrc'}", str(CHECK_SOURCE),
         "-o", str(binary)],
        check=True, capture_output=True, text=True,
    )

    def run(lines: list[str]) -> list[list[float]]:
        done = subprocess.run([str(binary)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
        return [[float(x) for x in out.split()] for out in done.stdout.splitlines()]

    return run


def _fmt(values) -> str:
    return " ".join(f"{float(v):.9g}" for v in values)


def _row_command(y, target, softcap, inv_t, eps, z_loss, grads, command="row", logit_scale=1.0,
                 class_weights=None) -> str:
    options = _fmt([softcap, inv_t, logit_scale, eps, z_loss, *grads])
    weights = "0" if class_weights is None else f"1 {_fmt(class_weights.tolist())}"
    return f"{command} {y.numel()} {target} {options} {weights} {_fmt(y.tolist())}"


def _reference_row(y, target, softcap, inv_t, eps, z_loss, grads, logit_scale=1.0, class_weights=None):
    """(lse, entropy, mean logit, target logit, final logits z, dL/dy, term scale) in float64 for L = the weighted sum
    of the four row outputs, the loss being torch's ``F.cross_entropy(weight=class_weights,
    label_smoothing=eps)`` + z-loss; the term scale bounds the magnitudes fp32 adds up in the gradient (its
    error scale). The mean logit is (1 / V) sum_j w_j z_j (w = 1 without class weights)."""
    g_loss, g_logprob, g_entropy, g_lse = grads
    y = y.double().clone().requires_grad_()
    z = y * logit_scale
    z = (softcap * torch.tanh(z / softcap) if softcap else z) * inv_t
    lse = torch.logsumexp(z, 0)
    log_p = torch.log_softmax(z, 0)
    entropy = -(log_p.exp() * log_p).sum()
    t = torch.tensor([target])
    weight = None if class_weights is None else class_weights.double()
    loss = F.cross_entropy(z[None], t, weight=weight, label_smoothing=eps, reduction="none")[0] + z_loss * lse**2
    total = g_loss * loss + g_logprob * log_p[target] + g_entropy * entropy + g_lse * lse
    (grad,) = torch.autograd.grad(total, y)
    # The largest term fp32 adds up in dz = p (A + D z) + B [j == t] + C w: the absolute error to expect.
    largest_w = 1.0 if weight is None else weight.abs().max().item()
    terms = (abs(g_loss) * largest_w * (1 + 2 * z_loss * abs(lse.item())) + abs(g_logprob) + abs(g_lse)
             + abs(g_entropy) * (1 + abs(entropy.item())))
    mean = (z if weight is None else z * weight).mean().item()
    return lse.item(), entropy.item(), mean, z[target].item(), z.detach(), grad, terms


def _check_row(out, ref, what):
    lse, entropy, mean, target_logit, z, grad, terms = ref
    scale = max(1.0, abs(lse))
    assert out[0] == pytest.approx(lse, abs=2e-6 * scale), f"{what}: lse"
    assert out[1] == pytest.approx(entropy, abs=2e-5 * max(1.0, abs(entropy))), f"{what}: entropy"
    assert out[2] == pytest.approx(mean, abs=2e-6 * scale), f"{what}: mean logit"
    assert out[3] == pytest.approx(target_logit, abs=2e-6 * scale), f"{what}: target logit"
    # argmax over the float64 final logits z: a maximal logit up to fp32 rounding (softcap saturates distinct
    # logits to one fp32 value), and float64's own argmax wherever fp32 separates it from the runner-up.
    index, top = int(out[4]), z.max().item()
    rounding = 4e-7 * abs(top) + 1e-30
    assert z[index] >= top - rounding, f"{what}: argmax"
    if z.numel() > 1 and top - z.topk(2).values[1].item() > 2 * rounding:
        assert index == z.argmax().item(), f"{what}: argmax"
    got = torch.tensor(out[5:], dtype=torch.float64)
    tol = 2e-5 * max(grad.abs().max().item(), 1e-3) + 1e-6 * terms  # 1e-6 terms: ~16 fp32 roundings
    torch.testing.assert_close(got, grad, atol=tol, rtol=2e-4, msg=lambda m: f"{what}: gradient\n{m}")


@pytest.mark.parametrize("vocab", [1, 7, 123])
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(softcap=30.0),
        dict(inv_t=1 / 0.7),
        dict(eps=0.1),
        dict(z_loss=1e-2),
        dict(grads=(0.0, 1.0, 0.0, 0.0)),  # d logprob
        dict(grads=(0.0, 0.0, 1.0, 0.0)),  # d entropy
        dict(grads=(0.0, 0.0, 0.0, 1.0)),  # d lse
        dict(softcap=5.0, inv_t=1 / 1.3, eps=0.2, z_loss=3e-3, grads=(0.7, -0.4, 0.9, 0.25)),  # every option on
    ],
    ids=["plain", "softcap", "temperature", "smoothing", "z_loss", "g_logprob", "g_entropy", "g_lse", "all"],
)
@pytest.mark.parametrize("command", ["row", "row_known_lse"])
def test_row_matches_float64(row_math, vocab, options, command):
    gen = torch.Generator().manual_seed(vocab)
    y = (torch.randn(vocab, generator=gen) * 3).float()
    target = vocab // 2
    args = dict(softcap=0.0, inv_t=1.0, eps=0.0, z_loss=0.0, grads=(1.0, 0.0, 0.0, 0.0)) | options
    (out,) = row_math([_row_command(y, target, **args, command=command)])
    _check_row(out, _reference_row(y, target, **args), f"{command} V={vocab} {options}")


def test_extreme_logits_stay_finite_and_exact(row_math):
    """|logit| ~ 1e4: the running max keeps exp() in range; lse and the gradient match float64 (p from z - max:
    an fp32 lse near 1e4 is only good to ~1e-3, which p = exp(z - lse) would carry into every probability)."""
    y = torch.tensor([1e4, -1e4, 9990.0, 0.0, 1e4 - 1.0, -5e3], dtype=torch.float32)
    args = dict(softcap=0.0, inv_t=1.0, eps=0.1, z_loss=1e-4, grads=(1.0, 0.0, 0.0, 0.0))
    (out,) = row_math([_row_command(y, 2, **args)])
    assert all(math.isfinite(v) for v in out)
    _check_row(out, _reference_row(y, 2, **args), "extreme")


def test_entropy_and_its_gradient_exact_at_large_logits(row_math):
    """Logits 1e4 + O(1): the entropy (shifted sums) and its gradient (the entropy term relative to the row
    maximum, p from max and sum) to fp32 rounding of O(1) values, where lse - z_j with an fp32 lse ~ 1e4 would
    leave ~1e-3 in every element."""
    gen = torch.Generator().manual_seed(6)
    y = (1e4 + torch.randn(40, generator=gen) * 2).float()
    args = dict(softcap=0.0, inv_t=1.0, eps=0.0, z_loss=0.0, grads=(0.0, 0.3, 1.0, 0.0))
    (out,) = row_math([_row_command(y, 7, **args)])
    lse, entropy, *_, grad, _ = _reference_row(y, 7, **args)
    assert entropy > 1
    assert out[1] == pytest.approx(entropy, abs=2e-6)
    torch.testing.assert_close(torch.tensor(out[5:], dtype=torch.float64), grad, atol=2e-6 * grad.abs().max().item(),
                               rtol=1e-4)


def test_stats_merge_order_and_masked_entries(row_math):
    """Pushing one by one and merging slices agree; -inf entries drop out; NaN propagates."""
    rows = [
        [2.0, -1.0, 0.5, 3.0, 3.0, -7.0, 1.0],
        [float("-inf"), 1.0, 2.0, float("-inf")],
        [5.0],
        [-80.0, 80.0, 0.0, 79.5],  # exp(-160) underflows in fp32: contributes 0, not NaN
    ]
    outs = row_math([f"stats {len(r)} {_fmt(r)}" for r in rows])
    for values, out in zip(rows, outs):
        z = torch.tensor(values, dtype=torch.float64)
        lse = torch.logsumexp(z, 0).item()
        log_p = torch.log_softmax(z, 0)
        p = log_p.exp()
        entropy = -(torch.where(p > 0, p * log_p, torch.zeros_like(p))).sum().item()
        for pushed_or_merged in (0, 2):
            assert out[pushed_or_merged] == pytest.approx(lse, abs=2e-6 * max(1.0, abs(lse))), values
            assert out[pushed_or_merged + 1] == pytest.approx(entropy, abs=2e-5), values
    (nan_out,) = row_math(["stats 3 1 nan 2"])
    assert all(math.isnan(v) for v in nan_out)


def test_transform_and_its_derivative(row_math):
    """z and dz/dy within a few fp32 ulp of float64, with logit scale, at tiny and saturating softcap arguments
    (1 - tanh^2 from 4 e / (1 + e)^2: exact where 1 - t * t would keep no digit)."""
    cases = [(3.0, 0.0, 1.0, 1.0), (-2.5, 0.0, 1 / 0.7, 1.0), (30.0, 10.0, 1.0, 1.0), (-4.0, 5.0, 0.5, 1.0),
             (1e4, 30.0, 1.0, 1.0), (1e-3, 30.0, 1.0, 1.0), (2.0, 0.0, 1 / 0.7, 0.0625), (7.0, 2.0, 1.0, 3.0),
             (-150.0, 30.0, 1 / 0.9, 1.5)]
    outs = row_math([f"transform {_fmt(c)}" for c in cases])
    for (y, softcap, inv_t, logit_scale), (z, dz, z_final) in zip(cases, outs):
        yt = torch.tensor(y, dtype=torch.float64, requires_grad=True)
        scaled = yt * logit_scale
        ref = (softcap * torch.tanh(scaled / softcap) if softcap else scaled) * inv_t
        (ref_dz,) = torch.autograd.grad(ref, yt)
        assert z == pytest.approx(ref.item(), rel=5e-7, abs=1e-30), (y, softcap, inv_t, logit_scale)
        assert z_final == z
        assert dz == pytest.approx(ref_dz.item(), rel=2e-6, abs=1e-30), (y, softcap, inv_t, logit_scale)


def test_coefficients_follow_the_spec(row_math):
    """A, B, C, D against the op contract's formula (class weights, entropy term relative to the shift)
    evaluated in float64."""
    g_loss, g_logprob, g_entropy, g_lse, lse, entropy, eps, c, vocab = 0.8, -0.3, 0.6, 0.2, 4.5, 2.25, 0.1, 0.01, 50
    for log_norm, w_t, w_mean in ((0.0, 1.0, 1.0), (1.75, 1.0, 1.0), (0.0, 0.4, 1.3), (2.5, 0.0, 0.7)):
        values = [g_loss, g_logprob, g_entropy, g_lse, lse, log_norm, entropy, eps, c, w_t, w_mean]
        (out,) = row_math([f"coef {_fmt(values)} {vocab}"])
        a = (g_lse + g_loss * ((1 - eps) * w_t + eps * w_mean + 2 * c * lse) - g_logprob
             + g_entropy * (log_norm - entropy))
        expected = [a, g_logprob - g_loss * (1 - eps) * w_t, -g_loss * eps / vocab, -g_entropy]
        assert out == pytest.approx(expected, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("command", ["row", "row_known_lse"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_class_weights_match_torch(row_math, command, eps):
    """Per-class weights (some 0, the target's among them in one row): torch's weighted, label-smoothed
    cross-entropy, with logit scale, softcap and every upstream gradient."""
    gen = torch.Generator().manual_seed(5)
    lines, refs = [], []
    for target in (0, 3, 40):
        y = (torch.randn(61, generator=gen) * 3).float()
        weights = (torch.rand(61, generator=gen) * 2).float()
        weights[::6] = 0.0  # includes target 0
        args = dict(softcap=15.0, inv_t=1 / 0.8, eps=eps, z_loss=1e-3, grads=(0.7, -0.4, 0.9, 0.25),
                    logit_scale=0.5, class_weights=weights)
        lines.append(_row_command(y, target, **args, command=command))
        refs.append(_reference_row(y, target, **args))
    for out, ref, target in zip(row_math(lines), refs, (0, 3, 40)):
        _check_row(out, ref, f"{command} eps={eps} target={target}")


def test_argmax_first_maximum(row_math):
    """torch.argmax's tie rule whatever the push and merge order; a row of -inf gives 0."""
    rows = [[1.0, 3.0, 3.0, 2.0], [5.0, 1.0, 1.0, 5.0, 5.0], [-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0],
            [float("-inf")] * 5, [float("-inf"), 2.0, 7.0, 7.0, 7.0, 1.0, 7.0]]
    outs = row_math([f"argmax {len(r)} {_fmt(r)}" for r in rows])
    for values, (pushed, merged) in zip(rows, outs):
        expected = torch.tensor(values, dtype=torch.float64).argmax().item()
        assert pushed == merged == expected, values


@settings(max_examples=40, deadline=None)
@given(
    vocab=st.integers(1, 300),
    scale=st.sampled_from([1e-3, 1.0, 20.0, 300.0]),
    softcap=st.sampled_from([0.0, 15.0]),
    inv_t=st.sampled_from([1.0, 0.5, 1.7]),
    eps=st.sampled_from([0.0, 0.05]),
    z_loss=st.sampled_from([0.0, 1e-3]),
    grads=st.tuples(*(st.floats(-2, 2, allow_nan=False, width=32) for _ in range(4))),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_rows_match_float64(row_math, vocab, scale, softcap, inv_t, eps, z_loss, grads, seed):
    gen = torch.Generator().manual_seed(seed)
    y = (torch.randn(vocab, generator=gen) * scale).float()
    target = int(torch.randint(vocab, (1,), generator=gen))
    args = dict(softcap=softcap, inv_t=inv_t, eps=eps, z_loss=z_loss, grads=grads)
    (out,) = row_math([_row_command(y, target, **args)])
    _check_row(out, _reference_row(y, target, **args), f"V={vocab} scale={scale} {args}")

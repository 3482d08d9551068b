"""Bad input gets a ValueError / TypeError naming the argument, never a crash, NaN or silent answer."""

from __future__ import annotations

import pytest
import torch

import xtf_kernels as xk


def _good():
    return dict(
        hidden=torch.randn(4, 5, 8), weight=torch.randn(11, 8), targets=torch.randint(0, 11, (4, 5)),
    )


CASES = [
    ("H mismatch", dict(weight=torch.randn(11, 7)), ValueError, "H=8"),
    ("weight 1-D", dict(weight=torch.randn(11)), ValueError, "weight must be 2-D"),
    ("integer hidden", dict(hidden=torch.ones(4, 5, 8, dtype=torch.int64)), TypeError, "hidden must be float32"),
    ("complex hidden", dict(hidden=torch.randn(4, 5, 8, dtype=torch.complex64)), TypeError,
     "hidden must be float32"),
    ("dtype mismatch", dict(weight=torch.randn(11, 8, dtype=torch.bfloat16)), TypeError, "same dtype"),
    ("float targets", dict(targets=torch.zeros(4, 5)), TypeError, "targets must be an integer"),
    ("bool targets", dict(targets=torch.zeros(4, 5, dtype=torch.bool)), TypeError, "targets must be an integer"),
    ("targets shape", dict(targets=torch.zeros(4, 6, dtype=torch.long)), ValueError, "targets shape (4, 6)"),
    ("target too large", dict(targets=torch.full((4, 5), 11)), ValueError, "outside [0, 11)"),
    ("negative target", dict(targets=torch.full((4, 5), -3)), ValueError, "first: -3"),
    ("bias shape", dict(bias=torch.randn(10)), ValueError, "bias must be (V,)"),
    ("weights shape", dict(token_weights=torch.ones(4)), ValueError, "token_weights shape"),
    ("negative weights", dict(token_weights=-torch.ones(4, 5)), ValueError, "token_weights must be finite and >= 0"),
    ("nan weights", dict(token_weights=torch.full((4, 5), float("nan"))), ValueError, "token_weights must be finite"),
    ("int weights", dict(token_weights=torch.ones(4, 5, dtype=torch.long)), TypeError, "token_weights must be a float"),
    ("reduction", dict(reduction="avg"), ValueError, "reduction must be one of"),
    ("backend", dict(backend="tpu"), ValueError, "backend must be one of"),
    ("softcap", dict(softcap=0.0), ValueError, "softcap must be > 0"),
    ("label_smoothing", dict(label_smoothing=1.5), ValueError, "label_smoothing must be <= 1"),
    ("z_loss", dict(z_loss=-1.0), ValueError, "z_loss must be >= 0"),
    ("chunk_size", dict(chunk_size=0), ValueError, "chunk_size must be a positive"),
    ("chunk_size type", dict(chunk_size=2.5), TypeError, "chunk_size must be an int"),
    ("ignore_index type", dict(ignore_index=1.0), TypeError, "ignore_index must be an int"),
    ("num_items shape", dict(num_items_in_batch=torch.ones(3)), ValueError, "num_items_in_batch must hold one"),
    ("num_items negative", dict(num_items_in_batch=-2), ValueError, "num_items_in_batch must be >= 0"),
    ("hidden not a tensor", dict(hidden=[[1.0]]), TypeError, "hidden must be a torch.Tensor"),
    ("class_weights shape", dict(class_weights=torch.ones(10)), ValueError, "class_weights must be (V,) = (11,)"),
    ("class_weights 2-D", dict(class_weights=torch.ones(11, 1)), ValueError, "class_weights must be (V,)"),
    ("class_weights int", dict(class_weights=torch.ones(11, dtype=torch.long)), TypeError,
     "class_weights must be a floating-point"),
    ("class_weights negative", dict(class_weights=torch.ones(11).index_fill(0, torch.tensor([4]), -0.5)),
     ValueError, "class_weights must be finite and >= 0; found 1 bad value(s) (first: -0.5 at class 4)"),
    ("class_weights inf", dict(class_weights=torch.full((11,), float("inf"))), ValueError,
     "class_weights must be finite"),
    ("class_weights list", dict(class_weights=[1.0] * 11), TypeError, "class_weights must be a torch.Tensor"),
    ("logit_scale zero", dict(logit_scale=0.0), ValueError, "logit_scale must be > 0"),
    ("logit_scale negative", dict(logit_scale=-2.0), ValueError, "logit_scale must be > 0"),
    ("logit_scale inf", dict(logit_scale=float("inf")), TypeError, "logit_scale must be a finite number"),
    ("logit_scale nan", dict(logit_scale=float("nan")), TypeError, "logit_scale must be a finite number"),
    ("shift length 1", dict(hidden=torch.randn(4, 1, 8), targets=torch.randint(0, 11, (4, 1)), shift=True),
     ValueError, "shift=True needs targets (..., T) with a sequence length T >= 2"),
    ("shift scalar target", dict(hidden=torch.randn(8), targets=torch.tensor(3), shift=True), ValueError,
     "shift=True needs"),
    ("shift not an int", dict(shift=1.5), TypeError, "shift must be a bool or a non-negative int, got 1.5"),
    ("shift negative", dict(shift=-1), ValueError, "shift must be a bool or a non-negative int, got -1"),
    ("shift as long as the sequence", dict(hidden=torch.randn(4, 3, 8), targets=torch.randint(0, 11, (4, 3)),
                                           shift=3), ValueError,
     "shift=3 needs targets (..., T) with a sequence length T >= 4 (position i predicts i + 3)"),
]


@pytest.mark.parametrize("name,change,error,fragment", CASES, ids=[c[0] for c in CASES])
def test_linear_cross_entropy_rejects(name, change, error, fragment):
    kwargs = {**_good(), **change}
    hidden, weight, targets = kwargs.pop("hidden"), kwargs.pop("weight"), kwargs.pop("targets")
    with pytest.raises(error) as info:
        xk.linear_cross_entropy(hidden, weight, targets, **kwargs)
    assert fragment in str(info.value)


def test_ignore_index_targets_are_not_range_checked():
    good = _good()
    targets = good["targets"].clone()
    targets[0, 0] = -100
    loss = xk.linear_cross_entropy(good["hidden"], good["weight"], targets)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("change,error,fragment", [
    (dict(temperature=0.0), ValueError, "temperature must be > 0"),
    (dict(targets=torch.full((4, 5), 99)), ValueError, "outside [0, 11)"),
    (dict(softcap=-1.0), ValueError, "softcap must be > 0"),
    (dict(logit_scale=0.0), ValueError, "logit_scale must be > 0"),
    (dict(logit_scale=float("inf")), TypeError, "logit_scale must be a finite number"),
    (dict(hidden=torch.randn(4, 1, 8), targets=torch.randint(0, 11, (4, 1)), shift=True), ValueError,
     "sequence length T >= 2"),
])
def test_token_logprobs_rejects(change, error, fragment):
    kwargs = {**_good(), **change}
    hidden, weight, targets = kwargs.pop("hidden"), kwargs.pop("weight"), kwargs.pop("targets")
    with pytest.raises(error, match=None) as info:
        xk.token_logprobs(hidden, weight, targets, **kwargs)
    assert fragment in str(info.value)


def test_influence_delta_rejects():
    good = _good()
    other = torch.randn(12, 3)
    with pytest.raises(ValueError, match="V must match"):
        xk.influence_delta((good["hidden"], good["weight"]), (torch.randn(4, 5, 3), other), good["targets"])
    with pytest.raises(TypeError, match="base must be a"):
        xk.influence_delta(good["hidden"], (good["hidden"], good["weight"]), good["targets"])
    with pytest.raises(ValueError, match="leading shape"):
        xk.influence_delta((good["hidden"], good["weight"]), (torch.randn(4, 6, 8), good["weight"]), good["targets"])
    with pytest.raises(ValueError, match="ref hidden has H=3"):
        xk.influence_delta((good["hidden"], good["weight"]), (torch.randn(4, 5, 3), good["weight"]), good["targets"])


def test_module_rejects_bad_options():
    with pytest.raises(ValueError, match="reduction"):
        xk.LinearCrossEntropyLoss(reduction="max")
    with pytest.raises(ValueError, match="backend"):
        xk.LinearCrossEntropyLoss(backend="nope")
    with pytest.raises(ValueError, match="logit_scale must be > 0"):
        xk.LinearCrossEntropyLoss(logit_scale=0.0)
    with pytest.raises(TypeError, match="class_weights must be a floating-point"):
        xk.LinearCrossEntropyLoss(class_weights=torch.ones(5, dtype=torch.long))
    with pytest.raises(TypeError, match="shift must be a bool or a non-negative int"):
        xk.LinearCrossEntropyLoss(shift="yes")
    with pytest.raises(ValueError, match="shift must be a bool or a non-negative int, got -2"):
        xk.LinearCrossEntropyLoss(shift=-2)
    assert "shift=2" in repr(xk.LinearCrossEntropyLoss(shift=2))


def test_float64_is_accepted():
    """float64 inputs run (torch backend) and give float64 results (routing: tests/ops/test_registry.py)."""
    good = _good()
    hidden, weight = good["hidden"].double(), good["weight"].double()
    loss = xk.linear_cross_entropy(hidden, weight, good["targets"])
    assert loss.dtype == torch.float64

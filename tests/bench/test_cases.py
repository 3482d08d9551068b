import pytest
import torch

from xtf_kernels.bench.cases import Case
from xtf_kernels.bench.cases import dtype_name


@pytest.mark.parametrize(("mode", "factor"), [("fwd_bwd", 6), ("frozen", 4), ("fwd", 2)])
def test_flop_floor_counts_kept_tokens(mode, factor):
    case = Case(tokens=1000, hidden=31, vocab=123, mode=mode, keep=0.4)
    assert case.kept_tokens == 400
    assert case.flops == factor * 400 * 31 * 123


def test_kept_tokens_round_and_never_reach_zero():
    assert Case(tokens=7, hidden=2, vocab=3, keep=0.5).kept_tokens == 4  # round(3.5) == 4 (halves go to even)
    assert Case(tokens=3, hidden=2, vocab=3, keep=0.01).kept_tokens == 1


def test_for_model_takes_the_heads_shape_and_softcap():
    case = Case.for_model("gemma2-2b", 8192, dtype="bf16")
    assert (case.hidden, case.vocab, case.softcap, case.dtype, case.model) == (2304, 256000, 30.0, "bfloat16",
                                                                               "gemma2-2b")
    assert Case.for_model("gemma2-2b", 8, softcap=None).softcap is None
    assert case.torch_dtype is torch.bfloat16


def test_round_trip_and_label():
    case = Case(tokens=47, hidden=31, vocab=123, mode="frozen", dtype="fp16", keep=0.6, softcap=20.0)
    assert Case.from_dict(case.to_dict()) == case
    assert case.label == "custom 47x31x123 float16 frozen keep 60% softcap 20"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(tokens=0), "tokens"),
        (dict(hidden=2.5), "hidden"),
        (dict(vocab=True), "vocab"),
        (dict(mode="train"), "mode"),
        (dict(dtype="int8"), "dtype"),
        (dict(keep=0.0), "keep"),
        (dict(keep=1.5), "keep"),
        (dict(softcap=-1.0), "softcap"),
        (dict(softcap=float("nan")), "softcap"),
    ],
)
def test_bad_cases_name_the_argument(options, match):
    fields = dict(tokens=4, hidden=3, vocab=5)
    fields.update(options)
    with pytest.raises(ValueError, match=match):
        Case(**fields)


def test_dtype_aliases():
    assert [dtype_name(n) for n in ("fp32", "bf16", "fp16", "float32")] == ["float32", "bfloat16", "float16",
                                                                            "float32"]

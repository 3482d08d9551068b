"""xtf_kernels.select against references written here from the definitions (Python sorting, torch.quantile,
scikit-image's threshold_multiotsu, np.digitize)."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from skimage.filters import threshold_multiotsu

from xtf_kernels import select
from xtf_kernels.select import StreamingTopK
from xtf_kernels.select import intersection
from xtf_kernels.select import keep_count
from xtf_kernels.select import multi_otsu
from xtf_kernels.select import otsu_class
from xtf_kernels.select import probability_mask
from xtf_kernels.select import quantile_fence
from xtf_kernels.select import streaming_threshold
from xtf_kernels.select import topk_mask
from xtf_kernels.select import union

HAS_CUDA = torch.cuda.is_available()
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------------------


def reference_count(k: float, n: int) -> int:
    """floor(k * n) with k read as the decimal it prints as."""
    return int(Decimal(repr(k)) * n)


def reference_topk(scores, k, valid=None, groups=None, largest=True):
    """Per group, sort (score, flat index) and keep the first floor(k * n): a plain Python loop."""
    flat = scores.reshape(-1).double().tolist()
    ok = [True] * len(flat) if valid is None else valid.reshape(-1).tolist()
    group_of = [0] * len(flat) if groups is None else groups
    members: dict[int, list[int]] = {}
    for i, (g, keep) in enumerate(zip(group_of, ok)):
        if keep:
            members.setdefault(g, []).append(i)
    mask = [False] * len(flat)
    for idx in members.values():
        sign = -1.0 if largest else 1.0
        idx.sort(key=lambda i: (sign * flat[i], i))
        for i in idx[: reference_count(k, len(idx))]:
            mask[i] = True
    return torch.tensor(mask, dtype=torch.bool).reshape(scores.shape)


def tied_scores(shape, seed, levels=4, dtype=torch.float32):
    """Scores with many exact ties (a few integer levels), signed zeros and infinities mixed in."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-levels, levels + 1, shape, generator=gen).to(dtype)
    specials = torch.tensor([-0.0, 0.0, math.inf, -math.inf], dtype=dtype)
    pick = torch.rand(shape, generator=gen) < 0.1
    x[pick] = specials[torch.randint(0, 4, (int(pick.sum()),), generator=gen)]
    return x


# --------------------------------------------------------------------------------------------------------
# keep_count / topk_mask
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,n,expected", [(0.29, 100, 29), (0.6, 10, 6), (0.7, 10, 7), (1.0, 13, 13),
                                          (0.0, 13, 0), (0.5, 0, 0), (0.6, 47, 28), (1 / 3, 3, 0)])
def test_keep_count(k, n, expected):
    # 1/3 prints as 0.3333333333333333, so 3 of it floor to 0, as the decimal reading says.
    assert keep_count(k, n) == expected == reference_count(k, n)


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("k", [0.0, 0.37, 0.6, 1.0])
def test_topk_global_matches_reference(k, dtype, largest):
    scores = tied_scores((5, 47), seed=1, dtype=dtype)
    valid = torch.rand(5, 47) > 0.25
    mask = topk_mask(scores, k, valid=valid, largest=largest)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert torch.equal(mask, reference_topk(scores, k, valid, largest=largest))
    assert int(mask.sum()) == reference_count(k, int(valid.sum()))


def test_topk_sample_rows_and_sample_ids():
    scores = tied_scores((6, 31), seed=2)
    valid = torch.rand(6, 31) > 0.3
    rows = [i // 31 for i in range(6 * 31)]
    assert torch.equal(topk_mask(scores, 0.45, valid=valid, scope="sample"),
                       reference_topk(scores, 0.45, valid, rows))
    # packed sequences: sample ids need not be sorted or contiguous
    ids = torch.randint(0, 5, (6, 31)) * 7 - 3
    mask = topk_mask(scores, 0.45, valid=valid, scope="sample", sample_ids=ids)
    assert torch.equal(mask, reference_topk(scores, 0.45, valid, ids.reshape(-1).tolist()))


def test_topk_batch_scope_groups_leading_index():
    scores = tied_scores((3, 4, 11), seed=3)
    valid = torch.rand(3, 4, 11) > 0.2
    batches = [i // 44 for i in range(3 * 44)]
    mask = topk_mask(scores, 0.3, valid=valid, scope="batch", largest=False)
    assert torch.equal(mask, reference_topk(scores, 0.3, valid, batches, largest=False))
    for b in range(3):
        assert int(mask[b].sum()) == reference_count(0.3, int(valid[b].sum()))


def test_topk_ties_prefer_lower_flat_index():
    scores = torch.tensor([[1.0, 2.0, 2.0], [2.0, -0.0, 0.0]])
    assert topk_mask(scores, 0.5).tolist() == [[False, True, True], [True, False, False]]
    # -0.0 and 0.0 tie: the earlier one wins
    assert topk_mask(scores, 0.5, largest=False).tolist() == [[True, False, False], [False, True, True]]


def test_topk_empty_and_all_invalid():
    assert topk_mask(torch.empty(0, 5), 0.5).shape == (0, 5)
    scores = torch.randn(3, 4)
    assert not topk_mask(scores, 1.0, valid=torch.zeros(3, 4, dtype=torch.bool)).any()


@FAST
@given(
    rows=st.integers(1, 6), cols=st.integers(1, 9), levels=st.integers(0, 5), k=st.floats(0.0, 1.0),
    scope=st.sampled_from(["global", "sample", "batch"]), largest=st.booleans(), seed=st.integers(0, 10_000),
)
def test_topk_properties(rows, cols, levels, k, scope, largest, seed):
    scores = tied_scores((rows, cols), seed, levels)
    valid = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed)) > 0.3
    mask = topk_mask(scores, k, valid=valid, scope=scope, largest=largest)
    groups = None if scope == "global" else [i // cols for i in range(rows * cols)]
    assert torch.equal(mask, reference_topk(scores, k, valid, groups, largest))
    assert not (mask & ~valid).any()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda s: topk_mask(s, 1.5), "k must be in"),
        (lambda s: topk_mask(s, -0.1), "k must be in"),
        (lambda s: topk_mask(s, 0.5, valid=torch.ones(3, dtype=torch.bool)), "valid shape"),
        (lambda s: topk_mask(s, 0.5, scope="row"), "scope must be one of"),
        (lambda s: topk_mask(s, 0.5, sample_ids=torch.zeros(2, 5, dtype=torch.long)), "only used with"),
        (lambda s: topk_mask(s, 0.5, scope="sample", sample_ids=torch.zeros(5, dtype=torch.long)),
         "sample_ids shape"),
        (lambda s: topk_mask(s[0], 0.5, scope="sample"), "scope='sample' needs"),
        (lambda s: topk_mask(s[0], 0.5, scope="batch"), "scope='batch' needs"),
        (lambda s: topk_mask(torch.tensor([1.0, math.nan]), 0.5), "NaN"),
    ],
)
def test_topk_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(2, 5))


def test_topk_type_errors():
    with pytest.raises(TypeError, match="scores must be a floating-point"):
        topk_mask(torch.ones(3, dtype=torch.long), 0.5)
    with pytest.raises(TypeError, match="valid must be a bool"):
        topk_mask(torch.ones(3), 0.5, valid=torch.ones(3))
    with pytest.raises(TypeError, match="k must be a finite number"):
        topk_mask(torch.ones(3), True)


# --------------------------------------------------------------------------------------------------------
# streaming top k
# --------------------------------------------------------------------------------------------------------


def stream_masks(chunks, k, **kwargs):
    threshold = streaming_threshold(chunks, k, **kwargs)
    masker = threshold.masker()
    return threshold, [masker(*chunk) if isinstance(chunk, tuple) else masker(chunk) for chunk in chunks]


@FAST
@given(
    sizes=st.lists(st.integers(0, 13), min_size=1, max_size=6), levels=st.integers(0, 6), k=st.floats(0.0, 1.0),
    largest=st.booleans(), bits=st.sampled_from([1, 3, 7, 16]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]), seed=st.integers(0, 10_000),
)
def test_streaming_equals_in_memory(sizes, levels, k, largest, bits, dtype, seed):
    scores = tied_scores((sum(sizes),), seed, levels, dtype)
    valid = torch.rand(sum(sizes), generator=torch.Generator().manual_seed(seed + 1)) > 0.2
    chunks = list(zip(scores.split(sizes), valid.split(sizes)))
    threshold, masks = stream_masks(chunks, k, largest=largest, bits_per_pass=bits)
    expected = topk_mask(scores, k, valid=valid, largest=largest)
    assert torch.equal(torch.cat(masks), expected)
    assert threshold.keep == int(expected.sum()) == reference_count(k, int(valid.sum()))
    assert threshold.total == int(valid.sum())


def test_streaming_continuous_values_and_threshold_fields():
    scores = torch.randn(1000, dtype=torch.float64)
    chunks = list(scores.split(77))
    threshold = streaming_threshold(chunks, 0.25)
    assert threshold.value == scores.sort(descending=True).values[249].item()
    assert (threshold.ties, threshold.keep, threshold.total, threshold.largest) == (1, 250, 1000, True)
    masks = list(StreamingTopK(0.25).masks(lambda: iter(chunks)))
    assert torch.equal(torch.cat(masks), topk_mask(scores, 0.25))


def test_streaming_multidim_chunks_and_passes():
    scores = tied_scores((4, 3, 5), seed=5)
    chunks = list(scores)  # (3, 5) chunks in arrival order
    calls = []

    def source():
        calls.append(1)
        return iter(chunks)

    masker = streaming_threshold(source, 0.5, bits_per_pass=8).masker()
    assert len(calls) == 4  # 32-bit keys, 8 bits per pass
    assert torch.equal(torch.stack([masker(chunk) for chunk in chunks]), topk_mask(scores, 0.5))


def test_streaming_keep_nothing_or_everything():
    chunks = [torch.tensor([1.0, 2.0]), torch.tensor([2.0])]
    threshold, masks = stream_masks(chunks, 0.0)
    assert threshold.keep == 0 and math.isnan(threshold.value) and not any(m.any() for m in masks)
    threshold, masks = stream_masks(chunks, 1.0)
    assert threshold.keep == 3 and all(m.all() for m in masks)
    assert streaming_threshold([], 0.5).total == 0


def test_streaming_bad_inputs():
    with pytest.raises(TypeError, match="one-shot iterator"):
        streaming_threshold((torch.ones(3) for _ in range(2)), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        streaming_threshold([torch.tensor([1.0, math.nan])], 0.5)
    with pytest.raises(TypeError, match="every chunk must be float64"):
        streaming_threshold([torch.ones(2), torch.ones(2, dtype=torch.float64)], 0.5)
    with pytest.raises(ValueError, match="chunk 0 valid shape"):
        streaming_threshold([(torch.ones(2), torch.ones(3, dtype=torch.bool))], 0.5)
    with pytest.raises(ValueError, match="k must be in"):
        StreamingTopK(2.0)
    with pytest.raises(ValueError, match="bits_per_pass must be <="):
        StreamingTopK(0.5, bits_per_pass=40)
    sizes = iter([3, 4])
    with pytest.raises(ValueError, match="chunks changed between passes"):
        streaming_threshold(lambda: [torch.arange(float(next(sizes)))], 0.5)


# --------------------------------------------------------------------------------------------------------
# quantile fence, probability threshold
# --------------------------------------------------------------------------------------------------------


def reference_fence(scores, valid, c):
    noisy = torch.zeros_like(valid)
    for row in range(scores.shape[0]):
        values = scores[row][valid[row]].double()
        if values.numel():
            q1, q3 = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=torch.float64))
            noisy[row] = valid[row] & (scores[row].double() < q1 - c * (q3 - q1))
    return noisy


@pytest.mark.parametrize("c", [0.0, 0.5, 1.0, 1.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_quantile_fence_matches_torch_quantile(c, dtype):
    gen = torch.Generator().manual_seed(7)
    # row 3 has a single valid entry, row 4 none
    scores = torch.randn(6, 37, generator=gen)
    scores[torch.rand(6, 37, generator=gen) < 0.1] -= 6.0  # outliers below every fence tested
    scores = scores.to(dtype)
    valid = torch.rand(6, 37, generator=gen) > 0.3
    valid[3] = False
    valid[3, 5] = True
    valid[4] = False
    noisy = quantile_fence(scores, valid, c)
    expected = reference_fence(scores, valid, c)
    assert torch.equal(noisy, expected)
    assert noisy.any() and not noisy[3:5].any()


def test_quantile_fence_default_valid_and_leading_dims():
    scores = torch.randn(2, 3, 19)
    flat = scores.reshape(6, 19)
    all_valid = torch.ones(6, 19, dtype=torch.bool)
    assert torch.equal(quantile_fence(scores).reshape(6, 19), reference_fence(flat, all_valid, 1.0))


def test_quantile_fence_bad_inputs():
    with pytest.raises(ValueError, match="c must be"):
        quantile_fence(torch.randn(2, 3), None, -1.0)
    with pytest.raises(ValueError, match="non-finite"):
        quantile_fence(torch.tensor([[1.0, math.inf]]))
    with pytest.raises(ValueError, match="empty"):
        quantile_fence(torch.empty(2, 0))
    with pytest.raises(ValueError, match="valid shape"):
        quantile_fence(torch.randn(2, 3), torch.ones(3, 2, dtype=torch.bool))


def test_probability_mask():
    probs = torch.tensor([[0.1, 0.95, 0.951, 1.0], [0.99, 0.5, math.nan, 2.0]])
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    assert probability_mask(probs, valid=valid).tolist() == [[False, False, True, True], [True, False, False, False]]
    assert probability_mask(probs[:1], 0.0).tolist() == [[True, True, True, True]]
    with pytest.raises(ValueError, match="outside"):
        probability_mask(probs)
    with pytest.raises(ValueError, match="max_prob must be in"):
        probability_mask(probs[:1], 1.2)


# --------------------------------------------------------------------------------------------------------
# Multi-Otsu
# --------------------------------------------------------------------------------------------------------


def mixture(seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    parts = [torch.randn(400, generator=gen) * 0.3, torch.randn(250, generator=gen) * 0.5 + 2.5,
             torch.rand(150, generator=gen) * 6 - 1, torch.randn(80, generator=gen) * 0.2 + 5]
    return torch.cat(parts).to(dtype)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("classes,bins", [(2, 256), (3, 256), (3, 37), (4, 64), (5, 24)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_multi_otsu_matches_skimage(classes, bins, seed, dtype):
    values = mixture(seed, dtype)
    thresholds = multi_otsu(values, classes, bins)
    expected = threshold_multiotsu(values.numpy(), classes=classes, nbins=bins)
    assert thresholds.dtype == dtype and thresholds.shape == (classes - 1,)
    np.testing.assert_array_equal(thresholds.numpy(), expected)


def test_multi_otsu_skewed_and_bin_zero_heavy():
    # most mass in the lowest bin: the case where the first-moment convention of bin 0 matters most
    gen = torch.Generator().manual_seed(11)
    values = torch.cat([torch.zeros(900), torch.rand(300, generator=gen) ** 3, torch.ones(5)])
    for classes in (2, 3, 4):
        np.testing.assert_array_equal(multi_otsu(values, classes, 64).numpy(),
                                      threshold_multiotsu(values.numpy(), classes=classes, nbins=64))


def test_multi_otsu_exactly_classes_occupied_bins():
    values = torch.tensor([0.0, 0.0, 1.0, 3.0, 3.0, 3.0])
    np.testing.assert_array_equal(multi_otsu(values, 3, 8).numpy(), threshold_multiotsu(values.numpy(), 3, nbins=8))


def test_multi_otsu_half_precision_reads_float32():
    values = mixture(0, torch.float16)
    np.testing.assert_array_equal(multi_otsu(values).numpy(), threshold_multiotsu(values.float().numpy()))


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.randn(50), 1, 256), "classes must be >= 2"),
        ((torch.randn(50), 3, 2), "bins must be >= classes"),
        ((torch.empty(0), 3, 256), "values is empty"),
        ((torch.ones(50), 3, 256), "non-empty bin"),
        ((torch.tensor([1.0, math.nan, 2.0, 3.0]), 3, 256), "finite"),
    ],
)
def test_multi_otsu_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        multi_otsu(*args)


def test_otsu_class_matches_digitize():
    values = mixture(2)
    thresholds = multi_otsu(values, 4, 64)
    classes = otsu_class(values, thresholds)
    assert classes.dtype == torch.int64
    np.testing.assert_array_equal(classes.numpy(), np.digitize(values.numpy(), thresholds.numpy()))
    # a value equal to a threshold belongs to the upper class
    assert otsu_class(thresholds, thresholds).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="ascending"):
        otsu_class(values, thresholds.flip(0))


# --------------------------------------------------------------------------------------------------------
# mask algebra
# --------------------------------------------------------------------------------------------------------


def test_union_and_intersection():
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, True, False])
    c = torch.tensor([True, True, True, False])
    assert union(a, b).tolist() == [True, True, True, False]
    assert intersection(a, b, c).tolist() == [True, False, False, False]
    assert union(a).tolist() == a.tolist() and union(a) is not a
    with pytest.raises(ValueError, match="at least one mask"):
        union()
    with pytest.raises(ValueError, match=r"masks\[1\] shape"):
        intersection(a, b[:3])
    with pytest.raises(TypeError, match="bool"):
        union(a, b.float())


def test_public_name():
    import xtf_kernels

    assert xtf_kernels.select is select


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_matches_cpu():
    scores = tied_scores((8, 1001), seed=9)
    valid = torch.rand(8, 1001) > 0.2
    for scope in ("global", "sample"):
        got = topk_mask(scores.cuda(), 0.6, valid=valid.cuda(), scope=scope)
        assert torch.equal(got.cpu(), topk_mask(scores, 0.6, valid=valid, scope=scope))
    chunks = [(s.cuda(), v.cuda()) for s, v in zip(scores, valid)]
    _, masks = stream_masks(chunks, 0.6)
    assert torch.equal(torch.stack(masks).cpu(), topk_mask(scores, 0.6, valid=valid))
    finite = torch.randn(8, 1001)
    assert torch.equal(quantile_fence(finite.cuda(), valid.cuda()).cpu(), quantile_fence(finite, valid))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_order_keys_preserve_order_and_invert(dtype):
    info = torch.finfo(dtype)
    special = [-math.inf, -info.max, -1.5, -info.tiny, -0.0, 0.0, info.tiny, 1.0, 1.5, info.max, math.inf]
    if dtype in (torch.float64, torch.float32):
        special += [info.tiny / 4, -info.tiny / 4]  # subnormals
    values = torch.cat([torch.tensor(special, dtype=dtype),
                        (torch.randn(501, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1e3
                         ).to(dtype)])
    keys, width = select.order_keys(values)
    assert keys.dtype == torch.int64 and keys.shape == values.shape and width == (64 if dtype == torch.float64 else 32)
    reference = values.double()  # independent order: the float64 values themselves
    assert torch.equal(keys[:, None] < keys[None, :], reference[:, None] < reference[None, :])
    assert torch.equal(keys[:, None] == keys[None, :], reference[:, None] == reference[None, :])  # -0.0 == 0.0
    if width == 32:  # int64 keys of 64-bit floats span all of int64
        assert bool(((keys >= -2**31) & (keys < 2**31)).all()) and bool(((~keys >= -2**31) & (~keys < 2**31)).all())
    for value, key in zip(reference.tolist(), keys.tolist()):
        assert select.key_to_value(key, width) == value  # -0.0 comes back as 0.0, equal as a float
    with pytest.raises(ValueError, match="width must be 32 or 64"):
        select.key_to_value(0, 16)

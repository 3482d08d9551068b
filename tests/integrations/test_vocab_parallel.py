"""Vocabulary-parallel loss and log-probs on 2 and 4 gloo ranks against the single-process ops on the full
weight: values, the full hidden gradient on every rank, and each rank's slice of the weight / bias gradient."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.helpers import assert_close
from tests.integrations.distributed import run_ranks
from xtf_kernels.functional import linear_cross_entropy
from xtf_kernels.functional import token_logprobs
from xtf_kernels.integrations.vocab_parallel import vocab_parallel_linear_cross_entropy
from xtf_kernels.integrations.vocab_parallel import vocab_parallel_token_logprobs

VOCAB, HIDDEN, LEADING = 55, 16, (3, 7)  # 55 rows: unequal shards at 2 and 4 ranks

LOSS_CASES = [
    dict(reduction="mean"),
    dict(reduction="sum", bias=True),
    dict(reduction="none", token_weights=True),
    dict(reduction="mean", token_weights=True, bias=True, num_items_in_batch=13.0, softcap=2.0, label_smoothing=0.1,
         z_loss=1e-3),
    dict(reduction="none", bias=True, softcap=1.5, label_smoothing=0.2),
    dict(reduction="mean", all_ignored=True),
    dict(reduction="mean", token_weights=True, dtype=torch.bfloat16),
]
LOGPROB_CASES = [
    dict(),
    dict(bias=True, temperature=0.7, softcap=3.0, return_entropy=True, return_lse=True),
    dict(temperature=1.3, return_entropy=True),
]


def _shard(world: int, rank: int) -> slice:
    sizes = [VOCAB // world + (r < VOCAB % world) for r in range(world)]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _inputs(seed: int, case: dict):
    """The same tensors on every rank (seeded), plus an upstream gradient for per-token outputs."""
    generator = torch.Generator().manual_seed(seed)
    dtype = case.get("dtype", torch.float32)
    hidden = torch.randn(*LEADING, HIDDEN, generator=generator).to(dtype)
    weight = (torch.randn(VOCAB, HIDDEN, generator=generator) * 0.7).to(dtype)
    bias = torch.randn(VOCAB, generator=generator).to(dtype) if case.get("bias") else None
    targets = torch.randint(0, VOCAB, LEADING, generator=generator)
    targets[0, ::3] = -100
    if case.get("all_ignored"):
        targets.fill_(-100)
    token_weights = None
    if case.get("token_weights"):
        token_weights = torch.rand(LEADING, generator=generator)
        token_weights[1, 2] = 0.0
    upstream = torch.randn(LEADING, generator=generator)
    return hidden, weight, bias, targets, token_weights, upstream


def _leaf(x, rows=None):
    if x is None:
        return None
    return (x if rows is None else x[rows]).clone().requires_grad_()


def _scalar(out, upstream):
    return out if out.dim() == 0 else (out * upstream).sum()


def _loss_options(case):
    keys = ("reduction", "num_items_in_batch", "softcap", "label_smoothing", "z_loss")
    return {k: case[k] for k in keys if k in case}


def _check_loss_cases(rank: int, world: int, chunk_size):
    rows = _shard(world, rank)
    for seed, case in enumerate(LOSS_CASES):
        hidden, weight, bias, targets, token_weights, upstream = _inputs(seed, case)
        dtype = case.get("dtype", torch.float32)
        options = _loss_options(case)
        h_ref, w_ref, b_ref = _leaf(hidden), _leaf(weight), _leaf(bias)
        expected = linear_cross_entropy(h_ref, w_ref, targets, bias=b_ref, token_weights=token_weights, **options)
        _scalar(expected, upstream).backward()
        h, w, b = _leaf(hidden), _leaf(weight, rows), _leaf(bias, rows)
        actual = vocab_parallel_linear_cross_entropy(
            h, w, targets, bias=b, token_weights=token_weights, chunk_size=chunk_size, **options
        )
        _scalar(actual, upstream).backward()
        msg = f"rank {rank}/{world} case {case}"
        assert_close(actual, expected, dtype, msg=f"{msg}: loss")
        assert_close(h.grad, h_ref.grad, dtype, grad=True, msg=f"{msg}: grad hidden")
        assert_close(w.grad, w_ref.grad[rows], dtype, grad=True, msg=f"{msg}: grad weight")
        if bias is not None:
            assert_close(b.grad, b_ref.grad[rows], dtype, grad=True, msg=f"{msg}: grad bias")


def _check_logprob_cases(rank: int, world: int, chunk_size):
    rows = _shard(world, rank)
    for seed, case in enumerate(LOGPROB_CASES, start=100):
        hidden, weight, bias, targets, _, upstream = _inputs(seed, case)
        options = {k: v for k, v in case.items() if k != "bias"}
        h_ref, w_ref, b_ref = _leaf(hidden), _leaf(weight), _leaf(bias)
        h, w, b = _leaf(hidden), _leaf(weight, rows), _leaf(bias, rows)
        expected = token_logprobs(h_ref, w_ref, targets, bias=b_ref, **options)
        actual = vocab_parallel_token_logprobs(h, w, targets, bias=b, chunk_size=chunk_size, **options)
        if not isinstance(expected, tuple):
            expected, actual = (expected,), (actual,)
        loss_expected = sum((o * upstream * (i + 1)).sum() for i, o in enumerate(expected) if o is not None)
        loss_actual = sum((o * upstream * (i + 1)).sum() for i, o in enumerate(actual) if o is not None)
        loss_expected.backward()
        loss_actual.backward()
        msg = f"rank {rank}/{world} logprobs case {case}"
        for name, a, e in zip(("logprobs", "entropy", "lse"), actual, expected):
            if e is not None:
                assert_close(a, e, msg=f"{msg}: {name}")
        assert_close(h.grad, h_ref.grad, grad=True, msg=f"{msg}: grad hidden")
        assert_close(w.grad, w_ref.grad[rows], grad=True, msg=f"{msg}: grad weight")
        if bias is not None:
            assert_close(b.grad, b_ref.grad[rows], grad=True, msg=f"{msg}: grad bias")


def _check_bad_input(rank: int, world: int):
    rows = _shard(world, rank)
    hidden, weight, _, targets, _, _ = _inputs(0, {})
    w = weight[rows]
    # Tokens that differ between ranks: every rank raises the same error (no hang).
    diverged = targets.clone()
    diverged[0, 0] = -100 if rank == 0 else 1
    with pytest.raises(ValueError, match="replicated"):
        vocab_parallel_linear_cross_entropy(hidden, w, diverged)
    out_of_range = targets.clone()
    out_of_range[1, 1] = VOCAB  # valid for no rank: the vocabulary is the sum of the shards
    with pytest.raises(ValueError, match=rf"outside \[0, {VOCAB}\)"):
        vocab_parallel_linear_cross_entropy(hidden, w, out_of_range)
    with pytest.raises(ValueError, match="token_weights"):
        vocab_parallel_linear_cross_entropy(hidden, w, targets, token_weights=-torch.ones(LEADING))
    dist.barrier()


def _worker(rank: int, world: int, chunk_size) -> None:
    _check_loss_cases(rank, world, chunk_size)
    _check_logprob_cases(rank, world, chunk_size)
    _check_bad_input(rank, world)


@pytest.mark.parametrize(("world", "chunk_size"), [(2, None), (4, 4)])
def test_vocab_parallel_matches_the_single_process_ops(world, chunk_size):
    run_ranks(_worker, world, chunk_size)


def test_without_a_process_group_it_says_so():
    hidden, weight, _, targets, _, _ = _inputs(0, {})
    with pytest.raises(RuntimeError, match="init_process_group"):
        vocab_parallel_linear_cross_entropy(hidden, weight, targets)

"""Inputs, a chunked float64 reference, a poisoned allocator and a timer for the GPU checks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import torch

_GIB = 2**30


# Relative error allowed on per-token losses, log-probs and log-sum-exps of bf16 inputs against float64:
# the logits are formed in fp32 from the bf16 operands (cuBLAS out_dtype=float32, Triton tl.dot into fp32,
# fp32 upcast blocks on the CPU), so only fp32 rounding is expected (1e-8 to 1e-7 measured in the CPU
# rehearsal; entropy 4e-6). Gradients: the backward matmuls take d_logits rounded to bf16, about 2e-3.
LOSS_TOL = 1e-4


class Head(NamedTuple):
    """hidden (N, H) and weight (V, H) in ``dtype`` (leaves with grad), targets (N,) int64 in [0, V),
    token_weights (N,) fp32 or None (0 at dropped rows)."""

    hidden: torch.Tensor
    weight: torch.Tensor
    targets: torch.Tensor
    token_weights: torch.Tensor | None

    @property
    def leaves(self) -> list[torch.Tensor]:
        return [self.hidden, self.weight]


def make_head(tokens: int, hidden: int, vocab: int, dtype: torch.dtype, device: torch.device, *,
              keep: float = 1.0, logit_std: float = 2.0, seed: int = 0) -> Head:
    """Random inputs drawn on ``device`` (a Llama-3 head is 0.5 G values: seconds on a CPU, ms on a GPU).

    Logits have std ``logit_std``; with ``keep`` < 1 a random ``keep`` share of the rows gets a token
    weight in [0.5, 1.5) and the rest 0.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    draw = dict(generator=gen, device=device)
    h = torch.randn(tokens, hidden, **draw).to(dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, **draw) * (logit_std / hidden**0.5)).to(dtype).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), **draw)
    token_weights = None
    if keep < 1.0:
        kept = torch.randperm(tokens, **draw)[: round(keep * tokens)]
        token_weights = torch.zeros(tokens, device=device)
        token_weights[kept] = 0.5 + torch.rand(kept.numel(), **draw)
    return Head(h, w, targets, token_weights)


class Reference(NamedTuple):
    """float64 per-token loss (N,), weighted-mean loss, d_hidden (N, H) and d_weight (V, H) of that mean."""

    per_token: torch.Tensor
    loss: torch.Tensor
    grad_hidden: torch.Tensor
    grad_weight: torch.Tensor


def chunked_float64_reference(head: Head, *, chunk: int = 2048) -> Reference:
    """Mean cross-entropy (weighted by token_weights) and its gradients in float64, ``chunk`` rows at a
    time so that N * V > 2^31 fits: written from the definition (softmax - onehot), sharing no code with
    the package."""
    hidden, weight = head.hidden.detach().double(), head.weight.detach().double()
    rows = hidden.shape[0]
    weights = torch.ones(rows, dtype=torch.float64, device=hidden.device)
    if head.token_weights is not None:
        weights = head.token_weights.double()
    denom = weights.sum().clamp_min(1e-300)
    per_token = torch.empty(rows, dtype=torch.float64, device=hidden.device)
    grad_hidden = torch.empty_like(hidden)
    grad_weight = torch.zeros_like(weight)
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        logits = hidden[start:stop] @ weight.T
        lse = torch.logsumexp(logits, dim=1)
        rows_idx = torch.arange(stop - start, device=hidden.device)
        target = head.targets[start:stop]
        per_token[start:stop] = lse - logits[rows_idx, target]
        grad_logits = torch.softmax(logits, dim=1)
        grad_logits[rows_idx, target] -= 1.0
        grad_logits *= (weights[start:stop] / denom)[:, None]
        grad_hidden[start:stop] = grad_logits @ weight
        grad_weight += grad_logits.T @ hidden[start:stop]
        del logits, grad_logits
    loss = (per_token * weights).sum() / denom
    return Reference(per_token, loss, grad_hidden, grad_weight)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (inf when actual has a NaN or an inf)."""
    actual = actual.detach().double()
    if not torch.isfinite(actual).all():
        return float("inf")
    expected = expected.detach().double().to(actual.device)
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


def poison_allocator(device: torch.device, *, large_bytes: int, small_blocks: int = 512) -> None:
    """Fill free blocks of the caching allocator with NaN and give them back to it, so that an output a
    kernel forgets to write (or a buffer read before it is written) reads NaN instead of a stale,
    plausible value. Large blocks (> 1 MiB) and small ones (the 2 MiB small-pool segments) both.
    On the CPU (the rehearsal) the same calls run, with no guarantee that malloc hands the memory back."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        large_bytes = min(large_bytes, int(free * 0.8))
    blocks = [torch.full((max(large_bytes // 8 // 4, 1),), float("nan"), device=device) for _ in range(8)]
    blocks += [torch.full((128 * 1024,), float("nan"), device=device) for _ in range(small_blocks)]  # 512 KiB
    del blocks
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device):
    """(result of fn(), milliseconds), synchronising the device around it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    begin = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, (time.perf_counter() - begin) * 1e3


def gib(nbytes: int) -> float:
    return nbytes / _GIB

"""Attention each key position receives, averaged over the queries that see it, without the (L x L) map.

XTF's reasoning-importance score (``methods.md`` section 1, RI): "received attention = mean over the later
query positions q >= position of softmax(q . k) (the column mean of the causal attention map)". A fused
kernel computes these column sums from Q, K and the per-row log-sum-exp; the eager ``output_attentions``
map is the reference.
"""

from __future__ import annotations

import math

import torch

from .errors import BackendUnavailableError
from .ops.registry import resolve_backend

BACKENDS = ("auto", "torch", "triton")
REDUCTIONS = ("mean", "sum")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _check_inputs(q, k, attention_mask) -> None:
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, L, d), got shape {tuple(x.shape)}")
        if x.dtype not in _DTYPES:
            raise TypeError(f"{name} must be float32, bfloat16, float16 or float64, got {x.dtype}")
    if q.dtype != k.dtype:
        raise TypeError(f"q ({q.dtype}) and k ({k.dtype}) must have the same dtype")
    if q.device != k.device:
        raise ValueError(f"q is on {q.device} but k is on {k.device}")
    (batch, heads_q, length, dim), (k_batch, heads_k, k_length, k_dim) = q.shape, k.shape
    if (batch, length, dim) != (k_batch, k_length, k_dim):
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch, L and d: (batch, heads, L, d)"
        )
    if heads_k == 0 or heads_q % heads_k:
        raise ValueError(f"q heads ({heads_q}) must be a positive multiple of k heads ({heads_k})")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
        if attention_mask.is_floating_point() or attention_mask.is_complex():
            raise TypeError(f"attention_mask must be bool or integer (1 = real token), got {attention_mask.dtype}")
        if tuple(attention_mask.shape) != (batch, length):
            raise ValueError(
                f"attention_mask must be (batch, L) = ({batch}, {length}), got {tuple(attention_mask.shape)}"
            )
        if attention_mask.device != q.device:
            raise ValueError(f"attention_mask is on {attention_mask.device} but q is on {q.device}")


def _resolve(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        try:
            return resolve_backend("triton", device)
        except BackendUnavailableError:
            return "torch"
    return resolve_backend(backend, device)


def query_counts(length: int, key_valid: torch.Tensor | None, *, causal: bool, batch: int,
                 device: torch.device) -> torch.Tensor:
    """(B, L) fp32: how many non-padding query positions see each key position (the mean's denominator).

    Causal: #{i >= j : query i is not padding}; otherwise #{i : query i is not padding}.
    """
    if key_valid is None:
        key_valid = torch.ones(batch, length, dtype=torch.bool, device=device)
    valid = key_valid.float()
    if causal:
        return valid.flip(-1).cumsum(-1).flip(-1)
    return valid.sum(-1, keepdim=True).expand(batch, length)


def attention_received(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    attention_mask: torch.Tensor | None = None,
    backend: str = "auto",
    reduction: str = "mean",
) -> torch.Tensor:
    """Mean softmax attention received by every key position, per q head.

    With ``A[b, h, i, j] = softmax_j(scale * q[b, h, i] . k[b, h // (Hq / Hk), j])`` over the keys query i
    may see (j <= i when causal; never padding keys), the output at key position j is

        out[b, h, j] = (1 / n_j) * sum_{i in Q_j} A[b, h, i, j]

    where Q_j is the set of non-padding query positions that see j (i >= j when causal, every position
    otherwise) and n_j = |Q_j|: for a causal map without padding, the mean over the L - j query positions
    i >= j. Padding keys receive 0. ``reduction="sum"`` returns the sum over Q_j instead of the mean.

    Without padding and with every query seeing key j (non-causal), out[b, h, :] sums to 1 over j.
    Reference: the eager softmax(q k^T) map (transformers' ``output_attentions=True``), column-averaged.

    Args:
        q: (batch, heads_q, L, d) float32 / bfloat16 / float16 / float64; any strides.
        k: (batch, heads_k, L, d), q's dtype; heads_q a multiple of heads_k (grouped-query attention, each
            k head serving heads_q / heads_k consecutive q heads as transformers' ``repeat_kv``).
        causal: query i sees keys j <= i.
        scale: multiplies q . k; default 1 / sqrt(d).
        attention_mask: (batch, L) bool or integer, nonzero = real token, 0 = padding (a padding key
            receives nothing, a padding query contributes nothing); None = no padding.
        backend: "auto" (Triton on CUDA when available, else PyTorch), "torch" (query chunks of bounded
            memory, any device) or "triton" (CUDA; CPU only under TRITON_INTERPRET=1, for tests;
            d <= 256).
        reduction: "mean" (above) or "sum".

    Returns:
        (batch, heads_q, L) fp32. No gradient flows through it.
    """
    _check_inputs(q, k, attention_mask)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    dim = q.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(dim) if dim else 1.0
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    name = _resolve(backend, q.device)
    batch, heads_q, length, _ = q.shape
    key_valid = None if attention_mask is None else attention_mask != 0
    if length == 0 or batch * heads_q == 0:
        return torch.zeros(batch, heads_q, length, dtype=torch.float32, device=q.device)

    with torch.no_grad():
        if name == "triton":
            from .ops._triton.attention_received import MAX_HEAD_DIM
            from .ops._triton.attention_received import column_sums

            if dim > MAX_HEAD_DIM:
                raise ValueError(f"backend='triton' supports d <= {MAX_HEAD_DIM}, got d={dim}; use backend='torch'")
        else:
            from .ops._torch.attention_received import column_sums
        sums = column_sums(q.detach(), k.detach(), key_valid, causal=causal, scale=float(scale))
    if reduction == "sum":
        return sums
    counts = query_counts(length, key_valid, causal=causal, batch=batch, device=q.device)
    # a padding key's column sum is 0; clamp keeps 0 / 0 (no query at or after it) at 0
    return sums / counts.clamp(min=1.0)[:, None, :]

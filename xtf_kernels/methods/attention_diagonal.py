"""The attention every position pays to itself, the diagonal of the causal softmax map, without the map.

:func:`xtf_kernels.attention_received` returns column sums / means of the causal map INCLUDING the diagonal
A[j, j]. XTF's RI without the diagonal (``XTFConfig.ri_score="offdiag"``) subtracts this term: a token's
attention to itself says nothing about how much LATER tokens use it, and for the last tokens of a sequence,
averaged over 1-3 queries, it is most of the score (the toy benchmark's RI fence fired 7-11% in the last
fifth of a response, <= 0.6% elsewhere).

The diagonal needs each query's log-sum-exp over the keys it sees, so the cost is one more pass over Q K^T
(query chunks, bounded memory), like the column sums themselves.
"""

from __future__ import annotations

import math

import torch

# one chunk's score block is (B, Hq, chunk, L) fp32: 2^25 entries = 128 MiB, at most one such block alive
_BLOCK_ELEMENTS = 1 << 25


def self_attention_weight(query: torch.Tensor, key: torch.Tensor, *, scale: float | None = None,
                          attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A[b, h, i, i] = softmax_j(scale q_i . k_j)[j = i] over the keys j <= i that are not padding.

    Args:
        query: (B, Hq, L, d) float (post-RoPE, as the attention function gets it).
        key: (B, Hk, L, d), query's dtype; Hq a multiple of Hk (each k head serves Hq / Hk consecutive q heads,
            as transformers' ``repeat_kv``).
        scale: multiplies q . k; default 1 / sqrt(d).
        attention_mask: (B, L) nonzero = real token, or None.

    Returns:
        (B, Hq, L) fp32 in [0, 1], 0 at padding positions. Reference: the diagonal of the eager
        ``output_attentions`` map.
    """
    batch, heads_q, length, dim = query.shape
    heads_k = key.shape[1]
    if heads_k == 0 or heads_q % heads_k:
        raise ValueError(f"query heads ({heads_q}) must be a positive multiple of key heads ({heads_k})")
    if scale is None:
        scale = 1.0 / math.sqrt(dim) if dim else 1.0
    with torch.no_grad():
        q = query.detach().float()
        k = key.detach().float().repeat_interleave(heads_q // heads_k, dim=1)
        real = (torch.ones(batch, length, dtype=torch.bool, device=q.device) if attention_mask is None
                else attention_mask.to(q.device) != 0)
        out = torch.zeros(batch, heads_q, length, dtype=torch.float32, device=q.device)
        chunk = max(1, _BLOCK_ELEMENTS // max(1, batch * heads_q * length))
        positions = torch.arange(length, device=q.device)
        for start in range(0, length, chunk):
            rows = positions[start:start + chunk]
            scores = torch.einsum("bhqd,bhkd->bhqk", q[:, :, rows], k) * scale
            allowed = (positions[None, :] <= rows[:, None])[None, None] & real[:, None, None, :]
            scores = scores.masked_fill(~allowed, -math.inf)
            lse = torch.logsumexp(scores, dim=-1)  # (B, H, chunk); every real query sees at least itself
            own = (q[:, :, rows] * k[:, :, rows]).sum(-1) * scale
            out[:, :, rows] = torch.where(real[:, None, rows], torch.exp(own - lse), torch.zeros_like(own))
    return out


class DiagonalRecorder:
    """Accumulates the head-mean of :func:`self_attention_weight` over chosen layers during one forward pass.

    Feed it from :func:`~xtf_kernels.methods.attention_capture.capture_attention_received` (see
    :meth:`attach`); :meth:`mean` is then (B, L) fp32, averaged over the same layers and heads as the
    recorder's received attention, so the two can be combined term by term.
    """

    def __init__(self, layers: tuple[int, ...], attention_mask: torch.Tensor | None):
        self.layers = frozenset(layers)
        self.attention_mask = attention_mask
        self.total: torch.Tensor | None = None
        self.seen: set[int] = set()

    def attach(self, recorder) -> None:
        """Make ``recorder`` (an AttentionRecorder) hand every query / key it records to this one too."""
        original = recorder.record

        def record(module, query, key, kwargs):
            original(module, query, key, kwargs)
            self.record(module, query, key, kwargs)

        recorder.record = record

    def record(self, module, query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> None:
        layer = getattr(module, "layer_idx", None)
        if layer not in self.layers:
            return
        scale = kwargs.get("scaling", getattr(module, "scaling", None))
        per_token = self_attention_weight(query, key, scale=scale, attention_mask=self.attention_mask).mean(dim=1)
        self.total = per_token if self.total is None else self.total + per_token
        self.seen.add(layer)

    def mean(self) -> torch.Tensor:
        if self.total is None or self.seen != self.layers:
            raise RuntimeError(f"no self-attention was captured for layers {sorted(self.layers - self.seen)}")
        return self.total / len(self.layers)

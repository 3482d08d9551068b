"""Column sums of the softmax attention map in query chunks: the PyTorch path of ``attention_received``.

Only a (batch, heads_q, chunk, keys) block of scores exists at a time, so memory is bounded by the chunk
size, not by L^2. With a causal mask a query chunk ending at row i1 sees keys [0, i1) only, so the work
is about half of the full map's.

Memory: one chunk holds the fp32 scores and their softmax, 2 * 4 bytes per (head, query, key) entry;
the default budget of 256 MiB gives, at batch 1, 32 heads and L = 4096, chunks of 256 query rows.
"""

from __future__ import annotations

import torch

_CHUNK_BUDGET_BYTES = 256 * 2**20


def default_chunk_size(batch: int, heads: int, length: int) -> int:
    """Query rows per chunk so the chunk's scores and probabilities fit in 256 MiB (at least 1)."""
    return max(1, _CHUNK_BUDGET_BYTES // (2 * 4 * max(batch * heads * length, 1)))


def column_sums(
    q: torch.Tensor,
    k: torch.Tensor,
    key_valid: torch.Tensor | None,
    *,
    causal: bool,
    scale: float,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """sum_i softmax_j(scale * q_i . k_j) over the query rows i that see key j, per key position j.

    Args:
        q: (B, Hq, L, d) float; k: (B, Hk, L, d), Hq a multiple of Hk (q head h reads k head h // (Hq / Hk)).
        key_valid: (B, L) bool, False at padding (a padding key gets no attention, a padding query row
            adds nothing), or None.
        causal: query i sees keys j <= i.
        scale: multiplies q . k.
        chunk_size: query rows per chunk; default :func:`default_chunk_size`.

    Returns:
        (B, Hq, L) fp32 column sums (not yet divided by the number of queries); computed in fp32
        (float64 for float64 inputs).
    """
    batch, heads_q, length, dim = q.shape
    heads_k = k.shape[1]
    group = heads_q // heads_k
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    chunk = chunk_size or default_chunk_size(batch, heads_q, length)
    sums = torch.zeros(batch, heads_k, group, length, dtype=compute, device=q.device)
    keys = k.to(compute).unsqueeze(2)  # (B, Hk, 1, L, d), broadcast over the q heads of each group
    queries = q.reshape(batch, heads_k, group, length, dim)
    positions = torch.arange(length, device=q.device)
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        visible = stop if causal else length  # keys past the chunk's last row are masked for every row
        scores = queries[..., start:stop, :].to(compute) @ keys[..., :visible, :].transpose(-1, -2)
        scores = scores * scale  # (B, Hk, group, rows, visible)
        allowed = torch.ones(stop - start, visible, dtype=torch.bool, device=q.device)
        if causal:
            allowed = positions[start:stop, None] >= positions[None, :visible]
        allowed = allowed.expand(batch, 1, 1, stop - start, visible)
        if key_valid is not None:
            allowed = allowed & key_valid[:, None, None, None, :visible]
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        if key_valid is not None:
            # padding query rows: all keys may be masked (softmax of all -inf is NaN); they add nothing
            probs = torch.where(key_valid[:, None, None, start:stop, None], probs, 0.0)
        sums[..., :visible] += probs.sum(-2)
    return sums.reshape(batch, heads_q, length).float()

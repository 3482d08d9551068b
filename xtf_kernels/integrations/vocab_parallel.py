"""Linear cross-entropy and token log-probs over a vocabulary-sharded output embedding (tensor parallelism).

Each rank of a ``torch.distributed`` process group holds ``weight`` rows [start, start + V_r) of the (V, H)
output embedding (and the same slice of the bias); ``hidden``, ``targets`` and ``token_weights`` are the
same on every rank (replicated activations, as in Megatron-style tensor parallelism). Neither the full
logits nor the full weight ever exist on one rank:

forward, per chunk of kept token rows (chunked over tokens, ``(C, V_r)`` fp32 per rank at a time):
    z = softcap(hidden @ weight_r.T + bias_r) / T                     local slice of the logits
    m = all_reduce_max(max_j z)                                       1st collective of the chunk
    all_reduce_sum([sum_j exp(z - m), z_target (owner rank only), sum_j z, sum_j exp(z - m) z])
                                                                      2nd collective, fused
    lse = m + log(sum exp), target logit, mean logit (label smoothing), entropy
backward (recomputing each chunk's local logits from the saved fp32 lse; no collective in the loop):
    dz = p (A + D z) + B [j == t] + C   with p = exp(z - lse), the gradient of the four per-row statistics
    d weight_r = dz.T @ hidden          this rank's rows only, never communicated
    d hidden = all_reduce_sum(dz @ weight_r)   one all-reduce of the (kept rows, H) fp32 partials at the end

The per-row statistics are the outputs of one autograd function; the loss (label smoothing, z-loss,
token weights, reduction, ``num_items_in_batch``) and the log-probs are formed from them with ordinary
differentiable tensor ops, so every output and reduction gets its exact gradient. Results equal the
single-process :func:`xtf_kernels.linear_cross_entropy` / :func:`xtf_kernels.token_logprobs` on the
gathered weight, up to fp32 summation order.

Every rank must call with the same token rows: the number of kept rows, the row count and the chunk
size are all-gathered once per call (with each rank's V_r, which gives the offsets) and a mismatch raises
the same ValueError on every rank instead of hanging. Shards may have unequal sizes. Not a torch.library
op: ``torch.compile`` graph-breaks around it (the collectives run eagerly).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import _validation as v
from ..functional import TokenLogprobs
from ..ops.chunking import resolve_chunk_size
from ..ops.compaction import compact_rows


class _Layout:
    """Where this rank's vocabulary rows sit and how the rows are chunked (identical on every rank)."""

    def __init__(self, group, vocab_local: int, rows: int, kept: int, chunk: int, device: torch.device):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        mine = torch.tensor([vocab_local, rows, kept, chunk], dtype=torch.int64, device=device)
        table = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(table, mine, group=group)
        table = torch.stack(table).cpu().tolist()
        for column, name in ((1, "token rows"), (2, "kept token rows")):
            values = [row[column] for row in table]
            if len(set(values)) != 1:
                raise ValueError(
                    f"every rank must pass the same tokens to a vocabulary-parallel op, but the {name} per rank "
                    f"are {values}: hidden, targets and token_weights must be replicated across the group"
                )
        self.start = sum(row[0] for row in table[:rank])
        self.stop = self.start + vocab_local
        self.vocab = sum(row[0] for row in table)
        self.chunk = min(row[3] for row in table)


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with fp32 accumulation and an fp32 result, whatever the input dtypes."""
    if a.dtype == torch.float32 and b.dtype == torch.float32:
        return a @ b
    if a.is_cuda:
        return torch.mm(a.to(b.dtype), b, out_dtype=torch.float32)
    return a.float() @ b.float()


def _local_logits(h: torch.Tensor, weight: torch.Tensor, bias, softcap: float, inv_temperature: float):
    """(C, V_r) fp32 final logits z = softcap(h @ weight.T + bias) * inv_temperature."""
    z = _mm_f32(h, weight.t())
    if bias is not None:
        z += bias.float()
    if softcap:
        z = torch.tanh(z / softcap) * (softcap * inv_temperature)
    elif inv_temperature != 1.0:
        z *= inv_temperature
    return z


def _owned(targets: torch.Tensor, layout: _Layout):
    """(rows whose target is on this rank, their local column)."""
    owned = (targets >= layout.start) & (targets < layout.stop)
    rows = owned.nonzero().squeeze(1)
    return rows, targets[rows] - layout.start


class _VocabParallelStats(torch.autograd.Function):
    """(lse, target logit, mean logit, entropy), each (N,) fp32 and 0 at dropped rows (see module doc)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, row_weights, ignore_index, softcap, inv_temperature,
                want_mean, want_entropy, group, chunk_size):
        rows = hidden.shape[0]
        comp = compact_rows(targets, row_weights, ignore_index, vocab=1, validate=False)
        half = hidden.dtype != torch.float32
        chunk = resolve_chunk_size(chunk_size, rows=comp.kept, vocab=weight.shape[0], device=hidden.device,
                                   half_precision=half, extra_fp32_buffers=1)
        layout = _Layout(group, weight.shape[0], rows, comp.kept, chunk, hidden.device)
        kept_targets = comp.gather(targets)
        bad = (kept_targets < 0) | (kept_targets >= layout.vocab)
        if bool(bad.any()):
            raise ValueError(
                f"targets has value(s) outside [0, {layout.vocab}) that are not ignore_index={ignore_index} "
                f"(first: {int(kept_targets[bad][0])}); the vocabulary is the sum of the ranks' weight rows"
            )
        kept_hidden = comp.gather(hidden)
        f32 = dict(dtype=torch.float32, device=hidden.device)
        lse, target_logit = torch.zeros(comp.kept, **f32), torch.zeros(comp.kept, **f32)
        mean_logit = torch.zeros(comp.kept, **f32) if want_mean else None
        entropy = torch.zeros(comp.kept, **f32) if want_entropy else None
        for start in range(0, comp.kept, layout.chunk):
            stop = min(start + layout.chunk, comp.kept)
            z = _local_logits(kept_hidden[start:stop], weight, bias, softcap, inv_temperature)
            row_max = z.amax(1)
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
            exp = torch.exp(z - row_max.unsqueeze(1))
            sums = [exp.sum(1), torch.zeros(stop - start, **f32)]
            owned_rows, owned_cols = _owned(kept_targets[start:stop], layout)
            sums[1][owned_rows] = z[owned_rows, owned_cols]
            if want_mean:
                sums.append(z.sum(1))
            if want_entropy:
                sums.append(torch.bmm(exp.unsqueeze(1), z.unsqueeze(2)).view(-1))
            sums = torch.stack(sums)
            dist.all_reduce(sums, group=group)
            lse[start:stop] = row_max + sums[0].log()
            target_logit[start:stop] = sums[1]
            extra = 2
            if want_mean:
                mean_logit[start:stop] = sums[extra] / layout.vocab
                extra += 1
            if want_entropy:
                entropy[start:stop] = lse[start:stop] - sums[extra] / sums[0]

        ctx.save_for_backward(kept_hidden, weight, bias, kept_targets, lse, entropy)
        ctx.comp, ctx.layout, ctx.group = comp, layout, group
        ctx.options = (softcap, inv_temperature, hidden.dtype)
        outputs = [comp.scatter(lse), comp.scatter(target_logit)]
        outputs.append(comp.scatter(mean_logit) if want_mean else None)
        outputs.append(comp.scatter(entropy) if want_entropy else None)
        ctx.set_materialize_grads(False)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, grad_lse, grad_target, grad_mean, grad_entropy):
        kept_hidden, weight, bias, kept_targets, lse, entropy = ctx.saved_tensors
        comp, layout, group = ctx.comp, ctx.layout, ctx.group
        softcap, inv_temperature, hidden_dtype = ctx.options
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        f32 = dict(dtype=torch.float32, device=kept_hidden.device)
        zeros = torch.zeros(comp.kept, **f32)

        def kept(grad):
            return zeros if grad is None else comp.gather(grad.float())

        g_lse, g_target, g_mean, g_entropy = (kept(g) for g in (grad_lse, grad_target, grad_mean, grad_entropy))
        grad_hidden_kept = torch.zeros(kept_hidden.shape, **f32) if need_h else None
        grad_weight = torch.zeros(weight.shape, **f32) if need_w else None
        grad_bias = torch.zeros(weight.shape[0], **f32) if need_b else None
        coef_a = g_lse if entropy is None else g_lse + g_entropy * (lse - entropy)
        for start in range(0, comp.kept, layout.chunk):
            stop = min(start + layout.chunk, comp.kept)
            h = kept_hidden[start:stop]
            z = _local_logits(h, weight, bias, softcap, inv_temperature)
            grad_z = torch.exp(z - lse[start:stop].unsqueeze(1))
            if entropy is not None:
                grad_z *= coef_a[start:stop].unsqueeze(1) - g_entropy[start:stop].unsqueeze(1) * z
            else:
                grad_z *= coef_a[start:stop].unsqueeze(1)
            if grad_mean is not None:
                grad_z += (g_mean[start:stop] / layout.vocab).unsqueeze(1)
            owned_rows, owned_cols = _owned(kept_targets[start:stop], layout)
            grad_z[owned_rows, owned_cols] += g_target[start:stop][owned_rows]
            # Chain through z = softcap(y) * inv_T: dz/dy = inv_T * (1 - tanh^2), tanh = z / (softcap * inv_T).
            if softcap:
                grad_z *= (1.0 - (z / (softcap * inv_temperature)).square()) * inv_temperature
            elif inv_temperature != 1.0:
                grad_z *= inv_temperature
            if need_h:
                grad_hidden_kept[start:stop] = _mm_f32(grad_z, weight)
            if need_w:
                grad_weight += _mm_f32(grad_z.t(), h)
            if need_b:
                grad_bias += grad_z.sum(0)

        grad_hidden = None
        if need_h:
            if comp.kept:  # the same on every rank (checked in forward), so all or none join the collective
                dist.all_reduce(grad_hidden_kept, group=group)
            grad_hidden = comp.scatter(grad_hidden_kept.to(hidden_dtype))
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
        ) + (None,) * 9


def _check_group(group):
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("vocabulary-parallel ops need torch.distributed initialised (init_process_group)")
    return group if group is not None else dist.group.WORLD


def _common_checks(hidden, weight, bias, targets, ignore_index, softcap, chunk_size):
    v.check_head(hidden, weight, bias)
    v.check_targets(targets, hidden)
    v.check_int("ignore_index", ignore_index)
    return v.check_softcap(softcap), v.check_chunk_size(chunk_size) or None


def vocab_parallel_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    group=None,
    bias: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | float | torch.Tensor | None = None,
    softcap: float | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """:func:`xtf_kernels.linear_cross_entropy` with ``weight`` sharded by vocabulary rows over ``group``.

    Args:
        hidden: (..., H) float32 / bfloat16 / float16, the same on every rank.
        weight: (V_r, H) this rank's rows of the output embedding, hidden's dtype; ranks hold consecutive
            slices in rank order (rank 0 the first rows).
        targets: (...) integer global token ids in [0, V) or ``ignore_index``, the same on every rank.
        group: the process group (default: the whole world).
        bias: (V_r,) this rank's slice, or None.
        token_weights, ignore_index, reduction, num_items_in_batch, softcap, label_smoothing, z_loss:
            as in :func:`xtf_kernels.linear_cross_entropy` (label smoothing spreads over the full V).
        chunk_size: token rows per chunk; default from the memory budget at V_r, the smallest over ranks.

    Returns:
        () fp32 for "mean" / "sum", (...) fp32 for "none" (0 at dropped tokens), identical on every rank.
        Gradients: hidden's is the full one on every rank; weight's and bias's are this rank's rows.
    """
    group = _check_group(group)
    cap, chunk = _common_checks(hidden, weight, bias, targets, ignore_index, softcap, chunk_size)
    v.check_token_weights(token_weights, targets)
    v.check_reduction(reduction)
    label_smoothing = v.check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    z_loss = v.check_number("z_loss", z_loss, low=0.0)
    num_items = v.num_items_tensor(num_items_in_batch, hidden.device)

    targets_1d = targets.reshape(-1).long()
    weights_1d = None if token_weights is None else token_weights.detach().reshape(-1).to(torch.float32)
    if weights_1d is not None and bool(((weights_1d < 0) | ~torch.isfinite(weights_1d)).any()):
        raise ValueError("token_weights must be finite and >= 0")
    lse, target_logit, mean_logit, _ = _VocabParallelStats.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, bias, targets_1d, weights_1d, ignore_index, cap, 1.0,
        label_smoothing > 0, False, group, chunk,
    )
    per_token = lse - target_logit
    if label_smoothing:
        per_token = (1.0 - label_smoothing) * per_token + label_smoothing * (lse - mean_logit)
    if z_loss:
        per_token = per_token + z_loss * lse * lse
    keep = (targets_1d != ignore_index).float()
    weights = keep if weights_1d is None else keep * weights_1d
    per_token = per_token * weights
    if reduction == "none":
        return per_token.reshape(targets.shape)
    total = per_token.sum()
    if reduction == "sum":
        return total
    denom = num_items if num_items is not None else weights.sum()
    # No kept token (or num_items == 0): 0, never NaN, as the single-process op.
    return torch.where(denom > 0, total / torch.where(denom > 0, denom, torch.ones_like(denom)), total * 0.0)


def vocab_parallel_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    group=None,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    return_entropy: bool = False,
    return_lse: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor | TokenLogprobs:
    """:func:`xtf_kernels.token_logprobs` with ``weight`` sharded by vocabulary rows over ``group``.

    Arguments as in :func:`vocab_parallel_linear_cross_entropy`; ``temperature`` T > 0 divides the
    (softcapped) logits. Returns (...) fp32 log p(target) (0 at ignored positions), or a
    :class:`~xtf_kernels.TokenLogprobs` with entropy / lse when asked, identical on every rank and
    differentiable through all three.
    """
    group = _check_group(group)
    cap, chunk = _common_checks(hidden, weight, bias, targets, ignore_index, softcap, chunk_size)
    temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
    targets_1d = targets.reshape(-1).long()
    lse, target_logit, _, entropy = _VocabParallelStats.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, bias, targets_1d, None, ignore_index, cap, 1.0 / temperature,
        False, bool(return_entropy), group, chunk,
    )
    shape = targets.shape
    logprobs = (target_logit - lse).reshape(shape)
    if not (return_entropy or return_lse):
        return logprobs
    return TokenLogprobs(
        logprobs,
        entropy.reshape(shape) if return_entropy else None,
        lse.reshape(shape) if return_lse else None,
    )

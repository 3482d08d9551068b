"""Public functional API: fused lm_head + loss / log-prob ops that never build the [tokens x vocab] logits.

Every op accepts any leading shape (``hidden`` is (..., H), ``targets`` is (...)) and returns fp32 per-token
values shaped like ``targets`` (float64 for float64 inputs). Rows whose target is ``ignore_index`` (and, for
the loss, whose token weight is 0) are compacted away before the first matmul: they cost no compute and get exactly zero
loss and gradient.

Compacting needs one host synchronisation per call (how many rows survive decides how many GEMMs run),
which CUDA-graph capture (``torch.compile(mode="reduce-overhead")``, ``torch.cuda.graph``) does not allow.
``max_kept_tokens=K`` selects the sync-free mode instead (:func:`xtf_kernels.ops.compaction.static_rows`):

- shapes are static: the op always runs ``min(K, N)`` rows. K >= N masks dropped rows in place; K < N
  gathers the kept rows into K slots (``torch.nonzero_static``).
- dropped rows still get exactly zero loss and gradient, but they now cost compute: forward + backward is
  6 * min(K, N) * H * V FLOP (8 * ... with a recomputing backward: ``reduction="none"``, ``token_logprobs``)
  against 6 * M * H * V for M kept rows when compacting. At 60% kept with K = N that is 1 / 0.6 = 1.67x
  the compacting mode's GEMM time (at the Llama-3 head, H 4096, V 128256, N 16384: 51.6 against 31.0 TFLOP);
  K = 0.6 N costs the same as compacting. Measured on the 2-core development CPU (torch backend, fp32, N 2048,
  H 512, V 32000, 1236 tokens kept, forward + backward, median of 3, load ~2.5): compacting 1.38 s, K = N
  2.18 s (1.58x; the FLOP ratio is 1.66x), K = 1260 1.41 s. Masking adds O(N * H) element work (the dropped
  rows' hidden states zeroed: one read and one write of the (N, H) hidden states, against the GEMMs'
  6 * N * H * V FLOP).
- not validated on the host any more (no ValueError; device-side poison instead): a target outside
  [0, V) that is not ``ignore_index`` or a negative / non-finite token weight makes that token's outputs
  NaN (and "mean" / "sum" NaN) and the token gets no gradient; a negative / non-finite class weight, or
  more kept tokens than K, makes every output NaN. Shapes, dtypes, devices and option values are still
  checked (metadata, no sync). Pass ``num_items_in_batch`` as a device tensor under CUDA graphs (a Python
  number is copied from the host at each call).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import _validation as v
from .ops import custom_ops
from .ops.registry import resolve_backend


class TokenLogprobs(NamedTuple):
    """Per-token outputs of :func:`token_logprobs`, shaped like ``targets`` (None where not asked for).

    logprobs, entropy, lse, mean_logit: fp32 (float64 for float64 inputs); predicted_tokens: int64.
    """

    logprobs: torch.Tensor
    entropy: torch.Tensor | None
    lse: torch.Tensor | None
    predicted_tokens: torch.Tensor | None = None
    mean_logit: torch.Tensor | None = None


class LinearCrossEntropyOutput(NamedTuple):
    """What :func:`linear_cross_entropy` returns when any ``return_*`` flag is set (None where not asked for).

    loss: as without the flags. z_loss: the z-loss term alone, reduced like the loss (for logging; no
    gradient). token_accuracy: () fraction of kept tokens whose argmax is the target ("mean" / "sum"), or
    per-token 0/1 ("none"). predicted_tokens: (...) int64 argmax, ``ignore_index`` at dropped tokens.
    """

    loss: torch.Tensor
    z_loss: torch.Tensor | None = None
    token_accuracy: torch.Tensor | None = None
    predicted_tokens: torch.Tensor | None = None


def _needs_grad(x: torch.Tensor | None) -> bool:
    return x is not None and x.requires_grad and torch.is_grad_enabled()


def _features(hidden: torch.Tensor, *, logit_scale: float = 1.0, class_weights=None, argmax: bool = False):
    """The backend features of ops/registry.py that a call with these options needs."""
    needs = set()
    if logit_scale != 1.0:
        needs.add("logit_scale")
    if class_weights is not None:
        needs.add("class_weights")
    if argmax:
        needs.add("argmax")
    if hidden.dtype == torch.float64:
        needs.add("float64")
    return frozenset(needs)


def _shifted(x: torch.Tensor | None, fill, offset: int) -> torch.Tensor | None:
    """x[..., offset:] padded at the end with ``offset`` ``fill`` values (the last positions predict nothing)."""
    if x is None or offset == 0:
        return x
    pad = torch.full((*x.shape[:-1], offset), fill, dtype=x.dtype, device=x.device)
    return torch.cat([x[..., offset:], pad], dim=-1)


def _accuracy(predicted, targets, token_weights, ignore_index: int, reduction: str, dtype: torch.dtype):
    """Kept tokens (target != ignore_index, weight != 0) whose argmax is the target: 0/1 each, or the fraction."""
    kept = targets != ignore_index
    if token_weights is not None:
        kept = kept & (token_weights != 0)
    correct = (predicted == targets) & kept
    if reduction == "none":
        return correct.to(dtype)
    count = kept.sum()
    # No kept token: 0.0, not NaN (as the loss).
    return torch.where(count > 0, correct.sum().to(dtype) / count.clamp_min(1), torch.zeros((), dtype=dtype,
                                                                                             device=count.device))


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
    class_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | float | torch.Tensor | None = None,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    shift: bool | int = False,
    return_z_loss: bool = False,
    return_token_accuracy: bool = False,
    return_predicted_tokens: bool = False,
    backend: str = "auto",
    chunk_size: int | None = None,
    max_kept_tokens: int | None = None,
) -> torch.Tensor | LinearCrossEntropyOutput:
    """Cross-entropy of ``hidden @ weight.T + bias`` against ``targets`` without materialising the logits.

    With ``z = softcap(logit_scale * (hidden @ weight.T + bias))`` this matches ``F.cross_entropy(z.float(),
    targets, weight=class_weights, reduction="none", ignore_index=ignore_index,
    label_smoothing=label_smoothing) + z_loss * lse**2``, times ``token_weights``, then reduced; computed
    in fp32 whatever the input dtype (float64 for float64 inputs, torch backend only).

    Semantics next to torch's and Liger-Kernel's:
        - class weights: torch's ``weight=``: the target term is scaled by w_t, the label-smoothing term
          spreads as (eps / V) sum_j w_j (lse - z_j), and "mean" divides by sum_i token_weight_i * w_{t_i}.
          The z-loss term is not class-weighted (Liger adds it after the weighting too).
        - dropped tokens (target == ignore_index or token weight 0) get exactly 0 loss and gradient; with no
          kept token "mean" gives 0.0 and zero gradients, not torch's / Liger's NaN.
        - predicted tokens: ``torch.argmax`` of the final logits, so the first maximal index wins a tie;
          ``ignore_index`` at dropped tokens.
        - token accuracy: over kept tokens only, each counting 1 (token and class weights do not weigh it,
          ``num_items_in_batch`` does not enter), as Liger's ``return_token_accuracy``; 0.0 with no kept
          token.

    Args:
        hidden: (..., H) float32 / bfloat16 / float16 / float64; need not be contiguous.
        weight: (V, H), hidden's dtype (the lm_head / output-embedding weight).
        targets: (...) integer, in [0, V) or ``ignore_index``.
        bias: (V,) or None.
        token_weights: (...) float or bool, >= 0, multiplies each token's loss; 0 drops the token. No
            gradient flows to it.
        class_weights: (V,) float, finite, >= 0: torch's ``F.cross_entropy(weight=...)``. No gradient.
        ignore_index: target value whose token contributes nothing.
        reduction: "mean" (sum_i w_i l_i / sum_i w_i, or / ``num_items_in_batch`` when given, the
            transformers gradient-accumulation convention), "sum", or "none" ((...) fp32, 0 at dropped
            tokens). With no kept token mean and sum are 0.0 and every gradient is 0.
        num_items_in_batch: global count of target tokens across gradient-accumulation micro-batches.
        softcap: s > 0 replaces logits y by s * tanh(y / s) before the softmax (Gemma-2).
        logit_scale: a > 0 multiplies the logits before the softcap (Cohere, Granite).
        label_smoothing: eps in [0, 1], as in ``F.cross_entropy``.
        z_loss: c >= 0 adds c * lse^2 per kept token (PaLM).
        shift: causal-LM shift: True (or 1): position i's hidden state predicts ``targets[..., i + 1]``
            (and is weighted by ``token_weights[..., i + 1]``); an int n >= 0 (Cut Cross-Entropy's form,
            e.g. multi-token prediction heads): ``targets[..., i + n]``. The last n positions predict nothing.
            Needs a sequence dimension (``targets`` (..., T), T > n); per-token outputs are (..., T - n).
            The hidden states are not copied for it (the last n positions are dropped like ignored tokens).
        return_z_loss / return_token_accuracy / return_predicted_tokens: return a
            :class:`LinearCrossEntropyOutput`; the argmax is formed in the same pass (no second matmul).
        backend: "auto", "torch", "triton" or "cuda" (see :mod:`xtf_kernels.ops.registry`).
        chunk_size: tokens per chunk; default from a memory budget (:mod:`xtf_kernels.ops.chunking`).
        max_kept_tokens: None (compact the kept tokens; one host sync) or a static bound K >= 1 on the kept
            tokens: the sync-free mode for CUDA graphs, with its compute cost and device-side checks
            described in this module's docstring. The same values either way.

    Returns:
        () fp32 for "mean" / "sum", (...) fp32 for "none"; a :class:`LinearCrossEntropyOutput` with any
        ``return_*`` flag.
    """
    v.check_head(hidden, weight, bias)
    v.check_targets(targets, hidden)
    v.check_token_weights(token_weights, targets)
    v.check_class_weights(class_weights, weight)
    v.check_int("ignore_index", ignore_index)
    v.check_reduction(reduction)
    cap = v.check_softcap(softcap)
    logit_scale = v.check_logit_scale(logit_scale)
    label_smoothing = v.check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    z_loss = v.check_number("z_loss", z_loss, low=0.0)
    offset = v.check_shift(shift, targets)
    want_argmax = bool(return_token_accuracy or return_predicted_tokens)
    chunk = v.check_chunk_size(chunk_size)
    max_kept = v.check_max_kept_tokens(max_kept_tokens)
    needs = _features(hidden, logit_scale=logit_scale, class_weights=class_weights, argmax=want_argmax)
    name = resolve_backend(backend, hidden.device, needs)
    num_items = v.num_items_tensor(num_items_in_batch, hidden.device)
    acc_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32

    if token_weights is not None:
        token_weights = token_weights.detach().to(acc_dtype)
    targets = _shifted(targets, ignore_index, offset)
    token_weights = _shifted(token_weights, 0.0, offset)
    hidden_2d = hidden.reshape(-1, hidden.shape[-1])
    targets_1d = targets.reshape(-1).long()
    weights_1d = None if token_weights is None else token_weights.reshape(-1)
    cw = None if class_weights is None else class_weights.detach().to(acc_dtype)
    loss, _lse, z_term, argmax, *_ = custom_ops.linear_cross_entropy_op(
        hidden_2d, weight, bias, targets_1d, weights_1d, cw, num_items, ignore_index, reduction, cap,
        logit_scale, label_smoothing, z_loss, bool(return_z_loss), want_argmax, _needs_grad(hidden),
        _needs_grad(weight), _needs_grad(bias), name, chunk, max_kept,
    )

    def per_token(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(targets.shape)
        return x[..., :-offset] if offset else x

    if reduction == "none":
        loss, z_term = per_token(loss), per_token(z_term) if return_z_loss else None
    if not (return_z_loss or want_argmax):
        return loss
    predicted = per_token(argmax) if want_argmax else None
    accuracy = None
    if return_token_accuracy:
        accuracy = _accuracy(predicted, per_token(targets_1d), None if weights_1d is None else per_token(weights_1d),
                             ignore_index, reduction, acc_dtype)
    return LinearCrossEntropyOutput(
        loss, z_term if return_z_loss else None, accuracy, predicted if return_predicted_tokens else None,
    )


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    ignore_index: int = -100,
    shift: bool | int = False,
    return_entropy: bool = False,
    return_lse: bool = False,
    return_predicted_tokens: bool = False,
    return_mean_logit: bool = False,
    backend: str = "auto",
    chunk_size: int | None = None,
    max_kept_tokens: int | None = None,
) -> torch.Tensor | TokenLogprobs:
    """log p(target) under ``z = softcap(logit_scale * (hidden @ weight.T + bias)) / temperature``, per token.

    Matches ``torch.log_softmax(z.float(), -1).gather(-1, targets)``; entropy is
    ``-(softmax(z) * log_softmax(z)).sum(-1)`` and lse ``torch.logsumexp(z, -1)``. Differentiable with
    respect to hidden, weight and bias through those three outputs (RL-style use); under ``torch.no_grad``
    it costs one matmul per chunk and nothing is saved.

    Args:
        hidden: (..., H) float32 / bfloat16 / float16 / float64; weight: (V, H); bias: (V,) or None.
        targets: (...) integer in [0, V) or ``ignore_index``.
        temperature: T > 0.
        logit_scale: a > 0 multiplies the logits before the softcap.
        shift: True (or an int n): position i predicts ``targets[..., i + 1]`` (``i + n``); outputs are
            (..., T - n) (see :func:`linear_cross_entropy`).
        return_entropy / return_lse / return_predicted_tokens / return_mean_logit: return a
            :class:`TokenLogprobs` named tuple. predicted_tokens: ``torch.argmax`` of z (first maximal index
            on ties), ``ignore_index`` at ignored positions; mean_logit: (1 / V) sum_j z_j (after the
            temperature), no gradient.
        max_kept_tokens: None (compact; one host sync) or a static bound K >= 1 on the positions whose
            target is not ``ignore_index``: the sync-free mode (see this module's docstring).

    Returns:
        (...) fp32 log-probabilities (float64 for float64 inputs), 0 at ignored positions; or a
        :class:`TokenLogprobs` whose float fields are (...) in that dtype, 0 at ignored positions (None where
        not asked for).
    """
    v.check_head(hidden, weight, bias)
    v.check_targets(targets, hidden)
    v.check_int("ignore_index", ignore_index)
    cap = v.check_softcap(softcap)
    logit_scale = v.check_logit_scale(logit_scale)
    temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
    offset = v.check_shift(shift, targets)
    chunk = v.check_chunk_size(chunk_size)
    max_kept = v.check_max_kept_tokens(max_kept_tokens)
    name = resolve_backend(backend, hidden.device,
                           _features(hidden, logit_scale=logit_scale, argmax=bool(return_predicted_tokens)))

    targets = _shifted(targets, ignore_index, offset)
    logprobs, entropy, lse, argmax, mean_logit = custom_ops.token_logprobs_op(
        hidden.reshape(-1, hidden.shape[-1]), weight, bias, targets.reshape(-1).long(), ignore_index, cap,
        logit_scale, 1.0 / temperature, bool(return_entropy), bool(return_predicted_tokens),
        bool(return_mean_logit), name, chunk, max_kept,
    )

    def per_token(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(targets.shape)
        return x[..., :-offset] if offset else x

    if not (return_entropy or return_lse or return_predicted_tokens or return_mean_logit):
        return per_token(logprobs)
    return TokenLogprobs(
        per_token(logprobs),
        per_token(entropy) if return_entropy else None,
        per_token(lse) if return_lse else None,
        per_token(argmax) if return_predicted_tokens else None,
        per_token(mean_logit) if return_mean_logit else None,
    )


def _unpack_model(name: str, model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if not isinstance(model, (tuple, list)) or len(model) not in (2, 3):
        raise TypeError(
            f"{name} must be a (hidden, weight) or (hidden, weight, bias) tuple, got {type(model).__name__}"
        )
    hidden, weight, *rest = model
    bias = rest[0] if rest else None
    v.check_head(hidden, weight, bias, prefix=f"{name} ")
    return hidden, weight, bias


def influence_delta(
    base,
    ref,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    softcap: float | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Per-token ``log p_ref(target) - log p_base(target)`` (= ce_base - ce_ref), no gradient.

    Args:
        base, ref: (hidden (..., H_m), weight (V, H_m)) or (hidden, weight, bias (V,)) of two models over
            the same tokens; H may differ between them, V must match.
        targets: (...) integer, shared by both.

    Returns:
        (...) fp32 (float64 for float64 inputs), 0 at ignored positions. Neither model's logits are stored.
    """
    base_hidden, base_weight, base_bias = _unpack_model("base", base)
    ref_hidden, ref_weight, ref_bias = _unpack_model("ref", ref)
    if base_weight.shape[0] != ref_weight.shape[0]:
        raise ValueError(
            f"base weight has V={base_weight.shape[0]} but ref weight has V={ref_weight.shape[0]}; V must match"
        )
    if base_hidden.shape[:-1] != ref_hidden.shape[:-1]:
        raise ValueError(
            f"base hidden leading shape {tuple(base_hidden.shape[:-1])} != ref hidden leading shape "
            f"{tuple(ref_hidden.shape[:-1])}"
        )
    if base_hidden.device != ref_hidden.device:
        raise ValueError(f"base is on {base_hidden.device} but ref is on {ref_hidden.device}")
    v.check_targets(targets, base_hidden)
    v.check_int("ignore_index", ignore_index)
    cap = v.check_softcap(softcap)
    temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
    chunk = v.check_chunk_size(chunk_size)
    name = resolve_backend(backend, base_hidden.device, _features(base_hidden))
    with torch.no_grad():
        delta = custom_ops.influence_delta_op(
            base_hidden.reshape(-1, base_hidden.shape[-1]), base_weight, base_bias,
            ref_hidden.reshape(-1, ref_hidden.shape[-1]), ref_weight, ref_bias,
            targets.reshape(-1).long(), ignore_index, cap, 1.0 / temperature, name, chunk,
        )
    return delta.reshape(targets.shape)

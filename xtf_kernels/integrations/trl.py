"""TRL's trainers on a patched model: their fused lm_head path runs through xtf's ``token_logprobs``.

TRL (tested: 1.16) computes every per-token quantity of SFT, GRPO, RLOO, DPO and KTO in one place:
``trl.trainer.utils.add_fused_lm_head(model, temperature=..., outputs=(...))`` replaces ``model.forward`` on the
instance, and ``model(..., labels=labels, fused_lm_head=True)`` then runs the backbone and TRL's own chunked
kernel on ``lm_head.weight``, returning a ``FusedCausalLMOutput`` of per-token ``log_probs``, ``entropy``,
``log_sum_sq_probs``, ``mean_logits`` and ``is_top1`` (next-token shifted, ``(B, T - 1)``, 0 at labels -100).
On a model patched by :func:`~xtf_kernels.integrations.transformers.apply_xtf_kernels` that assignment is
intercepted (before or after patching, either order): the patched forward serves ``fused_lm_head=True`` itself,
with TRL's temperature and requested outputs, and returns the same ``FusedCausalLMOutput``:

- ``log_probs`` / ``entropy``: :func:`xtf_kernels.token_logprobs` with ``temperature``, the model's
  ``final_logit_softcapping`` and logit scale (z = softcap(scale * (h W^T + b)) / T, as TRL applies them),
  differentiable, computed inside the lm_head module's own forward so FSDP2 / ZeRO-3 gather its weight;
- ``is_top1``: the op's argmax (first maximal index, torch's rule, as TRL's) equals the label;
- ``mean_logits``: the op's mean over the vocabulary of z;
- ``log_sum_sq_probs`` (DPO's WPO weighting): log sum_v p_v^2 = lse(2 z) - 2 lse(z), the first term one more
  forward-only pass at temperature T / 2 (2 N H V extra flops, no gradient, as in TRL);
- ``loss``: ``-sum(log_probs) / (num_items_in_batch or labelled tokens)`` plus the MoE load-balancing term,
  TRL's definition.

Rows whose label is -100 are removed before the first matmul (TRL's CPU path projects every position).
A ``token_weights`` batch column (SFT, padded by :class:`~xtf_kernels.integrations.trainer.TokenColumnsCollator`)
multiplies each token's log-prob, so SFT's loss becomes ``sum w nll / num_items_in_batch``; tokens of weight 0
are dropped like labels -100 (no compute, excluded from ``label_mask`` and so from the entropy / accuracy
metrics). An output this module does not know (a newer TRL) falls back to TRL's own kernel with a one-time
:class:`~xtf_kernels.integrations.bypass.XtfBypassWarning` naming it.

``apply_xtf_kernels``' ``label_smoothing``, ``z_loss`` and ``loss_fn`` cannot act here (TRL forms its loss from
the log-probs), so a patched model with any of them refuses ``fused_lm_head=True`` with a ValueError.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from dataclasses import field

import torch

from ..functional import token_logprobs
from .bypass import warn_bypass

__all__ = ["SUPPORTED_OUTPUTS", "TrlFusedHead", "fused_head_outputs", "recognise_fused_head"]

SUPPORTED_OUTPUTS = frozenset({"log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1"})
_IGNORE = -100  # TRL's fused head masks labels == -100, whatever the model's ignore_index
_WRAPPER_NAME, _WRAPPER_MODULE = "_fused_forward", "trl.trainer.utils"


@dataclass(frozen=True)
class TrlFusedHead:
    """What ``add_fused_lm_head`` was called with, read from the forward it installed.

    Attributes:
        temperature: T > 0 the logits are divided by.
        outputs: the per-token fields the trainer asked for.
        cast_lm_head_to_fp32: project in fp32 outside autocast (GRPO / RLOO option).
        wrapper: TRL's own bound forward, kept for the fallback and for ``remove_xtf_kernels``.
    """

    temperature: float
    outputs: tuple[str, ...]
    cast_lm_head_to_fp32: bool
    wrapper: object = field(repr=False, compare=False)


def recognise_fused_head(forward) -> TrlFusedHead | None:
    """``forward`` is the instance forward TRL's ``add_fused_lm_head`` installs: its options, else None.

    The options live in the closure of TRL's ``_fused_forward``; a TRL whose closure lacks them (a version this
    module was not written for) is reported once with :class:`XtfBypassWarning` and left to run its own path.
    """
    function = getattr(forward, "__func__", None)
    code = getattr(function, "__code__", None)
    # functools.wraps gave the wrapper the model forward's name and module: identify it by its code and globals.
    if code is None or code.co_name != _WRAPPER_NAME:
        return None
    if getattr(function, "__globals__", {}).get("__name__") != _WRAPPER_MODULE:
        return None
    cells = dict(zip(function.__code__.co_freevars, (cell.cell_contents for cell in function.__closure__ or ())))
    try:
        temperature = float(cells["temperature"])
        outputs = tuple(cells["outputs"])
        cast = bool(cells["cast_lm_head_to_fp32"])
    except (KeyError, TypeError, ValueError):
        warn_bypass(
            "TRL's fused lm_head (trl.trainer.utils.add_fused_lm_head) of an untested TRL version",
            "Its options could not be read, so TRL's own kernel computes the per-token log-probs; xtf_kernels is "
            "tested with trl>=1.16,<1.17.",
        )
        return None
    return TrlFusedHead(temperature, outputs, cast, forward)


def fused_head_outputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float,
    softcap: float | None,
    logit_scale: float,
    outputs: tuple[str, ...],
    backend: str = "auto",
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """TRL's five per-token fields from xtf's ops (called inside the lm_head's forward by ``head_loss``).

    Args:
        hidden: (B, T, H) final hidden states; weight: (V, H); bias: (V,) or None.
        targets: (B, T) int64 next-token labels, -100 where nothing is scored.
        temperature / softcap / logit_scale: z = softcap(logit_scale * (hidden @ weight.T + bias)) / temperature.
        outputs: TRL's requested fields (``log_probs`` is always computed).

    Returns:
        (log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1), each (B, T) (fp32; is_top1 bool) and 0 /
        False at targets -100, None where not requested. log_probs and entropy carry gradients to hidden,
        weight and bias; the others none.
    """
    options = dict(bias=bias, softcap=softcap, ignore_index=_IGNORE, backend=backend, chunk_size=chunk_size)
    if logit_scale != 1.0:
        options["logit_scale"] = logit_scale
    want_top1 = "is_top1" in outputs
    want_mean = "mean_logits" in outputs
    want_sq = "log_sum_sq_probs" in outputs
    extra = {}
    if want_top1:
        extra["return_predicted_tokens"] = True
    if want_mean:
        extra["return_mean_logit"] = True
    result = token_logprobs(
        hidden, weight, targets, temperature=temperature, return_entropy="entropy" in outputs, return_lse=True,
        **extra, **options,
    )
    kept = targets != _IGNORE
    is_top1 = (result.predicted_tokens == targets) & kept if want_top1 else None
    mean_logits = result.mean_logit.detach().masked_fill(~kept, 0.0) if want_mean else None
    log_sum_sq = None
    if want_sq:
        with torch.no_grad():
            # sum_v p_v^2 = sum_v exp(2 z_v) / (sum_v exp(z_v))^2, and exp(2 z) are the logits at temperature T / 2.
            lse_double = token_logprobs(hidden, weight, targets, temperature=temperature / 2, return_lse=True,
                                        **options).lse
            log_sum_sq = (lse_double - 2 * result.lse.detach()).masked_fill(~kept, 0.0)
    # Fresh tensors, not reshape views of the op's outputs: an engine hooks the module's outputs (FSDP2 registers
    # its pre-backward re-gather on them), and an in-place op on a view would silently bypass that hook.
    entropy = None if result.entropy is None else result.entropy.clone()
    return result.logprobs.clone(), entropy, log_sum_sq, mean_logits, is_top1


def fused_head_forward(model, base_forward, call: dict, run_with_capture):
    """The patched model's answer to ``fused_lm_head=True``: TRL's ``FusedCausalLMOutput`` from xtf's ops.

    ``run_with_capture(model, base_forward, call)`` runs the model's own forward with its head captured and
    returns (output, head, hidden, softcap, logit_scale) (see :mod:`.transformers`).
    """
    fused_head: TrlFusedHead | None = model.__dict__.get("_xtf_trl_head")
    if fused_head is None:
        raise TypeError(
            "fused_lm_head=True is the keyword of TRL's fused lm_head; call trl.trainer.utils.add_fused_lm_head"
            "(model, ...) (TRL's trainers do) so its temperature and outputs are known"
        )
    from trl.trainer.utils import FusedCausalLMOutput

    from .output_head import head_loss

    unknown = sorted(set(fused_head.outputs) - SUPPORTED_OUTPUTS)
    if unknown:
        if call.get("token_weights") is not None:
            raise ValueError(f"token_weights cannot be applied by TRL's own kernel (needed for outputs {unknown})")
        warn_bypass(
            f"TRL's fused lm_head asked for {unknown}",
            "xtf_kernels does not compute these outputs, so TRL's own kernel (trl.kernels.ChunkedLogProbFunction) "
            "ran this call on the lm_head weight.",
        )
        call = {key: value for key, value in call.items() if key != "token_weights"}
        return fused_head.wrapper(fused_lm_head=True, **call)

    options = model._xtf_options
    if options.loss_fn is not None or options.label_smoothing or options.z_loss:
        raise ValueError(
            "TRL's trainers form their loss from per-token log-probs, so apply_xtf_kernels' label_smoothing, z_loss "
            "and loss_fn cannot apply under them; patch the model without these options (or use "
            "transformers.Trainer)"
        )
    labels = call.pop("labels", None)
    shift_labels = call.pop("shift_labels", None)
    num_items = call.pop("num_items_in_batch", None)
    token_weights = call.pop("token_weights", None)
    call.pop("skip_logits", None)
    call.pop("logits_to_keep", None)  # TRL's backbone call ignores it; every position is needed here
    for name in options.loss_columns:
        call.pop(name, None)
    if labels is None and shift_labels is None:
        raise ValueError("fused_lm_head=True needs labels (or shift_labels) to score")
    call["use_cache"] = False
    call["return_dict"] = True
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "output_router_logits", False):
        call.setdefault("output_router_logits", True)

    output, head, hidden, softcap, logit_scale = run_with_capture(model, base_forward, call)
    if shift_labels is None:
        hidden, targets = hidden[:, :-1], labels[:, 1:]
        weights = None if token_weights is None else token_weights[:, 1:]
        name = "labels[:, 1:]"
    else:
        targets, weights, name = shift_labels, token_weights, "shift_labels"
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"{name} has shape {tuple(targets.shape)}; the head's input is {tuple(hidden.shape)}")
    targets = targets.to(hidden.device)
    mask = targets != _IGNORE
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != tuple(targets.shape):
            given = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
            raise ValueError(f"token_weights must be a tensor shaped like {name} {tuple(targets.shape)}, got {given}")
        weights = weights.to(hidden.device, torch.float32)
        mask = mask & (weights != 0)
    scored = targets.masked_fill(~mask, _IGNORE)

    cast = fused_head.cast_lm_head_to_fp32
    no_autocast = torch.autocast(hidden.device.type, enabled=False) if cast else contextlib.nullcontext()
    with no_autocast:
        per_token = head_loss(
            head, hidden.float() if cast else hidden, scored, loss_fn=fused_head_outputs,
            temperature=fused_head.temperature, softcap=softcap, logit_scale=logit_scale, outputs=fused_head.outputs,
            backend=options.backend, chunk_size=options.chunk_size,
        )
    log_probs, entropy, log_sum_sq, mean_logits, is_top1 = per_token
    if weights is not None:
        log_probs = log_probs * weights
    denominator = mask.sum().clamp(min=1) if num_items is None else torch.as_tensor(num_items, device=mask.device)
    loss = -log_probs.sum() / denominator
    aux_loss = output.get("aux_loss") if call.get("output_router_logits") else None
    if aux_loss is not None:
        loss = loss + getattr(config, "router_aux_loss_coef", 0.0) * aux_loss.to(loss.device)
    return FusedCausalLMOutput(
        loss=loss, log_probs=log_probs, entropy=entropy, log_sum_sq_probs=log_sum_sq, mean_logits=mean_logits,
        is_top1=is_top1, label_mask=mask, aux_loss=aux_loss,
    )

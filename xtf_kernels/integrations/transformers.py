"""``apply_xtf_kernels(model)``: a transformers causal LM trains on the fused loss and never builds logits.

    model = AutoModelForCausalLM.from_pretrained(...)
    apply_xtf_kernels(model)        # also xtf_kernels.apply_xtf_kernels; returns the same object

How, for every decoder-only LM at once: the model keeps its own ``forward``; the patched one calls it with
``labels=None`` while the model's output-embedding slot (found through ``get_output_embeddings()``) holds a
capture module for the duration of the call. The capture records the exact tensor the model would
project, the final hidden states after its final norm and ``logits_to_keep`` slicing, and returns an empty
placeholder instead of logits, so nothing architecture-specific before the head is reimplemented. The
loss is then computed by :func:`~xtf_kernels.integrations.output_head.head_loss` inside the real head's
forward (engines gather its weight there) with the model's ``config.final_logit_softcapping`` (Gemma-2 /
Gemma-3) and logit scale (Cohere's ``logit_scale``, Granite's ``logits_scaling``, Falcon-H1's
``lm_head_multiplier``: the config names TRL reads too). The one thing the model may do after its head, transform
the logits, is checked once: on the first fused call the head also projects one position per sequence, the model's
forward transforms it as usual, and the result must equal ``softcap(logit_scale * head(hidden))``; a model that
transforms its logits in any other way fails that check with :class:`UnsupportedModelError` instead of training
on a wrong loss. Models whose forward has no ``labels`` argument, encoder-decoders,
models whose ``loss_function`` is not transformers' ``ForCausalLMLoss``, and heads that are not an
``nn.Linear`` (or PEFT's modules-to-save copy of one) are refused at ``apply_xtf_kernels`` time. MoE
models add ``router_aux_loss_coef * aux_loss`` as their own forward does.

When the fused path runs: ``model.training`` and labels given (``skip_logits=True/False`` in the batch
forces it on / off). The returned output then has ``loss`` and ``logits=None``. In eval, in generation
and without labels the model's own forward runs unchanged and returns logits; an eval batch that carries
``token_weights`` gets its loss from the fused op (same definition as in training) next to the logits.

Loss semantics, matching ``ForCausalLMLoss`` exactly:
- labels are shifted as the model does (``labels[..., 1:]`` padded with ``ignore_index``), or taken as
  given from a ``shift_labels`` keyword (context-parallel / packed collators);
- mean over tokens with ``labels != -100``, or ``sum / num_items_in_batch`` when the Trainer passes its
  gradient-accumulation count (the patched model sets ``accepts_loss_kwargs = True`` so it does);
- an optional ``token_weights`` batch column, per label position like ``labels`` (shifted with them; with
  ``shift_labels`` pass it already shifted), multiplies each token's loss: the mean becomes
  ``sum w l / sum w`` (or ``/ num_items_in_batch``). Token masks from XTF / Token Cleaning arrive either
  as labels already set to -100 (preferred: the Trainer's ``num_items_in_batch`` then counts only kept
  tokens) or as 0/1 ``token_weights``.

``loss_fn`` replaces the training loss while keeping everything above (capture, gathering, shifting):
it is called inside the head's forward as ``loss_fn(hidden, weight, targets, **kw)`` with hidden (B, T, H),
weight (V, H) and shifted targets (B, T); ``kw`` holds only what is set: ``bias``, ``softcap``,
``ignore_index`` (when not -100), ``token_weights`` and each column named in ``loss_columns`` (shifted like
labels). It returns the micro-batch mean; with ``num_items_in_batch`` it is rescaled by (labelled tokens
in the micro-batch) / num_items_in_batch so that gradient accumulation and multi-device averaging sum to
the token-weighted mean, as for the default loss. RHO-1::

    from functools import partial
    from xtf_kernels.methods.rho1 import rho1_loss
    apply_xtf_kernels(model, loss_fn=partial(rho1_loss, keep_ratio=0.6), loss_columns=("ref_losses",))
    # batches carry "ref_losses" (B, T): the reference model's per-token loss at each label position

Distributed engines (apply before wrapping, or before ``fully_shard``; nothing else to do). With
``num_items_in_batch`` the global token count, multiply each rank's loss by the world size before backward
(engines average gradients over ranks; Trainer does this with ``average_tokens_across_devices``):
- DDP: the loss is part of the module's forward; gradients are all-reduced as usual (tested, 2 CPU ranks).
- FSDP2 (``fully_shard``) with the lm_head in its own unit or in the root's: the loss runs inside the
  head's (or root's) forward on the unsharded weight, and FSDP2's pre-backward re-gather and post-backward
  reduce-scatter hooks sit on that call's output and input (tested, 2 CPU ranks, with and without a
  separate head unit, tied embeddings, and a loss whose backward re-reads the weight).
- DeepSpeed ZeRO-3: the head module's pre-forward hook gathers its partitioned weight for the loss call
  and the loss is that module's output, so ZeRO-3 arms the backward re-gather and gradient reduction on
  it; the model's forward must run inside the engine's forward (``engine(**batch)``, as Trainer does)
  (tested, 2 CPU ranks, ``DS_ACCELERATOR=cpu``). A custom loop that needs the weight elsewhere wraps the
  call in ``deepspeed.zero.GatheredParameters([head.weight])`` and still runs it inside the engine's forward.
- FSDP1: the head's ``FullyShardedDataParallel`` wrapper forwards the loss request to the inner
  ``nn.Linear`` inside its unsharded forward (not tested here: FSDP1 is deprecated and CPU-hostile).
Under FSDP2 / ZeRO-3 with the head in its own unit, each training step gathers the head weight once for
the loss call (the capture call does not touch it); the first step gathers it once more for the check.

TRL: ``trl.trainer.utils.add_fused_lm_head`` (called by TRL's trainers) replaces ``model.forward`` on the instance;
on a patched model, before or after patching, that is intercepted and ``model(..., fused_lm_head=True)`` is served
by xtf's ``token_logprobs`` with TRL's temperature and outputs (see :mod:`.trl`). Other instance-level forward
wrappers (accelerate's) stay in front of the patched forward, as they would. A patched model run around xtf (its
head projecting full logits in training with gradients, e.g. a loss computed from ``logits``) warns once per
path with :class:`~xtf_kernels.integrations.bypass.XtfBypassWarning`.

torch.compile: the patched forward traces into one graph (``fullgraph=True`` works; the check above is
skipped while compiling), the fused op being a ``torch.library`` custom op with a fake implementation.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import _validation as v
from ..errors import UnsupportedModelError
from ..ops.registry import check_backend_name
from .bypass import sanctioned_projection
from .output_head import head_loss
from .output_head import output_head_leaves
from .output_head import watch_output_head

__all__ = ["UnsupportedModelError", "XtfLossOptions", "apply_xtf_kernels", "remove_xtf_kernels"]

# Batch keywords the patched forward consumes itself (never passed on to the model's own forward).
_OWN_KEYWORDS = ("token_weights", "skip_logits")
# TRL's keyword for its fused lm_head path (trl.trainer.utils.add_fused_lm_head); consumed, not in the signature.
_TRL_KEYWORD = "fused_lm_head"
# Relative tolerance of the one-time check that the model's logits are softcap(head(hidden)); bf16 logits
# transformed in bf16 differ from the fp32 transform by ~2^-8 relative, a scaled head by >= 10 %.
_PROBE_RTOL = 2e-2


@dataclass(frozen=True)
class XtfLossOptions:
    """What :func:`apply_xtf_kernels` was asked for (stored on the model as ``_xtf_options``)."""

    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    loss_fn: object = None
    loss_columns: tuple[str, ...] = ()
    backend: str = "auto"
    chunk_size: int | None = None


def _unwrap_peft(model: nn.Module) -> nn.Module:
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model) and any(c.__name__ == "PeftModel" for c in type(model).__mro__):
        return get_base_model()
    return model


def _check_model(model: nn.Module, base_cls: type) -> None:
    name = base_cls.__name__
    if not callable(getattr(model, "get_output_embeddings", None)) or getattr(model, "config", None) is None:
        raise UnsupportedModelError(
            f"{name} is not a transformers PreTrainedModel (no get_output_embeddings / config); pass the model "
            "itself, before wrapping it in DDP / DeepSpeed"
        )
    if getattr(model.config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{name} is an encoder-decoder model; apply_xtf_kernels supports causal LMs")
    if "labels" not in inspect.signature(base_cls.forward).parameters:
        raise UnsupportedModelError(f"{name}.forward takes no labels: it is not a causal LM with a training loss")
    from transformers.loss.loss_utils import ForCausalLMLoss

    loss_function = model.loss_function
    if loss_function is not ForCausalLMLoss:
        raise UnsupportedModelError(
            f"{name}.loss_function is {getattr(loss_function, '__name__', loss_function)!r}; the fused loss "
            "reproduces transformers' ForCausalLMLoss only"
        )
    head = model.get_output_embeddings()
    if head is None:
        raise UnsupportedModelError(f"{name} has no output embedding (get_output_embeddings() is None)")
    output_head_leaves(head)


def _forward_signature(base_forward, columns: tuple[str, ...]) -> inspect.Signature:
    """The model's forward signature plus the batch columns this integration consumes.

    Trainer keeps only dataset columns named in ``inspect.signature(model.forward)``, so ``token_weights``
    and the loss columns must appear there to reach the forward.
    """
    signature = inspect.signature(base_forward)
    params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    var_keyword = [p for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    present = {p.name for p in params}
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
        for name in (*_OWN_KEYWORDS, *columns)
        if name not in present
    ]
    if not var_keyword:
        var_keyword = [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
    return signature.replace(parameters=params + extra + var_keyword)


class _ForwardSlot:
    """The patched class's ``forward``: a data descriptor, so an instance-level ``model.forward = f`` is seen.

    Libraries wrap a model by assigning ``model.forward`` on the instance. Two kinds arrive here:
    - TRL's fused lm_head (``trl.trainer.utils.add_fused_lm_head``, installed by SFT / GRPO / DPO / RLOO / KTO
      trainers): its ``fused_lm_head=True`` path reads ``lm_head.weight`` directly and never calls the patched
      forward. Its options (temperature, requested outputs) are recorded instead, and the patched forward
      serves ``fused_lm_head=True`` itself through xtf's ops (see :mod:`.trl`);
    - any other wrapper (accelerate's autocast / fp32-output wrappers, ...): stored and returned as the
      instance's forward, exactly as a plain attribute would be; such wrappers call the patched forward.
    """

    def __init__(self, function):
        self.function = function

    def __get__(self, instance, owner):
        if instance is None:
            return self.function
        override = instance.__dict__.get("_xtf_forward_override")
        return override if override is not None else self.function.__get__(instance, owner)

    def __set__(self, instance, value):
        from .trl import recognise_fused_head

        fused_head = recognise_fused_head(value)
        if fused_head is not None:
            instance.__dict__["_xtf_trl_head"] = fused_head
            instance.__dict__.pop("_xtf_forward_override", None)
        else:
            instance.__dict__["_xtf_forward_override"] = value

    def __delete__(self, instance):
        instance.__dict__.pop("_xtf_forward_override", None)
        instance.__dict__.pop("_xtf_trl_head", None)


def _patched_class(base_cls: type, columns: tuple[str, ...]) -> type:
    base_forward = base_cls.forward
    base_signature = inspect.signature(base_forward)
    consumed = (*_OWN_KEYWORDS, _TRL_KEYWORD, *columns)

    def forward(self, *args, **kwargs):
        own = {name: value for name, value in kwargs.items() if name in consumed}
        bound = base_signature.bind(self, *args, **{k: v for k, v in kwargs.items() if k not in consumed}).arguments
        call = {}
        for name, value in bound.items():
            kind = base_signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                call.update(value)
            elif name != "self":
                call[name] = value
        if "_xtf_options" not in self.__dict__:
            # remove_xtf_kernels ran while a wrapper (TRL's) still held this forward: the model's own forward.
            return base_forward(self, **call)
        call.update(own)
        return _forward(self, base_forward, call)

    def __reduce_ex__(self, protocol):
        # The patched class shares the model class's name, so pickle cannot find it by name: rebuild it.
        return _new_patched, (base_cls, columns), self.__getstate__()

    forward.__signature__ = _forward_signature(base_forward, columns)
    forward.__doc__ = base_forward.__doc__
    return type(
        base_cls.__name__,
        (base_cls,),
        {
            "forward": _ForwardSlot(forward),
            "__reduce_ex__": __reduce_ex__,
            "_xtf_base_class": base_cls,
            "__module__": base_cls.__module__,
            "__qualname__": base_cls.__qualname__,
            "__doc__": base_cls.__doc__,
        },
    )


def _new_patched(base_cls: type, columns: tuple[str, ...]) -> nn.Module:
    """Unpickling / deepcopy constructor: a bare instance of the patched class (state is set afterwards)."""
    instance = base_cls.__new__(base_cls)
    instance.__class__ = _patched_class(base_cls, columns)
    return instance


def apply_xtf_kernels(
    model: nn.Module,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    loss_fn=None,
    loss_columns: tuple[str, ...] | list[str] = (),
    backend: str = "auto",
    chunk_size: int | None = None,
) -> nn.Module:
    """Make ``model`` (a transformers causal LM, or a PEFT model around one) train on the fused loss.

    Patches the instance (its class is swapped for a subclass with the same name whose ``forward``
    wraps the original; other instances are untouched). Calling it again replaces the options.

    Args:
        model: e.g. ``LlamaForCausalLM``, ``Gemma2ForCausalLM``, ``Qwen3ForCausalLM`` or a ``PeftModel``.
        ignore_index: label value that contributes nothing (transformers uses -100).
        label_smoothing / z_loss: extra terms of the training loss (0 = the model's own loss).
        loss_fn: replaces the training loss, see the module docstring (e.g. RHO-1); eval keeps the
            cross-entropy.
        loss_columns: batch columns passed to ``loss_fn`` (shifted like labels), e.g. ``("ref_losses",)``.
        backend / chunk_size: passed to :func:`xtf_kernels.linear_cross_entropy`.

    Returns:
        ``model`` itself.

    Raises:
        UnsupportedModelError: the model's structure is not one the fused loss reproduces (says why).
    """
    v.check_int("ignore_index", ignore_index)
    label_smoothing = v.check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    z_loss = v.check_number("z_loss", z_loss, low=0.0)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or None, got {type(loss_fn).__name__}")
    if isinstance(loss_columns, str) or not all(isinstance(c, str) and c.isidentifier() for c in loss_columns):
        raise TypeError(f"loss_columns must be a sequence of column names, got {loss_columns!r}")
    loss_columns = tuple(loss_columns)
    clash = set(loss_columns) & {"labels", "shift_labels", "num_items_in_batch", *_OWN_KEYWORDS}
    if clash:
        raise ValueError(f"loss_columns must not name {sorted(clash)}: those batch keys are handled already")
    check_backend_name(backend)
    v.check_chunk_size(chunk_size)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")

    target = _unwrap_peft(model)
    base_cls = getattr(type(target), "_xtf_base_class", type(target))
    _check_model(target, base_cls)
    instance_forward = target.__dict__.pop("forward", None)
    if instance_forward is not None:
        from .trl import recognise_fused_head

        if recognise_fused_head(instance_forward) is None:
            target.__dict__["forward"] = instance_forward
            raise UnsupportedModelError(
                f"{base_cls.__name__}.forward was replaced on the instance ({instance_forward!r}) before "
                "apply_xtf_kernels, so the patch would never run; apply it first, then wrap the model"
            )
    target.__class__ = _patched_class(base_cls, loss_columns)
    if instance_forward is not None:
        target.forward = instance_forward  # TRL's fused lm_head, added first: served by xtf from now on
    target._xtf_options = XtfLossOptions(
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, loss_fn=loss_fn,
        loss_columns=loss_columns, backend=backend, chunk_size=chunk_size,
    )
    target._xtf_checked = False
    watch_output_head(target.get_output_embeddings(), True)
    # Trainer passes num_items_in_batch to forward (and trusts the loss to be normalised by it) only when
    # the unwrapped model says it accepts loss kwargs.
    target.accepts_loss_kwargs = True
    return model


def remove_xtf_kernels(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_xtf_kernels` on ``model`` (the head keeps its request-aware class, which behaves
    exactly like the original for ordinary calls)."""
    target = _unwrap_peft(model)
    base_cls = getattr(type(target), "_xtf_base_class", None)
    if base_cls is None:
        return model
    fused_head = target.__dict__.pop("_xtf_trl_head", None)
    override = target.__dict__.pop("_xtf_forward_override", None)
    watch_output_head(target.get_output_embeddings(), False)
    target.__class__ = base_cls
    for name in ("_xtf_options", "_xtf_checked", "_xtf_head_location", "accepts_loss_kwargs"):
        target.__dict__.pop(name, None)
    # Wrappers installed while patched go back to being the instance's forward, as they would have been.
    if override is not None:
        target.__dict__["forward"] = override
    elif fused_head is not None:
        target.__dict__["forward"] = fused_head.wrapper
    return model


# --------------------------------------------------------------------------------------------------
# the patched forward
# --------------------------------------------------------------------------------------------------


def _shift(x: torch.Tensor, fill) -> torch.Tensor:
    """x[..., 1:] padded at the end with ``fill``: ForCausalLMLoss's label shift, for any dtype."""
    return torch.cat([x[..., 1:], x.new_full((*x.shape[:-1], 1), fill)], dim=-1)


def _check_column(name: str, value, labels: torch.Tensor) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor shaped like labels {tuple(labels.shape)}, got {type(value)}")
    if tuple(value.shape) != tuple(labels.shape):
        raise ValueError(f"{name} has shape {tuple(value.shape)} but labels have shape {tuple(labels.shape)}")


class _HeadCapture(nn.Module):
    """Stands in the output-embedding slot during one forward call and records the head's input.

    mode "empty": returns an empty placeholder (no projection at all);
    mode "check": also projects the first position of each sequence through the real head (the
    one-time logits-transform check);
    mode "full": projects everything through the real head (eval with token weights).
    """

    def __init__(self, head: nn.Module, mode: str):
        super().__init__()
        object.__setattr__(self, "head", head)  # not a registered submodule: the real tree is unchanged
        self.mode = mode
        self.hidden = None
        self.head_logits = None

    def forward(self, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs:
            raise UnsupportedModelError(
                "the model calls its output embedding with extra arguments; apply_xtf_kernels expects head(hidden)"
            )
        self.hidden = hidden
        if self.mode == "full":
            with sanctioned_projection():
                return self.head(hidden)
        if self.mode == "check":
            with sanctioned_projection():
                self.head_logits = self.head(hidden[..., :1, :])
            return self.head_logits
        return hidden[..., :0]


def _head_location(model: nn.Module, head: nn.Module) -> tuple[nn.Module, str]:
    cached = model.__dict__.get("_xtf_head_location")
    if cached is not None and cached[0]._modules.get(cached[1]) is head:
        return cached
    for parent in model.modules():
        for name, child in parent._modules.items():
            if child is head:
                model.__dict__["_xtf_head_location"] = (parent, name)
                return parent, name
    raise UnsupportedModelError(
        f"get_output_embeddings() of {type(model).__name__} returns a module that is not one of its submodules"
    )


@contextlib.contextmanager
def _capturing_head(model: nn.Module, head: nn.Module, mode: str):
    parent, name = _head_location(model, head)
    capture = _HeadCapture(head, mode)
    setattr(parent, name, capture)
    try:
        yield capture
    finally:
        setattr(parent, name, head)


def _text_config(model: nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _softcap(model: nn.Module) -> float | None:
    cap = getattr(_text_config(model), "final_logit_softcapping", None)
    return float(cap) if cap else None


def _logit_scale(model: nn.Module) -> float:
    """The constant the model multiplies its head's output by, from its config (1.0 when none).

    Cohere / Cohere2 ``logit_scale`` (multiply), Granite ``logits_scaling`` (divide; HyperCLOVA X multiplies),
    Falcon-H1 ``lm_head_multiplier``, ``output_multiplier``: the names TRL's fused head reads too. The
    one-time check below verifies the model really forms its logits that way.
    """
    config = _text_config(model)
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        value = getattr(config, name, None)
        if value is not None:
            return float(value)
    scaling = getattr(config, "logits_scaling", None)
    if scaling is not None:
        return float(scaling) if getattr(config, "model_type", None) == "hyperclovax" else 1.0 / float(scaling)
    return 1.0


def _check_logit_scale(model: nn.Module) -> float:
    scale = _logit_scale(model)
    if not (math.isfinite(scale) and scale > 0):
        raise UnsupportedModelError(
            f"{type(model).__name__}'s config gives a logit scale of {scale}; the fused loss needs a finite "
            "positive constant"
        )
    return scale


def _check_logits_transform(
    model: nn.Module, output, capture: _HeadCapture, softcap: float | None, logit_scale: float
) -> None:
    """The model's logits must be softcap(logit_scale * head(hidden)); checked on the first fused call's probe
    row."""
    logits = output[0] if isinstance(output, tuple) else getattr(output, "logits", None)
    head_logits = capture.head_logits
    name = type(model).__name__
    if logits is None or head_logits is None or logits.shape != head_logits.shape:
        raise UnsupportedModelError(
            f"{name}.forward does not return the projected logits unchanged in shape; apply_xtf_kernels cannot "
            "tell how it forms its logits"
        )
    with torch.no_grad():
        expected = head_logits.float() * logit_scale
        if softcap:
            expected = softcap * torch.tanh(expected / softcap)
        error = (logits.float() - expected).abs().max().item()
        scale = expected.abs().max().item()
    if not error <= _PROBE_RTOL * scale + 1e-4:
        raise UnsupportedModelError(
            f"{name}.forward transforms its head's output into logits in a way the fused loss does not reproduce "
            f"(expected softcap(logit_scale * head(hidden)) with logit_scale {logit_scale:g} and softcap {softcap} "
            f"from the config; max difference {error:.3g} at logit magnitude {scale:.3g})"
        )


def _with_loss(output, loss: torch.Tensor, drop_logits: bool):
    if isinstance(output, tuple):
        return (loss, *(output[1:] if drop_logits else output))
    fields = dict(output.items())
    fields["loss"] = loss
    if drop_logits:
        fields.pop("logits", None)
    return type(output)(**fields)


def _run_with_capture(model: nn.Module, base_forward, call: dict, *, fused: bool = True):
    """The model's own forward with its head captured: (output, head, hidden, softcap, logit_scale).

    ``hidden`` is the exact (..., H) tensor the model would project; on the first fused call the logits
    transform is checked against softcap(logit_scale * head(hidden)).
    """
    head = model.get_output_embeddings()
    if fused:
        mode = "empty" if model._xtf_checked or torch.compiler.is_compiling() else "check"
    else:
        mode = "full"
    with _capturing_head(model, head, mode) as capture:
        output = base_forward(model, **call)
    hidden = capture.hidden
    if hidden is None:
        raise UnsupportedModelError(f"{type(model).__name__}.forward never called its output embedding")
    softcap = _softcap(model)
    logit_scale = _check_logit_scale(model)
    if mode == "check":
        _check_logits_transform(model, output, capture, softcap, logit_scale)
        model._xtf_checked = True
    return output, head, hidden, softcap, logit_scale


def _forward(model: nn.Module, base_forward, call: dict):
    if call.pop(_TRL_KEYWORD, False):
        from .trl import fused_head_forward

        return fused_head_forward(model, base_forward, call, _run_with_capture)
    options: XtfLossOptions = model._xtf_options
    labels = call.pop("labels", None)
    shift_labels = call.pop("shift_labels", None)
    num_items = call.pop("num_items_in_batch", None)
    token_weights = call.pop("token_weights", None)
    skip_logits = call.pop("skip_logits", None)
    columns = {name: call.pop(name) for name in options.loss_columns if call.get(name) is not None}
    for name in options.loss_columns:
        call.pop(name, None)

    if labels is None and shift_labels is None:
        if token_weights is not None or columns:
            given = ["token_weights"] * (token_weights is not None) + list(columns)
            raise ValueError(f"{', '.join(given)} given without labels: they weight the loss of labelled tokens")
        return base_forward(model, **call)

    fused = model.training if skip_logits is None else bool(skip_logits)
    if not fused and token_weights is None:
        # Eval / logits wanted and nothing the model's own loss cannot do: the model's own forward.
        for key, value in (("labels", labels), ("shift_labels", shift_labels), ("num_items_in_batch", num_items)):
            if value is not None:
                call[key] = value
        with sanctioned_projection():
            return base_forward(model, **call)

    ignore_index = options.ignore_index
    if shift_labels is not None:
        targets = shift_labels
        reference_name = "shift_labels"
    else:
        targets = _shift(labels, ignore_index)
        reference_name = "labels"
    if token_weights is not None:
        _check_column("token_weights", token_weights, targets)
        if shift_labels is None:
            token_weights = _shift(token_weights, 0)
    for name, value in columns.items():
        _check_column(name, value, targets)
        if shift_labels is None:
            columns[name] = _shift(value, 0)

    # Ask for the output object (its aux_loss, its field names) and honour return_dict=False at the end.
    wants_tuple = call.get("return_dict") is False
    if wants_tuple:
        call["return_dict"] = True
    output, head, hidden, softcap, logit_scale = _run_with_capture(model, base_forward, call, fused=fused)
    if tuple(hidden.shape[:-1]) != tuple(targets.shape):
        raise ValueError(
            f"{reference_name} shape {tuple(targets.shape)} does not match the head's input {tuple(hidden.shape)}; "
            "with labels, logits_to_keep must keep every position (0)"
        )
    # As ForCausalLMLoss moves labels to the logits' device (models split over devices).
    targets = targets.to(hidden.device)
    token_weights = None if token_weights is None else token_weights.to(hidden.device)
    columns = {name: value.to(hidden.device) for name, value in columns.items()}

    if model.training and options.loss_fn is not None:
        extra = dict(columns)
        if softcap:
            extra["softcap"] = softcap
        if logit_scale != 1.0:
            extra["logit_scale"] = logit_scale
        if ignore_index != -100:
            extra["ignore_index"] = ignore_index
        if token_weights is not None:
            extra["token_weights"] = token_weights
        loss = head_loss(head, hidden, targets, loss_fn=options.loss_fn, **extra)
        if num_items is not None:
            labelled = (targets != ignore_index).sum()
            loss = loss * labelled / torch.as_tensor(num_items, device=loss.device)
    else:
        scale = {} if logit_scale == 1.0 else {"logit_scale": logit_scale}
        loss = head_loss(
            head, hidden, targets, token_weights=token_weights, ignore_index=ignore_index, reduction="mean",
            num_items_in_batch=num_items, softcap=softcap, label_smoothing=options.label_smoothing,
            z_loss=options.z_loss, backend=options.backend, chunk_size=options.chunk_size, **scale,
        )

    aux_loss = None if isinstance(output, tuple) else output.get("aux_loss")
    aux_coef = getattr(model, "router_aux_loss_coef", None)
    if aux_loss is not None and aux_coef:
        loss = loss + aux_coef * aux_loss.to(loss.device)
    output = _with_loss(output, loss, drop_logits=fused)
    return output.to_tuple() if wants_tuple and not isinstance(output, tuple) else output

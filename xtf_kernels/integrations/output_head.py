"""Run a fused loss inside the output embedding's own forward, whatever engine wraps that module.

Why through the module's forward: under a sharding engine the full lm_head weight exists only while that
module's forward runs, and the engine's backward bookkeeping is attached to that call's inputs and outputs:

- FSDP2 (``fully_shard``): the pre-forward hook all-gathers the parameters, the post-forward hook
  registers the pre-backward re-gather on the call's outputs, and the post-backward reduce-scatter fires
  when the gradient reaches the call's inputs.
- FSDP1 (``FullyShardedDataParallel``): the wrapper unshards around its forward.
- DeepSpeed ZeRO-3: the module's pre-forward hook gathers its partitioned parameters and the gradient
  reduce hooks are armed on its outputs; outside the call the weight is a 0-element placeholder.

Reading ``lm_head.weight`` outside that call gives a local shard (a DTensor, or an empty tensor). So the
loss is requested as a call ``head(hidden, HeadLossRequest(...))``: every wrapper passes the extra
positional argument through to the innermost ``nn.Linear``, whose forward (its class swapped once for a
subclass that knows the request; the module keeps its parameters, hooks and ``isinstance`` answers)
computes the loss from its own, gathered weight and returns it as the module's output.

Wrappers understood between the model's output-embedding slot and the ``nn.Linear`` that owns the weight:
FSDP1 (``_fsdp_wrapped_module``), activation-checkpoint wrappers (``_checkpoint_wrapped_module``) and
PEFT's ``ModulesToSaveWrapper`` (the lm_head listed in ``modules_to_save``: the active copy computes the
loss). A PEFT adapter layer (LoRA, ...) on the lm_head itself is refused: its output is not
``hidden @ weight.T``. A frozen head (``weight.requires_grad`` False, as under LoRA) gets no weight
gradient computed at all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import UnsupportedModelError
from ..functional import linear_cross_entropy
from .bypass import caller_outside_libraries
from .bypass import projection_is_sanctioned
from .bypass import warn_bypass


class HeadLossRequest:
    """The second positional argument of ``head(hidden, request)``: which loss to compute from the weight.

    A plain class on purpose: engines tree-map over call arguments (FSDP2's mixed-precision input cast,
    for one), and a namedtuple or dataclass would be descended into and its token weights cast to bf16.

    Args:
        targets: (...) int64 matching ``hidden``'s leading shape.
        loss_fn: None for :func:`xtf_kernels.linear_cross_entropy`, else a callable
            ``loss_fn(hidden, weight, targets, **options)`` (``bias=`` added when the head has one).
        options: keyword arguments of that call.
    """

    __slots__ = ("targets", "loss_fn", "options")

    def __init__(self, targets: torch.Tensor, loss_fn: Callable | None = None, **options):
        self.targets = targets
        self.loss_fn = loss_fn
        self.options = options

    def run(self, module: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
        """The loss from ``module``'s weight and bias, called from inside ``module``'s forward."""
        weight, bias = module.weight, module.bias
        _check_materialised(module, weight)
        options = dict(self.options)
        device_type = hidden.device.type
        if torch.is_autocast_enabled(device_type):
            # nn.Linear under autocast computes in the autocast dtype; the custom op is not autocast-aware,
            # so cast as F.linear would and run the op with autocast off (its fp32 math stays fp32).
            dtype = torch.get_autocast_dtype(device_type)
            hidden, weight = hidden.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        if bias is not None:
            options["bias"] = bias
        loss_fn = self.loss_fn or linear_cross_entropy
        with torch.autocast(device_type, enabled=False):
            return loss_fn(hidden, weight, self.targets, **options)


def _check_materialised(module: nn.Module, weight) -> None:
    if _is_dtensor(weight):
        raise UnsupportedModelError(
            f"the output embedding weight of {type(module).__name__} is still a DTensor inside its forward "
            f"(placements {weight.placements}): it is sharded by tensor parallelism rather than gathered by "
            "FSDP; use xtf_kernels.integrations.vocab_parallel for a vocabulary-sharded head"
        )
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.numel() == 0:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise UnsupportedModelError(
            f"the output embedding weight is not a materialised (V, H) tensor inside its forward (got {shape}); "
            "under DeepSpeed ZeRO-3 call the loss through the module (head_loss does), not on a parameter read "
            "outside it"
        )
    if not weight.is_floating_point():
        raise UnsupportedModelError(
            f"the output embedding weight has dtype {weight.dtype} (a quantised head?); the fused loss needs a "
            "float32 / bfloat16 / float16 weight"
        )


def _is_dtensor(x) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(x, DTensor)


def _class_names(module: nn.Module) -> set[str]:
    return {cls.__name__ for cls in type(module).__mro__}


# Instance flag of a head leaf whose full-logits projections in training are reported (see watch_output_head).
_WATCHED = "_xtf_watched"
# Original nn.Linear (sub)class -> its request-aware subclass, so each class is derived once.
_REQUEST_AWARE: dict[type, type] = {}


def _new_request_aware(cls: type) -> nn.Module:
    """Unpickling / deepcopy constructor: a bare instance of the derived class (state is set afterwards)."""
    instance = cls.__new__(cls)
    instance.__class__ = _request_aware_class(cls)
    return instance


def _request_aware_class(cls: type) -> type:
    if getattr(cls, "_xtf_request_aware", False):
        return cls
    derived = _REQUEST_AWARE.get(cls)
    if derived is None:

        def forward(self, input, *args, **kwargs):
            if len(args) == 1 and not kwargs and isinstance(args[0], HeadLossRequest):
                return args[0].run(self, input)
            if self.__dict__.get(_WATCHED) and self.training and torch.is_grad_enabled():
                _warn_full_projection()
            return cls.forward(self, input, *args, **kwargs)

        def __reduce_ex__(self, protocol):
            # The derived class shares the original's name, so pickle cannot find it by name: rebuild it.
            return _new_request_aware, (cls,), self.__getstate__()

        derived = type(
            cls.__name__,
            (cls,),
            {
                "forward": forward,
                "__reduce_ex__": __reduce_ex__,
                "_xtf_request_aware": True,
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__,
            },
        )
        _REQUEST_AWARE[cls] = derived
    return derived


def watch_output_head(head: nn.Module, watched: bool) -> None:
    """Turn on (or off) the bypass warning of ``head``'s leaves: ``apply_xtf_kernels`` watches the head of the
    model it patches, so a training-time projection of full logits that does not come from it is reported."""
    for leaf in output_head_leaves(head):
        if watched:
            leaf.__dict__[_WATCHED] = True
        else:
            leaf.__dict__.pop(_WATCHED, None)


def _warn_full_projection() -> None:
    """A plain call of a watched head in training with gradients builds the [tokens x vocab] logits."""
    if projection_is_sanctioned() or torch.compiler.is_compiling():
        return
    warn_bypass(
        "the lm_head projected full logits for training",
        "The model ran without labels (e.g. Trainer's compute_loss_func or label_smoothing_factor, SFTTrainer's "
        "compute_loss_func, or a loss computed from model(...).logits), so the [tokens x vocab] logits were built; "
        "pass labels (and token_weights / apply_xtf_kernels(label_smoothing=..., loss_fn=...)) to train on the "
        "fused ops.",
        caller=caller_outside_libraries(),
    )


def _inner_module(module: nn.Module) -> nn.Module | None:
    """The module an engine wrapper forwards to, or None when ``module`` is not such a wrapper."""
    for attribute in ("_fsdp_wrapped_module", "_checkpoint_wrapped_module"):
        inner = module.__dict__.get("_modules", {}).get(attribute)
        if inner is not None:
            return inner
    return None


def output_head_leaves(head: nn.Module) -> list[nn.Linear]:
    """The ``nn.Linear`` modules that can own the weight of ``head``, made request-aware.

    Raises:
        UnsupportedModelError: a PEFT adapter layer on the head, or a head that is not an ``nn.Linear``.
    """
    if not isinstance(head, nn.Module):
        raise UnsupportedModelError(f"the output embedding must be an nn.Module, got {type(head).__name__}")
    module = head
    while (inner := _inner_module(module)) is not None:
        module = inner
    names = _class_names(module)
    if "ModulesToSaveWrapper" in names:
        leaves = [module.original_module, *module.modules_to_save.values()]
    elif "BaseTunerLayer" in names:
        raise UnsupportedModelError(
            f"the output embedding is a PEFT adapter layer ({type(module).__name__}): its output is "
            "hidden @ weight.T plus the adapter's term, which the fused loss does not compute; leave lm_head "
            "out of target_modules (frozen) or list it in modules_to_save (fully trained)"
        )
    else:
        leaves = [module]
    for leaf in leaves:
        if not isinstance(leaf, nn.Linear):
            raise UnsupportedModelError(
                f"the output embedding is a {type(leaf).__name__}, not an nn.Linear; the fused loss needs the "
                "head to compute hidden @ weight.T (+ bias)"
            )
        if not getattr(type(leaf), "_xtf_request_aware", False):
            leaf.__class__ = _request_aware_class(type(leaf))
    return leaves


def head_loss(
    head: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss_fn: Callable | None = None,
    **options,
) -> torch.Tensor:
    """A fused loss computed inside ``head``'s forward call, on the weight the engine gathered for it.

    Use this in a custom training loop instead of reading ``model.lm_head.weight`` yourself: it works on
    a plain, DDP, FSDP1, FSDP2 (``fully_shard`` on the head or on an ancestor) or DeepSpeed ZeRO-3 model,
    and with PEFT's ``modules_to_save`` wrapper.

    Args:
        head: the output embedding as the model holds it (``model.get_output_embeddings()``), wrappers
            included; call it the way the model does, i.e. this object, not an inner module.
        hidden: (..., H) final hidden states, the head's input dtype.
        targets: (...) int64 token ids or ``ignore_index``.
        loss_fn: None for :func:`xtf_kernels.linear_cross_entropy`; else called as
            ``loss_fn(hidden, weight, targets, **options)`` (plus ``bias=`` when the head has one) with
            the weight (V, H) gathered, e.g. ``functools.partial(rho1_loss, keep_ratio=0.6)``.
        options: keyword arguments of that call (token_weights, reduction, num_items_in_batch, softcap, ...).

    Returns:
        Whatever the loss returns (a () fp32 loss for the default), with gradients to ``hidden`` and to the
        head's weight and bias (none to a frozen weight).
    """
    leaves = output_head_leaves(head)
    request = HeadLossRequest(targets, loss_fn, **options)
    if leaves == [head] and "forward" in head.__dict__:
        # A forward replaced on the instance (TRL's cast_lm_head_to_fp32 sets lm_head.forward to an fp32 F.linear)
        # cannot take the request; with no engine wrapper in between, the weight is the module's own, so the loss
        # is computed from it directly.
        return request.run(head, hidden)
    return head(hidden, request)

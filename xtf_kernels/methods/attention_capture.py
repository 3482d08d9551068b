"""Attention received per key position, captured through the model's attention implementation.

``capture_attention_received(model, layers=..., attention_mask=...)`` switches the model to an attention
function registered in transformers' ``AttentionInterface`` under the name ``"xtf_capture:<original>"``.
It hands the post-RoPE queries and keys of the chosen layers to :func:`xtf_kernels.attention_received`
(no (L x L) map is kept, and ``output_attentions`` is never used), then delegates to the original
implementation (for ``eager``, the ``eager_attention_forward`` of the model's own modeling file), so
the model's outputs are unchanged. The mask function of the original implementation is registered under the
same name. The model's implementation is restored on exit.

Only causal, full (not sliding-window), un-softcapped attention layers can be captured: for the others
the received attention would need their own mask, so choosing one raises ValueError.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator
from collections.abc import Sequence

import torch

from ._causal_lm import num_layers
from ._causal_lm import unwrap

_PREFIX = "xtf_capture:"
_ACTIVE: contextvars.ContextVar[AttentionRecorder | None] = contextvars.ContextVar("xtf_attention_recorder",
                                                                                   default=None)


def resolve_layers(layers: str | Sequence[int], total: int) -> tuple[int, ...]:
    """``"last"`` -> (total - 1,); ``"mean"`` -> all layers; a list of ints (negative counts from the end)."""
    if layers == "last":
        return (total - 1,)
    if layers == "mean":
        return tuple(range(total))
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"attn_layers must be 'last', 'mean' or a non-empty list of layer indices, got {layers!r}")
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -total <= layer < total:
            raise ValueError(f"attn_layers entry {layer!r} is not a layer index of a {total}-layer model")
        out.append(layer % total)
    if len(set(out)) != len(out):
        raise ValueError(f"attn_layers has repeated layers: {list(layers)}")
    return tuple(sorted(out))


class AttentionRecorder:
    """Accumulates the head-mean received attention of the chosen layers for one forward pass.

    After the forward, :meth:`mean` is (B, L) fp32: the mean over the chosen layers and all query heads of
    ``attention_received(q, k)``, 0 at padding.
    """

    def __init__(self, layers: tuple[int, ...], attention_mask: torch.Tensor | None, backend: str):
        self.layers = frozenset(layers)
        self.attention_mask = attention_mask
        self.backend = backend
        self.total: torch.Tensor | None = None
        self.seen: set[int] = set()

    def record(self, module, query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> None:
        layer = getattr(module, "layer_idx", None)
        if layer not in self.layers:
            return
        if kwargs.get("sliding_window") or getattr(module, "sliding_window", None):
            raise ValueError(f"layer {layer} uses sliding-window attention; choose attn_layers among full-attention "
                             "layers")
        if kwargs.get("softcap") or not getattr(module, "is_causal", True):
            raise ValueError(f"layer {layer} uses softcapped or non-causal attention, which attention_received "
                             "does not model; choose other attn_layers")
        from ..attention import attention_received

        scale = kwargs.get("scaling", getattr(module, "scaling", None))
        received = attention_received(query, key, causal=True, scale=scale, attention_mask=self.attention_mask,
                                      backend=self.backend)  # (B, Hq, L) fp32
        per_token = received.mean(dim=1)
        self.total = per_token if self.total is None else self.total + per_token
        self.seen.add(layer)

    def mean(self) -> torch.Tensor:
        missing = sorted(self.layers - self.seen)
        if missing or self.total is None:
            raise RuntimeError(f"no attention was captured for layers {missing}; the model's attention modules "
                               "do not go through transformers' AttentionInterface")
        return self.total / len(self.layers)


def _register(original: str) -> str:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if original == "eager" or (original in ALL_ATTENTION_FUNCTIONS and original in ALL_MASK_ATTENTION_FUNCTIONS):
        base = original
    else:
        base = "sdpa"
    name = _PREFIX + base
    if name in ALL_ATTENTION_FUNCTIONS:
        return name
    if base == "eager":
        delegate = _model_eager_attention
    elif base == "sdpa":
        delegate = sdpa_attention_forward
    else:
        delegate = ALL_ATTENTION_FUNCTIONS[base]

    def capture_forward(module, query, key, value, attention_mask, **kwargs):
        recorder = _ACTIVE.get()
        if recorder is not None:
            recorder.record(module, query, key, kwargs)
        return delegate(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(name, capture_forward)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


def _model_eager_attention(module, *args, **kwargs):
    """The ``eager_attention_forward`` of the module's own modeling file (eager attention is model-specific)."""
    modeling = sys.modules[type(module).__module__]
    eager = getattr(modeling, "eager_attention_forward", None)
    if eager is None:
        raise TypeError(f"{type(module).__name__} has no eager_attention_forward in {modeling.__name__}; load the "
                        "model with attn_implementation='sdpa'")
    return eager(module, *args, **kwargs)


@contextlib.contextmanager
def capture_attention_received(
    model, *, layers: str | Sequence[int] = "mean", attention_mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> Iterator[AttentionRecorder]:
    """Within the block, forward passes of ``model`` feed an :class:`AttentionRecorder` (yielded).

    Args:
        layers: "last", "mean" (all layers) or a list of layer indices.
        attention_mask: (B, L), 1 = real token, of the batch about to be run (None = no padding).
        backend: passed to :func:`xtf_kernels.attention_received`.
    """
    inner = unwrap(model)
    if not callable(getattr(inner, "set_attn_implementation", None)):
        raise TypeError(f"{type(inner).__name__} cannot switch attention implementations; a transformers model "
                        "using the AttentionInterface is needed")
    recorder = AttentionRecorder(resolve_layers(layers, num_layers(inner)), attention_mask, backend)
    original = inner.config._attn_implementation
    inner.set_attn_implementation(_register(original))
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)
        inner.set_attn_implementation(original)

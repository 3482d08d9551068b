"""What the scorers need from a transformers causal LM: its decoder, its lm_head as (weight, bias), and the
transform the model applies to the logits, so per-token log-probs come from the final hidden states and the
lm_head weight through :func:`xtf_kernels.token_logprobs` without building the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LMHead:
    """The model's output layer as the fused ops take it.

    weight: (V, H), the model's dtype; bias: (V,) or None; softcap: Gemma-2's ``final_logit_softcapping``
    (None = off); temperature: logits are divided by it (Granite's ``logits_scaling``, 1 / Cohere's
    ``logit_scale``; 1.0 for most models).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    softcap: float | None
    temperature: float


def unwrap(model):
    """The transformers model inside a PEFT wrapper (unchanged otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def check_causal_lm(model, name: str = "model") -> None:
    """TypeError unless ``model`` is a transformers model with an output embedding and a decoder."""
    inner = unwrap(model)
    if not isinstance(inner, torch.nn.Module) or not hasattr(inner, "config"):
        raise TypeError(f"{name} must be a transformers causal LM (a torch.nn.Module with a config), "
                        f"got {type(model).__name__}")
    if not callable(getattr(inner, "get_output_embeddings", None)) or inner.get_output_embeddings() is None:
        raise TypeError(f"{name} ({type(inner).__name__}) has no lm_head (get_output_embeddings() is None); "
                        "load it with AutoModelForCausalLM")
    if not callable(getattr(inner, "get_decoder", None)):
        raise TypeError(f"{name} ({type(inner).__name__}) has no get_decoder(); a transformers causal LM is needed")


def lm_head_of(model) -> LMHead:
    """The :class:`LMHead` of a transformers causal LM."""
    check_causal_lm(model)
    inner = unwrap(model)
    head = inner.get_output_embeddings()
    weight = head.weight
    bias = getattr(head, "bias", None)
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    softcap = getattr(config, "final_logit_softcapping", None)
    temperature = 1.0
    logits_scaling = getattr(config, "logits_scaling", None)  # Granite: logits / logits_scaling
    if logits_scaling:
        temperature *= float(logits_scaling)
    logit_scale = getattr(config, "logit_scale", None)  # Cohere: logits * logit_scale
    if logit_scale:
        temperature /= float(logit_scale)
    return LMHead(weight, bias, float(softcap) if softcap else None, temperature)


def final_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, H) last hidden states (after the final norm) of ``input_ids`` (B, L); the lm_head is not run."""
    decoder = unwrap(model).get_decoder()
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def num_layers(model) -> int:
    inner = unwrap(model)
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    count = getattr(config, "num_hidden_layers", None)
    if not isinstance(count, int) or count < 1:
        raise TypeError(f"{type(inner).__name__}'s config has no num_hidden_layers; cannot choose attention layers")
    return count


def model_device(model) -> torch.device:
    return next(unwrap(model).parameters()).device

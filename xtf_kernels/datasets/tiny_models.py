"""Tiny randomly initialised causal LMs built from transformers configs, for tests, the demo and benchmarks.

Nothing is downloaded: the model is built from a config with ``torch.manual_seed(seed)`` around the
initialisation, so the same arguments give the same weights. Needs ``transformers``.
"""

from __future__ import annotations

import torch

ARCHITECTURES = ("llama", "qwen2")


def tiny_causal_lm(
    arch: str = "llama",
    *,
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
    tie_word_embeddings: bool = False,
    pad_token_id: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    seed: int = 0,
    attn_implementation: str = "sdpa",
):
    """A ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` of the given size, fp32, in eval mode.

    Args:
        arch: "llama" or "qwen2" (Qwen2 adds q/k/v biases). ``num_kv_heads < num_heads`` gives grouped-query
            attention.
        vocab_size: rows of the embedding and lm_head (e.g. ``len(tokenizer)``).
        seed: initialisation seed (the global RNG state is restored afterwards).
        attn_implementation: "sdpa" (default) or "eager".
    """
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM
    from transformers import Qwen2Config
    from transformers import Qwen2ForCausalLM

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    if num_heads % num_kv_heads or hidden_size % num_heads:
        raise ValueError(
            f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads}) and divide hidden_size "
            f"({hidden_size})"
        )
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_cls(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        attn_implementation=attn_implementation,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval()

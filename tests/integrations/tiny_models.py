"""Tiny random-initialised transformers causal LMs (no downloads) and batches with -100 labels and padding."""

from __future__ import annotations

import copy

import torch

VOCAB = 96
_COMMON = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)

# name -> (config class, model class, extra config). Gemma softcaps are set small (0.5) so that the softcap
# really changes the logits of a random-initialised model (its logits are ~0.5 in size).
ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=8, tie_word_embeddings=False)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=8, final_logit_softcapping=0.5)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(head_dim=8, final_logit_softcapping=0.5)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(tie_word_embeddings=False)),
    "mixtral": (
        "MixtralConfig", "MixtralForCausalLM",
        dict(num_local_experts=4, num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.02),
    ),
}


def tiny_model(name: str, seed: int = 0, **overrides):
    """A fp32 model of architecture ``name`` in train mode, deterministic for ``seed``."""
    import transformers

    config_name, model_name, extra = ARCHITECTURES[name]
    config = getattr(transformers, config_name)(**{**_COMMON, **extra, **overrides})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(config).train()


def twin(model):
    """An independent deep copy (same weights), one to patch and one to keep as the reference."""
    return copy.deepcopy(model)


def batch(batch_size: int = 3, length: int = 11, seed: int = 1, vocab: int = VOCAB):
    """input_ids, attention_mask (right padding) and labels with -100 on a prompt prefix and on padding."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    for row in range(batch_size):
        pad = row % 3  # 0, 1, 2 padded positions
        if pad:
            attention_mask[row, -pad:] = 0
            input_ids[row, -pad:] = 0
            labels[row, -pad:] = -100
        labels[row, : 1 + row % 4] = -100  # a prompt prefix
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

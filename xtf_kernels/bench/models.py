"""Named model heads: the (hidden size, vocabulary, final-logit softcap) of real lm_heads.

The figures are those of each model's published ``config.json`` (``hidden_size``, ``vocab_size``,
``final_logit_softcapping``); the benchmark only needs the head's shape, never the weights.
"""

from __future__ import annotations

from typing import NamedTuple


class ModelHead(NamedTuple):
    """The lm_head of one model: weight (vocab, hidden), logits optionally softcapped (Gemma-2)."""

    name: str
    hidden: int
    vocab: int
    softcap: float | None
    source: str


MODEL_HEADS: dict[str, ModelHead] = {
    head.name: head
    for head in (
        ModelHead("llama3-8b", 4096, 128256, None, "meta-llama/Meta-Llama-3-8B"),
        ModelHead("llama3-70b", 8192, 128256, None, "meta-llama/Meta-Llama-3-70B"),
        ModelHead("llama3.2-1b", 2048, 128256, None, "meta-llama/Llama-3.2-1B"),
        ModelHead("llama3.2-3b", 3072, 128256, None, "meta-llama/Llama-3.2-3B"),
        ModelHead("gemma2-2b", 2304, 256000, 30.0, "google/gemma-2-2b"),
        ModelHead("gemma2-9b", 3584, 256000, 30.0, "google/gemma-2-9b"),
        ModelHead("gemma3-1b", 1152, 262144, None, "google/gemma-3-1b-pt"),
        ModelHead("qwen2.5-0.5b", 896, 151936, None, "Qwen/Qwen2.5-0.5B"),
        ModelHead("qwen2.5-7b", 3584, 152064, None, "Qwen/Qwen2.5-7B"),
        ModelHead("qwen3-8b", 4096, 151936, None, "Qwen/Qwen3-8B"),
        ModelHead("mistral-7b", 4096, 32768, None, "mistralai/Mistral-7B-v0.3"),
        ModelHead("phi3-mini", 3072, 32064, None, "microsoft/Phi-3-mini-4k-instruct"),
    )
}


def model_head(name: str) -> ModelHead:
    """The head called ``name``; ValueError listing the known names otherwise."""
    head = MODEL_HEADS.get(name)
    if head is None:
        raise ValueError(f"model must be one of {sorted(MODEL_HEADS)}, got {name!r}")
    return head

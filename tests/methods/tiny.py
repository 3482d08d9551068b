"""Tiny models and data shared by the methods / pipeline / CLI tests (built in memory, nothing downloaded)."""

from __future__ import annotations

import functools

import torch

from xtf_kernels.datasets import make_arithmetic_sft
from xtf_kernels.datasets import tiny_causal_lm

ARCHS = ("llama", "qwen2")


@functools.cache
def data(n: int = 12, seed: int = 0, noise_fraction: float = 0.3):
    return make_arithmetic_sft(n, seed=seed, noise_fraction=noise_fraction)


def model(arch: str = "llama", *, seed: int = 0, num_layers: int = 3, hidden_size: int = 32, num_heads: int = 4,
          num_kv_heads: int = 2, attn_implementation: str = "sdpa"):
    """A 3-layer, 32-wide model with grouped-query attention (4 q heads, 2 kv heads)."""
    return tiny_causal_lm(arch, vocab_size=len(data().tokenizer), hidden_size=hidden_size, num_layers=num_layers,
                          num_heads=num_heads, num_kv_heads=num_kv_heads, seed=seed,
                          attn_implementation=attn_implementation)


def perturbed(base, seed: int, scale: float = 0.05):
    """A copy of ``base`` with Gaussian noise on every weight: a stand-in for a fine-tuned reference."""
    import copy

    other = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return other

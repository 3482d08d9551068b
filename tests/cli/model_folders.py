"""The saved model folders the CLI tests run on: ``root/base`` (a tiny 2-layer Llama with the dataset's tokenizer)
and ``root/ref`` (the same model perturbed, seed 1: Token Cleaning's reference)."""

from __future__ import annotations

from pathlib import Path

from tests.methods import tiny


def save_base_and_ref(root: Path, dataset):
    """Writes ``root/base`` and ``root/ref``; returns the base model."""
    base = tiny.model("llama", num_layers=2)
    base.save_pretrained(root / "base")
    dataset.tokenizer.to_transformers().save_pretrained(root / "base")
    tiny.perturbed(base, seed=1).save_pretrained(root / "ref")
    return base

"""What the demo runs: sizes of the data splits, the model, the training schedules, the filtering knobs.

Two presets, :data:`QUICK` (``xtf demo --quick``, about a minute on 2 CPU cores) and :data:`DEFAULT`
(``xtf demo``, a few minutes), and :meth:`DemoConfig.replace` for the command line's overrides. Every
field is recorded in ``report.json`` under ``config``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DEVICES = ("auto", "cpu", "cuda")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_fraction(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class DemoConfig:
    """Every knob of one demo run.

    Data (all generated from ``seed``, see :mod:`xtf_kernels.demo.data`):
        train_samples: noisy SFT samples fine-tuned on (the pool the methods filter).
        noise_fraction: expected fraction of corrupted response tokens in them.
        pretrain_samples: clean problems the base model is pretrained on (every token, prompt included).
        warmup_samples: clean SFT samples the Token Cleaning reference model is fine-tuned on.
        heldout_problems: clean problems, none of them in the training pool, for exact match and loss.

    Model (:func:`xtf_kernels.datasets.tiny_causal_lm`): arch, hidden_size, num_layers, num_heads,
    num_kv_heads.

    Schedules (optimizer steps of ``batch_size`` samples, AdamW at a constant rate):
        pretrain_steps / pretrain_lr: base model from its random initialisation.
        warmup_steps / warmup_lr: reference model = base + this much clean fine-tuning.
        finetune_steps / finetune_lr: each of the three fine-tuning runs (all tokens, XTF, Token Cleaning).
        eval_every: held-out loss every this many fine-tuning steps (and after the last).

    Filtering: token_cleaning_k is the kept fraction of Token Cleaning (methods.md default 0.6); XTF runs
    with :class:`xtf_kernels.methods.XTFConfig` defaults.

    Memory comparison (:mod:`xtf_kernels.demo.memory`): memory_batches padded training batches of hidden
    states against an lm_head of memory_vocab rows (the demo model's own 64-row head makes logits
    negligible); memory_batches_cuda on a GPU, where the fused op's chunks are larger. On the CPU each side
    is timed as the median of memory_repeats steps after memory_warmup untimed ones (a GPU uses the
    benchmark's GPU defaults, 3 and 10).

    Report: highlighted_samples training samples are shown token by token in report.html.
    """

    name: str = "default"
    seed: int = 0
    train_samples: int = 2048
    noise_fraction: float = 0.2
    pretrain_samples: int = 2048
    warmup_samples: int = 512
    heldout_problems: int = 400
    arch: str = "llama"
    hidden_size: int = 96
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    batch_size: int = 16
    pretrain_steps: int = 400
    pretrain_lr: float = 3e-3
    warmup_steps: int = 96
    warmup_lr: float = 1e-3
    finetune_steps: int = 384
    finetune_lr: float = 1e-3
    eval_every: int = 32
    token_cleaning_k: float = 0.6
    memory_vocab: int = 128256
    memory_batches: int = 1
    memory_batches_cuda: int = 32
    memory_warmup: int = 1
    memory_repeats: int = 3
    highlighted_samples: int = 12

    def __post_init__(self):
        _check_int("seed", self.seed, 0)
        for name in ("train_samples", "pretrain_samples", "warmup_samples", "heldout_problems", "hidden_size",
                     "num_layers", "num_heads", "num_kv_heads", "batch_size", "pretrain_steps", "warmup_steps",
                     "finetune_steps", "eval_every", "memory_vocab", "memory_batches", "memory_batches_cuda"):
            _check_int(name, getattr(self, name), 1)
        _check_int("highlighted_samples", self.highlighted_samples, 0)
        _check_int("memory_warmup", self.memory_warmup, 0)
        _check_int("memory_repeats", self.memory_repeats, 1)
        _check_fraction("noise_fraction", self.noise_fraction, 0.0, 0.9)
        _check_fraction("token_cleaning_k", self.token_cleaning_k, 0.0, 1.0)
        for name in ("pretrain_lr", "warmup_lr", "finetune_lr"):
            _check_fraction(name, getattr(self, name), 0.0, 1.0)
        if self.arch not in ("llama", "qwen2"):
            raise ValueError(f"arch must be 'llama' or 'qwen2', got {self.arch!r}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size}) and be a "
                             f"multiple of num_kv_heads ({self.num_kv_heads})")

    def replace(self, **changes) -> DemoConfig:
        """A copy with ``changes`` applied (None values ignored), validated."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT = DemoConfig()

# About a minute on 2 CPU cores: a 2-layer, 64-wide model, a quarter of the data and steps, one timed step
# per side of the memory comparison.
QUICK = DemoConfig(
    name="quick",
    train_samples=512,
    pretrain_samples=768,
    warmup_samples=128,
    heldout_problems=200,
    hidden_size=64,
    num_layers=2,
    pretrain_steps=120,
    warmup_steps=32,
    finetune_steps=96,
    eval_every=16,
    memory_warmup=0,
    memory_repeats=1,
    highlighted_samples=8,
)

PRESETS = {"default": DEFAULT, "quick": QUICK}

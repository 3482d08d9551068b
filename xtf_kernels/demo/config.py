"""What the demo runs: the base, the noisy pool, the methods' knobs, the evaluation sizes, the memory check.

Two presets, :data:`QUICK` (``xtf demo --quick``: under 3 minutes on 2 CPU cores from a fresh install, the
small base included) and :data:`DEFAULT` (``xtf demo``: the benchmark's base and pool, a few minutes once
the base is cached), and :meth:`DemoConfig.replace` for the command line's overrides. Every field is
recorded in ``report.json`` under ``config``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..datasets.miniature import BaseConfig

DEVICES = ("auto", "cpu", "cuda")
# The bases the demo can use: "full" is the benchmark's (benchmarks/methods/miniature.py; 1,500 pretraining
# steps, 4-6 minutes on one CPU core, then cached), "quick" a smaller pretraining run of the same model that
# builds in well under a minute. The quick base has not learnt the one-step sums the SFT problems are made
# of (measured, seed 0: SFT takes it from 4.0% to 9.3% exact match, the oracle to 5.3%), so ``--quick``
# checks the pipeline end to end but cannot separate the methods; the full base can (oracle +19.0 points).
BASES = {"full": BaseConfig(), "quick": BaseConfig(documents=6000)}


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_fraction(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class DemoConfig:
    """Every knob of one demo run.

    base: "full" or "quick" (:data:`BASES`), the pretrained miniature base (cached on disk, built on first use).
    Data (:func:`xtf_kernels.datasets.miniature.make_sft`, all from ``seed``): train_samples noisy two-step
    problems with harmful noise at noise_fraction of the response tokens (wrong numbers, off-domain sentences,
    garbled artefacts; boilerplate apart); trusted_samples clean ones (the Token Cleaning / RHO-1 reference is
    the base fine-tuned on them); heldout_problems clean held-out problems; retention_problems of each
    pretraining task.
    Training: one epoch at lr in batches of batch_size (the fused loss over kept tokens).
    Methods: token_cleaning_k and rho1_keep, the kept fractions (methods.md defaults 0.6); XTF as the paper
    preset and with the library's defaults (see :func:`xtf_kernels.demo.experiment.xtf_selections`).
    Memory comparison (:mod:`xtf_kernels.demo.memory`): memory_batches padded training batches of hidden
    states against an lm_head of memory_vocab rows (memory_batches_cuda on a GPU); on the CPU the median of
    memory_repeats steps after memory_warmup untimed ones.
    Report: highlighted_samples training samples shown token by token in report.html.
    """

    name: str = "default"
    seed: int = 0
    base: str = "full"
    train_samples: int = 1200
    noise_fraction: float = 0.15
    trusted_samples: int = 160
    heldout_problems: int = 200
    retention_problems: int = 60
    lr: float = 3e-4
    batch_size: int = 16
    token_cleaning_k: float = 0.6
    rho1_keep: float = 0.6
    memory_vocab: int = 128256
    memory_batches: int = 1
    memory_batches_cuda: int = 32
    memory_warmup: int = 1
    memory_repeats: int = 3
    highlighted_samples: int = 12

    def __post_init__(self):
        _check_int("seed", self.seed, 0)
        if self.base not in BASES:
            raise ValueError(f"base must be one of {tuple(BASES)}, got {self.base!r}")
        for name in ("train_samples", "trusted_samples", "heldout_problems", "retention_problems", "batch_size",
                     "memory_vocab", "memory_batches", "memory_batches_cuda"):
            _check_int(name, getattr(self, name), 1)
        _check_int("highlighted_samples", self.highlighted_samples, 0)
        _check_int("memory_warmup", self.memory_warmup, 0)
        _check_int("memory_repeats", self.memory_repeats, 1)
        _check_fraction("noise_fraction", self.noise_fraction, 0.0, 0.5)
        for name in ("token_cleaning_k", "rho1_keep"):
            _check_fraction(name, getattr(self, name), 0.01, 1.0)
        _check_fraction("lr", self.lr, 1e-7, 1.0)

    def replace(self, **changes) -> DemoConfig:
        """A copy with ``changes`` applied (None values ignored), validated."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT = DemoConfig()

# Under 3 minutes on 2 CPU cores, building the quick base included: a smaller base and pool, one timed step
# per side of the memory comparison.
QUICK = DemoConfig(
    name="quick",
    base="quick",
    train_samples=240,
    trusted_samples=96,
    heldout_problems=150,
    retention_problems=30,
    memory_warmup=0,
    memory_repeats=1,
    highlighted_samples=8,
)

PRESETS = {"default": DEFAULT, "quick": QUICK}

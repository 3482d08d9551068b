"""Score a dataset end to end, keep the results on disk, apply the masks, explain them.

::

    from xtf_kernels.methods import XTFScorer, XTFConfig
    from xtf_kernels.pipeline import score_dataset, write_report

    result = score_dataset(XTFScorer(model, XTFConfig()), "train.jsonl", "scores/", tokenizer=tokenizer)
    result.write_filtered("train.jsonl", "train.filtered.jsonl", tokenizer=tokenizer)   # labels -100 on drops
    write_report(result, data="train.jsonl", tokenizer=tokenizer)                        # report.html

- :func:`score_dataset`: streaming, batched, sharded (safetensors + JSON manifest, atomic writes),
  fingerprinted, resumable (:mod:`~xtf_kernels.pipeline.scoring`, :mod:`~xtf_kernels.pipeline.store`); the
  same call on every rank under torchrun / accelerate launch / srun scores each rank's share of the shards,
  with results identical to one process (:mod:`~xtf_kernels.pipeline.distributed`,
  :mod:`~xtf_kernels.pipeline.topk`); one run per folder (:class:`~xtf_kernels.errors.RunLockedError`,
  :mod:`~xtf_kernels.pipeline.lock`).
- :class:`ScoreResult`: per-sample scores and rule flags; ``apply`` / ``write_filtered`` refuse data whose
  fingerprint differs (:class:`~xtf_kernels.errors.FingerprintMismatchError`); every file is validated on
  read (:class:`~xtf_kernels.errors.CorruptFileError`). ``write_filtered(..., format="dataset" | "parquet")``
  writes a Hugging Face dataset trainers read directly (:mod:`~xtf_kernels.pipeline.export`).
- :func:`write_report`: counts per rule, overlaps, histograms with thresholds, highlighted samples (HTML).
- :func:`load_causal_lm` / :func:`load_tokenizer`: a local transformers model folder, one-line errors.
"""

from __future__ import annotations

from ..errors import RunLockedError
from .fingerprint import config_fingerprint
from .fingerprint import data_fingerprint
from .fingerprint import model_fingerprint
from .loading import load_causal_lm
from .loading import load_tokenizer
from .report import precision_recall
from .report import rule_statistics
from .report import write_report
from .result import ScoreResult
from .result import Shard
from .scoring import score_dataset

__all__ = [
    "RunLockedError",
    "ScoreResult",
    "Shard",
    "config_fingerprint",
    "data_fingerprint",
    "load_causal_lm",
    "load_tokenizer",
    "model_fingerprint",
    "precision_recall",
    "rule_statistics",
    "score_dataset",
    "write_report",
]

"""Score the noisy pool with XTF and Token Cleaning through the streaming pipeline, and keep what the report needs.

Each method runs :func:`xtf_kernels.pipeline.score_dataset` into ``<output_dir>/scores/<method>/`` (sharded
safetensors results, reusable with ``xtf filter``) and :func:`xtf_kernels.pipeline.write_report` there
(that method's own explainability page: per-rule counts, overlaps, histograms, highlighted samples); the
masked samples come back through :meth:`~xtf_kernels.pipeline.ScoreResult.apply`, which checks the data
fingerprint.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from ..datasets import TokenizedSample
from ..methods import TokenCleaningConfig
from ..methods import TokenCleaningScorer
from ..methods import TokenScorer
from ..methods import XTFConfig
from ..methods import XTFScorer
from ..pipeline import ScoreResult
from ..pipeline import score_dataset
from ..pipeline import write_report
from ..pipeline.report import thresholds


@dataclass
class MethodScores:
    """One scoring method's results on the pool.

    result: the on-disk :class:`~xtf_kernels.pipeline.ScoreResult`; filtered: the pool with label -100 on
    every dropped token; statistics: :func:`xtf_kernels.pipeline.rule_statistics`; accuracy:
    :func:`xtf_kernels.pipeline.precision_recall` (each rule and "union"); thresholds: score name ->
    the thresholds deciding its rule; score_values: score name -> (clean, corrupted) fp32 values of the
    scored tokens; seconds: scoring wall time; report_dir: where the method's own report was written.
    """

    name: str
    result: ScoreResult
    filtered: list[TokenizedSample]
    statistics: dict
    accuracy: dict
    thresholds: dict[str, list[float]]
    score_values: dict[str, tuple[torch.Tensor, torch.Tensor]]
    seconds: float
    report_dir: str


def score_values(result: ScoreResult, samples: list[TokenizedSample]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Score name -> (values at clean tokens, values at corrupted tokens), over the scored tokens."""
    clean: dict[str, list[torch.Tensor]] = {name: [] for name in result.score_names}
    noisy: dict[str, list[torch.Tensor]] = {name: [] for name in result.score_names}
    for sample, scored in zip(samples, result.iter_samples()):
        for name, values in scored.scores.items():
            finite = torch.isfinite(values)
            clean[name].append(values[finite & ~sample.noise_mask])
            noisy[name].append(values[finite & sample.noise_mask])
    return {name: (torch.cat(clean[name]), torch.cat(noisy[name])) for name in result.score_names}


def run_scorer(scorer: TokenScorer, samples: list[TokenizedSample], tokenizer, out_dir: str, *,
               batch_size: int, progress: bool, max_report_samples: int = 50) -> MethodScores:
    """Score ``samples`` with ``scorer`` into ``out_dir`` (results replaced), mask them, write the method's
    explainability report there."""
    start = time.perf_counter()
    result = score_dataset(scorer, samples, out_dir, batch_size=batch_size, overwrite=True, progress=progress,
                           source_info={"data": "xtf demo training pool"})
    seconds = time.perf_counter() - start
    filtered = list(result.apply(samples))
    written = write_report(result, out_dir, data=samples, tokenizer=tokenizer, max_samples=max_report_samples)
    accuracy = written["precision_recall"]
    if accuracy is None:
        raise ValueError("the demo's samples carry no noise_mask; precision and recall need the ground truth")
    return MethodScores(scorer.name, result, filtered, written["statistics"], accuracy, thresholds(result),
                        score_values(result, samples), seconds, out_dir)


def score_pool(base, reference, samples: list[TokenizedSample], tokenizer, output_dir: str, *,
               token_cleaning_k: float, batch_size: int, progress: bool) -> dict[str, MethodScores]:
    """XTF (base model only, :class:`~xtf_kernels.methods.XTFConfig` defaults) and fixed-model Token Cleaning
    (base against ``reference``, global top ``token_cleaning_k``), keyed "xtf" / "token_cleaning"."""
    scorers = {
        "xtf": XTFScorer(base, XTFConfig()),
        "token_cleaning": TokenCleaningScorer(base, reference, TokenCleaningConfig(k=token_cleaning_k)),
    }
    out = {}
    for key, scorer in scorers.items():
        out[key] = run_scorer(scorer, samples, tokenizer, os.path.join(output_dir, "scores", key),
                              batch_size=batch_size, progress=progress)
    return out


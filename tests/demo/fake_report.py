"""A hand-written report with every documented field, for tests that need one without running the demo."""

from __future__ import annotations

import copy

from xtf_kernels.demo.config import QUICK


def _evaluation(exact_match: float) -> dict:
    return {"exact_match": exact_match, "format": 0.9, "clean_nll": 0.8, "retention": 0.7,
            "noise_reappears": {"wrong_number": 0.3, "off_domain": 0.0, "garbled": 0.01}}


def _selection(drop: float, precision, recall, auroc) -> dict:
    return {"drop_rate": drop, "precision": precision, "recall": recall, "auroc": auroc, "auprc": 0.4,
            "by_kind": {k: {"recall": recall, "auroc": auroc} for k in ("wrong_number", "off_domain", "garbled")},
            "boilerplate_dropped": 0.5, "protected_dropped": {"template": 0.1, "answer": 0.2, "eos": 0.0},
            "whole_types": 3, "whole_type_examples": ["Ġ=", "<b>", "7"]}


def _paired(mean: float, half: float) -> dict:
    return {"mean": mean, "low": mean - half, "high": mean + half, "permutation_p": 0.04, "mcnemar_p": 0.05,
            "clean_nll": {"mean": -mean / 10, "low": -mean / 10 - 0.01, "high": -mean / 10 + 0.01}}


def _arm(label: str, exact_match, selection=None, versus=None, random=None) -> dict:
    return {"label": label, "evaluation": None if exact_match is None else _evaluation(exact_match),
            "selection": selection, "vs_all_tokens": versus, "vs_random": random, "seconds": 1.5}


def _memory_side(provider: str, extra: int) -> dict:
    return {"provider": provider, "status": "ok", "reason": "", "peak_bytes": extra + 1000, "extra_bytes": extra,
            "ms": 12.5, "tokens_per_second": 5000.0}


REPORT = {
    "format": "xtf-demo-report",
    "version": 3,
    "config": QUICK.to_dict(),
    "environment": {"xtf_kernels": "0.1.0", "torch": "2.x", "transformers": "5.x", "device": "a CPU",
                    "device_type": "cpu", "threads": 1, "load_average": 1.5},
    "data": {"train_samples": 64, "response_tokens": 1000, "noise_fraction": 0.15,
             "kind_fraction": {"wrong_number": 0.05, "off_domain": 0.06, "garbled": 0.04, "boilerplate": 0.03},
             "trusted_samples": 16, "heldout_problems": 200, "vocab_size": 2000},
    "model": {"arch": "llama", "parameters": 1028992, "pretrain_tokens": 700000, "pretrain_final_loss": 0.7,
              "cached": True},
    "base": _evaluation(0.2),
    "reference": _evaluation(0.25),
    "arms": {
        "xtf_KN": _arm("XTF KN alone", None, _selection(0.3, 0.01, 0.02, 0.2)),
        "all_tokens": _arm("all tokens", 0.40),
        "xtf_paper": _arm("XTF (paper preset)", 0.30, _selection(0.4, 0.2, 0.5, 0.55), _paired(-0.10, 0.05),
                          _paired(-0.08, 0.06)),
        "tc_fixed": _arm("Token Cleaning (fixed)", 0.55, _selection(0.4, 0.35, 0.9, 0.8), _paired(0.15, 0.07),
                         _paired(0.12, 0.05)),
        "oracle": _arm("oracle", 0.60, _selection(0.15, 1.0, 1.0, 1.0), _paired(0.2, 0.05)),
        "random:xtf_paper": _arm("random at XTF (paper preset)'s rate", 0.38, _selection(0.4, 0.15, 0.4, 0.5),
                                 _paired(-0.02, 0.05)),
        "random:tc_fixed": _arm("random at Token Cleaning (fixed)'s rate", 0.43, _selection(0.4, 0.15, 0.4, 0.5),
                                _paired(0.03, 0.05)),
    },
    "memory": {"tokens": 736, "hidden": 128, "vocab": 4096, "dtype": "float32", "mode": "fwd_bwd",
               "device": "a CPU", "method": "torch allocator trace (profiler)",
               "fused": _memory_side("xtf-torch", 10 * 2**20), "materialised": _memory_side("torch-materialised",
                                                                                            40 * 2**20),
               "extra_ratio": 4.0},
    "verdict": {"best_arm": "tc_fixed", "filtering_wins": True, "findings": ["a <b>finding</b>"]},
    "timings": {stage: 1.0 for stage in ("base", "methods", "memory", "report", "total")},
    "files": {"json": "report.json", "html": "report.html"},
}


def fake_report() -> dict:
    """A fresh deep copy of :data:`REPORT` (tests may modify it)."""
    return copy.deepcopy(REPORT)

"""A hand-written report with every documented field, for tests that need one without running the demo."""

from __future__ import annotations

import copy

from xtf_kernels.demo.config import QUICK


def _rule(dropped: int, precision: float, recall: float) -> dict:
    return {"dropped": dropped, "fraction": dropped / 1000, "only_this_rule": dropped // 2, "precision": precision,
            "recall": recall, "f1": 2 * precision * recall / (precision + recall)}


def _method(kept: int, exact_match: float, precision, recall: float, f1, rules: dict, scoring) -> dict:
    return {
        "kept_tokens": kept, "dropped_tokens": 1000 - kept, "kept_fraction": kept / 1000, "precision": precision,
        "recall": recall, "f1": f1, "rules": rules, "loss_tokens": 3 * kept, "loss_curve": [2.5, 2.0, 1.5],
        "final_train_loss": 2.0, "eval_steps": [0, 3], "heldout_loss_curve": [0.9, 0.8], "heldout_loss": 0.8,
        "exact_match": exact_match, "train_seconds": 1.5, "tokens_per_second": 1234.5, "scoring_seconds": scoring,
    }


def _memory_side(provider: str, extra: int) -> dict:
    return {"provider": provider, "status": "ok", "reason": "", "peak_bytes": extra + 1000, "extra_bytes": extra,
            "ms": 12.5, "tokens_per_second": 5000.0}


REPORT = {
    "format": "xtf-demo-report",
    "version": 1,
    "config": QUICK.to_dict(),
    "environment": {"xtf_kernels": "0.1.0", "torch": "2.x", "transformers": "5.x", "device": "a CPU",
                    "device_type": "cpu", "threads": 1},
    "data": {"train_samples": 64, "response_tokens": 1000, "noisy_tokens": 200, "noise_fraction": 0.2,
             "pretrain_samples": 96, "warmup_samples": 16, "heldout_problems": 200, "vocab_size": 64},
    "model": {"arch": "llama", "parameters": 83264},
    "base": {"pretrain_final_loss": 0.7, "exact_match": 0.1, "heldout_loss": 0.7},
    "reference": {"exact_match": 0.12, "heldout_loss": 0.6},
    "methods": {
        "all_tokens": _method(1000, 0.10, None, 0.0, None, {}, None),
        "xtf": _method(600, 0.05, 0.25, 0.5, 1 / 3,
                       {"RI": _rule(50, 0.1, 0.025), "KN": _rule(300, 0.01, 0.015), "TR": _rule(200, 0.4, 0.4)}, 0.5),
        "token_cleaning": _method(600, 0.30, 0.4, 0.8, 0.4 * 0.8 * 2 / 1.2, {"low_influence": _rule(400, 0.4, 0.8)},
                                  0.6),
    },
    "xtf_overlap": {"RI&KN": {"both": 10, "jaccard": 0.03, "of_smaller": 0.2},
                    "RI&TR": {"both": 5, "jaccard": 0.02, "of_smaller": 0.1},
                    "KN&TR": {"both": 50, "jaccard": 0.11, "of_smaller": 0.25}},
    "memory": {"tokens": 736, "hidden": 64, "vocab": 4096, "dtype": "float32", "mode": "fwd_bwd", "device": "a CPU",
               "method": "torch allocator trace (profiler)", "fused": _memory_side("xtf-torch", 10 * 2**20),
               "materialised": _memory_side("torch-materialised", 40 * 2**20), "extra_ratio": 4.0},
    "verdict": {"best_method": "token_cleaning", "filtering_wins": True, "margin": 0.085,
                "findings": ["a <b>finding</b>"]},
    "timings": {stage: 1.0 for stage in ("data", "pretrain", "reference", "scoring", "finetune", "evaluation",
                                         "memory", "report", "total")},
    "files": {"json": "report.json", "html": "report.html",
              "scores": {"xtf": "scores/xtf", "token_cleaning": "scores/token_cleaning"},
              "method_reports": {"xtf": "scores/xtf/report.html",
                                 "token_cleaning": "scores/token_cleaning/report.html"}},
}


def fake_report() -> dict:
    """A fresh deep copy of :data:`REPORT` (tests may modify it)."""
    return copy.deepcopy(REPORT)

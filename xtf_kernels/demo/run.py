"""The demo end to end: data, base model, reference model, scoring, three fine-tuning runs, memory, report.

1. data (:mod:`.data`): a noisy arithmetic SFT pool with known corrupted tokens, clean pretraining,
   warm-up and held-out splits, all from the seed.
2. base model: a tiny transformers causal LM from a config (:func:`xtf_kernels.datasets.tiny_causal_lm`,
   random initialisation, nothing downloaded), pretrained on the clean text so it stands in for a
   pretrained checkpoint (XTF scores with the base model only, and a random model knows nothing to score
   with).
3. reference model: the base fine-tuned briefly on the clean warm-up split (Token Cleaning, methods.md 2).
4. scoring (:mod:`.scoring`): XTF and Token Cleaning over the pool through the streaming pipeline.
5. fine-tuning (:mod:`.training`): a fresh copy of the base, the same steps and sample order, on all
   tokens / the XTF-filtered pool / the Token-Cleaning-filtered pool, with the fused loss; held-out loss
   along the way, greedy exact match at the end.
6. memory (:mod:`.memory`): the fused loss against materialised logits at one batch's shape.
7. report (:mod:`.report`, :mod:`.summary`, :mod:`.html`): report.json and report.html, written atomically.
On the CPU two runs with the same config give the same report except its timing fields.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Callable

import torch

from .. import __version__
from .._atomic import atomic_write_bytes
from ..bench.environment import device_description
from ..datasets import exact_match_accuracy
from ..datasets import tiny_causal_lm
from ..pipeline.report import render_samples_html
from .config import DemoConfig
from .data import DemoData
from .data import build_data
from .html import SCORE_TITLES
from .html import build_page
from .memory import compare_memory
from .report import FORMAT
from .report import STAGES
from .report import VERSION
from .report import validate_report
from .report import write_report_json
from .scoring import MethodScores
from .scoring import score_pool
from .summary import verdict
from .training import TrainingRun
from .training import heldout_loss
from .training import train_steps

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
# Scoring batches carry no gradient, so they can be twice the training batch at the same memory.
SCORING_BATCH_FACTOR = 2


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; ``"cuda"`` without a GPU is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device cuda: no CUDA device is available (torch {torch.__version__}); use --device "
                         "cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    return torch.device(name)


class _Stages:
    """Wall time per stage, and one progress line per stage on stderr."""

    def __init__(self, total: int, log: Callable[[str], None]):
        self.total, self.log = total, log
        self.seconds: dict[str, float] = {}
        self.index = 0
        self.begin = time.perf_counter()

    def __call__(self, key: str, what: str):
        self.index += 1
        self.log(f"[{self.index}/{self.total}] {what}")
        return _Stage(self, key)


class _Stage:
    def __init__(self, stages: _Stages, key: str):
        self.stages, self.key = stages, key

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.stages.seconds[self.key] = self.stages.seconds.get(self.key, 0.0) + time.perf_counter() - self.start


def _last_mean(values: list[float], n: int = 10) -> float:
    tail = values[-n:]
    return sum(tail) / len(tail)


def _response_counts(data: DemoData) -> tuple[int, int]:
    response = noisy = 0
    for sample in data.train.samples:
        mask = sample.response_mask
        response += int(mask.sum())
        noisy += int((mask & sample.noise_mask).sum())
    return response, noisy


def _method_entry(run: TrainingRun, exact_match: float, response_tokens: int, scores: MethodScores | None) -> dict:
    if scores is None:
        kept, precision, recall, f1, rules, scoring_seconds = response_tokens, None, 0.0, None, {}, None
    else:
        union = scores.accuracy["union"]
        dropped = scores.statistics["dropped_tokens"]
        kept = response_tokens - dropped
        precision = union["precision"] if dropped else None
        f1 = union["f1"] if dropped else None
        recall = union["recall"]
        scoring_seconds = scores.seconds
        rules = {}
        for rule, stats in scores.statistics["rules"].items():
            accuracy = scores.accuracy[rule]
            rules[rule] = {"dropped": stats["fired"], "fraction": stats["fired"] / response_tokens,
                           "only_this_rule": stats["only_this_rule"], "precision": accuracy["precision"],
                           "recall": accuracy["recall"], "f1": accuracy["f1"]}
    return {
        "kept_tokens": kept, "dropped_tokens": response_tokens - kept, "kept_fraction": kept / response_tokens,
        "precision": precision, "recall": recall, "f1": f1, "rules": rules, "loss_tokens": run.loss_tokens,
        "loss_curve": run.losses, "final_train_loss": _last_mean(run.losses), "eval_steps": run.eval_steps,
        "heldout_loss_curve": run.heldout_losses, "heldout_loss": run.heldout_losses[-1],
        "exact_match": exact_match, "train_seconds": run.seconds, "tokens_per_second": run.tokens_per_second,
        "scoring_seconds": scoring_seconds,
    }


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_demo(config: DemoConfig, output_dir: str | os.PathLike, *, device: torch.device,
             progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Run the demo of ``config`` on ``device``; write report.json, report.html and the scores into
    ``output_dir``; return the report (see :mod:`xtf_kernels.demo.report`)."""
    import transformers

    log = log or (_stderr if progress else (lambda _message: None))
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    torch.manual_seed(config.seed)
    stages = _Stages(7, log)
    # Sample-order seeds of the training runs (10 s + 1, 2, 3), apart from each other; all three fine-tuning runs
    # share one, so they see the same samples in the same steps.
    heldout = config.heldout_problems

    with stages("data", f"data: {config.train_samples} noisy samples, {config.pretrain_samples} pretraining, "
                        f"{config.warmup_samples} warm-up, {heldout} held-out"):
        data = build_data(config)
        heldout_samples = data.heldout_samples
        response_tokens, noisy_tokens = _response_counts(data)

    with stages("pretrain", f"base model: {config.arch}, pretrained {config.pretrain_steps} steps on clean text"):
        base = tiny_causal_lm(config.arch, vocab_size=len(data.tokenizer), hidden_size=config.hidden_size,
                              num_layers=config.num_layers, num_heads=config.num_heads,
                              num_kv_heads=config.num_kv_heads, seed=config.seed).to(device)
        pretrain = train_steps(base, data.pretrain, steps=config.pretrain_steps, lr=config.pretrain_lr,
                               batch_size=config.batch_size, seed=10 * config.seed + 1, desc="pretraining",
                               progress=progress)

    with stages("reference", f"reference model: base + {config.warmup_steps} steps on the clean warm-up split"):
        reference = copy.deepcopy(base)
        train_steps(reference, data.warmup, steps=config.warmup_steps, lr=config.warmup_lr,
                    batch_size=config.batch_size, seed=10 * config.seed + 2, desc="warm-up", progress=progress)

    with stages("scoring", "scoring the pool: XTF (base model) and Token Cleaning (base against reference)"):
        scores = score_pool(base, reference, data.train.samples, data.tokenizer, output_dir,
                            token_cleaning_k=config.token_cleaning_k,
                            batch_size=SCORING_BATCH_FACTOR * config.batch_size, progress=progress)

    evaluation_start = time.perf_counter()
    base_eval = {"pretrain_final_loss": _last_mean(pretrain.losses),
                 "exact_match": exact_match_accuracy(base, data.tokenizer, data.heldout),
                 "heldout_loss": heldout_loss(base, heldout_samples)}
    reference_eval = {"exact_match": exact_match_accuracy(reference, data.tokenizer, data.heldout),
                      "heldout_loss": heldout_loss(reference, heldout_samples)}
    del reference
    base_evaluation_seconds = evaluation_seconds = time.perf_counter() - evaluation_start

    pools = {"all_tokens": (data.train.samples, None), "xtf": (scores["xtf"].filtered, scores["xtf"]),
             "token_cleaning": (scores["token_cleaning"].filtered, scores["token_cleaning"])}
    methods = {}
    with stages("finetune", f"fine-tuning three copies of the base, {config.finetune_steps} steps each"):
        for key, (samples, method_scores) in pools.items():
            model = copy.deepcopy(base)
            run = train_steps(model, samples, steps=config.finetune_steps, lr=config.finetune_lr,
                              batch_size=config.batch_size, seed=10 * config.seed + 3, eval_samples=heldout_samples,
                              eval_every=config.eval_every, desc=f"fine-tuning ({key})", progress=progress)
            start = time.perf_counter()
            exact_match = exact_match_accuracy(model, data.tokenizer, data.heldout)
            evaluation_seconds += time.perf_counter() - start
            methods[key] = _method_entry(run, exact_match, response_tokens, method_scores)
            del model
    # exact match of the fine-tuned models is evaluation time, not fine-tuning time
    stages.seconds["finetune"] -= evaluation_seconds - base_evaluation_seconds
    stages.seconds["evaluation"] = evaluation_seconds

    batches = config.memory_batches_cuda if device.type == "cuda" else config.memory_batches
    longest = max(len(s) for s in data.train.samples)
    memory_tokens = batches * config.batch_size * (longest - 1)
    with stages("memory", f"loss memory: fused against materialised logits at {memory_tokens} x "
                          f"{config.hidden_size} x {config.memory_vocab}"):
        memory = compare_memory(tokens=memory_tokens, hidden=config.hidden_size, vocab=config.memory_vocab,
                                device=device, seed=config.seed, cpu_warmup=config.memory_warmup,
                                cpu_repeats=config.memory_repeats)

    with stages("report", f"report: {os.path.join(output_dir, REPORT_JSON)} and {REPORT_HTML}"):
        report = {
            "format": FORMAT,
            "version": VERSION,
            "config": config.to_dict(),
            "environment": {"xtf_kernels": __version__, "torch": torch.__version__,
                            "transformers": transformers.__version__, "device": device_description(device),
                            "device_type": device.type, "threads": torch.get_num_threads()},
            "data": {"train_samples": len(data.train.samples), "response_tokens": response_tokens,
                     "noisy_tokens": noisy_tokens, "noise_fraction": noisy_tokens / response_tokens,
                     "pretrain_samples": len(data.pretrain), "warmup_samples": len(data.warmup),
                     "heldout_problems": len(data.heldout), "vocab_size": len(data.tokenizer)},
            "model": {"arch": config.arch,
                      "parameters": sum(p.numel() for p in base.parameters() if p.requires_grad)},
            "base": base_eval,
            "reference": reference_eval,
            "methods": methods,
            "xtf_overlap": scores["xtf"].statistics["overlap"],
            "memory": memory,
            "verdict": {},
            "timings": {stage: 0.0 for stage in STAGES},
            "files": {"json": REPORT_JSON, "html": REPORT_HTML,
                      "scores": {key: os.path.join("scores", key) for key in scores},
                      "method_reports": {key: os.path.join("scores", key, "report.html") for key in scores}},
        }
        report["verdict"] = verdict(report)
        validate_report(report)
        panels = []
        for key, method_scores in scores.items():
            for name, (clean, noisy) in method_scores.score_values.items():
                panels.append((SCORE_TITLES.get((key, name), f"{key} {name}"), clean, noisy,
                               method_scores.thresholds.get(name, [])))
        highlighted = {
            key: (s.result.rule_names, render_samples_html(s.result, data.train.samples, data.tokenizer,
                                                           max_samples=config.highlighted_samples))
            for key, s in scores.items()
        }
        page = build_page(report, panels, highlighted)
        atomic_write_bytes(os.path.join(output_dir, REPORT_HTML), page.encode())
    stages.seconds["total"] = time.perf_counter() - stages.begin
    report["timings"] = {stage: stages.seconds[stage] for stage in STAGES}
    write_report_json(os.path.join(output_dir, REPORT_JSON), report)
    return report

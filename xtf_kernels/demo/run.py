"""The demo end to end: base, methods on the noisy pool, paired comparisons, memory, report.

1. base (:func:`xtf_kernels.datasets.miniature.load_base`): the miniature's BPE tokenizer and ~1M-parameter
   Llama-config model pretrained on generated text, read from the on-disk cache or built there (nothing
   downloaded);
2. methods (:func:`xtf_kernels.demo.experiment.run_cell`): the noisy pool, the reference model, every arm
   (all tokens, XTF as the paper preset and with the library's defaults, fixed Token Cleaning, RHO-1, the
   oracle, and a random drop matched to each filter), each trained for one epoch from the base and evaluated
   on clean held-out problems; XTF's single rules are scored, not trained;
3. statistics (:func:`xtf_kernels.demo.aggregate.compare`): each arm against all tokens and against its
   random drop, per held-out problem (interval, permutation test, McNemar);
4. memory (:mod:`.memory`): the fused loss against materialised logits at one batch's shape;
5. report (:mod:`.report`, :mod:`.summary`, :mod:`.html`): report.json and report.html, written atomically.
On the CPU two runs with the same config give the same report except its timing fields.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import torch

from .. import __version__
from .._atomic import atomic_write_bytes
from ..bench.environment import device_description
from ..datasets.miniature import NOISE_KINDS
from ..datasets.miniature import load_base
from .aggregate import compare
from .config import BASES
from .config import DemoConfig
from .experiment import CellArtifacts
from .experiment import CellConfig
from .experiment import label
from .experiment import run_cell
from .html import build_page
from .memory import compare_memory
from .report import FORMAT
from .report import STAGES
from .report import VERSION
from .report import validate_report
from .report import write_report_json
from .summary import verdict

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
FILTERS = ("xtf_paper", "xtf_safe", "tc_fixed", "rho1")
RULES = ("xtf_RI", "xtf_KN", "xtf_TR")


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


def cell_config(config: DemoConfig) -> CellConfig:
    """The demo's arms: all tokens, XTF (paper preset and the library's defaults), fixed Token
    Cleaning, RHO-1, the oracle and a random drop matched to each filter; XTF's rules scored only."""
    return CellConfig(pool=config.train_samples, trusted=config.trusted_samples, heldout=config.heldout_problems,
                      retention=config.retention_problems, lr=config.lr, batch_size=config.batch_size,
                      token_cleaning_k=config.token_cleaning_k, rho1_keep=config.rho1_keep,
                      arms=("all_tokens", *FILTERS, "oracle"), random_for=FILTERS, score_only=RULES)


def _evaluation(entry: dict | None) -> dict | None:
    if entry is None:
        return None
    return {"exact_match": entry["exact_match"], "format": entry["format"], "clean_nll": entry["clean_nll"],
            "retention": entry["retention"]["mean"], "noise_reappears": dict(entry["noise_reappears"])}


def _selection(entry: dict | None) -> dict | None:
    if entry is None:
        return None
    return {"drop_rate": entry["drop_rate"], "precision": entry["harmful"]["precision"],
            "recall": entry["harmful"]["recall"], "auroc": entry["harmful"]["auroc"],
            "auprc": entry["harmful"]["auprc"],
            "by_kind": {k: {"recall": entry["by_kind"][k]["recall"], "auroc": entry["by_kind"][k]["auroc"]}
                        for k in NOISE_KINDS},
            "boilerplate_dropped": entry["boilerplate_drop_rate"],
            "protected_dropped": dict(entry["protected_drop_rate"]), "whole_types": entry["whole_types"]["count"],
            "whole_type_examples": list(entry["whole_types"]["examples"])}


def _paired(entry: dict | None) -> dict | None:
    if entry is None:
        return None
    problems, nll = entry["problems"], entry["clean_nll_problems"]
    return {"mean": problems["mean"], "low": problems["low"], "high": problems["high"],
            "permutation_p": entry["permutation_p"], "mcnemar_p": entry["mcnemar"]["p"],
            "clean_nll": {"mean": nll["mean"], "low": nll["low"], "high": nll["high"]}}


def arm_entries(cell: dict) -> dict:
    """report.json's ``arms`` from a cell and its one-seed comparison."""
    comparison = compare([cell])
    out = {}
    for arm, entry in cell["arms"].items():
        versus = comparison.get(arm, {})
        out[arm] = {"label": label(arm), "evaluation": _evaluation(entry["evaluation"]),
                    "selection": _selection(entry.get("selection")),
                    "vs_all_tokens": _paired(versus.get("vs_all_tokens")),
                    "vs_random": _paired(versus.get("vs_random")), "seconds": entry["seconds"]}
    return out


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_demo(config: DemoConfig, output_dir: str | os.PathLike, *, device: torch.device,
             progress: bool = True, log: Callable[[str], None] | None = None,
             cache_dir: str | os.PathLike | None = None) -> dict:
    """Run the demo of ``config`` on ``device``; write report.json and report.html into ``output_dir``; return
    the report (see :mod:`xtf_kernels.demo.report`)."""
    import transformers

    log = log or (_stderr if progress else (lambda _message: None))
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    seconds: dict[str, float] = {}
    begin = time.perf_counter()
    load_average = os.getloadavg()[0]

    log(f"[1/4] base: the {config.base} miniature base (built once and cached)")
    start = time.perf_counter()
    base = load_base(BASES[config.base], cache_dir=cache_dir, log=log)
    model = base.model.to(device)
    seconds["base"] = time.perf_counter() - start

    log(f"[2/4] methods: {config.train_samples} noisy problems ({config.noise_fraction:.0%} harmful noise), "
        "every arm trained one epoch and evaluated")
    start = time.perf_counter()
    artifacts = CellArtifacts()
    cell = run_cell(model, base.tokenizer, noise=config.noise_fraction, seed=config.seed,
                    config=cell_config(config), log=log, artifacts=artifacts)
    seconds["methods"] = time.perf_counter() - start

    hidden = base.config.hidden_size
    batches = config.memory_batches_cuda if device.type == "cuda" else config.memory_batches
    memory_tokens = batches * config.batch_size * (max(len(s) for s in artifacts.samples) - 1)
    log(f"[3/4] loss memory: fused against materialised logits at {memory_tokens} x {hidden} x "
        f"{config.memory_vocab}")
    start = time.perf_counter()
    memory = compare_memory(tokens=memory_tokens, hidden=hidden, vocab=config.memory_vocab, device=device,
                            seed=config.seed, cpu_warmup=config.memory_warmup, cpu_repeats=config.memory_repeats)
    seconds["memory"] = time.perf_counter() - start

    log(f"[4/4] report: {os.path.join(output_dir, REPORT_JSON)} and {REPORT_HTML}")
    start = time.perf_counter()
    data = cell["data"]
    report = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "environment": {"xtf_kernels": __version__, "torch": torch.__version__,
                        "transformers": transformers.__version__, "device": device_description(device),
                        "device_type": device.type, "threads": torch.get_num_threads(),
                        "load_average": load_average},
        "data": {"train_samples": data["pool"], "response_tokens": data["response_tokens"],
                 "noise_fraction": sum(data["kind_fraction"][k] for k in NOISE_KINDS),
                 "kind_fraction": dict(data["kind_fraction"]), "trusted_samples": data["trusted"],
                 "heldout_problems": data["heldout"], "vocab_size": len(base.tokenizer)},
        "model": {"arch": "llama", "parameters": sum(p.numel() for p in model.parameters()),
                  "pretrain_tokens": int(base.info["tokens"]), "pretrain_final_loss": base.info["final_loss"],
                  "cached": bool(base.info["cached"])},
        "base": _evaluation(cell["base"]),
        "reference": _evaluation(cell["reference"]),
        "arms": arm_entries(cell),
        "memory": memory,
        "verdict": {},
        "timings": {stage: 0.0 for stage in STAGES},
        "files": {"json": REPORT_JSON, "html": REPORT_HTML},
    }
    report["verdict"] = verdict(report)
    validate_report(report)
    page = build_page(report, artifacts, base.tokenizer, highlighted=config.highlighted_samples)
    atomic_write_bytes(os.path.join(output_dir, REPORT_HTML), page.encode())
    seconds["report"] = time.perf_counter() - start
    seconds["total"] = time.perf_counter() - begin
    report["timings"] = {stage: seconds[stage] for stage in STAGES}
    write_report_json(os.path.join(output_dir, REPORT_JSON), report)
    return report

"""When does the miniature's fine-tuning learn the two-step task, base by base? Training on every token and the
oracle (the harmful noise dropped) at 15% noise, each evaluated after every SFT epoch.

Why: the replication (``results/replication*``) found that one epoch of SFT teaches the two-step task to the
base pretrained from seed 0 and not to those from seeds 1 and 2, so exact match could not see a perfect filter
there. This measures the learning curve itself: how many epochs each base needs, and whether the noise still
costs anything once the task is learnt. Epoch 1 is exactly the miniature's cell (same data, order, optimizer
and evaluation as :func:`xtf_kernels.demo.experiment.run_cell`); every later epoch continues the same AdamW
at the same constant rate over the same pool in a new order.

    python -m benchmarks.methods.sft_epochs   # bases 0-3, SFT seeds 5-6, 4 epochs -> results/sft_epochs/
    python -m benchmarks.methods.sft_epochs --refresh  # its Markdown again from its JSON
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch

from benchmarks.methods.miniature import FULL_SIZES
from benchmarks.methods.miniature import machine
from xtf_kernels._atomic import atomic_write_text
from xtf_kernels.datasets.miniature import BaseConfig
from xtf_kernels.datasets.miniature import load_base
from xtf_kernels.demo.experiment import CellConfig
from xtf_kernels.demo.experiment import cell_data
from xtf_kernels.demo.experiment import evaluate
from xtf_kernels.demo.experiment import without_dropped
from xtf_kernels.demo.statistics import paired_interval
from xtf_kernels.methods import finetune

HERE = os.path.dirname(os.path.abspath(__file__))
FORMAT, VERSION = "xtf-miniature-sft-epochs", 1
ARMS = ("all_tokens", "oracle")
# The miniature's sizes; the data are its cells' (cell_data), so epoch 1 reproduces them.
SIZES = CellConfig(**FULL_SIZES)


def learning_curve(base, tokenizer, *, noise: float, seed: int, epochs: int, config: CellConfig = SIZES) -> dict:
    """For each arm of :data:`ARMS`: a fresh copy of ``base`` trained ``epochs`` times over the pool, evaluated
    after each. Returns {"base": evaluation, "arms": {arm: [{"epoch", "exact_match", "clean_nll", "format",
    "retention"}, ...]}}."""
    sft, _trusted, heldout = cell_data(tokenizer, noise=noise, seed=seed, config=config)
    samples = sft.samples
    heldout_samples = heldout.samples(tokenizer)
    oracle = without_dropped(samples, [s.noise_mask & s.response_mask for s in samples])
    out = {"base": _summary(evaluate(base, tokenizer, heldout, heldout_samples)), "arms": {}}
    for arm, arm_samples in zip(ARMS, (samples, oracle)):
        model = copy.deepcopy(base)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                      weight_decay=0.0)
        curve = []
        for epoch in range(1, epochs + 1):
            # Epoch 1 shuffles with the cell's seed (as run_cell); later epochs with seeds no cell uses.
            finetune(model, arm_samples, epochs=1, lr=config.lr, batch_size=config.batch_size,
                     seed=seed if epoch == 1 else 10_000 * epoch + seed, optimizer=optimizer)
            curve.append({"epoch": epoch, **_summary(evaluate(model, tokenizer, heldout, heldout_samples))})
        out["arms"][arm] = curve
    return out


def _summary(evaluation: dict) -> dict:
    return {"exact_match": evaluation["exact_match"], "clean_nll": evaluation["clean_nll"],
            "format": evaluation["format"], "retention": evaluation["retention"]["mean"]}


def report(results: dict) -> str:
    """Markdown: per base and epoch, mean exact match and clean NLL of both arms over seeds and the oracle's
    per-seed difference [95% t interval]."""
    env = results["environment"]
    lines = ["# The miniature's fine-tuning, epoch by epoch", "",
             f"Machine: {env['machine']}; {env['seconds'] / 60:.1f} minutes; "
             f"{results['noise']:.0%} harmful noise; SFT seeds {results['seeds']}; constant lr {results['lr']}, "
             "one AdamW across the epochs. Epoch 1 is the miniature's cell.", "",
             "| base | epoch | all tokens | oracle | oracle - all tokens [95%] | clean NLL: all tokens | oracle "
             "| oracle - all tokens [95%] |", "|---|---|---|---|---|---|---|---|"]
    for base_seed in results["base_seeds"]:
        runs = [r for r in results["runs"] if r["base_seed"] == base_seed]
        before = sum(r["base"]["exact_match"] for r in runs) / len(runs)
        lines.append(f"| {base_seed} | 0 (base) | {before:.3f} | | | | | |")
        for index in range(results["epochs"]):
            row = {arm: [r["arms"][arm][index] for r in runs] for arm in ARMS}
            cells = []
            for metric, digits in (("exact_match", 3), ("clean_nll", 4)):
                means = [sum(e[metric] for e in row[arm]) / len(runs) for arm in ARMS]
                gap = paired_interval([o[metric] - a[metric] for o, a in zip(row["oracle"], row["all_tokens"])])
                cells += [f"{means[0]:.{digits}f}", f"{means[1]:.{digits}f}",
                          f"{gap['mean']:+.{digits}f} [{gap['low']:+.{digits}f}, {gap['high']:+.{digits}f}]"]
            lines.append(f"| {base_seed} | {index + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bases", type=int, nargs="+", default=[0, 1, 2, 3], help="seeds of the pretrained bases")
    parser.add_argument("--seeds", type=int, nargs="+", default=[5, 6], help="SFT seeds (the replication's are 5-9)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "sft_epochs"))
    parser.add_argument("--cache-dir", default=None, help="where the pretrained bases are cached")
    parser.add_argument("--refresh", action="store_true",
                        help="rewrite the Markdown from the output folder's sft_epochs.json (nothing is trained)")
    args = parser.parse_args(argv)
    if args.refresh:
        with open(os.path.join(args.out, "sft_epochs.json"), encoding="utf-8") as handle:
            results = json.load(handle)
        if results.get("format") != FORMAT or results.get("version") != VERSION:
            raise ValueError(f"{args.out}/sft_epochs.json is not a learning-curve result of version {VERSION}")
        atomic_write_text(os.path.join(args.out, "sft_epochs.md"), report(results))
        return 0
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if not 0.0 <= args.noise < 1.0:
        parser.error(f"--noise must be in [0, 1), got {args.noise}")
    torch.set_num_threads(1)
    start, runs = time.perf_counter(), []
    for base_seed in args.bases:
        base = load_base(BaseConfig(seed=base_seed), cache_dir=args.cache_dir,
                         log=lambda message: print(message, file=sys.stderr, flush=True))
        for seed in args.seeds:
            runs.append({"base_seed": base_seed, "seed": seed,
                         **learning_curve(base.model, base.tokenizer, noise=args.noise, seed=seed, epochs=args.epochs)})
            curve = runs[-1]["arms"]
            print(f"base {base_seed} seed {seed}: all tokens "
                  f"{[round(e['exact_match'], 3) for e in curve['all_tokens']]}, oracle "
                  f"{[round(e['exact_match'], 3) for e in curve['oracle']]}", file=sys.stderr, flush=True)
    results = {"format": FORMAT, "version": VERSION,
               "environment": {"machine": machine(), "torch": torch.__version__,
                               "seconds": time.perf_counter() - start},
               "base_seeds": args.bases, "seeds": args.seeds, "epochs": args.epochs, "noise": args.noise,
               "lr": SIZES.lr, "sizes": {"pool": SIZES.pool, "heldout": SIZES.heldout}, "runs": runs}
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "sft_epochs.json"), json.dumps(results, indent=1))
    text = report(results)
    atomic_write_text(os.path.join(args.out, "sft_epochs.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

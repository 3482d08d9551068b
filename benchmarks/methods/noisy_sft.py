"""Synthetic benchmark with known ground truth: which token filter finds the corrupted tokens, and does
fine-tuning on what it keeps beat fine-tuning on everything?

Per seed (everything below is a function of the seed):
1. data: a noisy arithmetic SFT pool (:func:`xtf_kernels.datasets.make_arithmetic_sft`, a known fraction of
   response tokens corrupted by random label tokens and inserted filler), clean pretraining and warm-up
   problems, and clean held-out problems, all disjoint draws;
2. base: a tiny Llama-config model trained from scratch on the clean pretraining set (partly competent);
   ref: the base fine-tuned further on the clean warm-up set (Token Cleaning's and RHO-1's reference);
3. selection quality: precision / recall / F1 of the tokens each method drops against the corrupted
   tokens, over the pool's response tokens: XTF (union and each rule, base model, the paper preset), Token
   Cleaning fixed (base vs ref, global top 60 %), Token Cleaning self-evolving (5 parts; part 0 keeps
   every token), RHO-1 (keep 60 % of each batch by excess loss over ref; the selection in the last epoch),
   a random 40 % drop, and the oracle (drops exactly the corrupted tokens);
4. downstream: the base fine-tuned on the pool with each method's labels (all tokens, XTF's union, XTF's TR
   rule alone, Token Cleaning fixed, random, oracle: same steps, same order, the fused loss averaged over
   kept tokens; self-evolving and RHO-1 train in their own loops with the same number of steps), then
   held-out exact match by greedy decoding.
Reported: mean and sample standard deviation over the seeds.

Run (about 10 minutes on 2 busy CPU cores with the defaults; one torch thread per process is fastest on a
shared machine):

    python -m benchmarks.methods.noisy_sft                       # writes benchmarks/methods/results/
    python -m benchmarks.methods.noisy_sft --seeds 0 --quick     # a smoke run in seconds
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass

import torch

from xtf_kernels.datasets import collate
from xtf_kernels.datasets import exact_match_accuracy
from xtf_kernels.datasets import make_arithmetic_sft
from xtf_kernels.datasets import make_problems
from xtf_kernels.datasets import tiny_causal_lm
from xtf_kernels.datasets.arithmetic import encode_problem
from xtf_kernels.functional import token_logprobs
from xtf_kernels.methods import Safeguards
from xtf_kernels.methods import TokenCleaningConfig
from xtf_kernels.methods import TokenCleaningScorer
from xtf_kernels.methods import XTFConfig
from xtf_kernels.methods import XTFScorer
from xtf_kernels.methods import final_hidden_states
from xtf_kernels.methods import finetune
from xtf_kernels.methods import lm_head_of
from xtf_kernels.methods import rho1_loss
from xtf_kernels.methods import score_samples
from xtf_kernels.methods import self_evolving_cleaning

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class BenchConfig:
    pool_samples: int = 2400
    noise_fraction: float = 0.3
    pretrain_samples: int = 3200
    pretrain_steps: int = 100
    warmup_samples: int = 640
    warmup_steps: int = 40
    heldout_problems: int = 300
    finetune_epochs: int = 2
    batch_size: int = 32
    lr: float = 2e-3
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_operand: int = 9
    k: float = 0.6
    n_parts: int = 5


QUICK = BenchConfig(pool_samples=160, pretrain_samples=160, pretrain_steps=5, warmup_samples=64, warmup_steps=2,
                    heldout_problems=20, finetune_epochs=1, batch_size=16, hidden_size=32)


def _train_steps(model, samples, steps: int, config: BenchConfig, seed: int) -> None:
    """``steps`` optimizer steps over ``samples`` (cycled), one AdamW for the whole run."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    per_epoch = math.ceil(len(samples) / config.batch_size)
    done, epoch = 0, 0
    while done < steps:
        take = min(per_epoch, steps - done)
        finetune(model, samples[: take * config.batch_size] if take < per_epoch else samples, lr=config.lr,
                 batch_size=config.batch_size, seed=seed * 1000 + epoch, optimizer=optimizer)
        done += take
        epoch += 1


def _reference_losses(ref, samples, batch_size: int) -> list[torch.Tensor]:
    """Per sample (L,) fp32: -log p_ref(token t | < t) at response positions, 0 elsewhere."""
    out = []
    head = lm_head_of(ref)
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            group = samples[start : start + batch_size]
            batch = collate(group)
            hidden = final_hidden_states(ref, batch.input_ids, batch.attention_mask)[:, :-1]
            targets = torch.where(batch.response_mask[:, 1:], batch.input_ids[:, 1:], -100)
            logp = token_logprobs(hidden, head.weight, targets, bias=head.bias, softcap=head.softcap)
            for row, sample in enumerate(group):
                losses = torch.zeros(len(sample))
                losses[1:] = -logp[row, : len(sample) - 1]
                out.append(losses)
    return out


def _train_rho1(model, samples, ref_losses, config: BenchConfig, seed: int) -> list[torch.Tensor]:
    """RHO-1 fine-tuning (same schedule as :func:`finetune`); returns per sample the (L,) bool tokens dropped
    when the sample was last seen."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    head = lm_head_of(model)
    dropped = [torch.zeros(len(s), dtype=torch.bool) for s in samples]
    model.train()
    for epoch in range(config.finetune_epochs):
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        for start in range(0, len(order), config.batch_size):
            indices = order[start : start + config.batch_size]
            batch = collate([samples[i] for i in indices])
            width = batch.input_ids.shape[1]
            ref = torch.stack([torch.nn.functional.pad(ref_losses[i], (0, width - len(ref_losses[i])))
                               for i in indices])
            hidden = final_hidden_states(model, batch.input_ids, batch.attention_mask)[:, :-1]
            loss, kept = rho1_loss(hidden, head.weight, batch.labels[:, 1:], ref[:, 1:], keep_ratio=config.k,
                                   bias=head.bias, return_mask=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            labelled = batch.labels[:, 1:] != -100
            for row, i in enumerate(indices):
                length = len(samples[i])
                dropped[i] = torch.zeros(length, dtype=torch.bool)
                dropped[i][1:] = (labelled[row] & ~kept[row])[: length - 1]
    model.eval()
    return dropped


def _quality(samples, dropped) -> dict:
    """Precision / recall / F1 of ``dropped`` (per sample (L,) bool) against the noise masks."""
    tp = predicted = actual = scored = 0
    for sample, mask in zip(samples, dropped):
        valid = sample.response_mask
        truth = sample.noise_mask & valid
        mask = mask & valid
        tp += int((mask & truth).sum())
        predicted += int(mask.sum())
        actual += int(truth.sum())
        scored += int(valid.sum())
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "dropped_fraction": predicted / scored}


def _masked(samples, dropped):
    return [s.with_labels(torch.where(d, torch.full_like(s.labels, -100), s.labels)) for s, d in zip(samples, dropped)]


def run_seed(config: BenchConfig, seed: int, log) -> dict:
    started = time.perf_counter()
    torch.manual_seed(seed)
    pool = make_arithmetic_sft(config.pool_samples, noise_fraction=config.noise_fraction, seed=seed,
                               max_operand=config.max_operand)
    tokenizer = pool.tokenizer
    clean = make_problems(config.pretrain_samples + config.warmup_samples + config.heldout_problems,
                          seed=10_000 + seed, max_operand=config.max_operand)
    pretrain = [encode_problem(p, tokenizer) for p in clean[: config.pretrain_samples]]
    warmup = [encode_problem(p, tokenizer) for p in
              clean[config.pretrain_samples : config.pretrain_samples + config.warmup_samples]]
    heldout = clean[config.pretrain_samples + config.warmup_samples :]
    samples = pool.samples

    base = tiny_causal_lm("llama", vocab_size=len(tokenizer), hidden_size=config.hidden_size,
                          num_layers=config.num_layers, num_heads=config.num_heads, num_kv_heads=config.num_kv_heads,
                          seed=seed)
    _train_steps(base, pretrain, config.pretrain_steps, config, seed)
    ref = copy.deepcopy(base)
    _train_steps(ref, warmup, config.warmup_steps, config, seed + 1)
    accuracy = {"base (no fine-tuning)": exact_match_accuracy(base, tokenizer, heldout),
                "ref (base + clean warm-up)": exact_match_accuracy(ref, tokenizer, heldout)}
    log(f"seed {seed}: base and ref ready ({time.perf_counter() - started:.0f} s)")

    drops: dict[str, list[torch.Tensor]] = {}
    xtf = score_samples(XTFScorer(base, XTFConfig.paper()), samples, batch_size=64)
    drops["XTF (union)"] = [r.dropped for r in xtf]
    for rule in ("RI", "KN", "TR"):
        drops[f"XTF rule {rule}"] = [r.fired(rule) for r in xtf]
    tc = score_samples(TokenCleaningScorer(base, ref, TokenCleaningConfig.paper(k=config.k)), samples, batch_size=64)
    drops["Token Cleaning (fixed)"] = [r.dropped for r in tc]
    rng = random.Random(seed)
    drops["random"] = []
    for s in samples:
        valid = s.response_mask
        drops["random"].append(valid & torch.tensor([rng.random() >= config.k for _ in range(len(s))]))
    drops["oracle"] = [s.noise_mask & s.response_mask for s in samples]
    log(f"seed {seed}: scored ({time.perf_counter() - started:.0f} s)")

    steps_per_epoch = math.ceil(len(samples) / config.batch_size)
    for name in ("all tokens", "XTF (union)", "XTF rule TR", "Token Cleaning (fixed)", "random", "oracle"):
        model = copy.deepcopy(base)
        labels = samples if name == "all tokens" else _masked(samples, drops[name])
        finetune(model, labels, epochs=config.finetune_epochs, lr=config.lr, batch_size=config.batch_size,
                 seed=seed)
        accuracy[name] = exact_match_accuracy(model, tokenizer, heldout)

    optimizers = {}

    def train_part(model, part, index):
        optimizer = optimizers.setdefault(id(model), torch.optim.AdamW(model.parameters(), lr=config.lr))
        finetune(model, part, epochs=config.finetune_epochs, lr=config.lr, batch_size=config.batch_size,
                 seed=seed * 100 + index, optimizer=optimizer)

    evolving = self_evolving_cleaning(base, samples, train_part, n_parts=config.n_parts, k=config.k, batch_size=64,
                                      safeguards=Safeguards.off())
    trained_on = [s for part in evolving.parts for s in part]
    drops["Token Cleaning (self-evolving)"] = [(t.labels == -100) & s.response_mask
                                               for t, s in zip(trained_on, samples)]
    accuracy["Token Cleaning (self-evolving)"] = exact_match_accuracy(evolving.model, tokenizer, heldout)

    model = copy.deepcopy(base)
    drops["RHO-1"] = _train_rho1(model, samples, _reference_losses(ref, samples, 64), config, seed)
    accuracy["RHO-1"] = exact_match_accuracy(model, tokenizer, heldout)
    log(f"seed {seed}: fine-tuned and evaluated ({time.perf_counter() - started:.0f} s)")

    return {
        "seed": seed,
        "noise_fraction_drawn": pool.noise_fraction,
        "steps_per_finetune": steps_per_epoch * config.finetune_epochs,
        "selection": {name: _quality(samples, masks) for name, masks in drops.items()},
        "accuracy": accuracy,
        "seconds": time.perf_counter() - started,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


SELECTION_ORDER = ("XTF (union)", "XTF rule RI", "XTF rule KN", "XTF rule TR", "Token Cleaning (fixed)",
                   "Token Cleaning (self-evolving)", "RHO-1", "random", "oracle")
ACCURACY_ORDER = ("base (no fine-tuning)", "ref (base + clean warm-up)", "all tokens", "XTF (union)",
                  "XTF rule TR", "Token Cleaning (fixed)", "Token Cleaning (self-evolving)", "RHO-1", "random",
                  "oracle")


def summarise(runs: list[dict]) -> dict:
    selection, accuracy = {}, {}
    for name in SELECTION_ORDER:
        selection[name] = {metric: _mean_std([r["selection"][name][metric] for r in runs])
                           for metric in ("precision", "recall", "f1", "dropped_fraction")}
    for name in ACCURACY_ORDER:
        accuracy[name] = _mean_std([r["accuracy"][name] for r in runs])
    return {"selection": selection, "accuracy": accuracy}


def write_results(out_dir: str, config: BenchConfig, runs: list[dict], summary: dict, machine: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    payload = {"config": dataclasses.asdict(config), "machine": machine, "runs": runs, "summary": summary}
    with open(os.path.join(out_dir, "noisy_sft.json"), "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1)
    with open(os.path.join(out_dir, "noisy_sft.csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seed", "kind", "method", "metric", "value"])
        for run in runs:
            for name, metrics in run["selection"].items():
                for metric, value in metrics.items():
                    writer.writerow([run["seed"], "selection", name, metric, f"{value:.6f}"])
            for name, value in run["accuracy"].items():
                writer.writerow([run["seed"], "accuracy", name, "exact_match", f"{value:.6f}"])
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines = [
        "# Token filtering on a noisy arithmetic SFT set (synthetic, known ground truth)",
        "",
        f"Measured {machine['date']} on {machine['machine']} ({machine['threads']} torch thread(s), CPU), seeds "
        f"{seeds}; produced by `python -m benchmarks.methods.noisy_sft`; every number is mean ± sample standard "
        "deviation over the seeds. Setup: " + _setup_text(config, runs) + ".",
        "",
        "## Finding the corrupted tokens",
        "",
        "| method | dropped | precision | recall | F1 |",
        "|---|---|---|---|---|",
    ]
    fmt = lambda pair: f"{pair[0]:.3f} ± {pair[1]:.3f}"
    for name, metrics in summary["selection"].items():
        lines.append(f"| {name} | {fmt(metrics['dropped_fraction'])} | {fmt(metrics['precision'])} | "
                     f"{fmt(metrics['recall'])} | {fmt(metrics['f1'])} |")
    lines += ["", "## Held-out exact match after fine-tuning on what each method keeps", "",
              "| model | exact match |", "|---|---|"]
    for name, pair in summary["accuracy"].items():
        lines.append(f"| {name} | {fmt(pair)} |")
    lines += ["", "Precision is the share of dropped tokens that were corrupted; recall the share of corrupted "
              "tokens dropped; a method that drops at random has precision equal to the noise rate. The oracle "
              "drops exactly the corrupted tokens (an upper bound for filtering, not a method).", ""]
    with open(os.path.join(out_dir, "noisy_sft.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))


def _setup_text(config: BenchConfig, runs: list[dict]) -> str:
    drawn = statistics.fmean(r["noise_fraction_drawn"] for r in runs)
    return (f"pool of {config.pool_samples} samples with {drawn:.1%} of response tokens corrupted (half random "
            f"label tokens, half inserted filler); tiny Llama-config model (hidden {config.hidden_size}, "
            f"{config.num_layers} layers, {config.num_heads} q / {config.num_kv_heads} kv heads) pretrained "
            f"{config.pretrain_steps} steps on {config.pretrain_samples} clean samples (base), reference = base + "
            f"{config.warmup_steps} steps on {config.warmup_samples} clean samples; each fine-tuning run "
            f"{runs[0]['steps_per_finetune']} steps of {config.batch_size} samples at lr {config.lr}; "
            f"k = {config.k}; {config.heldout_problems} held-out problems")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = QUICK if args.quick else BenchConfig()
    log = (lambda message: None) if args.quiet else (lambda message: print(message, flush=True))
    runs = [run_seed(config, seed, log) for seed in args.seeds]
    summary = summarise(runs)
    machine = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
               "threads": args.threads, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    write_results(args.out, config, runs, summary, machine)
    with open(os.path.join(args.out, "noisy_sft.md"), encoding="utf-8") as handle:
        log(handle.read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

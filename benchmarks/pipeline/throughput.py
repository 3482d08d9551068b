"""Scoring throughput of `xtf score` on 1, 2 and 4 processes of this machine (torchrun, gloo on the CPU).

Builds (once, in --work) a Llama-style model from a transformers config (nothing is downloaded) and a
tokenised JSONL set of synthetic samples, then for each world size runs the same command a user runs,
``torchrun --nproc-per-node W -m xtf_kernels score ...`` (a plain ``python -m xtf_kernels score`` for one
process), each process with cores / W torch threads (or --threads), into a fresh results folder. It reports
the wall time of the command and the manifest's tokens/s (overall, and per rank), with the load average
before and after, and appends everything to benchmarks/pipeline/results.json.

    python -m benchmarks.pipeline.throughput                      # XTF, 1 / 2 / 4 processes
    python -m benchmarks.pipeline.throughput --method token-cleaning --worlds 1 2

The masks of every run are checked to be identical to the one-process run's (else it exits with status 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build(work: str, args) -> tuple[str, str]:
    """(model folder, data path), created if missing."""
    from xtf_kernels.datasets import make_arithmetic_sft
    from xtf_kernels.datasets import tiny_causal_lm

    model_dir, data = os.path.join(work, "model"), os.path.join(work, f"data-{args.samples}.jsonl")
    if not os.path.isdir(model_dir):
        model = tiny_causal_lm("llama", vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                               num_heads=8, num_kv_heads=4, max_position_embeddings=args.max_len, seed=0)
        model.save_pretrained(model_dir)
        # the data below is tokenised; `xtf score` still loads the folder's tokenizer (for the report)
        make_arithmetic_sft(1).tokenizer.to_transformers().save_pretrained(model_dir)
        tiny_causal_lm("llama", vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers, num_heads=8,
                       num_kv_heads=4, max_position_embeddings=args.max_len, seed=1).save_pretrained(model_dir + "-ref")
    if not os.path.isfile(data):
        from xtf_kernels._atomic import atomic_open

        generator = torch.Generator().manual_seed(0)
        with atomic_open(data, "w", encoding="utf-8") as out:
            for _ in range(args.samples):
                length = int(torch.randint(args.max_len // 4, args.max_len + 1, (1,), generator=generator))
                ids = torch.randint(3, args.vocab, (length,), generator=generator).tolist()
                out.write(json.dumps({"input_ids": ids, "prompt_length": length // 4}) + "\n")
    return model_dir, data


def run_one(world: int, model_dir: str, data: str, out: str, args) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.threads or max(1, cores // world)
    command = ["-m", "xtf_kernels", "score", data, "--model", model_dir, "--out", out, "--method", args.method,
               "--device", "cpu", "--no-report", "--no-progress", "--overwrite", "--batch-size", str(args.batch_size),
               "--shard-size", str(args.shard_size), "--num-workers", str(args.num_workers)]
    if args.method == "token-cleaning":
        command += ["--ref", model_dir + "-ref"]
    if world > 1:  # torchrun -m xtf_kernels score ...
        command = ["-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-addr", "127.0.0.1",
                   "--master-port", str(29500 + world), *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo"}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"world {world} failed:\n{done.stderr[-4000:]}")
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as handle:
        throughput = json.load(handle)["throughput"]
    return {"world_size": world, "threads_per_process": threads, "wall_s": round(wall, 2),
            "tokens": throughput["tokens"], "tokens_per_s": throughput["tokens_per_s"],
            "scoring_s": throughput["seconds"], "dataset_pass_s": throughput["dataset_pass_seconds"],
            "per_rank_tokens_per_s": [r["tokens_per_s"] for r in throughput["ranks"]],
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def same_masks(a: str, b: str) -> bool:
    from xtf_kernels.pipeline import ScoreResult

    pairs = zip(ScoreResult(a).iter_samples(), ScoreResult(b).iter_samples(), strict=True)
    return all(torch.equal(x.dropped_by, y.dropped_by) for x, y in pairs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "xtf-pipeline-bench"),
                        help="where the model, the data and the results folders go")
    parser.add_argument("--method", choices=("xtf", "token-cleaning"), default="xtf")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=256, help="longest sample; lengths uniform in [max/4, max]")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch threads per process (default: cores / processes)")
    parser.add_argument("--results", default=os.path.join(HERE, "results.json"))
    args = parser.parse_args(argv)

    model_dir, data = build(args.work, args)
    rows, reference = [], None
    for world in args.worlds:
        out = os.path.join(args.work, f"scores-{args.method}-{world}")
        row = run_one(world, model_dir, data, out, args)
        reference = reference or out
        row["masks_identical_to_first"] = same_masks(out, reference)
        rows.append(row)
        print(json.dumps(row), flush=True)
    record = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": _cpu_model(),
              "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
              "torch": torch.__version__, "method": args.method,
              "model": {"arch": "llama", "hidden": args.hidden, "layers": args.layers, "vocab": args.vocab,
                        "dtype": "float32"},
              "data": {"samples": args.samples, "lengths": [args.max_len // 4, args.max_len]},
              "batch_size": args.batch_size, "shard_size": args.shard_size, "num_workers": args.num_workers,
              "runs": rows}
    history = []
    if os.path.isfile(args.results):
        with open(args.results, encoding="utf-8") as handle:
            history = json.load(handle)
    from xtf_kernels._atomic import atomic_write_text

    atomic_write_text(args.results, json.dumps([*history, record], indent=1) + "\n")
    return 0 if all(row["masks_identical_to_first"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

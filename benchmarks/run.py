"""The benchmark in one command: on the device it finds, time every provider side by side.

    python benchmarks/run.py                      # GPU: the `gpu` suite; CPU: the `cpu-targets` suite
    python benchmarks/run.py --suite cpu-quick    # seconds on a CPU
    python benchmarks/run.py --output "$OUT/results.csv" --output benchmarks/data/results.csv --plot run.png

Prints one table per case (median ms, effective TFLOP/s, peak and extra memory, ratios to the best
peer), the verdicts of the targets that the run covers, and appends the rows to the data files
(default benchmarks/data/results.csv). Suites, providers and how things are measured:
xtf_kernels/bench/ (suites.py, providers/, timing.py, memory.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from xtf_kernels.bench.runner import RunSettings  # noqa: E402
from xtf_kernels.bench.runner import SuiteEntry  # noqa: E402
from xtf_kernels.bench.session import measure_and_record  # noqa: E402
from xtf_kernels.bench.suites import SUITES  # noqa: E402
from xtf_kernels.bench.suites import suite  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "results.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), help="case set (default: gpu on CUDA, cpu-targets on CPU)")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    parser.add_argument("--providers", help="comma-separated provider names to keep (default: the suite's)")
    parser.add_argument(
        "--output", action="append", help=f"results CSV to append to (repeatable; default {DEFAULT_DATA})"
    )
    parser.add_argument("--plot", help="write a PNG of this run")
    parser.add_argument("--warmup", type=int, help="untimed steps per worker (default: 3 CUDA, 1 CPU)")
    parser.add_argument("--repeats", type=int, help="timed steps per worker (default: 10 CUDA, 3 CPU)")
    parser.add_argument("--rounds", type=int, help="workers per (case, provider), interleaved (default 1)")
    parser.add_argument("--timeout", type=float, help="seconds per worker process")
    parser.add_argument("--run-id", help="share one run id across invocations that split a run (see report.py)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    entries = suite(args.suite or ("gpu" if device.type == "cuda" else "cpu-targets"))
    if args.providers:
        keep = {name.strip() for name in args.providers.split(",") if name.strip()}
        entries = [SuiteEntry(e.case, tuple(p for p in e.providers if p in keep)) for e in entries]
        entries = [e for e in entries if e.providers]
        if not entries:
            parser.error(f"--providers {args.providers!r} leaves no (case, provider) to run in this suite")
    settings = RunSettings.for_device(
        device, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds, timeout_s=args.timeout,
        run_id=args.run_id,
    )
    measure_and_record(entries, settings, outputs=args.output or [DEFAULT_DATA], plot=args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

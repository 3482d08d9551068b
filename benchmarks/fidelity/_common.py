"""Shared by the fidelity experiments: atomic result files and a record of the machine they ran on."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from xtf_kernels._atomic import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def parse_experiment_args(description: str, quick_help: str, argv: list[str] | None) -> argparse.Namespace:
    """The experiments' shared command line (--quick, --out, --threads); also sets torch's thread count."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=RESULTS, help="output directory (default results/)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }

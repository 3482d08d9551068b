"""Shared by the fidelity experiments: atomic result files and a record of the machine they ran on."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from xtf_kernels._atomic import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


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

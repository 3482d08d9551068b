"""Shared by the fidelity experiments: atomic result files and a record of the machine they ran on."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def write_atomically(path: Path, write) -> None:
    """Call write(temporary_path), then move the file into place, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; results are meant to be read by everyone
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(path: Path, payload: dict) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(json.dumps(payload, indent=2) + "\n"))


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }

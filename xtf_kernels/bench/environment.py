"""Where a measurement was taken: device name, library versions and the git commit of the code."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path

import torch


def device_description(device: torch.device) -> str:
    """e.g. "NVIDIA H200" or "AMD EPYC 7B13 (2 cpus, 2 torch threads)"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model or 'CPU'} ({os.cpu_count()} cpus, {torch.get_num_threads()} torch threads)"


def package_version(distribution: str | None) -> str:
    """Installed version of a distribution ("" when not installed); xtf_kernels reads its own __version__."""
    if not distribution:
        return ""
    if distribution == "xtf_kernels":
        from .. import __version__

        return __version__
    if distribution == "torch":
        return torch.__version__
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def git_sha() -> str:
    """Commit of the source tree the package is imported from ("" outside a git checkout)."""
    source_dir = Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "-C", str(source_dir), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""

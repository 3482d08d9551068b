"""The record of what setup.py built, ``xtf_kernels/build_info.json``, validated on read.

setup.py writes it atomically at every build (a pure-Python build records why nothing was compiled), and
``python -m xtf_kernels.env`` prints it. Schema 1, every key required:

    schema        1
    version       the installed distribution's version, e.g. "0.1.0+cu130"
    built         whether xtf_kernels._C was compiled
    reason        why not (str) when built is false, else null
    cuda_version  "13.0" (the nvcc release) when built, else null
    archs         SM architectures with machine code, e.g. [80, 90]; [] when not built
    ptx_arch      the architecture also shipped as PTX (the newest of archs), or null
    nvcc          path of the nvcc used, or null
    nvcc_flags    the compile flags (list of str)
    host_compiler first line of the host compiler's --version, or null
    python        the building interpreter's version; platform: sysconfig platform
    git_sha       40-hex commit of the source tree, or null outside a git checkout
    built_at      ISO 8601 UTC time of the build
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import NamedTuple

from ...errors import CorruptFileError

BUILD_INFO_PATH = Path(__file__).resolve().parents[2] / "build_info.json"
SCHEMA = 1


class BuildInfo(NamedTuple):
    version: str
    built: bool
    reason: str | None
    cuda_version: str | None
    archs: tuple[int, ...]
    ptx_arch: int | None
    nvcc: str | None
    nvcc_flags: tuple[str, ...]
    host_compiler: str | None
    python: str
    platform: str
    git_sha: str | None
    built_at: str

    @property
    def cuda_runtime_version(self) -> int | None:
        """The CUDA version as the runtime encodes it (13.0 -> 13000), or None when not built."""
        if self.cuda_version is None:
            return None
        major, minor = self.cuda_version.split(".")
        return int(major) * 1000 + int(minor) * 10


_OPTIONAL_STR = (str, type(None))
_TYPES: dict[str, tuple[type, ...]] = {
    "schema": (int,),
    "version": (str,),
    "built": (bool,),
    "reason": _OPTIONAL_STR,
    "cuda_version": _OPTIONAL_STR,
    "archs": (list,),
    "ptx_arch": (int, type(None)),
    "nvcc": _OPTIONAL_STR,
    "nvcc_flags": (list,),
    "host_compiler": _OPTIONAL_STR,
    "python": (str,),
    "platform": (str,),
    "git_sha": _OPTIONAL_STR,
    "built_at": (str,),
}


def _problem(record: object) -> str | None:
    """What is wrong with a decoded record, or None when it follows schema 1."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = sorted(set(_TYPES) - set(record))
    if missing:
        return f"missing keys {missing}"
    for key, types in _TYPES.items():
        value = record[key]
        # bool is an int subclass: a schema or arch of true/false is still wrong.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"{key!r} has type {type(value).__name__}"
    if record["schema"] != SCHEMA:
        return f"schema {record['schema']} is not the supported {SCHEMA}"
    archs = record["archs"]
    if not all(isinstance(a, int) and not isinstance(a, bool) and a > 0 for a in archs):
        return f"'archs' must be positive integers, got {archs}"
    if not all(isinstance(flag, str) for flag in record["nvcc_flags"]):
        return "'nvcc_flags' must be strings"
    if record["git_sha"] is not None and not re.fullmatch(r"[0-9a-f]{40}", record["git_sha"]):
        return f"'git_sha' is not a 40-hex commit: {record['git_sha']!r}"
    try:
        datetime.datetime.fromisoformat(record["built_at"])
    except ValueError:
        return f"'built_at' is not an ISO 8601 time: {record['built_at']!r}"
    if record["built"]:
        if record["cuda_version"] is None or not re.fullmatch(r"\d+\.\d+", record["cuda_version"]):
            return f"a CUDA build needs 'cuda_version' like '13.0', got {record['cuda_version']!r}"
        if not archs or record["ptx_arch"] != max(archs):
            return f"a CUDA build needs archs and ptx_arch = max(archs), got {archs} and {record['ptx_arch']}"
    elif not record["reason"]:
        return "a record of no CUDA build must say why ('reason')"
    return None


def read_build_info(path: Path | None = None) -> BuildInfo:
    """The validated record at ``path`` (default: BUILD_INFO_PATH, read at call time).

    Raises:
        FileNotFoundError: no record (a source checkout that was never built, or a damaged install).
        CorruptFileError: the file is not valid JSON or does not follow schema 1 (the message says how).
    """
    path = BUILD_INFO_PATH if path is None else path
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path}: not UTF-8 text ({exc})") from exc
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path}: not valid JSON ({exc})") from exc
    problem = _problem(record)
    if problem is not None:
        raise CorruptFileError(f"{path}: {problem}; reinstall xtf_kernels to rewrite it")
    values = {key: record[key] for key in BuildInfo._fields}
    values["archs"] = tuple(record["archs"])
    values["nvcc_flags"] = tuple(record["nvcc_flags"])
    return BuildInfo(**values)

"""The results file: one CSV row per (run, case, provider), appended atomically, validated on read.

Appending rewrites the file through a temporary sibling and ``os.replace``, so a reader never sees a
half-written file and an interrupted run leaves the old one intact. Reading checks the header against
``FIELDS`` and parses every value with its field's type; any mismatch raises
:class:`~xtf_kernels.errors.CorruptFileError` naming the file, the line and the field.

Columns (memory in GiB = 2**30 bytes, times in ms):
    run_id, timestamp (UTC ISO 8601), device, device_type, torch, triton, xtf, git_sha,
    provider, family ("xtf" | "peer"), path, peer_version,
    model, mode, dtype, tokens, hidden, vocab, softcap, keep, kept_tokens,
    status ("ok" | "missing" | "unsupported" | "error" | "oom" | "timeout"), reason,
    ms (median), ms_min, ms_max, samples, samples_ms (";"-joined), warmup,
    tflops (FLOP floor of the mode, kept tokens, / median time), peak_gib, extra_gib, rss_extra_gib,
    mem_method, load_1m (mean over the samples), loads_1m (";"-joined), threads (torch CPU threads).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .._atomic import atomic_write_text
from ..errors import CorruptFileError
from .cases import DTYPES
from .cases import MODES
from .cases import Case

STATUSES: tuple[str, ...] = ("ok", "missing", "unsupported", "error", "oom", "timeout")
FAMILIES: tuple[str, ...] = ("xtf", "peer")


@dataclass(frozen=True)
class ResultRow:
    run_id: str
    timestamp: str
    device: str
    device_type: str
    torch: str
    triton: str
    xtf: str
    git_sha: str
    provider: str
    family: str
    path: str
    peer_version: str
    model: str
    mode: str
    dtype: str
    tokens: int
    hidden: int
    vocab: int
    softcap: float | None
    keep: float
    kept_tokens: int
    status: str
    reason: str
    ms: float | None
    ms_min: float | None
    ms_max: float | None
    samples: int
    samples_ms: str
    warmup: int
    tflops: float | None
    peak_gib: float | None
    extra_gib: float | None
    rss_extra_gib: float | None
    mem_method: str
    load_1m: float | None
    loads_1m: str
    threads: int

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.status == "ok" and self.ms is None:
            raise ValueError("a row with status 'ok' needs a time (ms)")

    @property
    def case(self) -> Case:
        return Case(
            tokens=self.tokens, hidden=self.hidden, vocab=self.vocab, mode=self.mode, dtype=self.dtype,
            keep=self.keep, softcap=self.softcap, model=self.model,
        )


FIELDS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(ResultRow))
_INT_FIELDS = {"tokens", "hidden", "vocab", "kept_tokens", "samples", "warmup", "threads"}
_FLOAT_FIELDS = {"keep"}
_OPTIONAL_FLOAT_FIELDS = {
    "softcap", "ms", "ms_min", "ms_max", "tflops", "peak_gib", "extra_gib", "rss_extra_gib", "load_1m",
}


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _parse(field: str, raw: str):
    if field in _INT_FIELDS:
        return int(raw)
    if field in _FLOAT_FIELDS or field in _OPTIONAL_FLOAT_FIELDS:
        if raw == "" and field in _OPTIONAL_FLOAT_FIELDS:
            return None
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(f"{value} is not finite")
        return value
    return raw


def rows_to_csv(rows: list[ResultRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIELDS)
    for row in rows:
        writer.writerow([_format(getattr(row, field)) for field in FIELDS])
    return buffer.getvalue()


def read_rows(path: str | os.PathLike) -> list[ResultRow]:
    """Every row of a results file, validated; [] when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise CorruptFileError(f"{path}: empty file, expected the header {','.join(FIELDS)}")
        if tuple(header) != FIELDS:
            raise CorruptFileError(
                f"{path}: header does not match the results schema; expected {','.join(FIELDS)}, "
                f"got {','.join(header)}"
            )
        rows = []
        for line_no, record in enumerate(reader, start=2):
            if len(record) != len(FIELDS):
                raise CorruptFileError(f"{path}:{line_no}: {len(record)} fields, expected {len(FIELDS)}")
            values = {}
            for field, raw in zip(FIELDS, record):
                try:
                    values[field] = _parse(field, raw)
                except ValueError as exc:
                    raise CorruptFileError(f"{path}:{line_no}: field {field}={raw!r}: {exc}") from exc
            try:
                rows.append(ResultRow(**values))
            except ValueError as exc:
                raise CorruptFileError(f"{path}:{line_no}: {exc}") from exc
    return rows


def write_rows(path: str | os.PathLike, rows: list[ResultRow]) -> None:
    """Replace ``path`` with ``rows`` atomically (temporary sibling + fsync + os.replace)."""
    atomic_write_text(path, rows_to_csv(rows))


def append_rows(path: str | os.PathLike, rows: list[ResultRow]) -> int:
    """Append ``rows`` to the results file (validating what is already there); returns the new row count."""
    existing = read_rows(path)
    write_rows(path, existing + list(rows))
    return len(existing) + len(rows)

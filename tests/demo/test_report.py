"""report.json: the documented fields are exactly the validated ones; validation, atomic writes, timings."""

from __future__ import annotations

import fnmatch
import json
import os
import re

import pytest

from xtf_kernels.demo import report as report_module
from xtf_kernels.demo.report import TIMING_FIELDS
from xtf_kernels.demo.report import read_report
from xtf_kernels.demo.report import schema_paths
from xtf_kernels.demo.report import validate_report
from xtf_kernels.demo.report import without_timings
from xtf_kernels.demo.report import write_report_json
from xtf_kernels.errors import CorruptFileError

from .fake_report import fake_report


def documented_fields() -> dict[str, str]:
    """Dotted path -> its description line, from the module docstring's field list."""
    out = {}
    for line in report_module.__doc__.splitlines():
        match = re.match(r"^ {4}(\S+)\s+(.*)$", line)
        if match:
            out[match.group(1)] = match.group(2)
    return out


def test_every_field_is_documented_and_every_documented_field_exists():
    documented = documented_fields()
    leaves = schema_paths()
    undocumented = [p for p in leaves if not any(fnmatch.fnmatchcase(p, d) for d in documented)]
    assert undocumented == []
    # a documented line is a leaf or a parent of leaves ("methods.*", "memory.fused")
    dangling = [d for d in documented if not any(fnmatch.fnmatchcase(p, d) or p.startswith(d + ".") for p in leaves)]
    assert dangling == []


def test_timing_fields_are_the_documented_timing_fields():
    documented = {path for path, text in documented_fields().items() if text.startswith("(timing)")}
    timing_leaves = {p for p in schema_paths() if any(fnmatch.fnmatchcase(p, t) for t in TIMING_FIELDS)}
    assert timing_leaves == {p for p in schema_paths() if any(fnmatch.fnmatchcase(p, d) for d in documented)}
    assert len(timing_leaves) == 8


def _set(report: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        report = report[key]
    report[last] = value


def _delete(report: dict, path: str) -> None:
    *parents, last = path.split(".")
    for key in parents:
        report = report[key]
    del report[last]


def test_the_fake_report_is_valid():
    assert validate_report(fake_report())["format"] == "xtf-demo-report"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda r: _delete(r, "data.vocab_size"), r"data: missing fields \['vocab_size'\]"),
        (lambda r: _set(r, "data.extra", 1), r"unknown fields \['extra'\]"),
        (lambda r: _set(r, "data.train_samples", "64"), "data.train_samples must be int, got str"),
        (lambda r: _set(r, "data.train_samples", 64.0), "data.train_samples must be int, got float"),
        (lambda r: _set(r, "model.parameters", True), "model.parameters must be int, got bool"),
        (lambda r: _set(r, "verdict.filtering_wins", 1), "verdict.filtering_wins must be bool, got int"),
        (lambda r: _set(r, "arms.xtf_paper.evaluation.exact_match", None),
         "arms.xtf_paper.evaluation.exact_match is null"),
        (lambda r: _set(r, "arms.xtf_paper.selection.whole_type_examples", ["a", 1]),
         r"arms.xtf_paper.selection.whole_type_examples\[1\] must be"),
        (lambda r: _set(r, "arms.xtf_paper.selection.by_kind.boilerplate", {"recall": 0.1, "auroc": 0.5}),
         "unknown entry 'boilerplate'"),
        (lambda r: _set(r, "arms.tc_fixed.vs_random", {"mean": 0.1}), "arms.tc_fixed.vs_random: missing fields"),
        (lambda r: _delete(r, "arms.all_tokens"), "arms must include 'all_tokens'"),
        (lambda r: _set(r, "data.kind_fraction.noise", 0.1), "unknown entry 'noise'"),
        (lambda r: _set(r, "timings.warmup", 1.0), "unknown entry 'warmup'"),
        (lambda r: _set(r, "memory.fused", []), "memory.fused must be an object"),
        (lambda r: _set(r, "format", "something-else"), "not an xtf demo report"),
        (lambda r: _set(r, "version", 2), "not an xtf demo report of version 3"),
        (lambda r: _set(r, "config.seed", -1), "config is not a valid demo config: seed"),
        (lambda r: _set(r, "config.colour", "red"), "config is not a valid demo config"),
    ],
)
def test_validation_names_what_is_wrong(change, match):
    report = fake_report()
    change(report)
    with pytest.raises(CorruptFileError, match=match):
        validate_report(report)


def test_nullable_fields_take_null():
    report = fake_report()
    _set(report, "memory.extra_ratio", None)
    _set(report, "memory.fused.ms", None)
    _set(report, "arms.xtf_paper.selection.precision", None)
    _set(report, "arms.xtf_paper.vs_random", None)
    _set(report, "arms.xtf_KN.evaluation", None)
    validate_report(report)


def test_write_then_read_round_trips_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "report.json"
    write_report_json(path, fake_report())
    assert read_report(path) == fake_report()
    assert os.listdir(tmp_path) == ["report.json"]


def test_an_invalid_report_is_not_written_and_the_old_file_stays(tmp_path):
    path = tmp_path / "report.json"
    write_report_json(path, fake_report())
    before = path.read_bytes()
    bad = fake_report()
    _delete(bad, "verdict")
    with pytest.raises(CorruptFileError):
        write_report_json(path, bad)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["report.json"]


def test_nan_is_refused_not_written(tmp_path):
    report = fake_report()
    _set(report, "arms.xtf_paper.evaluation.clean_nll", float("nan"))
    with pytest.raises(ValueError):
        write_report_json(tmp_path / "report.json", report)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"format": "xtf-demo-report", "version": 3, ', "not valid JSON"),
        ("[]", "the report must be an object"),
        (json.dumps({"format": "xtf-demo-report", "version": 3}), "missing fields"),
    ],
)
def test_reading_a_damaged_file_names_the_file(tmp_path, content, match):
    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(CorruptFileError, match=match) as info:
        read_report(path)
    assert str(path) in str(info.value)


def test_reading_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_report(tmp_path / "nothing.json")


def test_without_timings_drops_exactly_the_timing_fields():
    report = fake_report()
    stripped = without_timings(report)
    assert "timings" not in stripped and "load_average" not in stripped["environment"]
    for arm in stripped["arms"].values():
        assert "seconds" not in arm and set(arm) == {"label", "evaluation", "selection", "vs_all_tokens",
                                                     "vs_random"}
    for side in ("fused", "materialised"):
        assert set(stripped["memory"][side]) == {"provider", "status", "reason", "peak_bytes", "extra_bytes"}
    assert stripped["data"] == report["data"] and stripped["verdict"] == report["verdict"]
    assert report == fake_report()  # the input is not modified

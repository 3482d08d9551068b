"""The scripts in benchmarks/: run.py (argument handling), report.py, plot.py, merge_results.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from xtf_kernels.bench.store import read_rows
from xtf_kernels.bench.store import write_rows

from .rows import make_row

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def two_runs(path: Path) -> None:
    write_rows(path, [make_row(run_id="20261121T010000Z-1", ms=1.0), make_row(run_id="20261121T020000Z-1", ms=7.0),
                      make_row(run_id="20261121T020000Z-1", provider="cce", family="peer", ms=14.0)])


def test_run_selects_the_suite_and_filters_providers(monkeypatch, tmp_path):
    run = load("run")
    seen = {}

    def fake(entries, settings, outputs, plot):
        seen.update(entries=entries, settings=settings, outputs=outputs, plot=plot)

    monkeypatch.setattr(run, "measure_and_record", fake)
    out = tmp_path / "r.csv"
    assert run.main(["--device", "cpu", "--suite", "cpu-targets", "--providers", "torch-chunked",
                     "--output", str(out), "--run-id", "shared", "--repeats", "2"]) == 0
    assert [e.providers for e in seen["entries"]] == [("torch-chunked",)]
    assert seen["entries"][0].case.tokens == 4096
    assert (seen["settings"].run_id, seen["settings"].repeats, seen["outputs"]) == ("shared", 2, [str(out)])
    with pytest.raises(SystemExit):
        run.main(["--device", "cpu", "--suite", "cpu-quick", "--providers", "liger"])


def test_report_shows_the_latest_run_or_a_named_one(tmp_path, capsys):
    report = load("report")
    data = tmp_path / "r.csv"
    two_runs(data)
    assert report.main(["--data", str(data)]) == 0
    text = capsys.readouterr().out
    assert "cce" in text and " 7.0 " in text and " 1.0 " not in text
    assert report.main(["--data", str(data), "--run-id", "20261121T010000Z-1"]) == 0
    assert " 1.0 " in capsys.readouterr().out
    assert report.main(["--data", str(data), "--list"]) == 0
    assert "20261121T020000Z-1  CPU  2 rows" in capsys.readouterr().out
    assert report.main(["--data", str(data), "--run-id", "nope"]) == 1


def test_plot_draws_a_run(tmp_path):
    pytest.importorskip("matplotlib")
    data, png = tmp_path / "r.csv", tmp_path / "p.png"
    two_runs(data)
    assert load("plot").main(["--data", str(data), "--png", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_merge_appends_new_rows_once(tmp_path, capsys):
    merge = load("merge_results")
    source, target = tmp_path / "gpu.csv", tmp_path / "all.csv"
    two_runs(source)
    write_rows(target, [make_row(run_id="20261121T010000Z-1", ms=1.0)])
    assert merge.main([str(source), str(target)]) == 0
    assert "2 new rows appended" in capsys.readouterr().out
    assert merge.main([str(source), str(target)]) == 0
    assert "0 new rows appended" in capsys.readouterr().out
    assert len(read_rows(target)) == 3
    assert merge.main([str(tmp_path / "missing.csv"), str(target)]) == 1

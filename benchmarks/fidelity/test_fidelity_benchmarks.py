"""Smoke runs of the fidelity experiments (--quick grids): they run, write every output, and parse back."""

from __future__ import annotations

import csv
import json

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("scipy")


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # the scripts set one intra-op thread
    yield
    torch.set_num_threads(threads)


def test_gaussian_error_quick(tmp_path):
    from benchmarks.fidelity import gaussian_error

    report = gaussian_error.main(["--quick", "--out", str(tmp_path)])
    rows = list(csv.DictReader((tmp_path / "gaussian_error.csv").open()))
    grid = gaussian_error.QUICK
    assert len(rows) == len(grid["dims"]) * len(grid["separations"]) * len(grid["sizes"]) * grid["seeds"] * 2
    saved = json.loads((tmp_path / "gaussian_error.json").read_text())
    assert saved["summary"] == report["summary"] and saved["machine"]["cpu_count"] >= 1
    assert (tmp_path / "gaussian_error.png").read_bytes()[:4] == b"\x89PNG"
    assert all(0.0 <= float(row["tv_hat"]) <= 1.0 for row in rows)


def test_ranking_experiment_quick(tmp_path):
    pytest.importorskip("skimage")
    from benchmarks.fidelity import ranking_experiment

    report = ranking_experiment.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "ranking_experiment.json").read_text())
    assert (tmp_path / "ranking_experiment.png").read_bytes()[:4] == b"\x89PNG"
    assert set(saved["patches"][0]["kendall_tau"]) == {"noise", "blur", "quantise"}
    assert set(saved["mixture"][0]["kendall_tau"]) == {"drop modes", "shrink"}
    pairs = saved["patches"][0]["separated_pairs"]["noise"]
    assert sum(pairs.values()) == 3  # clean, sigma 8, sigma 32: three pairs
    assert -1.0 <= saved["mixture"][0]["kendall_tau_all_sets_vs_true_tv"] <= 1.0
    truth = report["mixture_truth"]
    assert truth["exact"]["true_tv"] == 0.0 and truth["shrink x0.4"]["true_tv"] > 0.9
    assert len(saved["patches"][0]["order"]) == 1 + 2 * 3  # clean + two strengths per family

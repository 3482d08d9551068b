"""`xtf calibrate` end to end on a tiny saved model: the printed table and the JSON agree with the Python sweep,
fine-tuning per value runs, and bad command lines are one-line errors."""

from __future__ import annotations

import json

import pytest

from tests.cli.model_folders import save_base_and_ref
from tests.methods import tiny
from xtf_kernels.cli import main
from xtf_kernels.methods import XTFConfig
from xtf_kernels.methods.calibration import sweep_threshold

pytest.importorskip("transformers")
pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    dataset = tiny.data(8)
    base = save_base_and_ref(root, dataset)
    dataset.to_jsonl(root / "dev.jsonl", tokenised=True)
    return root, dataset, base


def test_calibrate_prints_and_writes_the_sweep(workspace, capsys):
    root, dataset, base = workspace
    out = root / "sweep.json"
    status = main(["calibrate", str(root / "dev.jsonl"), "--model", str(root / "base"), "--rules", "KN",
                   "--param", "kn_pcp_max", "--values", "0.01,0.014,0.02", "--preset", "paper", "--json", str(out),
                   "--device", "cpu"])
    printed = capsys.readouterr().out
    assert status == 0 and "kn_pcp_max" in printed and "dev drop" in printed
    saved = json.loads(out.read_text())
    expected = sweep_threshold(base, dataset.samples, param="kn_pcp_max", values=[0.01, 0.014, 0.02],
                               config=XTFConfig.paper(rules=("KN",)))
    assert saved["param"] == "kn_pcp_max" and saved["values"] == [0.01, 0.014, 0.02]
    assert [r["dev_dropped"] for r in saved["rows"]] == [r["dev_dropped"] for r in expected.rows]
    assert saved["config"]["safeguards"]["max_sample_drop"] is None  # the paper preset


def test_calibrate_a_paper_knob_under_the_safe_preset_sweeps_its_mode(workspace, capsys):
    """The safe preset ranks KN by rate; --param kn_pcp_max sweeps KN's absolute threshold (and says so)."""
    root, dataset, base = workspace
    out = root / "safe_sweep.json"
    status = main(["calibrate", str(root / "dev.jsonl"), "--model", str(root / "base"), "--rules", "KN",
                   "--param", "kn_pcp_max", "--values", "0.01,0.02", "--json", str(out), "--device", "cpu"])
    assert status == 0, capsys.readouterr().err
    saved = json.loads(out.read_text())
    assert saved["config"]["kn_threshold"] == "absolute" and saved["config"]["kn_anchor_fraction"] == 0.25
    expected = sweep_threshold(base, dataset.samples, param="kn_pcp_max", values=[0.01, 0.02],
                               config=XTFConfig(rules=("KN",), kn_threshold="absolute"))
    assert [r["dev_dropped"] for r in saved["rows"]] == [r["dev_dropped"] for r in expected.rows]
    assert saved["rows"][0]["dev_dropped"] != saved["rows"][1]["dev_dropped"]  # the knob is read


def test_calibrate_token_cleaning_with_fine_tuning(workspace, capsys):
    root, _, _ = workspace
    status = main(["calibrate", str(root / "dev.jsonl"), "--model", str(root / "base"), "--method",
                   "token-cleaning", "--ref", str(root / "ref"), "--param", "k", "--values", "0.5,0.9",
                   "--train", str(root / "dev.jsonl"), "--lr", "1e-2", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert status == 0 and "tuned NLL" in printed and len(printed.strip().splitlines()) == 4


@pytest.mark.parametrize("extra,message", [
    (["--param", "k", "--values", "0.5", "--method", "token-cleaning"], "needs --ref"),
    (["--param", "kn_pcp_max", "--values", "0.5", "--ref", "x"], "only used with --method token-cleaning"),
    (["--param", "no_such_knob", "--values", "0.5"], "--param must be a field"),
    (["--param", "kn_pcp_max", "--values", "2.0"], "kn_pcp_max"),
])
def test_bad_command_lines_are_one_line_errors(workspace, capsys, extra, message):
    root, _, _ = workspace
    status = main(["calibrate", str(root / "dev.jsonl"), "--model", str(root / "base"), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

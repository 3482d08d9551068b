"""``xtf demo`` end to end in subprocesses: ``--quick`` writes the documented report.json and a
self-contained report.html; the same seed gives the same report except its timings; bad options fail
in one line before any work."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xtf_kernels.cli import main
from xtf_kernels.demo import QUICK
from xtf_kernels.demo import read_report
from xtf_kernels.demo import without_timings
from xtf_kernels.demo.report import METHODS

ROOT = Path(__file__).resolve().parents[2]
# A tiny variant for the determinism runs: 4 fine-tuning steps (pretraining and warm-up scale down with
# them), 64 samples, a 4096-row head for the memory comparison.
TINY = ["--quick", "--steps", "4", "--train-samples", "64", "--memory-vocab", "4096", "--no-progress", "--device",
        "cpu"]


def start_demo(out_dir: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "xtf_kernels", "demo", "--output-dir", str(out_dir), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(process: subprocess.Popen) -> tuple[str, str]:
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    return stdout, stderr


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-quick")
    stdout, stderr = finish(start_demo(out, "--quick", "--device", "cpu"))
    return out, stdout, stderr


@pytest.mark.slow
def test_quick_report_has_the_documented_fields(quick):
    out, _stdout, _stderr = quick
    report = read_report(out / "report.json")  # validates every documented field and type
    assert report["config"] == QUICK.to_dict()
    data, methods = report["data"], report["methods"]
    assert data["train_samples"] == QUICK.train_samples and 0.1 < data["noise_fraction"] < 0.3
    assert set(methods) == set(METHODS)
    everything = methods["all_tokens"]
    assert everything["kept_tokens"] == data["response_tokens"] and everything["rules"] == {}
    assert everything["precision"] is None and everything["recall"] == 0.0
    assert set(methods["xtf"]["rules"]) == {"RI", "KN", "TR"}
    assert set(methods["token_cleaning"]["rules"]) == {"low_influence"}
    # Token Cleaning keeps exactly floor(k N) of the pool's response tokens
    assert methods["token_cleaning"]["kept_tokens"] == int(QUICK.token_cleaning_k * data["response_tokens"])
    for key in METHODS:
        m = methods[key]
        assert m["kept_tokens"] + m["dropped_tokens"] == data["response_tokens"]
        assert len(m["loss_curve"]) == QUICK.finetune_steps
        assert m["eval_steps"] == list(range(0, QUICK.finetune_steps + 1, QUICK.eval_every))
        assert 0.0 <= m["exact_match"] <= 1.0 and m["tokens_per_second"] > 0
    for key in ("xtf", "token_cleaning"):
        m = methods[key]
        assert m["dropped_tokens"] > 0 and 0.0 <= m["precision"] <= 1.0 and 0.0 <= m["recall"] <= 1.0
        assert (out / report["files"]["scores"][key] / "manifest.json").is_file()
        assert (out / report["files"]["method_reports"][key]).is_file()
    memory = report["memory"]
    assert memory["vocab"] == 128256 and memory["fused"]["status"] == memory["materialised"]["status"] == "ok"
    # at 128256 rows the fused op works in chunks of a few hundred tokens; the materialised loss holds all logits
    assert memory["materialised"]["extra_bytes"] >= memory["tokens"] * memory["vocab"] * 4
    assert memory["extra_ratio"] > 1.5
    assert report["verdict"]["best_method"] in METHODS and len(report["verdict"]["findings"]) >= 8
    assert report["environment"]["threads"] == 1 and report["timings"]["total"] > 0


@pytest.mark.slow
def test_quick_html_is_self_contained(quick):
    out, _stdout, _stderr = quick
    page = (out / "report.html").read_text()
    report = read_report(out / "report.json")
    images = re.findall(r'<img alt="[^"]*" src="([^"]*)"', page)
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in page and "https://" not in page
    for finding in report["verdict"]["findings"]:
        assert html.escape(finding) in page
    assert page.count('class="sample"') == 2 * QUICK.highlighted_samples
    assert sorted(os.listdir(out)) == ["report.html", "report.json", "scores"]


@pytest.mark.slow
def test_quick_prints_the_report_and_shows_progress(quick):
    _out, stdout, stderr = quick
    report = read_report(_out / "report.json")
    assert stdout.startswith("xtf demo (quick, seed 0)")
    for label in ("all tokens", "XTF", "Token Cleaning", "XTF rules:", "Loss memory:"):
        assert label in stdout
    assert f"{100 * report['methods']['token_cleaning']['exact_match']:.1f}%" in stdout
    assert "report.json" in stdout.splitlines()[-1]
    assert "[1/7] data" in stderr and "[7/7] report" in stderr
    assert "fine-tuning (xtf)" in stderr and ("step/s" in stderr or "s/step" in stderr)  # tqdm bars
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_same_seed_same_report_other_seed_other_report(tmp_path):
    # three runs side by side (one thread each)
    runs = {name: start_demo(tmp_path / name, *TINY, "--seed", seed)
            for name, seed in (("first", "3"), ("again", "3"), ("other", "4"))}
    for process in runs.values():
        finish(process)
    first, again, other = (read_report(tmp_path / name / "report.json") for name in runs)
    assert without_timings(first) == without_timings(again)
    assert first["config"]["finetune_steps"] == 4 and first["config"]["pretrain_steps"] == 5
    assert first["methods"]["xtf"]["loss_curve"] != other["methods"]["xtf"]["loss_curve"]
    assert first["data"] != other["data"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "--steps must be a positive integer, got 0"),
        (["--noise-fraction", "1.5"], r"noise_fraction must be a number in [0.0, 0.9], got 1.5"),
        (["--train-samples", "0"], "train_samples must be an int >= 1, got 0"),
        (["--seed", "-2"], "seed must be an int >= 0, got -2"),
        (["--threads", "-1"], "--threads must be >= 0, got -1"),
        (["--memory-vocab", "0"], "memory_vocab must be an int >= 1, got 0"),
    ],
)
def test_bad_values_fail_in_one_line_before_any_work(argv, message, capsys, tmp_path):
    assert main(["demo", "--output-dir", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"xtf demo: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_output_dir_that_is_a_file(capsys, tmp_path):
    path = tmp_path / "taken"
    path.write_text("x")
    assert main(["demo", "--output-dir", str(path)]) == 2
    assert capsys.readouterr().err == f"xtf demo: error: --output-dir {path} exists and is not a folder\n"


def test_missing_optional_dependencies_say_how_to_install(capsys, tmp_path, monkeypatch):
    from xtf_kernels.cli import demo

    real_find_spec = demo.importlib.util.find_spec
    monkeypatch.setattr(demo.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("matplotlib", "safetensors") else real_find_spec(name, *a))
    assert main(["demo", "--output-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ("xtf demo: error: xtf demo needs safetensors, matplotlib: "
                                       "pip install 'xtf_kernels[hf]'\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu(capsys, tmp_path):
    assert main(["demo", "--device", "cuda", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xtf demo: error: --device cuda: no CUDA device is available") and err.count("\n") == 1

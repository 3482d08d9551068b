"""``xtf demo`` end to end: ``--quick`` from an empty cache (its base built) writes the documented report.json
and a self-contained report.html and prints the table; the same seed gives the same report except its
timings; bad options fail in one line before any work."""

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
from xtf_kernels.datasets.miniature import BaseConfig
from xtf_kernels.demo import QUICK
from xtf_kernels.demo import read_report
from xtf_kernels.demo import without_timings
from xtf_kernels.demo.config import BASES
from xtf_kernels.demo.run import run_demo

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("scipy")

ROOT = Path(__file__).resolve().parents[2]
TINY_BASE = BaseConfig(documents=300, tokenizer_documents=300, vocab_size=400, hidden_size=32, num_layers=2,
                       num_heads=2, num_kv_heads=1, intermediate_size=64)
TINY = QUICK.replace(train_samples=24, trusted_samples=8, heldout_problems=10, retention_problems=3,
                     memory_vocab=2048, highlighted_samples=2)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("demo-quick"), tmp_path_factory.mktemp("cache")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "xtf_kernels", "demo", "--quick", "--device", "cpu", "--output-dir",
                           str(out), "--cache-dir", str(cache)], capture_output=True, text=True, env=env,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout, done.stderr


@pytest.mark.slow
def test_quick_report_has_the_documented_fields(quick):
    out, _stdout, _stderr = quick
    report = read_report(out / "report.json")  # validates every documented field and type
    assert report["config"] == QUICK.to_dict() and report["model"]["cached"] is False
    assert 0.15 <= report["data"]["noise_fraction"] < 0.2 and report["data"]["train_samples"] == QUICK.train_samples
    arms = report["arms"]
    filters = ["xtf_paper", "tc_fixed", "rho1", "xtf_safe"]
    assert set(arms) == {"all_tokens", "oracle", "xtf_RI", "xtf_KN", "xtf_TR", *filters,
                         *(f"random:{f}" for f in filters)}
    assert arms["all_tokens"]["selection"] is None and arms["all_tokens"]["vs_all_tokens"] is None
    assert arms["oracle"]["selection"]["precision"] == 1.0 and arms["oracle"]["selection"]["recall"] == 1.0
    for rule in ("xtf_RI", "xtf_KN", "xtf_TR"):
        assert arms[rule]["evaluation"] is None and arms[rule]["selection"] is not None
    for name in filters:
        assert arms[name]["vs_random"] is not None
        assert arms[f"random:{name}"]["selection"]["drop_rate"] == pytest.approx(arms[name]["selection"]["drop_rate"],
                                                                                 abs=1e-3)
    memory = report["memory"]
    assert memory["vocab"] == 128256 and memory["fused"]["status"] == memory["materialised"]["status"] == "ok"
    assert memory["materialised"]["extra_bytes"] >= memory["tokens"] * memory["vocab"] * 4
    assert report["environment"]["threads"] == 1 and report["timings"]["total"] > 0


@pytest.mark.slow
def test_quick_html_is_self_contained_and_prints(quick):
    out, stdout, stderr = quick
    report = read_report(out / "report.json")
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert re.findall(r'<img alt="[^"]*" src="([^"]*)"', page)[0].startswith("data:image/png;base64,")
    for finding in report["verdict"]["findings"]:
        assert html.escape(finding) in page
    assert sorted(os.listdir(out)) == ["report.html", "report.json"]
    assert stdout.startswith("xtf demo (quick, seed 0)") and "report.json" in stdout.splitlines()[-1]
    assert "building the miniature base" in stderr and "[4/4] report" in stderr and "Traceback" not in stderr


def test_same_seed_same_report_other_seed_other_report(tmp_path, monkeypatch):
    monkeypatch.setitem(BASES, "quick", TINY_BASE)
    cpu = torch.device("cpu")
    runs = {name: run_demo(TINY.replace(seed=seed), tmp_path / name, device=cpu, progress=False,
                           cache_dir=tmp_path / "cache") for name, seed in (("first", 3), ("again", 3), ("other", 4))}
    first, again, other = (read_report(tmp_path / name / "report.json") for name in runs)
    assert without_timings(first) == without_timings(again)
    assert first["model"]["cached"] is False and again["model"]["cached"] is True
    assert first["data"] != other["data"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--noise-fraction", "0.7"], r"noise_fraction must be a number in [0.0, 0.5], got 0.7"),
        (["--train-samples", "0"], "train_samples must be an int >= 1, got 0"),
        (["--seed", "-2"], "seed must be an int >= 0, got -2"),
        (["--threads", "-1"], "--threads must be >= 0, got -1"),
        (["--memory-vocab", "0"], "memory_vocab must be an int >= 1, got 0"),
    ],
)
def test_bad_values_fail_in_one_line_before_any_work(argv, message, capsys, tmp_path):
    assert main(["demo", "--output-dir", str(tmp_path / "out"), *argv]) == 2
    assert capsys.readouterr().err == f"xtf demo: error: {message}\n"
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
                        lambda name, *a: None if name in ("tokenizers", "scipy") else real_find_spec(name, *a))
    assert main(["demo", "--output-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ("xtf demo: error: xtf demo needs tokenizers, scipy: "
                                       "pip install 'xtf_kernels[hf]'\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu(capsys, tmp_path):
    assert main(["demo", "--device", "cuda", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xtf demo: error: --device cuda: no CUDA device is available") and err.count("\n") == 1

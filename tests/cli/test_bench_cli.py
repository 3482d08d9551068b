"""``xtf bench`` end to end (one subprocess at a small shape) and its error paths (in process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xtf_kernels.bench.store import read_rows
from xtf_kernels.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_bench_small_shape_end_to_end(tmp_path):
    # two worker processes (xtf-torch in two modes); the GPU-only providers are reported as missing
    out_csv, png = tmp_path / "bench.csv", tmp_path / "bench.png"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, "-m", "xtf_kernels", "bench", "--tokens", "64", "--hidden", "32", "--vocab", "300",
         "--mode", "fwd_bwd,fwd", "--backend", "torch,triton", "--peers", "liger",
         "--warmup", "0", "--repeats", "1", "--device", "cpu", "--output", str(out_csv), "--plot", str(png)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_rows(out_csv)
    got = {(r.mode, r.provider): r.status for r in rows}
    assert got == {
        (mode, provider): status
        for mode in ("fwd_bwd", "fwd")
        for provider, status in (("xtf-torch", "ok"), ("xtf-triton-fused", "missing"),
                                 ("xtf-triton-chunked", "missing"), ("liger", "missing"))
    }
    assert all((r.tokens, r.hidden, r.vocab, r.dtype) == (64, 32, 300, "float32") for r in rows)
    assert "xtf-torch" in done.stdout and "liger                missing:" in done.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hidden", "32"], "--hidden and --vocab go together"),
        (["--model", "llama3-8b", "--vocab", "10"], "either --model or --hidden/--vocab"),
        (["--tokens", "64"], "need a head"),
        (["--hidden", "8", "--vocab", "9", "--mode", "train"], "--mode must be"),
        (["--hidden", "8", "--vocab", "9", "--backend", "tpu"], "--backend must be"),
        (["--hidden", "8", "--vocab", "9", "--keep", "1.5"], "keep must be a fraction"),
        (["--hidden", "8", "--vocab", "9", "--tokens", "0"], "tokens must be a positive integer"),
        (["--hidden", "8", "--vocab", "9", "--repeats", "0", "--device", "cpu"], "repeats"),
        (["--backend", "triton", "--peers", "none", "--device", "cpu"], "leaves nothing to run"),
    ],
)
def test_bad_options_are_one_line_errors(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xtf bench: error:") and message in err and "\n" not in err


def test_unknown_model_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--model", "gpt-17"])
    assert exc.value.code == 2
    assert "gpt-17" in capsys.readouterr().err


def test_help_lists_the_models(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    assert "gemma2-2b" in capsys.readouterr().out

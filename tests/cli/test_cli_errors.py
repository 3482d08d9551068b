"""The ``xtf`` dispatcher's error paths and ``--help`` on every subcommand.

A user error is one line naming the problem (bad command lines too: no usage block), a non-zero exit
status and never a traceback; ``XTF_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from xtf_kernels import cli
from xtf_kernels.cli import CliError
from xtf_kernels.cli import main
from xtf_kernels.errors import CorruptFileError

ROOT = Path(__file__).resolve().parents[2]
PRESENT = [name for name, (module, _help) in cli.SUBCOMMANDS.items() if importlib.util.find_spec(module)]


def xtf(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("XTF_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "xtf_kernels", *argv], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line or "error " in line]


def test_unknown_subcommand_in_a_subprocess():
    done = xtf("nosuchcommand")
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'nosuchcommand'" in done.stderr


def test_missing_file_in_a_subprocess():
    done = xtf("score", "/nonexistent/train.jsonl", "--model", "/nonexistent/model", "--out", "/nonexistent/out")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["xtf score: error: dataset file not found: /nonexistent/train.jsonl"]


def test_help_in_a_subprocess():
    done = xtf("--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: xtf")
    for name in PRESENT:
        assert name in done.stdout


@pytest.mark.parametrize("name", PRESENT)
def test_help_on_every_subcommand(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: xtf {name}") and "-h, --help" in out


@pytest.mark.parametrize("name", PRESENT)
def test_unknown_option_on_every_subcommand(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--no-such-option"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # the subcommand's parser reports missing required arguments first; the top-level parser reports the
    # unknown option ("xtf: error: unrecognized arguments: --no-such-option")
    last = err.strip()
    assert last.startswith(("xtf: error:", f"xtf {name}: error:"))
    assert "--no-such-option" in last or "the following arguments are required" in last


def test_no_subcommand_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert capsys.readouterr().out.startswith("usage: xtf")


@pytest.fixture
def fake_command(monkeypatch):
    """Registers ``xtf fake`` whose run raises what the test puts in ``raised``."""
    raised: list[BaseException] = []

    def register(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--value", type=int, default=0)

    def run(args: argparse.Namespace) -> int:
        if raised:
            raise raised[0]
        return args.value

    module = types.ModuleType("xtf_kernels_test_fake_command")
    module.register, module.run = register, run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.SUBCOMMANDS, "fake", (module.__name__, "a test command"))
    monkeypatch.delenv("XTF_DEBUG", raising=False)
    return raised


@pytest.mark.parametrize(
    ("exc", "status", "line"),
    [
        (CliError("bad thing"), 2, "xtf fake: error: bad thing"),
        (ValueError("--x must be positive"), 2, "xtf fake: error: --x must be positive"),
        (FileNotFoundError("no such file: a.jsonl"), 2, "xtf fake: error: no such file: a.jsonl"),
        (NotADirectoryError("out is a file"), 2, "xtf fake: error: out is a file"),
        (PermissionError("read-only"), 2, "xtf fake: error: read-only"),
        (ImportError("needs transformers"), 2, "xtf fake: error: needs transformers"),
        (CorruptFileError("report.json: truncated"), 2, "xtf fake: error: report.json: truncated"),
        (RuntimeError("boom"), 1, "xtf fake: unexpected RuntimeError: boom (XTF_DEBUG=1 shows the traceback)"),
        (KeyboardInterrupt(), 130, "xtf: interrupted"),
    ],
)
def test_errors_from_a_subcommand_are_one_line(fake_command, capsys, exc, status, line):
    fake_command.append(exc)
    assert main(["fake"]) == status
    captured = capsys.readouterr()
    assert captured.err == line + "\n" and captured.out == ""


def test_the_exit_status_is_what_run_returns(fake_command):
    assert main(["fake", "--value", "3"]) == 3 and main(["fake"]) == 0


def test_xtf_debug_shows_the_traceback(fake_command, monkeypatch):
    monkeypatch.setenv("XTF_DEBUG", "1")
    fake_command.append(ValueError("shown"))
    with pytest.raises(ValueError, match="shown"):
        main(["fake"])

"""The README's examples work: every python block runs, every command names real subcommands and flags.

The set-up's test command is what CI runs (.ci/run); the main job ``xtf demo`` runs end to end in its quick form
in tests/demo/ (the full base takes minutes to build), ``xtf score`` / ``filter``, ``xtf fidelity`` and
``xtf bench`` in tests/cli/.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from xtf_kernels.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
PYTHON_BLOCKS = [code for lang, code in BLOCKS if lang == "python"]
COMMANDS = [
    line.split("#")[0].strip()
    for lang, code in BLOCKS if lang == "bash"
    for line in code.splitlines() if line.strip() and not line.strip().startswith("#")
]


def test_readme_has_examples():
    assert len(PYTHON_BLOCKS) >= 5 and len(COMMANDS) >= 10
    assert "BENCHMARK_TABLE" not in README


@pytest.mark.parametrize("code", PYTHON_BLOCKS, ids=[f"python-{i}" for i in range(len(PYTHON_BLOCKS))])
def test_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def _xtf_invocations():
    for command in COMMANDS:
        for part in command.split("&&"):
            words = shlex.split(part)
            while words and "=" in words[0]:  # leading VAR=value
                words = words[1:]
            if words[:1] == ["xtf"]:
                yield words[1:]


@pytest.mark.parametrize("argv", list(_xtf_invocations()), ids=lambda argv: " ".join(argv[:2]))
def test_xtf_command_uses_real_subcommand_and_flags(argv):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert argv[0] in subparsers.choices, f"xtf {argv[0]} is not a subcommand"
    known = {opt for action in subparsers.choices[argv[0]]._actions for opt in action.option_strings}
    for word in argv[1:]:
        if word.startswith("--"):
            assert word.split("=")[0] in known, f"xtf {argv[0]} has no option {word}"


def test_referenced_files_exist():
    for command in COMMANDS:
        for word in shlex.split(command):
            if word.endswith((".sh", ".py")) and "/" in word:
                assert (ROOT / word).is_file(), f"README names {word}, which does not exist"
    for path in re.findall(r"`((?:xtf_kernels|benchmarks|csrc|tests)/[\w/.]+)`", README):
        assert (ROOT / path).exists(), f"README names {path}, which does not exist"

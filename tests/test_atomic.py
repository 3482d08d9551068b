"""Atomic writes: complete files only, the old file kept on failure, ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from xtf_kernels._atomic import atomic_open
from xtf_kernels._atomic import atomic_write_bytes
from xtf_kernels._atomic import atomic_write_text


def test_writes_and_replaces(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["file.txt"]


def test_failure_keeps_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_open(target, "wb") as out:
        out.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_permissions_follow_the_umask(tmp_path):
    mask = os.umask(0o022)
    try:
        target = tmp_path / "report.json"
        atomic_write_bytes(target, b"{}")
    finally:
        os.umask(mask)
    # The module reads the umask once at import; files are readable by others unless it forbids that.
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IWUSR
    assert mode == 0o666 & ~mask


def test_replaced_file_keeps_its_mode(tmp_path):
    target = tmp_path / "results.csv"
    atomic_write_text(target, "a")
    target.chmod(0o640)
    atomic_write_text(target, "b")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640

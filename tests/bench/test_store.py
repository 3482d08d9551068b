import os

import pytest

from xtf_kernels.bench.store import FIELDS
from xtf_kernels.bench.store import append_rows
from xtf_kernels.bench.store import read_rows
from xtf_kernels.bench.store import rows_to_csv
from xtf_kernels.bench.store import write_rows
from xtf_kernels.errors import CorruptFileError

from .rows import make_row


def test_round_trip_keeps_types_and_none(tmp_path):
    rows = [make_row(), make_row(provider="liger", family="peer", status="missing", reason="no GPU, sorry",
                                 ms=None, ms_min=None, ms_max=None, samples=0, tflops=None, softcap=30.0)]
    path = tmp_path / "r.csv"
    write_rows(path, rows)
    assert read_rows(path) == rows


def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path):
    path = tmp_path / "r.csv"
    umask = os.umask(0o022)
    try:
        write_rows(path, [make_row()])
        assert path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o640)
        append_rows(path, [make_row()])
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)


def test_append_keeps_existing_rows(tmp_path):
    path = tmp_path / "sub" / "r.csv"
    assert read_rows(path) == []
    assert append_rows(path, [make_row()]) == 1
    assert append_rows(path, [make_row(provider="cce", family="peer")]) == 2
    assert [r.provider for r in read_rows(path)] == ["xtf-torch", "cce"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "r.csv"
    write_rows(path, [make_row()])
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        append_rows(path, [make_row(provider="cce", family="peer")])
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["r.csv"]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda text: "", "empty file"),
        (lambda text: text.replace("run_id,", "run,", 1), "header"),
        (lambda text: text.rstrip("\n") + ",extra\n", r"r.csv:2: \d+ fields"),
        (lambda text: text.replace(",ok,", ",fine,"), r"r.csv:2: status"),
        (lambda text: text.replace(",8,4,16,", ",eight,4,16,"), r"r.csv:2: field tokens"),
        (lambda text: text.replace(",1.5,1.0,2.0,", ",nan,1.0,2.0,"), r"r.csv:2: field ms"),
        (lambda text: text.replace(",1.5,1.0,2.0,", ",,1.0,2.0,"), r"r.csv:2: .*needs a time"),
    ],
)
def test_corrupt_files_are_named_with_line_and_field(tmp_path, mutate, match):
    path = tmp_path / "r.csv"
    path.write_text(mutate(rows_to_csv([make_row()])))
    with pytest.raises(CorruptFileError, match=match):
        read_rows(path)


def test_header_is_the_field_list():
    assert rows_to_csv([]).strip() == ",".join(FIELDS)


def test_row_validation():
    with pytest.raises(ValueError, match="family"):
        make_row(family="other")
    assert make_row(softcap=30.0, model="gemma2-2b", tokens=8).case.softcap == 30.0

import pytest

from xtf_kernels.bench.plot import latest_run
from xtf_kernels.bench.plot import plot_rows

from .rows import make_row

pytest.importorskip("matplotlib")


def test_latest_run_per_device():
    rows = [make_row(run_id="20261121T010000Z-1"), make_row(run_id="20261121T020000Z-1"),
            make_row(run_id="20261121T030000Z-1", device_type="cuda")]
    assert [r.run_id for r in latest_run(rows, "cpu")] == ["20261121T020000Z-1"]
    assert [r.run_id for r in latest_run(rows)] == ["20261121T030000Z-1"]
    assert latest_run(rows, "mps") == []


def test_plot_writes_a_png(tmp_path):
    rows = [make_row(), make_row(provider="liger", family="peer", status="missing", reason="r", ms=None),
            make_row(tokens=16, kept_tokens=16, mode="fwd")]
    path = plot_rows(rows, tmp_path / "out" / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["bench.png"]
    with pytest.raises(ValueError, match="no rows"):
        plot_rows([], tmp_path / "empty.png")

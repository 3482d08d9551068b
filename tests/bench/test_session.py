import io

from xtf_kernels.bench import session
from xtf_kernels.bench.store import read_rows

from .rows import make_row


def test_prints_table_and_verdicts_and_appends_to_every_output(tmp_path, monkeypatch):
    rows = [make_row(), make_row(provider="liger", family="peer", status="missing", reason="needs CUDA", ms=None)]
    def fake_run(entries, settings, on_rows):  # the rows arrive in two parts, as workers end
        on_rows(rows[1:])
        on_rows(rows[:1])
        return rows

    monkeypatch.setattr(session, "run", fake_run)
    out = io.StringIO()
    first, second = tmp_path / "a.csv", tmp_path / "b" / "b.csv"
    returned = session.measure_and_record([], None, outputs=[first, second], plot=tmp_path / "p.png", stream=out)
    assert returned == rows
    assert read_rows(first) == rows[1:] + rows[:1] and read_rows(second) == rows[1:] + rows[:1]
    text = out.getvalue()
    assert "liger                missing: needs CUDA" in text
    assert f"appended 2 rows to {first} (2 rows)" in text
    assert (tmp_path / "p.png").exists()

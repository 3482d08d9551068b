
from xtf_kernels.bench.report import best_peer
from xtf_kernels.bench.report import format_table
from xtf_kernels.bench.report import group_by_case

from .rows import make_row


def rows():
    return [
        make_row(provider="xtf-torch", family="xtf", ms=5.0, extra_gib=0.5),
        make_row(provider="torch-chunked", family="peer", ms=10.0, extra_gib=0.25),
        make_row(provider="torch-materialised", family="peer", ms=8.0, extra_gib=4.0),
        make_row(provider="liger", family="peer", status="missing", reason="needs CUDA", ms=None, extra_gib=None),
        make_row(provider="xtf-torch", family="xtf", tokens=16, kept_tokens=16, ms=9.0),
    ]


def test_best_peer_ignores_xtf_and_rows_that_did_not_run():
    group = rows()[:4]
    assert best_peer(group, "ms") == 8.0
    assert best_peer(group, "extra_gib") == 0.25
    assert best_peer(group[:1], "ms") is None


def test_groups_keep_first_seen_order():
    groups = list(group_by_case(rows()).values())
    assert [len(g) for g in groups] == [4, 1]


def test_table_ratios_and_missing_reasons():
    lines = format_table(rows()).splitlines()
    xtf = next(line for line in lines if line.startswith("xtf-torch") and " 5.0 " in line)
    fields = xtf.split()
    assert fields[1] == "5.0"
    assert "0.62" in fields  # 5.0 / 8.0 ms: faster than the fastest peer
    assert "2.00" in fields  # 0.5 / 0.25 GiB extra
    assert "liger                missing: needs CUDA" in lines
    second = lines[lines.index(next(line for line in lines if "custom 16x4x16" in line)) + 2]
    assert second.split()[5] == "-"  # no peer ran on that case: no ratio

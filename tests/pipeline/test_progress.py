"""Rank 0's progress bar counts the other ranks' shards as their files appear, with tokens/s per rank and overall."""

from __future__ import annotations

import io
import time

from tqdm import tqdm

from xtf_kernels.pipeline import store
from xtf_kernels.pipeline.progress import Meter
from xtf_kernels.pipeline.progress import summary


def test_bar_counts_other_ranks_shards_and_shows_rates(tmp_path):
    (tmp_path / store.shard_name(1)).write_bytes(b"old")  # from an earlier run: not this run's progress
    out = io.StringIO()
    bar = tqdm(total=40, file=out, mininterval=0)
    shards = {0: 10, 1: 10, 2: 10, 3: 10}
    meter = Meter(str(tmp_path), shards, {i: 100 * (i + 1) for i in shards}, {0: 0, 1: 1, 2: 0, 3: 1}, bar)
    time.sleep(0.05)  # file times come from the kernel's coarse clock (a few ms)
    meter.add(10, 100)
    (tmp_path / store.shard_name(3)).write_bytes(b"new")  # rank 1 finished shard 3 meanwhile
    meter.shard_done(0)
    assert bar.n == 20  # rank 0's 10 samples, and rank 1's shard 3 (shard 1's file is older than the run)
    assert "all ranks" in bar.postfix and "per rank" in bar.postfix and "rank 0" in bar.postfix
    meter.close()
    record = meter.record(0, "cpu")
    assert (record["samples"], record["tokens"], record["device"]) == (10, 100, "cpu")
    total = summary([record, {**record, "rank": 1, "tokens": 400, "samples": 10, "seconds": 2 * record["seconds"]}],
                    0.5)
    assert total["tokens"] == 500 and total["seconds"] == 2 * record["seconds"] and total["world_size"] == 2

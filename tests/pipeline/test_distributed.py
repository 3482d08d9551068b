"""score_dataset on several gloo ranks: bit-identical to one process, resumable with another world size after a
rank is killed, refused when ranks disagree or do not share the folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.integrations.distributed import run_ranks
from tests.methods import tiny
from tests.pipeline import ranks
from xtf_kernels.pipeline import ScoreResult

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    tiny.data(ranks.NUM_SAMPLES).to_jsonl(folder / "data.jsonl", tokenised=True)
    return folder


@pytest.fixture(scope="module")
def single(root):
    """One process, one thread (as every rank runs), each case."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {case: ranks.score(case, str(root), str(root / f"{case}-1"), num_workers=0) for case in ranks.CASES}
    finally:
        torch.set_num_threads(threads)


def assert_identical(result: ScoreResult, reference: ScoreResult) -> None:
    """Bit for bit: every rule bit and every score (NaN at the same places)."""
    assert result.complete and result.data_fingerprint == reference.data_fingerprint
    assert result.config_fingerprint == reference.config_fingerprint
    assert result.manifest["global_topk"] == reference.manifest["global_topk"]
    count = 0
    for a, b in zip(result.iter_samples(), reference.iter_samples(), strict=True):
        assert torch.equal(a.dropped_by, b.dropped_by)
        for name in b.scores:
            torch.testing.assert_close(a.scores[name], b.scores[name], rtol=0, atol=0, equal_nan=True)
        count += 1
    assert count == ranks.NUM_SAMPLES


@pytest.mark.parametrize("world_size, workers", [(2, 1), (4, 0)])
def test_ranks_match_one_process(root, single, world_size, workers):
    run_ranks(ranks.score_every_case, world_size, str(root), workers, timeout_s=240)
    for case in ranks.CASES:
        result = ScoreResult(root / f"{case}-{world_size}")
        assert_identical(result, single[case])
        throughput = result.manifest["throughput"]
        assert throughput["world_size"] == world_size and len(throughput["ranks"]) == world_size
        assert throughput["samples"] == ranks.NUM_SAMPLES and throughput["tokens"] == result.num_tokens
        assert [r["samples"] for r in throughput["ranks"]] == [
            sum(len(range(s * 3, min(s * 3 + 3, ranks.NUM_SAMPLES))) for s in range(r, 5, world_size))
            for r in range(world_size)]  # shard i scored by rank i mod world
    assert sorted(os.listdir(root / f"tc_global-{world_size}")) == [
        "manifest.json", *(f"shard-{i:05d}.safetensors" for i in range(5))]  # no lock, no temporary left


def test_disagreeing_ranks_and_unshared_folders_are_refused(root):
    run_ranks(ranks.refuse_mismatches, 2, str(root), timeout_s=120)
    assert not os.path.exists(root / "mismatch" / "manifest.json")


KILLED_RUN = textwrap.dedent("""
    import os, sys
    import torch
    sys.path.insert(0, {root!r})
    from tests.pipeline import ranks

    torch.set_num_threads(1)
    scorer = ranks.scorer("tc_global")
    original, calls = scorer.score_batch, []
    def score_batch(batch):
        calls.append(1)
        if os.environ["RANK"] == "1" and len(calls) == 3:  # rank 1 dies in its second shard
            os._exit(17)
        return original(batch)
    scorer.score_batch = score_batch
    from xtf_kernels.pipeline import score_dataset
    score_dataset(scorer, ranks.data("tc_global", {data!r}), {out!r}, shard_size=ranks.SHARD_SIZE,
                  batch_size=ranks.BATCH_SIZE, progress=False, num_workers=0)
""")


def test_rank_killed_then_resumed_with_another_world_size(root, single, tmp_path):
    out = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN.format(root=ROOT, data=str(root), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script)],
                              capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert launched.returncode != 0, launched.stderr[-3000:]
    assert "exitcode  : 17" in launched.stderr or "exitcode: 17" in launched.stderr, launched.stderr[-3000:]
    written = sorted(int(name[6:11]) for name in os.listdir(out) if name.startswith("shard-"))
    assert 1 in written and 3 not in written  # rank 1 wrote its first shard, then died in its second
    assert not ScoreResult(out).complete

    run_ranks(ranks.resume, 3, str(root), str(out), timeout_s=180)
    result = ScoreResult(out)
    assert_identical(result, single["tc_global"])
    # only the shards not on disk were scored again, none twice
    kept = sum(min(3, ranks.NUM_SAMPLES - 3 * index) for index in written)
    assert result.manifest["throughput"]["samples"] == ranks.NUM_SAMPLES - kept

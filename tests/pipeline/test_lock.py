"""One run per results folder: concurrent runs refused (not corrupted), stale locks, corrupt shards re-scored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from tests.methods import tiny
from xtf_kernels.errors import CorruptFileError
from xtf_kernels.methods import XTFScorer
from xtf_kernels.pipeline import ScoreResult
from xtf_kernels.pipeline import score_dataset
from xtf_kernels.pipeline.lock import LOCK_FILE
from xtf_kernels.pipeline.lock import RunLock
from xtf_kernels.pipeline.lock import RunLockedError

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SLOW_RUN = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from tests.methods import tiny
    from xtf_kernels.methods import XTFScorer
    from xtf_kernels.pipeline import score_dataset

    scorer = XTFScorer(tiny.model("llama"))
    original = scorer.score_batch
    def slow(batch):
        time.sleep(1.0)  # the run lasts >= 4 s, far longer than the two starts are apart
        return original(batch)
    scorer.score_batch = slow
    open(os.path.join({ready!r}, str(os.getpid())), "w").close()
    while not os.path.exists({go!r}):  # both processes imported and ready: start together
        time.sleep(0.01)
    score_dataset(scorer, tiny.data(8).samples, {out!r}, shard_size=2, batch_size=2, progress=False, num_workers=0)
""")


def reference(tmp_path, n: int = 8):
    return score_dataset(XTFScorer(tiny.model("llama")), tiny.data(n).samples, tmp_path / "reference", shard_size=2,
                         batch_size=2, progress=False, num_workers=0)


def assert_same_results(result, expected):
    assert result.complete and result.data_fingerprint == expected.data_fingerprint
    for a, b in zip(result.iter_samples(), expected.iter_samples(), strict=True):
        assert torch.equal(a.dropped_by, b.dropped_by)
        for name in b.scores:
            torch.testing.assert_close(a.scores[name], b.scores[name], rtol=0, atol=0, equal_nan=True)


def test_two_runs_started_on_one_folder_at_once(tmp_path):
    out, go, ready = tmp_path / "out", tmp_path / "go", tmp_path / "ready"
    ready.mkdir()
    script = tmp_path / "run.py"
    script.write_text(SLOW_RUN.format(root=ROOT, out=str(out), go=str(go), ready=str(ready)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=ROOT) for _ in range(2)]
    deadline = time.monotonic() + 120
    while len(os.listdir(ready)) < 2 and time.monotonic() < deadline and all(r.poll() is None for r in runs):
        time.sleep(0.05)
    go.write_text("")
    outcomes = [(run.wait(timeout=180), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in outcomes)
    assert codes[0] == 0 and codes[1] != 0, [err[-1500:] for _, err in outcomes]
    refused = next(err for code, err in outcomes if code != 0)
    assert "RunLockedError" in refused and "another run is using" in refused
    assert_same_results(ScoreResult(out), reference(tmp_path))
    assert not os.path.exists(out / LOCK_FILE)


def test_a_live_lock_refuses_before_anything_is_read_or_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with RunLock(str(out)):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            score_dataset(XTFScorer(tiny.model("llama")), tiny.data(4).samples, out, progress=False)
        assert sorted(os.listdir(out)) == [LOCK_FILE]
    assert not os.path.exists(out / LOCK_FILE)


def _write_lock(folder, **record):
    (folder / LOCK_FILE).write_text(json.dumps({"run_id": "old", "world_size": 1, "started": "then", **record}))


def test_stale_locks(tmp_path):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write_lock(tmp_path, host=socket.gethostname(), pid=int(dead.stdout))  # that process has exited
    lock = RunLock(str(tmp_path)).acquire()  # same host, dead pid: taken over
    assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == lock.run_id
    lock.release()
    assert not os.path.exists(tmp_path / LOCK_FILE)

    _write_lock(tmp_path, host="another-node", pid=1)
    with pytest.raises(RunLockedError, match="another-node"):
        RunLock(str(tmp_path)).acquire()  # liveness cannot be checked from here
    lock = RunLock(str(tmp_path), break_lock=True).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == lock.run_id
    lock.release()
    assert sorted(os.listdir(tmp_path)) == []  # nothing left behind (no .stale file)


def test_corrupted_and_truncated_shards_are_detected_and_scored_again(tmp_path, caplog):
    expected = reference(tmp_path)
    out = tmp_path / "out"
    score_dataset(XTFScorer(tiny.model("llama")), tiny.data(8).samples, out, shard_size=2, batch_size=2,
                  progress=False, num_workers=0)
    truncated, modified = out / "shard-00001.safetensors", out / "shard-00002.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-7])
    data = bytearray(modified.read_bytes())
    data[-3] ^= 0x40  # one bit of one score
    modified.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="checksum"):
        list(ScoreResult(out).iter_samples())

    result = score_dataset(XTFScorer(tiny.model("llama")), tiny.data(8).samples, out, shard_size=2, batch_size=2,
                           progress=False, num_workers=0)
    assert "shard-00001.safetensors" in caplog.text and "shard-00002.safetensors" in caplog.text
    assert result.manifest["throughput"]["samples"] == 4  # the two bad shards, nothing else
    assert_same_results(result, expected)


def test_a_lost_manifest_is_rebuilt_from_the_shards_and_foreign_shards_are_replaced(tmp_path):
    expected = reference(tmp_path)
    out = tmp_path / "out"
    kwargs = {"shard_size": 2, "batch_size": 2, "progress": False, "num_workers": 0}
    score_dataset(XTFScorer(tiny.model("llama")), tiny.data(8).samples, out, **kwargs)
    other = tmp_path / "other"  # a shard of the same index for other data, copied in
    score_dataset(XTFScorer(tiny.model("llama")), tiny.data(8, seed=1).samples, other, **kwargs)
    (out / "shard-00003.safetensors").write_bytes((other / "shard-00003.safetensors").read_bytes())
    (out / "manifest.json").write_text("{ truncated")
    (out / ".shard-00001.safetensors.k1ll3d.tmp").write_bytes(b"half a shard")  # a killed writer's leftover
    result = score_dataset(XTFScorer(tiny.model("llama")), tiny.data(8).samples, out, **kwargs)
    assert result.manifest["throughput"]["samples"] == 2  # only the foreign shard was scored again
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
    assert_same_results(result, expected)


def test_run_locked_error_lives_in_errors_and_is_exported_by_the_pipeline():
    import xtf_kernels.errors
    import xtf_kernels.pipeline

    assert xtf_kernels.pipeline.RunLockedError is xtf_kernels.errors.RunLockedError is RunLockedError
    assert issubclass(RunLockedError, xtf_kernels.errors.XtfError) and issubclass(RunLockedError, RuntimeError)
    assert "RunLockedError" in xtf_kernels.pipeline.__all__

"""A TRL SFT job on a patched model under ``torchrun`` with 2 gloo processes on the CPU equals the same job in one
process with the whole batch: xtf's ops run on both ranks at every step, the logged loss and metrics agree, and the
final parameters match (DDP averages the ranks' gradients; Trainer counts tokens across devices)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.integrations.distributed import free_port

pytest.importorskip("trl")
pytest.importorskip("datasets")

_JOB = os.path.join(os.path.dirname(__file__), "trl_sft_job.py")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(command, tmp_path, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=_ROOT, GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    done = subprocess.run(command, cwd=_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def test_trl_sft_under_torchrun_with_two_gloo_ranks_equals_one_process(tmp_path):
    distributed, single = tmp_path / "torchrun", tmp_path / "single"
    distributed.mkdir()
    single.mkdir()
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
          _JOB, str(distributed), "2"], tmp_path)
    _run([sys.executable, _JOB, str(single), "4"], tmp_path)
    ranks = [torch.load(distributed / f"rank{r}.pt", weights_only=False) for r in range(2)]
    expected = torch.load(single / "rank0.pt", weights_only=False)
    for rank, result in enumerate(ranks):
        assert len(result["steps"]) == 2
        for step, calls in enumerate(result["steps"]):
            assert calls["token_logprobs"] > 0 and calls["head_backward"] > 0, f"rank {rank} step {step}: {calls}"
        for name, value in expected["params"].items():
            torch.testing.assert_close(result["params"][name], value, atol=2e-5, rtol=2e-4,
                                       msg=lambda m, n=name, r=rank: f"rank {r}: parameter {n}\n{m}")
    for a, e in zip(ranks[0]["logs"], expected["logs"]):
        for key in ("loss", "entropy", "mean_token_accuracy", "num_tokens"):
            torch.testing.assert_close(float(a[key]), float(e[key]), atol=1e-4, rtol=1e-4, msg=key)

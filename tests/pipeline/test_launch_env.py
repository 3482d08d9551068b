"""What the launchers' environments mean to the pipeline: torchrun / accelerate, srun steps, a plain process."""

from __future__ import annotations

import pytest
import torch

from xtf_kernels.pipeline.distributed import MPI_VARIABLES
from xtf_kernels.pipeline.distributed import join
from xtf_kernels.pipeline.distributed import launcher_environment
from xtf_kernels.pipeline.distributed import resolve_rank_device

VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID",
             "SLURM_NTASKS", "MASTER_ADDR", "MASTER_PORT", *(name for names in MPI_VARIABLES for name in names))


@pytest.fixture
def env(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_plain_process_and_batch_script(env):
    assert launcher_environment() == (0, 1, 0)
    env.setenv("SLURM_NTASKS", "8")  # an sbatch script's own shell sees the job's task count: not a world
    env.setenv("SLURM_PROCID", "0")
    assert launcher_environment() == (0, 1, 0)
    group = join("cpu")
    assert (group.rank, group.world_size, group.distributed) == (0, 1, False)
    assert group.all_gather_object("x") == ["x"] and torch.equal(group.all_reduce_sum(torch.ones(2)), torch.ones(2))


def test_torchrun_and_srun_variables(env):
    env.setenv("WORLD_SIZE", "16")
    env.setenv("RANK", "9")
    env.setenv("LOCAL_RANK", "1")
    assert launcher_environment() == (9, 16, 1)
    env.delenv("WORLD_SIZE")
    env.setenv("SLURM_STEP_NUM_TASKS", "4")
    env.setenv("SLURM_PROCID", "3")
    env.setenv("SLURM_LOCALID", "3")
    assert launcher_environment() == (3, 4, 3)


def test_bad_environments_are_refused(env):
    env.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK is not"):
        launcher_environment()
    env.setenv("RANK", "1")
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        join("cpu")
    env.setenv("RANK", "two")
    with pytest.raises(ValueError, match="RANK='two'"):
        launcher_environment()
    env.setenv("RANK", "5")
    with pytest.raises(ValueError, match="outside the world"):
        join("cpu")


def test_rank_devices(env):
    assert resolve_rank_device("cpu", 3) == torch.device("cpu")
    assert resolve_rank_device("cuda:2", 3) == torch.device("cuda", 2)
    if not torch.cuda.is_available():
        assert resolve_rank_device("auto", 3) == torch.device("cpu")
        assert resolve_rank_device(None, 0) == torch.device("cpu")


@pytest.mark.parametrize("names", MPI_VARIABLES)
def test_mpirun_variables(env, names):
    """What mpirun exports to each process (accelerate's multi-CPU launch with a hostfile runs under it)."""
    rank, size, local = names
    env.setenv(size, "1")  # a single MPI process is a plain process
    env.setenv(rank, "0")
    assert launcher_environment() == (0, 1, 0)
    env.setenv(size, "6")
    env.setenv(rank, "5")
    env.setenv(local, "2")
    assert launcher_environment() == (5, 6, 2)
    env.delenv(local)
    assert launcher_environment() == (5, 6, 5)
    env.setenv("WORLD_SIZE", "2")  # torchrun's variables come first
    env.setenv("RANK", "1")
    assert launcher_environment() == (1, 2, 1)
    env.delenv("WORLD_SIZE")
    env.delenv(rank)
    with pytest.raises(ValueError, match=f"{size} is set but {rank} is not"):
        launcher_environment()

"""The process group a scoring run works in: torch.distributed when the launcher says so, else one process.

``xtf score`` and :func:`~xtf_kernels.pipeline.score_dataset` run unchanged under ``torchrun``, ``accelerate
launch`` and ``srun``: :func:`join` reads the launcher's environment and initialises the default process
group if nobody did yet (gloo on the CPU, NCCL on CUDA devices):

- torchrun / accelerate launch: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
- MPI (``mpirun``, which is how ``accelerate launch --cpu --num_processes N --mpirun_hostfile FILE`` starts
  CPU processes): Open MPI's ``OMPI_COMM_WORLD_RANK`` / ``_SIZE`` / ``_LOCAL_RANK``, MPICH / Intel MPI's
  ``PMI_RANK`` / ``PMI_SIZE`` / ``MPI_LOCALRANKID``, MVAPICH2's ``MV2_COMM_WORLD_*`` (the variables accelerate
  reads), with ``MASTER_ADDR`` / ``MASTER_PORT`` (accelerate exports them); the group is still gloo;
- ``srun`` (one task per process, no torchrun): ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``,
  with ``MASTER_ADDR`` / ``MASTER_PORT`` exported by the job script (the first node of the allocation).
  ``SLURM_STEP_NUM_TASKS`` (set for srun job steps only) is read rather than ``SLURM_NTASKS``, which the
  batch script itself also sees: reading that would make a lone process wait for peers that never come.

``accelerate launch`` on CPUs without mpirun: ``--cpu --num_processes N`` (or a config with ``distributed_type:
MULTI_CPU``) starts ONE process (accelerate 1.15's ``launch_command`` sends ``--cpu`` to its simple launcher,
which runs the script once and only prefixes ``mpirun`` when a hostfile is given); that process scores the
whole dataset alone, correctly. ``accelerate launch --multi_gpu --num_processes N`` starts N processes
through torchrun even on a machine without a GPU, and they join a gloo group here.

A group that the caller already initialised (an accelerate ``Accelerator``, a training script) is used as
it is and left open. The collectives used are few and small: the dataset statistics (XTF: one (V,) int64
vector), per-sample digests and lengths (36 bytes a sample), two 2^16-bin histograms for a pool-wide
top k, and per-shard bookkeeping. Scoring itself has no collective, so a slow or dead rank never stalls
the others in the middle of a shard.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch

# Ranks meet at the end of the scoring pass; a rank whose share of the shards took this much longer than
# the others' would time the collective out. One 1024-sample shard of 2k tokens through an 8B model is
# about 1.5 minutes on one H100-class GPU (benchmarks/pipeline/README.md), so an hour is far from reach.
TIMEOUT = timedelta(minutes=60)


# (rank, size, local rank) variables of Open MPI, MPICH / Intel MPI and MVAPICH2, as accelerate reads them
MPI_VARIABLES = (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
                 ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
                 ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK"))


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def launcher_environment() -> tuple[int, int, int]:
    """(rank, world size, local rank) that the launcher's environment names; (0, 1, 0) for a plain process."""
    world = _env_int("WORLD_SIZE")
    if world is not None:
        rank, local = _env_int("RANK"), _env_int("LOCAL_RANK")
        if rank is None:
            raise ValueError("WORLD_SIZE is set but RANK is not; launch with torchrun / accelerate launch")
        return rank, world, local if local is not None else rank
    for prefix_rank, prefix_size, prefix_local in MPI_VARIABLES:
        world = _env_int(prefix_size)
        if world is not None and world > 1:
            rank, local = _env_int(prefix_rank), _env_int(prefix_local)
            if rank is None:
                raise ValueError(f"{prefix_size} is set but {prefix_rank} is not; launch with mpirun")
            return rank, world, local if local is not None else rank
    world = _env_int("SLURM_STEP_NUM_TASKS")
    if world is not None and world > 1:
        rank, local = _env_int("SLURM_PROCID"), _env_int("SLURM_LOCALID")
        return (rank or 0), world, (local or 0)
    return 0, 1, 0


class Group:
    """This process's place in the run: ``rank`` of ``world_size``, ``local_rank`` on its node.

    The collectives are no-ops on one process, so the scoring code has a single path.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, *, owns_group: bool = False):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.owns_group = owns_group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _device(self) -> torch.device:
        import torch.distributed as dist

        backend = dist.get_backend()
        if "nccl" in str(backend):
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``tensor`` over the ranks (a new CPU tensor; integer sums are exact)."""
        if not self.distributed:
            return tensor.clone()
        import torch.distributed as dist

        work = tensor.to(self._device()).contiguous()
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work.cpu()

    def all_gather_object(self, value) -> list:
        """[value of rank 0, value of rank 1, ...] on every rank (picklable values)."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def broadcast_object(self, value):
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if :func:`join` created it."""
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


def join(device: str | torch.device | None = None) -> Group:
    """The :class:`Group` of this process, initialising torch.distributed from the launcher's environment if
    it says there are several processes and no group exists yet.

    Args:
        device: where this rank computes; a CUDA device selects NCCL (and becomes the current device),
            anything else gloo. ``None`` or "auto": CUDA (``cuda:LOCAL_RANK``) when torch sees a GPU.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        local = launcher_environment()[2]
        return Group(dist.get_rank(), dist.get_world_size(), local)
    rank, world, local = launcher_environment()
    if world == 1:
        return Group()
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside the world of {world} processes the environment names")
    if not dist.is_available():
        raise RuntimeError(f"the launcher started {world} processes but this torch build has no torch.distributed")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"{world} processes need {name} in the environment (torchrun sets it; under srun "
                             "export MASTER_ADDR=<first node> MASTER_PORT=<free port> in the job script)")
    rank_device = resolve_rank_device(device, local)
    use_cuda = rank_device.type == "cuda"
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but torch sees no CUDA GPU")
        torch.cuda.set_device(rank_device)
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world, timeout=TIMEOUT)
    return Group(rank, world, local, owns_group=True)


def resolve_rank_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    """"auto" / None: this rank's GPU if torch sees one, else cpu; a bare "cuda" is this rank's GPU; anything
    else is taken as given. This rank's GPU is ``cuda:(local_rank mod visible GPUs)``: ``cuda:LOCAL_RANK``
    under torchrun (every GPU of the node visible), ``cuda:0`` under ``srun --gpus-per-task 1`` (one visible)."""
    if device is None or str(device) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = "cuda"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return device

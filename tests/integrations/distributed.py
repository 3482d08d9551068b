"""Run a test body on several CPU processes joined in a gloo process group on 127.0.0.1, with a time bound."""

from __future__ import annotations

import faulthandler
import os
import socket
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, fn, world_size: int, port: int, args: tuple) -> None:
    faulthandler.enable(all_threads=True)  # a rank killed by a signal prints its Python stacks
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)  # several ranks share the CI machine's cores
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=120))
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()
    exit_without_static_destructors()


def exit_without_static_destructors() -> None:
    """End a finished rank at once with status 0, its output flushed.

    At interpreter exit a library's still-joinable C++ worker thread aborted a finished rank now and then
    ("terminate called without an active exception", no Python frame left): 1 run in 8 of the DDP / FSDP2 test
    on the loaded 2-core machine, and 1 CI run of the TRL job under torchrun, after its results were written.
    Skipping the static destructors skips that thread's teardown; the rank's work is already on disk or checked.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn, world_size: int, *args, timeout_s: float = 300.0) -> None:
    """``fn(rank, world_size, *args)`` in ``world_size`` spawned processes; a failure in any rank (an assertion
    included) is raised here with its traceback, and ranks still running after ``timeout_s`` are killed."""
    context = mp.start_processes(
        _entry, args=(fn, world_size, free_port(), args), nprocs=world_size, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise TimeoutError(f"{fn.__name__} did not finish on {world_size} ranks within {timeout_s:.0f} s")

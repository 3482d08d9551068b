"""One run per results folder: a lock file created atomically with ``O_CREAT | O_EXCL``.

``<out_dir>/.xtf-run.lock`` holds JSON ``{"run_id", "host", "pid", "world_size", "started"}``. Only rank 0
takes it; a second run on the same folder (any number of ranks, any node that sees the folder) finds it and
is refused with :class:`RunLockedError` before it reads or writes anything else there. ``O_EXCL`` creation
is atomic on local filesystems and on NFSv3+ / Lustre / GPFS, which is where cluster runs keep results.

Stale locks (the holder was killed with SIGKILL, or its node died, so it never removed the file):

- same host, holder's pid no longer alive: the lock is stale and is taken over, safely against another run
  doing the same at the same moment (the stale file is renamed to a name of our own, re-read to check it is
  still the stale one, and only then deleted; a fresh lock renamed by mistake is linked back);
- another host: liveness cannot be checked from here, so the run is refused with the holder's details;
  after making sure that run is gone, pass ``break_lock=True`` (``xtf score --break-lock``) or delete the
  file.

A run stopped by SIGTERM / SIGINT (torchrun and SLURM stop jobs that way) removes its lock itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid

from ..errors import RunLockedError

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError", "lock_run_id"]

LOCK_FILE = ".xtf-run.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _read(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


class RunLock:
    """The lock of ``out_dir``; :meth:`acquire` / :meth:`release` (or use it as a context manager)."""

    def __init__(self, out_dir: str, *, world_size: int = 1, break_lock: bool = False):
        self.path = os.path.join(out_dir, LOCK_FILE)
        self.world_size = world_size
        self.break_lock = break_lock
        self.run_id = uuid.uuid4().hex
        self.held = False

    def _record(self) -> dict:
        return {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                "world_size": self.world_size, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(self._record(), out)
            out.flush()
            os.fsync(out.fileno())
        return True

    def acquire(self) -> RunLock:
        for _ in range(3):  # a lock removed between our create and read: try again
            if self._create():
                self.held = True
                return self
            holder = _read(self.path)
            if holder is None:
                if not os.path.exists(self.path):
                    continue
                # Being written this very moment (created, JSON not yet flushed) or damaged.
                time.sleep(0.2)
                holder = _read(self.path)
                if holder is None and not self.break_lock:
                    raise RunLockedError(f"{self.path} exists but cannot be read; if no run uses "
                                         f"{os.path.dirname(self.path)}, delete it or pass break_lock=True "
                                         "(`xtf score --break-lock`)")
            stale = holder is not None and holder.get("host") == socket.gethostname() and \
                isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"])
            if not (stale or self.break_lock):
                raise RunLockedError(
                    f"another run is using {os.path.dirname(self.path)}: {LOCK_FILE} was created by pid "
                    f"{holder.get('pid')} on {holder.get('host')} at {holder.get('started')} "
                    f"({holder.get('world_size')} rank(s)); wait for it, use another folder, or, if that run is "
                    "gone (e.g. its node died), pass break_lock=True (`xtf score --break-lock`)")
            self._take_over(holder)
        raise RunLockedError(f"could not take {self.path}: other runs keep creating it")

    def _take_over(self, holder: dict | None) -> None:
        """Remove the stale lock ``holder`` without ever removing a lock another run just created."""
        aside = f"{self.path}.{self.run_id}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else removed it first
        moved = _read(aside)
        if holder is not None and (moved or {}).get("run_id") != holder.get("run_id") and not self.break_lock:
            # We moved a lock created after our check: put it back (link fails if yet another exists).
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            os.unlink(aside)
            raise RunLockedError(f"another run took {self.path} at the same moment; it is using "
                                 f"{os.path.dirname(self.path)}")
        os.unlink(aside)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = _read(self.path)
        if holder is not None and holder.get("run_id") == self.run_id:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_id(out_dir: str) -> str | None:
    """The run id in ``out_dir``'s lock file, or None (used by the other ranks to check they see the same
    folder as rank 0, i.e. that it lives on a filesystem every node shares)."""
    record = _read(os.path.join(out_dir, LOCK_FILE))
    return None if record is None else record.get("run_id")

"""Throughput of a scoring run: tokens/s of this rank and of all ranks, for the progress bar and the manifest.

Scoring has no collective (a slow rank must not stall the others), so rank 0's bar learns about the other
ranks' progress from their shard files appearing on disk: every rank knows every sample's length, so a
finished shard is a known number of tokens. The folder is listed at most once a second.
"""

from __future__ import annotations

import os
import socket
import time

from . import store


class Meter:
    """Counts this rank's scored samples and tokens; on rank 0 also drives the bar over every rank's shards.

    Args:
        out_dir: the results folder.
        shard_samples / shard_tokens: samples and tokens of each shard to score in this run, by index (other
            ranks' shards are recognised on disk).
        owners: the rank that scores each of those shards.
        bar: a tqdm bar over every rank's samples (rank 0 with progress on) or None.
    """

    def __init__(self, out_dir: str, shard_samples: dict[int, int], shard_tokens: dict[int, int],
                 owners: dict[int, int], bar=None):
        self.out_dir, self.shard_samples, self.shard_tokens, self.bar = out_dir, shard_samples, shard_tokens, bar
        self.owners = owners
        self.world_size = max(owners.values(), default=0) + 1
        self._rank_tokens = [0] * self.world_size
        self.samples = self.tokens = 0
        self.start = time.perf_counter()
        self._start_ns = time.time_ns()
        self._seen: set[int] = set()
        self._all_tokens = 0
        self._last_poll = 0.0

    def add(self, samples: int, tokens: int) -> None:
        self.samples += samples
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(samples)

    def shard_done(self, index: int) -> None:
        self._count(index)
        self._poll()

    def _count(self, index: int) -> None:
        if index not in self._seen:
            self._seen.add(index)
            self._all_tokens += self.shard_tokens[index]
            self._rank_tokens[self.owners[index]] += self.shard_tokens[index]

    def _poll(self, force: bool = False) -> None:
        """Refresh the bar with the shards other ranks finished since the run started."""
        if self.bar is None or (not force and time.perf_counter() - self._last_poll < 1.0):
            return
        self._last_poll = time.perf_counter()
        seen_before = sum(self.shard_samples[i] for i in self._seen)
        for index in self.shard_tokens.keys() - self._seen:
            try:
                fresh = os.stat(os.path.join(self.out_dir, store.shard_name(index))).st_mtime_ns >= self._start_ns
            except FileNotFoundError:
                continue
            if fresh:
                self._count(index)
        others = sum(self.shard_samples[i] for i in self._seen) - seen_before
        if others > 0:
            self.bar.update(others)
        own = self.rate(self.tokens)
        if self.world_size > 1:
            rates = [own, *(self.rate(tokens) for tokens in self._rank_tokens[1:])]  # others: finished shards
            text = (f"all ranks {self.rate(self._all_tokens):,.0f} tok/s, per rank {min(rates):,.0f}-"
                    f"{max(rates):,.0f} (rank 0 {own:,.0f})")
        else:
            text = f"{own:,.0f} tok/s"
        self.bar.set_postfix_str(text, refresh=False)

    def rate(self, tokens: int) -> float:
        return tokens / max(time.perf_counter() - self.start, 1e-9)

    def record(self, rank: int, device) -> dict:
        """This rank's figures for the manifest."""
        seconds = time.perf_counter() - self.start
        return {"rank": rank, "host": socket.gethostname(), "device": str(device), "samples": self.samples,
                "tokens": self.tokens, "seconds": round(seconds, 3),
                "tokens_per_s": round(self.tokens / seconds, 1) if seconds > 0 else None}

    def close(self) -> None:
        if self.bar is not None:
            self._poll(force=True)
            self.bar.close()


def summary(ranks: list[dict], dataset_pass_seconds: float) -> dict:
    """The manifest's ``throughput``: every rank's record, and the run's tokens over its slowest rank's time."""
    seconds = max(r["seconds"] for r in ranks)
    tokens = sum(r["tokens"] for r in ranks)
    return {"world_size": len(ranks), "samples": sum(r["samples"] for r in ranks), "tokens": tokens,
            "seconds": seconds, "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            "dataset_pass_seconds": round(dataset_pass_seconds, 3), "ranks": ranks}

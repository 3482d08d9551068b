"""Reading, tokenising and batching a rank's samples off the critical path: a torch DataLoader with workers.

Both passes of a scoring run read samples by their global index from an indexable
:class:`~xtf_kernels.datasets.SampleSource` (a JSONL file through its line-offset index, a ``datasets``
dataset, a list): the workers parse, tokenise and (dataset pass) digest the samples, or (scoring pass) build
padded batches, while the main process runs the model.

Scoring batches are cut inside each shard, from the shard's samples sorted by length (ties by index), so
little compute goes to padding and a sample's batch depends only on its shard, never on the number of
ranks: the same shard gives bit-identical scores on any rank of any world size.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
from collections.abc import Iterator
from collections.abc import Sequence

from torch.utils.data import DataLoader
from torch.utils.data import Dataset

from ..datasets.samples import SampleSource
from ..datasets.samples import collate
from .fingerprint import sample_digest

PASS_CHUNK = 64  # samples a dataset-pass worker handles per task: small enough to keep the workers busy


def default_workers(local_world_size: int = 1) -> int:
    """Loader workers per rank: the CPU cores this rank's node share gives it, less the main process, at most 4
    (tokenising and padding keep up with a GPU with 2-4 workers; more only costs memory)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores // max(1, local_world_size) - 1))


class _Indexed(Dataset):
    """Global sample index -> (index, sample[, digest])."""

    def __init__(self, source: SampleSource, with_digest: bool):
        self.source, self.with_digest = source, with_digest

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        sample = self.source[index]
        return (index, sample, sample_digest(sample)) if self.with_digest else (index, sample)


def _as_list(items):
    return items


def _collate_batch(items, pad_token_id: int):
    indices = [index for index, _ in items]
    return indices, collate([sample for _, sample in items], pad_token_id)


def _worker_context():
    """"fork" on Linux: a worker only reads, tokenises and pads on the CPU, so forking is safe, starts in
    milliseconds and never re-runs the user's script; a "spawn" worker (the default inside a process that was
    itself spawned, e.g. by torch.multiprocessing) re-imports torch and transformers first, seconds per worker
    per pass. Elsewhere the platform's default."""
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


def _loader(source: SampleSource, batches: Sequence[list[int]], collate_fn, *, with_digest: bool, workers: int,
            pin_memory: bool) -> DataLoader:
    return DataLoader(_Indexed(source, with_digest), batch_sampler=batches, collate_fn=collate_fn,
                      num_workers=workers, pin_memory=pin_memory, prefetch_factor=4 if workers else None,
                      multiprocessing_context=_worker_context() if workers else None)


def dataset_pass_items(source: SampleSource, indices: Sequence[int], workers: int) -> Iterator[tuple]:
    """(index, sample, 32-byte digest) of each of ``indices``, in that order."""
    chunks = [list(indices[i: i + PASS_CHUNK]) for i in range(0, len(indices), PASS_CHUNK)]
    for chunk in _loader(source, chunks, _as_list, with_digest=True, workers=workers, pin_memory=False):
        yield from chunk


def shard_batches(shard_range: range, lengths: Sequence[int], batch_size: int,
                  max_tokens: int | None) -> list[list[int]]:
    """The batches of one shard: its sample indices sorted by length, cut into groups of <= ``batch_size``
    samples and <= ``max_tokens`` padded tokens (a sample longer than that gets a batch of its own)."""
    batches: list[list[int]] = []
    group: list[int] = []
    for index in sorted(shard_range, key=lambda i: (lengths[i], i)):
        width = lengths[index]  # ascending order: the newest sample is the widest
        if group and (len(group) == batch_size or (max_tokens is not None and width * (len(group) + 1) > max_tokens)):
            batches.append(group)
            group = []
        group.append(index)
    if group:
        batches.append(group)
    return batches


def scoring_batches(source: SampleSource, batches: Sequence[list[int]], pad_token_id: int, workers: int,
                    pin_memory: bool) -> Iterator[tuple[list[int], object]]:
    """(global indices, padded :class:`~xtf_kernels.datasets.Batch`) of each batch, in order."""
    yield from _loader(source, batches, functools.partial(_collate_batch, pad_token_id=pad_token_id),
                       with_digest=False, workers=workers, pin_memory=pin_memory)


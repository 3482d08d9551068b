"""Bodies run on each rank of the distributed pipeline tests (module level, so spawned processes import them)."""

from __future__ import annotations

import os

import pytest

from tests.methods import tiny
from xtf_kernels.errors import FingerprintMismatchError
from xtf_kernels.methods import TokenCleaningConfig
from xtf_kernels.methods import TokenCleaningScorer
from xtf_kernels.methods import XTFConfig
from xtf_kernels.methods import XTFScorer
from xtf_kernels.pipeline import score_dataset

NUM_SAMPLES = 14
SHARD_SIZE = 3  # 5 shards: uneven over 2 and 4 ranks, the last one short
BATCH_SIZE = 2
CASES = ("xtf", "tc_global", "tc_sample")


def scorer(case: str, **config):
    base = tiny.model("llama", num_layers=2)
    if case == "xtf":
        return XTFScorer(base, XTFConfig(**config))
    scope = "global" if case == "tc_global" else "sample"
    return TokenCleaningScorer(base, tiny.perturbed(base, seed=1), TokenCleaningConfig(k=0.37, scope=scope, **config))


def data(case: str, root: str):
    """XTF reads a tokenised JSONL file (each rank reads only its lines), Token Cleaning a list."""
    if case == "xtf":
        return os.path.join(root, "data.jsonl")
    return tiny.data(NUM_SAMPLES).samples


def score(case: str, root: str, out: str, **kwargs):
    kwargs = {"shard_size": SHARD_SIZE, "batch_size": BATCH_SIZE, "progress": False, **kwargs}
    return score_dataset(scorer(case), data(case, root), out, **kwargs)


def score_every_case(rank: int, world_size: int, root: str, workers: int) -> None:
    for case in CASES:
        score(case, root, os.path.join(root, f"{case}-{world_size}"), num_workers=workers)


def refuse_mismatches(rank: int, world_size: int, root: str) -> None:
    """Ranks that disagree on the config, or that do not share the results folder, are refused on every rank."""
    different = scorer("xtf", kn_pcp_max=0.9 if rank else 0.95)
    with pytest.raises(FingerprintMismatchError, match="ranks disagree on the config"):
        score_dataset(different, data("xtf", root), os.path.join(root, "mismatch"), progress=False, num_workers=0)
    with pytest.raises(ValueError, match="filesystem every node shares"):
        score("xtf", root, os.path.join(root, f"private-{rank}"), num_workers=0)


def resume(rank: int, world_size: int, root: str, out: str) -> None:
    score("tc_global", root, out, num_workers=0)

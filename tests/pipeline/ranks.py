"""Bodies run on each rank of the distributed pipeline tests (module level, so spawned processes import them)."""

from __future__ import annotations

import json
import os
import warnings

import pytest

from tests.methods import tiny
from xtf_kernels.errors import DropCapExceededError
from xtf_kernels.errors import FingerprintMismatchError
from xtf_kernels.methods import Safeguards
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
    different = scorer("xtf", kn_drop_rate=0.1 if rank else 0.05)
    with pytest.raises(FingerprintMismatchError, match="ranks disagree on the config"):
        score_dataset(different, data("xtf", root), os.path.join(root, "mismatch"), progress=False, num_workers=0)
    with pytest.raises(ValueError, match="filesystem every node shares"):
        score("xtf", root, os.path.join(root, f"private-{rank}"), num_workers=0)


def resume(rank: int, world_size: int, root: str, out: str) -> None:
    score("tc_global", root, out, num_workers=0)


# (name, case, safeguards): over the cap with an error, over it with a warning (Token Cleaning: counted after the
# pool-wide top k and the per-sample cap), under it
DROP_CAP_CASES = (
    ("xtf-error", "xtf", {"max_total_drop": 0.01, "on_exceed": "error"}),
    ("tc-warn", "tc_global", {"max_sample_drop": 0.5, "max_total_drop": 0.3, "on_exceed": "warn"}),
    ("xtf-under", "xtf", {"max_total_drop": 0.99, "on_exceed": "error"}),
)


def drop_cap_outcomes(rank: int, world_size: int, root: str) -> None:
    """Each DROP_CAP_CASES run's outcome on this rank (the error's message, the cap warnings' messages) in
    ``root/cap-outcomes-<world>-<rank>.json``."""
    outcomes = {}
    for name, case, guard in DROP_CAP_CASES:
        error = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                score_dataset(scorer(case, safeguards=Safeguards(**guard)), data(case, root),
                              os.path.join(root, f"cap-{name}-{world_size}"), shard_size=SHARD_SIZE,
                              batch_size=BATCH_SIZE, progress=False, num_workers=0)
            except DropCapExceededError as exc:
                error = str(exc)
        outcomes[name] = {"error": error, "warnings": [str(w.message) for w in caught
                                                       if "max_total_drop" in str(w.message)]}
    with open(os.path.join(root, f"cap-outcomes-{world_size}-{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(outcomes, handle)

"""The safeguards' global drop cap in the pipeline: checked once, on the whole dataset's counts (after Token
Cleaning's pool-wide top k and the per-sample cap), with the same verdict on one process and on 2 gloo ranks."""

from __future__ import annotations

import json

import pytest
import torch

from tests.integrations.distributed import run_ranks
from tests.methods import tiny
from tests.pipeline import ranks
from xtf_kernels.errors import DropCapExceededError
from xtf_kernels.methods import Safeguards
from xtf_kernels.methods import safeguards as safeguards_module
from xtf_kernels.pipeline import ScoreResult
from xtf_kernels.pipeline import score_dataset
from xtf_kernels.pipeline import store

pytest.importorskip("transformers")
pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drop-cap")
    tiny.data(ranks.NUM_SAMPLES).to_jsonl(folder / "data.jsonl", tokenised=True)
    return folder


def counted(result: ScoreResult) -> tuple[int, int]:
    """(dropped, scored) response tokens of the masks as read back (what a filter applies)."""
    dropped = scored = 0
    for sample in result.iter_samples():
        valid = ~torch.isnan(sample.scores["guard"])
        dropped += int((sample.dropped & valid).sum())
        scored += int(valid.sum())
    return dropped, scored


def test_one_process_and_two_ranks_reach_the_same_verdict(root):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        ranks.drop_cap_outcomes(0, 1, str(root))
    finally:
        torch.set_num_threads(threads)
    run_ranks(ranks.drop_cap_outcomes, 2, str(root), timeout_s=240)
    one = json.loads((root / "cap-outcomes-1-0.json").read_text())
    two = [json.loads((root / f"cap-outcomes-2-{rank}.json").read_text()) for rank in range(2)]
    assert two[0] == one  # rank 0: the same error, the same single warning
    assert two[1] == {name: {"error": o["error"], "warnings": []} for name, o in one.items()}  # rank 0 warns alone
    assert one["xtf-under"] == {"error": None, "warnings": []}
    assert one["tc-warn"]["error"] is None and len(one["tc-warn"]["warnings"]) == 1
    assert one["xtf-error"]["error"] is not None and one["xtf-error"]["warnings"] == []
    for name, outcome in one.items():
        for world in (1, 2):
            result = ScoreResult(root / f"cap-{name}-{world}")
            dropped, scored = counted(result)
            assert result.complete and result.manifest["drop_totals"] == {"dropped": dropped, "scored": scored}
        message = outcome["error"] or "".join(outcome["warnings"])
        if message:
            assert f"drops {dropped / scored:.1%} of {scored} response tokens" in message
            assert "over the whole dataset (14 samples)" in message
    # Token Cleaning's total is counted after the pool-wide top k (k = 0.37) and the per-sample cap (0.5)
    tc = counted(ScoreResult(root / "cap-tc-warn-1"))
    assert 0.3 < tc[0] / tc[1] <= 0.5 + 1e-9 and tc[0] / tc[1] < 1 - 0.37


def test_scorers_running_check_waits_for_the_whole_dataset(root, monkeypatch):
    """The running check of XTF's DropCounter would raise at the first batch here (it checks from 1 token on):
    the pipeline defers it, scores everything, writes the results, then raises once on the total."""
    monkeypatch.setattr(safeguards_module, "GLOBAL_CHECK_MIN_TOKENS", 1)
    scorer = ranks.scorer("xtf", safeguards=Safeguards(max_total_drop=0.01, on_exceed="error"))
    with pytest.raises(DropCapExceededError, match="over the whole dataset"):
        score_dataset(scorer, str(root / "data.jsonl"), root / "deferred", shard_size=ranks.SHARD_SIZE,
                      batch_size=ranks.BATCH_SIZE, progress=False, num_workers=0)
    assert ScoreResult(root / "deferred").complete
    with pytest.raises(DropCapExceededError, match="over the whole dataset"):  # a rerun of the complete run too
        score_dataset(scorer, str(root / "data.jsonl"), root / "deferred", shard_size=ranks.SHARD_SIZE,
                      batch_size=ranks.BATCH_SIZE, progress=False, num_workers=0)
    manifest = json.loads((root / "deferred" / "manifest.json").read_text())
    recorded = manifest.pop("drop_totals")
    store.write_manifest(str(root / "deferred"), manifest)  # complete results written before the record existed
    with pytest.raises(DropCapExceededError, match=f"of {recorded['scored']} response tokens"):  # counted again
        score_dataset(scorer, str(root / "data.jsonl"), root / "deferred", shard_size=ranks.SHARD_SIZE,
                      batch_size=ranks.BATCH_SIZE, progress=False, num_workers=0)
    with pytest.raises(DropCapExceededError, match="XTF drops"):  # outside the pipeline it checks as it goes
        scorer.drop_counter.add(torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool))

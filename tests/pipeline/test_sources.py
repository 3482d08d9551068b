"""Random access to every input form (how a rank reads only its own samples) and the loader's batches."""

from __future__ import annotations

import pickle

import pytest
import torch

from tests.methods import tiny
from xtf_kernels.datasets import SampleSource
from xtf_kernels.datasets import samples_to_records
from xtf_kernels.pipeline.loader import dataset_pass_items
from xtf_kernels.pipeline.loader import scoring_batches
from xtf_kernels.pipeline.loader import shard_batches


def same(a, b) -> bool:
    return torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    tiny.data(7).to_jsonl(path, tokenised=True)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n\n   \n" + "\n".join(lines[3:]) + "\n")  # blank lines are skipped
    return path


def test_jsonl_by_index_equals_iteration(jsonl):
    source = SampleSource(str(jsonl), max_length=20)
    in_order = list(source)
    assert len(source) == 7
    assert all(same(source[i], in_order[i]) for i in (6, 0, 3, 3, 5))
    with pytest.raises(IndexError, match="holds 7 samples"):
        source[7]
    with pytest.raises(TypeError, match="int"):
        source["1"]
    clone = pickle.loads(pickle.dumps(source))  # what a spawned DataLoader worker gets: no open file
    assert same(clone[4], in_order[4])


def test_lists_datasets_and_parquet_by_index(tmp_path):
    datasets = pytest.importorskip("datasets")
    samples = tiny.data(5).samples
    table = datasets.Dataset.from_list(samples_to_records(samples))
    table.to_parquet(str(tmp_path / "d.parquet"))
    table.save_to_disk(str(tmp_path / "folder"))
    generator_backed = SampleSource(iter_again(samples))
    for source in (SampleSource(samples), SampleSource(table), SampleSource(str(tmp_path / "d.parquet")),
                   SampleSource(str(tmp_path / "folder")), generator_backed):
        assert all(same(source[i], samples[i]) for i in (4, 0, 2))
        assert len(source) == 5


class iter_again:
    """A re-iterable that is not a sequence (random access reads it into a list once)."""

    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)


def test_loader_workers_give_the_samples_and_batches_in_order(jsonl):
    source = SampleSource(str(jsonl))
    expected = list(source)
    for workers in (0, 2):
        items = list(dataset_pass_items(source, [5, 0, 6], workers))
        assert [i for i, _, _ in items] == [5, 0, 6] and all(same(s, expected[i]) for i, s, _ in items)
        assert len({d for _, _, d in items}) == 3 and all(len(d) == 32 for _, _, d in items)
        lengths = [len(s) for s in expected]
        plan = shard_batches(range(3, 7), lengths, 3, None)
        assert sorted(i for batch in plan for i in batch) == [3, 4, 5, 6]
        assert [lengths[i] for batch in plan for i in batch] == sorted(lengths[3:7])  # length-sorted
        for indices, batch in scoring_batches(source, plan, 0, workers, pin_memory=False):
            assert batch.input_ids.shape == (len(indices), max(lengths[i] for i in indices))
            assert torch.equal(batch.lengths, torch.tensor([lengths[i] for i in indices]))


def test_max_tokens_caps_padded_batches():
    lengths = [10, 50, 20, 40, 30]
    plan = shard_batches(range(5), lengths, 8, 60)
    assert plan == [[0, 2], [4], [3], [1]]  # 2 x 20 = 40 <= 60; 30 with 40 pads to 2 x 40 = 80 > 60

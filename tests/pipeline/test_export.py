"""The filtered data as a Hugging Face dataset (save_to_disk folder and Parquet): its columns against the results,
as scoring input, and trained through transformers.Trainer on only the kept tokens."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.methods import tiny
from xtf_kernels.datasets import SFTCollator
from xtf_kernels.datasets import as_source
from xtf_kernels.datasets import samples_to_records
from xtf_kernels.methods import TokenCleaningConfig
from xtf_kernels.methods import TokenCleaningScorer
from xtf_kernels.pipeline import score_dataset

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    samples = tiny.data(10).samples
    base = tiny.model("llama", num_layers=2)
    scorer = TokenCleaningScorer(base, tiny.perturbed(base, seed=1), TokenCleaningConfig(k=0.5))
    result = score_dataset(scorer, samples, root / "scores", shard_size=4, progress=False, num_workers=0)
    return root, samples, result


def test_columns_hold_the_masks_scores_and_rules(scored):
    root, samples, result = scored
    assert result.write_filtered(samples, root / "filtered", format="dataset") == 10
    assert result.write_filtered(samples, root / "filtered.parquet") == 10
    on_disk = datasets.load_from_disk(str(root / "filtered"))
    parquet = datasets.load_dataset("parquet", data_files=str(root / "filtered.parquet"), split="train")
    info = json.loads(on_disk.info.description)
    assert info["rule_names"] == {"0": "low_influence"} and info["data_fingerprint"] == result.data_fingerprint
    assert on_disk.features["dropped_by"].feature.dtype == "uint8"
    assert on_disk.features["token_weights"].feature.dtype == "float32"
    dropped = 0
    for sample, scored_sample, row, parquet_row in zip(samples, result.iter_samples(), on_disk, parquet, strict=True):
        assert set(row) == set(parquet_row)
        assert all(row[k] == parquet_row[k] for k in row if not k.startswith("score_"))  # scores (NaN) below
        kept = (sample.labels != -100) & ~scored_sample.dropped
        assert row["input_ids"] == sample.input_ids.tolist()
        assert row["labels"] == torch.where(kept, sample.labels, -100).tolist()
        assert row["completion_mask"] == kept.long().tolist()
        assert row["token_weights"] == kept.float().tolist()
        assert row["dropped_by"] == scored_sample.dropped_by.tolist()
        for name, values in scored_sample.scores.items():
            for column in (row, parquet_row):
                torch.testing.assert_close(torch.tensor(column[f"score_{name}"]), values, rtol=0, atol=0,
                                           equal_nan=True)
        dropped += int(scored_sample.dropped.sum())
    assert dropped > 0


def test_datasets_are_accepted_as_input(scored, tmp_path):
    root, samples, result = scored
    as_dataset = datasets.Dataset.from_list(samples_to_records(samples))
    assert result.write_filtered(as_dataset, tmp_path / "again", format="dataset") == 10  # same fingerprint
    result.write_filtered(samples, root / "filtered-input", format="dataset")
    source = as_source(str(root / "filtered-input"))
    assert len(source) == 10 and torch.equal(source[3].input_ids, samples[3].input_ids)
    assert [s.labels.tolist() for s in source] == [r.masked_labels(s.labels).tolist()
                                                   for s, r in zip(samples, result.iter_samples())]
    rescored = score_dataset(TokenCleaningScorer(tiny.model("llama"), tiny.model("llama", seed=1)),
                             str(root / "filtered-input"), tmp_path / "rescored", progress=False, num_workers=0)
    assert rescored.num_samples == 10
    with pytest.raises(ValueError, match="not a dataset"):
        as_source(str(tmp_path))


class XtfOpCalls(TorchDispatchMode):
    """Records the targets and token weights of every torch.ops.xtf.linear_cross_entropy call."""

    def __init__(self):
        super().__init__()
        self.trained_tokens = 0
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "xtf" and func.__name__.startswith("linear_cross_entropy"):
            targets, weights = args[3], args[4]
            live = targets != -100
            if weights is not None:
                live &= weights != 0
            self.trained_tokens += int(live.sum())
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_the_dataset_trains_a_model_through_trainer_on_the_kept_tokens_only(scored, tmp_path):
    from xtf_kernels import apply_xtf_kernels
    from xtf_kernels.integrations.trainer import TokenColumnsCollator

    root, samples, result = scored
    result.write_filtered(samples, root / "train", format="dataset")
    dataset = datasets.load_from_disk(str(root / "train"))
    kept = sum(sum(1 for label in row["labels"][1:] if label != -100) for row in dataset)
    labelled = sum(int((s.labels[1:] != -100).sum()) for s in samples)
    assert 0 < kept < labelled

    model = apply_xtf_kernels(tiny.model("llama", num_layers=2))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=1, per_device_train_batch_size=2, learning_rate=1e-3,
        report_to="none", use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True, dataloader_num_workers=0)
    collator = TokenColumnsCollator(SFTCollator(0), {"token_weights": 0.0})
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    before = [p.detach().clone() for p in model.parameters()]
    with XtfOpCalls() as calls:
        trainer.train()
    assert calls.calls == 5  # 10 samples, 2 a step, one fused loss per step
    assert calls.trained_tokens == kept  # every kept token, and no dropped or prompt token, carried a loss
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

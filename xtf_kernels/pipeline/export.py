"""The filtered dataset as a Hugging Face ``datasets`` dataset that trainers read as they are.

One row per sample, every column per token (length L, aligned with ``input_ids``):

====================  ============  ========================================================================
column                type          meaning
====================  ============  ========================================================================
``input_ids``         int64         the tokens, unchanged (dropped tokens stay in the input)
``labels``            int64         the ids, -100 at prompt tokens and at every dropped token
                                    (``transformers.Trainer`` with or without ``apply_xtf_kernels``)
``completion_mask``   int8 (0/1)    1 at the response tokens that are kept (TRL ``SFTTrainer``'s column)
``token_weights``     float32       1.0 at kept response tokens, 0.0 elsewhere (the fused loss's
                                    ``token_weights``; pad it with ``TokenColumnsCollator``)
``dropped_by``        uint8         rule bits: bit i set = ``rule_names[i]`` dropped the token
``score_<name>``      float32       each score of the method, NaN where not scored
====================  ============  ========================================================================

The dataset's ``info.description`` is JSON naming the method, its rules by bit, its scores and the data and
config fingerprints; a Parquet file carries the same JSON under the schema metadata key ``xtf``. Written
as a ``save_to_disk`` folder (``datasets.load_from_disk``) or one Parquet file
(``datasets.load_dataset("parquet", data_files=...)``), streamed through an Arrow file (one sample in
memory at a time), then moved into place: a Parquet file atomically, a folder by two renames (a reader
sees the old folder, the new one, or for an instant none).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable

import torch

from ..datasets.samples import IGNORE_INDEX
from ..datasets.samples import TokenizedSample
from ..methods.base import SampleScores

FORMATS = ("dataset", "parquet")


def _datasets():
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("writing a Hugging Face dataset needs the datasets package: pip install datasets") from exc
    return datasets


def row(sample: TokenizedSample, scored: SampleScores) -> dict:
    """The dataset row of one sample and its scores (see the module docstring)."""
    labels = scored.masked_labels(sample.labels)
    kept = labels != IGNORE_INDEX
    out = {"input_ids": sample.input_ids.tolist(), "labels": labels.tolist(),
           "completion_mask": kept.to(torch.int64).tolist(), "token_weights": kept.to(torch.float32).tolist(),
           "dropped_by": scored.dropped_by.tolist()}
    for name, values in scored.scores.items():
        out[f"score_{name}"] = values.float().tolist()
    return out


def features(score_names: Iterable[str]):
    datasets = _datasets()

    def column(dtype: str):
        return datasets.Sequence(datasets.Value(dtype))

    columns = {"input_ids": column("int64"), "labels": column("int64"), "completion_mask": column("int8"),
               "token_weights": column("float32"), "dropped_by": column("uint8")}
    columns.update({f"score_{name}": column("float32") for name in score_names})
    return datasets.Features(columns)


def description(result) -> str:
    """JSON describing what the columns hold (the dataset's ``info.description``)."""
    return json.dumps({"format": "xtf-filtered", "method": result.method,
                       "rule_names": {str(bit): rule for bit, rule in enumerate(result.rule_names)},
                       "score_names": list(result.score_names), "data_fingerprint": result.data_fingerprint,
                       "config_fingerprint": result.config_fingerprint,
                       "labels": "-100 at prompt tokens and at every dropped token",
                       "completion_mask": "1 at kept response tokens", "token_weights": "1.0 at kept response tokens",
                       "dropped_by": "bit i set: rule_names[i] dropped the token"}, sort_keys=True)


def write(result, pairs: Iterable[tuple[TokenizedSample, SampleScores]], path: str, format: str) -> int:
    """Write the rows of ``pairs`` to ``path`` as ``format`` ("dataset" or "parquet"); returns the row count."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    datasets = _datasets()
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        arrow = os.path.join(work, "rows.arrow")
        count = 0
        with datasets.arrow_writer.ArrowWriter(features=features(result.score_names), path=arrow) as writer:
            for sample, scored in pairs:
                writer.write(row(sample, scored))
                count += 1
            writer.finalize()
        quiet = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # save_to_disk's own bar, per call; the caller's setting is restored
        info = datasets.DatasetInfo(description=description(result), features=features(result.score_names))
        dataset = datasets.Dataset.from_file(arrow, info=info)
        if format == "parquet":
            import pyarrow.parquet as pq

            table = dataset.data.table
            metadata = {**(table.schema.metadata or {}), b"xtf": description(result).encode()}
            staged = os.path.join(work, "out.parquet")
            pq.write_table(table.replace_schema_metadata(metadata), staged)
            os.replace(staged, path)
        else:
            staged = os.path.join(work, "out")
            dataset.save_to_disk(staged)
            del dataset  # release the memory map of rows.arrow before the folder is removed
            if os.path.isdir(path):
                os.rename(path, os.path.join(work, "previous"))
            elif os.path.exists(path):
                raise FileExistsError(f"{path} exists and is not a folder; a dataset is written as a folder")
            os.rename(staged, path)
        if quiet:
            datasets.enable_progress_bars()
        return count
    finally:
        shutil.rmtree(work, ignore_errors=True)

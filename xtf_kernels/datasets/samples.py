"""Tokenised SFT samples, the ways they come in, and padded batches of them.

A sample is one sequence: ``input_ids`` (L,) int64 and ``labels`` (L,) int64, aligned with the input ids the
transformers way (``labels[t]`` is the target of position t; the model shifts), ``-100`` on the prompt and
on every token that is not trained on. "Response tokens" are the positions t >= 1 with ``labels[t] != -100``;
only they are ever scored or selected.

Accepted inputs (:func:`as_source`):
- a list / tuple / ``datasets.Dataset`` / any re-iterable of :class:`TokenizedSample` or of dicts with
  ``input_ids`` and one of ``labels``, ``prompt_length`` (the first n tokens are prompt) or ``loss_mask``
  (1 = response token);
- dicts with ``prompt`` and ``response`` text plus a ``tokenizer`` (anything with
  ``encode(text, add_special_tokens=False)``, e.g. a transformers tokenizer); the sequence is
  ``[bos] + prompt + response + [eos]`` with bos / eos where the tokenizer has them, eos labelled;
- a path to a JSONL file holding either of those dict forms, one per line, read lazily on every pass;
- a Hugging Face ``datasets`` dataset on disk: a folder written by ``Dataset.save_to_disk`` (e.g. by
  ``xtf filter --format dataset``) or a ``.parquet`` file, with the columns above (needs ``datasets``).

Every source is also indexable (``source[i]``), which is how a distributed scoring run reads only its own
samples: a list or dataset directly, a JSONL file through an index of line offsets built on first use
(8 bytes a line), any other iterable after reading it into a list.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedSample:
    """One sequence. ``input_ids``: (L,) int64; ``labels``: (L,) int64, -100 where not trained on.

    ``noise_mask`` (L,) bool is optional ground truth (True = corrupted token) carried by the synthetic data.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    noise_mask: torch.Tensor | None = None

    def __post_init__(self):
        for name in ("input_ids", "labels"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dim() != 1:
                raise ValueError(f"{name} must be a 1-D tensor, got {_describe(value)}")
            if value.dtype != torch.int64:
                raise TypeError(f"{name} must be int64, got {value.dtype}")
        if self.input_ids.numel() == 0:
            raise ValueError("input_ids must hold at least one token")
        if self.labels.shape != self.input_ids.shape:
            raise ValueError(
                f"labels shape {tuple(self.labels.shape)} != input_ids shape {tuple(self.input_ids.shape)}"
            )
        if self.noise_mask is not None and (
            self.noise_mask.dtype != torch.bool or self.noise_mask.shape != self.input_ids.shape
        ):
            raise ValueError(
                f"noise_mask must be a bool tensor shaped like input_ids, got {_describe(self.noise_mask)}"
            )

    def __len__(self) -> int:
        return self.input_ids.numel()

    @property
    def response_mask(self) -> torch.Tensor:
        """(L,) bool: the positions that are scored (labelled, and not position 0, which has no context)."""
        mask = self.labels != IGNORE_INDEX
        mask[0] = False
        return mask

    def with_labels(self, labels: torch.Tensor) -> TokenizedSample:
        return TokenizedSample(self.input_ids, labels, self.noise_mask)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def _int_tensor(name: str, values, where: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{where}: {name} must be a list of integers ({exc})") from None
    if tensor.dim() != 1 or tensor.is_floating_point() or tensor.dtype == torch.bool:
        raise ValueError(f"{where}: {name} must be a flat list of integers, got {_describe(tensor)}")
    return tensor.to(torch.int64)


def sample_from_text(prompt: str, response: str, tokenizer, *, max_length: int | None = None) -> TokenizedSample:
    """``[bos] + prompt + response + [eos]``; labels -100 on bos and prompt, the ids on response and eos."""
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise TypeError("prompt and response must be strings")
    if not hasattr(tokenizer, "encode"):
        raise TypeError(f"tokenizer must have an encode(text, add_special_tokens=False) method, got {tokenizer!r}")
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    head = ([bos] if bos is not None else []) + list(tokenizer.encode(prompt, add_special_tokens=False))
    tail = list(tokenizer.encode(response, add_special_tokens=False)) + ([eos] if eos is not None else [])
    ids = head + tail
    labels = [IGNORE_INDEX] * len(head) + tail
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return TokenizedSample(torch.tensor(ids, dtype=torch.int64), torch.tensor(labels, dtype=torch.int64))


def sample_from_record(
    record, tokenizer=None, *, where: str = "sample", max_length: int | None = None
) -> TokenizedSample:
    """One :class:`TokenizedSample` from any accepted record form (see the module docstring)."""
    if isinstance(record, TokenizedSample):
        return record
    if not isinstance(record, dict):
        raise TypeError(f"{where}: expected a dict or TokenizedSample, got {type(record).__name__}")
    if "input_ids" in record:
        ids = _int_tensor("input_ids", record["input_ids"], where)
        if "labels" in record:
            labels = _int_tensor("labels", record["labels"], where)
        elif "prompt_length" in record:
            n = record["prompt_length"]
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= ids.numel():
                raise ValueError(f"{where}: prompt_length must be an int in [0, {ids.numel()}], got {n!r}")
            labels = ids.clone()
            labels[:n] = IGNORE_INDEX
        elif "loss_mask" in record:
            mask = _int_tensor("loss_mask", record["loss_mask"], where)
            if mask.shape != ids.shape:
                raise ValueError(f"{where}: loss_mask has {mask.numel()} entries but input_ids has {ids.numel()}")
            labels = torch.where(mask != 0, ids, torch.full_like(ids, IGNORE_INDEX))
        else:
            raise ValueError(f"{where}: a record with input_ids also needs labels, prompt_length or loss_mask")
        if labels.shape != ids.shape:
            raise ValueError(f"{where}: labels has {labels.numel()} entries but input_ids has {ids.numel()}")
        if max_length is not None:
            ids, labels = ids[:max_length], labels[:max_length]
        noise = record.get("noise_mask")
        noise_mask = None if noise is None else _int_tensor("noise_mask", noise, where).bool()[: ids.numel()]
        return TokenizedSample(ids, labels, noise_mask)
    if "prompt" in record and "response" in record:
        if tokenizer is None:
            raise ValueError(f"{where}: prompt / response text needs a tokenizer")
        return sample_from_text(record["prompt"], record["response"], tokenizer, max_length=max_length)
    raise ValueError(f"{where}: a record needs input_ids (+ labels / prompt_length / loss_mask) or prompt and response")


class SampleSource:
    """A re-iterable stream of :class:`TokenizedSample`; each pass re-reads its input (JSONL lazily).

    Args:
        data: see the module docstring.
        tokenizer: needed for prompt / response text.
        max_length: truncate every sample to this many tokens.
    """

    def __init__(self, data, tokenizer=None, *, max_length: int | None = None):
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < 2):
            raise ValueError(f"max_length must be an int >= 2 or None, got {max_length!r}")
        self.path: str | None = None
        if isinstance(data, (str, os.PathLike)):
            path = os.fspath(data)
            if os.path.isdir(path) or path.endswith(".parquet"):
                data = load_hf_dataset(path)
            elif not os.path.isfile(path):
                raise FileNotFoundError(f"dataset file not found: {path}")
            else:
                self.path = path
                self._data = None
        if self.path is None:
            if isinstance(data, Iterator):
                raise TypeError("data must be re-iterable (a list, a dataset or a JSONL path), not a one-shot iterator")
            if not isinstance(data, Iterable):
                raise TypeError(f"data must be a list, a dataset or a JSONL path, got {type(data).__name__}")
            self._data = data
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._length: int | None = len(data) if self._data is not None and hasattr(data, "__len__") else None
        self._offsets: np.ndarray | None = None  # JSONL: byte offset of every non-empty line
        self._handle = None  # JSONL: open in this process (pid) for random access
        self._handle_pid: int | None = None

    def _records(self) -> Iterator[tuple[str, object]]:
        if self.path is None:
            for i, record in enumerate(self._data):
                yield f"sample {i}", record
            return
        with open(self.path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{self.path}:{line_no}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
                yield where, record

    def __iter__(self) -> Iterator[TokenizedSample]:
        count = 0
        for where, record in self._records():
            yield sample_from_record(record, self.tokenizer, where=where, max_length=self.max_length)
            count += 1
        self._length = count

    def __len__(self) -> int:
        if self._length is None:
            self._length = len(self._line_offsets()) if self.path is not None else sum(1 for _ in self._records())
        return self._length

    def __getitem__(self, index: int) -> TokenizedSample:
        """Sample ``index`` (0-based, in the order of iteration)."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if self.path is not None:
            offsets = self._line_offsets()
            if not 0 <= index < len(offsets):
                raise IndexError(f"sample {index} is out of range: {self.path} holds {len(offsets)} samples")
            if self._handle is None or self._handle_pid != os.getpid():  # DataLoader workers open their own
                self._handle, self._handle_pid = open(self.path, "rb"), os.getpid()  # noqa: SIM115 - kept open
            self._handle.seek(int(offsets[index]))
            where = f"{self.path} (sample {index})"
            try:
                record = json.loads(self._handle.readline())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{where}: not valid JSON ({exc})") from None
            return sample_from_record(record, self.tokenizer, where=where, max_length=self.max_length)
        if not isinstance(self._data, Sequence) and not hasattr(self._data, "__getitem__"):
            self._data = list(self._data)  # a plain iterable: random access needs it in memory
            self._length = len(self._data)
        if not 0 <= index < len(self._data):
            raise IndexError(f"sample {index} is out of range: the data holds {len(self._data)} samples")
        return sample_from_record(self._data[index], self.tokenizer, where=f"sample {index}",
                                  max_length=self.max_length)

    def _line_offsets(self) -> np.ndarray:
        if self._offsets is None:
            offsets, position = [], 0
            with open(self.path, "rb") as handle:
                for line in handle:
                    if line.strip():
                        offsets.append(position)
                    position += len(line)
            self._offsets = np.asarray(offsets, dtype=np.int64)
        return self._offsets

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"], state["_handle_pid"] = None, None  # an open file does not travel to a worker
        return state


def load_hf_dataset(path: str):
    """A ``datasets.Dataset`` from a ``save_to_disk`` folder or a ``.parquet`` file (ValueError otherwise)."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(f"reading {path} needs the datasets package: pip install datasets") from exc
    if path.endswith(".parquet"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"dataset file not found: {path}")
        return datasets.Dataset.from_parquet(path)
    try:
        loaded = datasets.load_from_disk(path)
    except FileNotFoundError as exc:
        raise ValueError(f"{path} is a folder but not a dataset written by datasets' save_to_disk ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"{path} holds a DatasetDict with splits {sorted(loaded)}; pass one split's folder "
                         "(or load it and pass the datasets.Dataset)")
    return loaded


def as_source(data, tokenizer=None, *, max_length: int | None = None) -> SampleSource:
    """``data`` as a :class:`SampleSource` (returned unchanged if it already is one)."""
    if isinstance(data, SampleSource):
        return data
    return SampleSource(data, tokenizer, max_length=max_length)


@dataclass(frozen=True)
class Batch:
    """Right-padded samples. input_ids / labels: (B, L) int64 (pad id / -100 in padding);
    attention_mask: (B, L) int64, 1 = real token; lengths: (B,) int64."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor

    def to(self, device, *, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking)
                       for t in (self.input_ids, self.labels, self.attention_mask, self.lengths)))

    def pin_memory(self) -> Batch:
        """Page-locked copies (a DataLoader with ``pin_memory=True`` calls this), for non-blocking GPU copies."""
        return Batch(*(t.pin_memory() for t in (self.input_ids, self.labels, self.attention_mask, self.lengths)))

    @property
    def response_mask(self) -> torch.Tensor:
        """(B, L) bool: labelled positions t >= 1 (what is scored)."""
        mask = self.labels != IGNORE_INDEX
        mask[:, 0] = False
        return mask


def collate(samples: Sequence[TokenizedSample], pad_token_id: int = 0) -> Batch:
    """Right-pad ``samples`` into a :class:`Batch`. Right padding keeps every real position's causal context
    identical to the unpadded sequence, so scores do not depend on the batch they were computed in."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    lengths = torch.tensor([len(s) for s in samples], dtype=torch.int64)
    width = int(lengths.max())
    input_ids = torch.full((len(samples), width), pad_token_id, dtype=torch.int64)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.int64)
    for row, sample in enumerate(samples):
        input_ids[row, : len(sample)] = sample.input_ids
        labels[row, : len(sample)] = sample.labels
    attention_mask = (torch.arange(width)[None, :] < lengths[:, None]).to(torch.int64)
    return Batch(input_ids, labels, attention_mask, lengths)


def batches(samples: Iterable[TokenizedSample], batch_size: int, *, max_tokens: int | None = None) -> Iterator[list]:
    """Consecutive groups of at most ``batch_size`` samples (and, if given, at most ``max_tokens`` padded tokens)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    group: list[TokenizedSample] = []
    width = 0
    for sample in samples:
        new_width = max(width, len(sample))
        too_wide = max_tokens is not None and new_width * (len(group) + 1) > max_tokens
        if group and (len(group) == batch_size or too_wide):
            yield group
            group, new_width = [], len(sample)
        group.append(sample)
        width = new_width
    if group:
        yield group


def samples_to_records(samples: Iterable[TokenizedSample]) -> list[dict]:
    """``[{"input_ids": [...], "labels": [...]}]``: a ``train_dataset`` for a transformers ``Trainer``
    (with :class:`SFTCollator` as its ``data_collator``)."""
    return [{"input_ids": s.input_ids.tolist(), "labels": s.labels.tolist()} for s in samples]


class SFTCollator:
    """``data_collator`` for records with ``input_ids`` and ``labels``: right-pads them into
    ``{"input_ids", "attention_mask", "labels"}`` (B, L) int64 tensors (pad id / 0 / -100 in padding)."""

    def __init__(self, pad_token_id: int = 0):
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        samples = [sample_from_record({"input_ids": f["input_ids"], "labels": f["labels"]}, where=f"feature {i}")
                   for i, f in enumerate(features)]
        batch = collate(samples, self.pad_token_id)
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": batch.labels}

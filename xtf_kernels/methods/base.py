"""The interface every token scorer implements, and in-memory scoring for data that fits in memory.

A scorer turns a padded :class:`~xtf_kernels.datasets.Batch` into per-token scores and rule flags
(:class:`BatchScores`). Scores are fp32, aligned with ``input_ids`` (the score of the token AT position t),
NaN where a token is not scored (prompt, padding, position 0). ``dropped_by`` is a uint8 bit field: bit i
set means rule ``rule_names[i]`` dropped the token. A rule that needs the whole pool (a global top k)
is declared as :attr:`TokenScorer.global_topk` and applied afterwards, over every sample's scores, by
:func:`score_samples` here or by the streaming :mod:`xtf_kernels.pipeline`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .. import select
from ..datasets.samples import IGNORE_INDEX
from ..datasets.samples import Batch
from ..datasets.samples import TokenizedSample
from ..datasets.samples import batches
from ..datasets.samples import collate


@dataclass(frozen=True)
class BatchScores:
    """scores: name -> (B, L) fp32 (NaN where not scored); dropped_by: (B, L) uint8 rule bits."""

    scores: dict[str, torch.Tensor]
    dropped_by: torch.Tensor


@dataclass(frozen=True)
class GlobalTopK:
    """Keep the best ``k`` fraction of score ``score`` over every scored token of the pool (exactly
    floor(k N), ties to the earlier token); the others get rule ``rule``."""

    score: str
    k: float
    largest: bool
    rule: str


@dataclass(frozen=True)
class SampleScores:
    """One sample's result. scores: name -> (L,) fp32 (NaN where not scored); dropped_by: (L,) uint8."""

    scores: dict[str, torch.Tensor]
    dropped_by: torch.Tensor
    rule_names: tuple[str, ...]

    @property
    def dropped(self) -> torch.Tensor:
        """(L,) bool, True where any rule fired."""
        return self.dropped_by != 0

    def fired(self, rule: str) -> torch.Tensor:
        """(L,) bool, True where ``rule`` fired (possibly together with others)."""
        if rule not in self.rule_names:
            raise ValueError(f"rule must be one of {self.rule_names}, got {rule!r}")
        return (self.dropped_by & (1 << self.rule_names.index(rule))) != 0

    def masked_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` with -100 at every dropped token (they stay in the input, only their loss goes)."""
        if labels.shape != self.dropped_by.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} != scored shape {tuple(self.dropped_by.shape)}")
        return torch.where(self.dropped, torch.full_like(labels, IGNORE_INDEX), labels)


class TokenScorer(abc.ABC):
    """Base class of the scorers (:class:`~xtf_kernels.methods.XTFScorer`,
    :class:`~xtf_kernels.methods.TokenCleaningScorer`).

    Subclasses set ``name``, ``rule_names`` and ``score_names`` and implement :meth:`config_dict`,
    :meth:`models` and :meth:`score_batch`; scorers that need statistics of the whole dataset before scoring
    override :attr:`needs_dataset_pass` and the three dataset-pass hooks, and keep what they learn in
    :meth:`state_tensors` so a resumed run need not recompute it.
    """

    name: str = ""
    rule_names: tuple[str, ...] = ()
    score_names: tuple[str, ...] = ()
    needs_dataset_pass: bool = False
    pad_token_id: int = 0

    @property
    def global_topk(self) -> GlobalTopK | None:
        """A pool-wide selection to apply after every batch is scored, or None."""
        return None

    @property
    def safeguards(self):
        """The :class:`~xtf_kernels.methods.Safeguards` whose global cap :func:`score_samples` checks on the
        totals, or None (nothing to check)."""
        return None

    @abc.abstractmethod
    def config_dict(self) -> dict:
        """Every knob, JSON-serialisable (part of the result's config fingerprint)."""

    @abc.abstractmethod
    def models(self) -> dict[str, torch.nn.Module]:
        """The models the scores depend on, by role (part of the config fingerprint)."""

    @abc.abstractmethod
    def score_batch(self, batch: Batch) -> BatchScores:
        """Scores and locally decided rule flags of one batch (already on the model's device)."""

    def begin_dataset_pass(self) -> None:
        """Called before :meth:`observe` sees the samples."""
        return None  # default: nothing to learn from the dataset

    def observe(self, sample: TokenizedSample) -> None:
        """Sees every sample once, in order, before scoring (only if :attr:`needs_dataset_pass`)."""
        return None  # default: nothing to learn from the dataset

    def dataset_statistics(self) -> dict[str, torch.Tensor]:
        """What :meth:`observe` has accumulated so far, as CPU tensors that ADD UP over disjoint parts of
        the dataset (counts, sums). A distributed run sums them across ranks (all-reduce SUM) and hands
        the total to :meth:`load_dataset_statistics` before :meth:`end_dataset_pass`, so every rank fits
        exactly what one process that saw every sample would fit."""
        return {}

    def load_dataset_statistics(self, statistics: dict[str, torch.Tensor]) -> None:
        """Replace what :meth:`observe` accumulated by ``statistics`` (same keys and shapes as
        :meth:`dataset_statistics`, e.g. their sum over ranks)."""
        return None  # default: nothing to learn from the dataset

    def end_dataset_pass(self) -> None:
        """Called after the last :meth:`observe` (and, in a distributed run, after the statistics of every
        rank were summed in with :meth:`load_dataset_statistics`)."""
        return None  # default: nothing to learn from the dataset

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What the dataset pass learned, as CPU tensors (saved with the results)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_tensors` (a resumed run)."""
        return None  # default: nothing to learn from the dataset

    @property
    def device(self) -> torch.device:
        """Where batches go: the device of the first model's parameters."""
        first_model = next(iter(self.models().values()))
        return next(first_model.parameters()).device


def rule_bit(rule_names: tuple[str, ...], rule: str) -> int:
    return 1 << rule_names.index(rule)


def apply_global_topk(results: list[SampleScores], spec: GlobalTopK, rule_names: tuple[str, ...]) -> list[SampleScores]:
    """Sets ``spec.rule`` on every scored token outside the pool-wide top k (in memory, exact, ties to the
    earlier sample / position)."""
    if not results:
        return results
    flat = torch.cat([r.scores[spec.score] for r in results])
    valid = ~torch.isnan(flat)
    kept = select.topk_mask(torch.where(valid, flat, torch.zeros_like(flat)), spec.k, valid=valid,
                            largest=spec.largest)
    bit = rule_bit(rule_names, spec.rule)
    out, start = [], 0
    for r in results:
        end = start + r.dropped_by.numel()
        drop = valid[start:end] & ~kept[start:end]
        out.append(SampleScores(r.scores, r.dropped_by | (drop.to(torch.uint8) * bit), r.rule_names))
        start = end
    return out


def split_batch(batch_scores: BatchScores, lengths: torch.Tensor, rule_names: tuple[str, ...]) -> list[SampleScores]:
    """Per-sample CPU :class:`SampleScores` of a scored batch, cut to each sample's length."""
    scores = {name: value.float().cpu() for name, value in batch_scores.scores.items()}
    dropped_by = batch_scores.dropped_by.cpu()
    out = []
    for row, length in enumerate(lengths.tolist()):
        out.append(SampleScores({name: value[row, :length].clone() for name, value in scores.items()},
                                dropped_by[row, :length].clone(), rule_names))
    return out


@torch.no_grad()
def score_samples(scorer: TokenScorer, samples: Iterable[TokenizedSample], *, batch_size: int = 16,
                  progress: bool = False) -> list[SampleScores]:
    """Score ``samples`` in memory: the dataset pass (if any), every batch, then the global top k (if any).

    For data that does not fit in memory, or to keep and resume results, use
    :func:`xtf_kernels.pipeline.score_dataset`.

    The scorer's global cap (``safeguards.max_total_drop``) is checked once, on the totals over every sample,
    as the pipeline does: a running fraction is not the dataset's (noisier samples first would trip it while
    the whole stays under the cap). With a pool-wide top k the check is :func:`~.safeguards.finalize`'s, after
    the per-sample safeguards it applies.

    Returns:
        one :class:`SampleScores` per sample, in order.

    Raises:
        DropCapExceededError: the global cap is exceeded and ``on_exceed == "error"`` (with "warn": a warning).
    """
    from .safeguards import check_total_drop  # safeguards imports this module
    from .safeguards import deferred_total_check
    from .safeguards import drop_counts

    samples = list(samples)
    if scorer.needs_dataset_pass:
        scorer.begin_dataset_pass()
        for sample in samples:
            scorer.observe(sample)
        scorer.end_dataset_pass()
    groups = list(batches(samples, batch_size))
    if progress:
        from tqdm.auto import tqdm

        groups = tqdm(groups, desc=f"{scorer.name} scoring", unit="batch")
    device = scorer.device
    results: list[SampleScores] = []
    with deferred_total_check():
        for group in groups:
            batch = collate(group, scorer.pad_token_id).to(device)
            results.extend(split_batch(scorer.score_batch(batch), batch.lengths, scorer.rule_names))
    spec = scorer.global_topk
    if spec is not None:
        return apply_global_topk(results, spec, scorer.rule_names)
    if scorer.safeguards is not None:
        counts = [drop_counts(r.scores, r.dropped_by) for r in results]
        check_total_drop(sum(c[0] for c in counts), sum(c[1] for c in counts), scorer.safeguards,
                         what=f"{scorer.name} over {len(samples)} samples")
    return results


def filter_samples(samples: Iterable[TokenizedSample], results: Iterable[SampleScores]) -> list[TokenizedSample]:
    """``samples`` with -100 on the labels of every dropped token."""
    samples, results = list(samples), list(results)
    if len(samples) != len(results):
        raise ValueError(f"{len(samples)} samples but {len(results)} results")
    return [s.with_labels(r.masked_labels(s.labels)) for s, r in zip(samples, results)]

"""Token Cleaning (methods.md section 2; arXiv 2502.01968): keep the tokens a reference model improved most.

score(token) = ce(base, token) - ce(ref, token) = log p_ref - log p_base, from
:func:`xtf_kernels.influence_delta` on both models' final hidden states and lm_head weights (no logits).

- Fixed-model cleaning: ref = base fine-tuned on a trusted warm-up set; keep the global top ``k`` of all
  response tokens of the pool (exactly floor(k N), ties to the earlier token; a per-sample variant keeps
  the top k of each sample), the others get label -100; then fine-tune the ORIGINAL base on the result.
  :class:`TokenCleaningScorer` with :func:`~xtf_kernels.methods.score_samples` (in memory) or
  :func:`xtf_kernels.pipeline.score_dataset` (streaming, the threshold from
  :class:`xtf_kernels.select.StreamingTopK`).
- Self-evolving cleaning: :func:`self_evolving_cleaning` splits the pool into ``n_parts`` contiguous parts,
  trains on part 0 with every token, then for each later part scores with the fixed base against the
  current model, keeps the part's global top k, and continues training. Training is a callback, so any
  loop (:func:`~xtf_kernels.methods.finetune`, a transformers ``Trainer``) drives it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field

import torch

from .. import select
from ..datasets.samples import Batch
from ..datasets.samples import TokenizedSample
from ..functional import influence_delta
from ._causal_lm import check_causal_lm
from ._causal_lm import final_hidden_states
from ._causal_lm import lm_head_of
from ._causal_lm import model_device
from ._causal_lm import unwrap
from .base import BatchScores
from .base import GlobalTopK
from .base import SampleScores
from .base import TokenScorer
from .base import filter_samples
from .base import score_samples
from .safeguards import PROTECTED
from .safeguards import Safeguards
from .safeguards import finalize
from .safeguards import guard_sample_drops
from .safeguards import guard_score
from .safeguards import resolve_protected_ids

SCOPES = ("global", "sample")
RULE = "low_influence"


@dataclass(frozen=True)
class TokenCleaningConfig:
    """Knobs of Token Cleaning.

    Attributes:
        k: fraction of the response tokens kept (methods.md default 0.6); protected tokens are kept outside
            this budget (they are not ranked), so k applies to the others.
        scope: "global" (top k of the whole pool / part) or "sample" (top k of each sample).
        safeguards: :class:`~xtf_kernels.methods.safeguards.Safeguards`; default: special tokens and the eos
            protected, no cap (the top k already fixes the drop rate at 1 - k; a per-sample cap can be set, and
            with scope "global" it is applied after the pool-wide selection by
            :func:`~xtf_kernels.methods.safeguards.finalize`). :meth:`paper` turns every safeguard off.
        head_backend / chunk_size: of the fused influence-delta pass.
    """

    k: float = 0.6
    scope: str = "global"
    safeguards: Safeguards = field(default_factory=lambda: Safeguards(max_sample_drop=None, max_total_drop=None))
    head_backend: str = "auto"
    chunk_size: int | None = None

    @classmethod
    def paper(cls, **overrides) -> TokenCleaningConfig:
        """methods.md section 2 as written: every response token ranked, no safeguard."""
        values = {"safeguards": Safeguards.off()}
        values.update(overrides)
        return cls(**values)

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, (int, float)) or not 0.0 <= self.k <= 1.0:
            raise ValueError(f"k must be a number in [0, 1], got {self.k!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if not isinstance(self.safeguards, Safeguards):
            raise TypeError(f"safeguards must be a Safeguards, got {type(self.safeguards).__name__}")
        if self.chunk_size is not None and (isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int)
                                            or self.chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {self.chunk_size!r}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["safeguards"] = self.safeguards.to_dict()
        return out


class TokenCleaningScorer(TokenScorer):
    """Influence scores of ``ref`` over ``base`` and the top-k rule.

    Args:
        base, ref: transformers causal LMs over the same vocabulary (and the same logit softcap / scale).
        config: :class:`TokenCleaningConfig`.
        tokenizer: optional; its special tokens are protected (the base's eos ids always are) and it resolves
            ``safeguards.protected_tokens``.

    Scores ((B, L) fp32, NaN where not scored): ``influence`` = log p_ref - log p_base of each response token
    (NaN at protected tokens too: they are not ranked); ``guard``: what a safeguard did (1 protected, 2 kept
    back by the per-sample cap, 4 kept with its whole response).
    Rule ``low_influence`` (bit 0) marks the tokens outside the top k; with scope "global" it is decided
    over the whole pool (:attr:`global_topk`), with "sample" per sample in :meth:`score_batch`.
    """

    name = "token_cleaning"
    rule_names = (RULE,)
    score_names = ("influence", "guard")

    def __init__(self, base, ref, config: TokenCleaningConfig | None = None, *, tokenizer=None):
        check_causal_lm(base, "base")
        check_causal_lm(ref, "ref")
        self.base, self.ref = base, ref
        self.config = config or TokenCleaningConfig()
        if not isinstance(self.config, TokenCleaningConfig):
            raise TypeError(f"config must be a TokenCleaningConfig, got {type(self.config).__name__}")
        base_head, ref_head = lm_head_of(base), lm_head_of(ref)
        if (base_head.softcap, base_head.temperature) != (ref_head.softcap, ref_head.temperature):
            raise ValueError("base and ref apply different logit softcaps / scales; score them separately")
        if base_head.weight.shape[0] != ref_head.weight.shape[0]:
            raise ValueError(f"base has a {base_head.weight.shape[0]}-token vocabulary, ref "
                             f"{ref_head.weight.shape[0]}; they must share the vocabulary")
        if model_device(base) != model_device(ref):
            raise ValueError(f"base is on {model_device(base)} but ref is on {model_device(ref)}")
        self.pad_token_id = int(getattr(unwrap(base).config, "pad_token_id", None) or 0)
        self.protected_ids = resolve_protected_ids(self.config.safeguards, model=base, tokenizer=tokenizer,
                                                   vocab_size=int(base_head.weight.shape[0]))

    def config_dict(self) -> dict:
        return {"method": self.name, **self.config.to_dict(), "protected_ids_resolved": self.protected_ids.tolist()}

    def models(self) -> dict[str, torch.nn.Module]:
        return {"base": self.base, "ref": self.ref}

    @property
    def global_topk(self) -> GlobalTopK | None:
        if self.config.scope != "global":
            return None
        return GlobalTopK("influence", self.config.k, largest=True, rule=RULE)

    @torch.no_grad()
    def score_batch(self, batch: Batch) -> BatchScores:
        valid = batch.response_mask
        protected = valid & torch.isin(batch.input_ids, self.protected_ids.to(valid.device))
        influence = self.influence(batch)
        influence = torch.where(protected, torch.full_like(influence, math.nan), influence)
        guard = guard_score(valid)
        guard[protected] = PROTECTED
        flags = torch.zeros(valid.shape, dtype=torch.uint8, device=valid.device)
        if self.config.scope == "sample":
            ranked = valid & ~protected
            kept = select.topk_mask(torch.nan_to_num(influence), self.config.k, valid=ranked, scope="sample")
            dropped, guard = guard_sample_drops(ranked & ~kept, valid, -torch.nan_to_num(influence), guard,
                                                self.config.safeguards)
            flags |= dropped.to(torch.uint8)
        return BatchScores({"influence": influence, "guard": guard}, flags)

    def influence(self, batch: Batch) -> torch.Tensor:
        """(B, L) fp32 log p_ref - log p_base of each response token (NaN elsewhere)."""
        valid = batch.response_mask
        heads = []
        for model in (self.base, self.ref):
            head = lm_head_of(model)
            hidden = final_hidden_states(model, batch.input_ids, batch.attention_mask)[:, :-1]
            heads.append((hidden.to(head.weight.dtype), head.weight) + ((head.bias,) if head.bias is not None else ()))
        head = lm_head_of(self.base)
        targets = torch.where(valid[:, 1:], batch.input_ids[:, 1:], torch.full_like(batch.input_ids[:, 1:], -100))
        delta = influence_delta(heads[0], heads[1], targets, temperature=head.temperature, softcap=head.softcap,
                                backend=self.config.head_backend, chunk_size=self.config.chunk_size)
        out = torch.full(valid.shape, math.nan, dtype=torch.float32, device=valid.device)
        out[:, 1:] = torch.where(valid[:, 1:], delta, out[:, 1:])
        return out


def token_cleaning(base, ref, samples: Sequence[TokenizedSample], *, k: float = 0.6, scope: str = "global",
                   safeguards: Safeguards | None = None, tokenizer=None, batch_size: int = 16,
                   progress: bool = False) -> tuple[list[TokenizedSample], list[SampleScores]]:
    """Fixed-model cleaning in memory: (samples with -100 on every token outside the top k, their scores).

    ``safeguards`` (default: :class:`TokenCleaningConfig`'s) are applied after the pool-wide selection
    (:func:`~xtf_kernels.methods.safeguards.finalize`); both lists stay aligned with ``samples`` (with
    ``all_dropped="remove"``, :func:`~xtf_kernels.methods.safeguards.remove_empty` deletes the emptied ones).
    """
    extra = {} if safeguards is None else {"safeguards": safeguards}
    config = TokenCleaningConfig(k=k, scope=scope, **extra)
    scorer = TokenCleaningScorer(base, ref, config, tokenizer=tokenizer)
    results = score_samples(scorer, samples, batch_size=batch_size, progress=progress)
    results = finalize(results, config.safeguards, noise="influence", largest_is_noisiest=False,
                       what="Token Cleaning")
    return filter_samples(samples, results), results


def split_parts(samples: Sequence, n_parts: int) -> list[list]:
    """``n_parts`` contiguous parts whose sizes differ by at most one (the first ones are the larger)."""
    if isinstance(n_parts, bool) or not isinstance(n_parts, int) or n_parts < 1:
        raise ValueError(f"n_parts must be a positive int, got {n_parts!r}")
    if len(samples) < n_parts:
        raise ValueError(f"cannot split {len(samples)} samples into {n_parts} non-empty parts")
    size, extra = divmod(len(samples), n_parts)
    parts, start = [], 0
    for index in range(n_parts):
        end = start + size + (index < extra)
        parts.append(list(samples[start:end]))
        start = end
    return parts


TrainFn = Callable[[torch.nn.Module, list[TokenizedSample], int], object]


@dataclass
class SelfEvolvingResult:
    """model: theta_n; parts[t]: the samples of part t as trained on (part 0 unfiltered);
    scores[t - 1]: the :class:`SampleScores` of part t (t >= 1)."""

    model: torch.nn.Module
    parts: list[list[TokenizedSample]]
    scores: list[list[SampleScores]]


def self_evolving_cleaning(
    base,
    samples: Sequence[TokenizedSample],
    train: TrainFn,
    *,
    n_parts: int = 5,
    k: float = 0.6,
    model=None,
    batch_size: int = 16,
    progress: bool = False,
) -> SelfEvolvingResult:
    """Self-evolving Token Cleaning (methods.md section 2).

    Splits ``samples`` into ``n_parts`` contiguous parts D_0..D_{n-1}; ``train(model, D_0, 0)`` with every
    token; then for t = 1..n-1 scores D_t with the fixed ``base`` against the current model, keeps the global
    top ``k`` of D_t's response tokens, and calls ``train(model, cleaned D_t, t)``.

    Args:
        base: the fixed base model (never trained here).
        samples: the pool, in order.
        train: ``train(model, samples, part_index)`` trains ``model`` on ``samples``, in place; if it returns an
            ``nn.Module``, that model is used from then on (any other return value is ignored). Examples::

                train = lambda m, s, t: finetune(m, s, epochs=1, lr=1e-4)         # xtf_kernels.methods.finetune

                def train(model, samples, part):                                  # a transformers Trainer
                    records = samples_to_records(samples)              # xtf_kernels.datasets
                    Trainer(model=model, args=args, train_dataset=records,
                            data_collator=SFTCollator(pad_id)).train()

        n_parts: n (default 5).
        k: kept fraction within each part (default 0.6).
        model: the model to train (theta); default a deep copy of ``base``.

    Returns:
        :class:`SelfEvolvingResult` (theta_n, the parts as trained on, their scores).
    """
    check_causal_lm(base, "base")
    config = TokenCleaningConfig(k=k, scope="global")  # validates k
    parts = split_parts(list(samples), n_parts)
    current = copy.deepcopy(base) if model is None else model
    trained_on: list[list[TokenizedSample]] = [parts[0]]
    current = _train(train, current, parts[0], 0)
    all_scores: list[list[SampleScores]] = []
    for index in range(1, n_parts):
        scorer = TokenCleaningScorer(base, current, config)
        results = score_samples(scorer, parts[index], batch_size=batch_size, progress=progress)
        cleaned = filter_samples(parts[index], results)
        all_scores.append(results)
        trained_on.append(cleaned)
        current = _train(train, current, cleaned, index)
    return SelfEvolvingResult(current, trained_on, all_scores)


def _train(train: TrainFn, model, samples: list[TokenizedSample], index: int):
    returned = train(model, samples, index)
    if not isinstance(returned, torch.nn.Module):
        return model  # trained in place (the callback may return anything else, e.g. its losses)
    check_causal_lm(returned, "the model returned by train")
    return returned

"""XTF: explainable token-level noise filtering (methods.md section 1; arXiv 2602.14536).

Three attributes of every response token, all from the base model alone:
- RI, reasoning importance: attention the token's position receives (mean over later query positions,
  query heads, and the configured layers), captured through the attention implementation
  (:mod:`xtf_kernels.methods.attention_capture`, :func:`xtf_kernels.attention_received`);
- KN, knowledge novelty: 1 - PCP with PCP = p(token | context), from :func:`xtf_kernels.token_logprobs` on
  the final hidden states and the lm_head weight (the logits are never built; the model's final-logit
  softcap / scaling is applied);
- TR, task relevance: 1 - normalize(distance(E[v], V))[v] for the token id v, V the mean input-embedding row
  over every token of the dataset (the first of the two passes).
A token is dropped if ANY enabled rule fires: RI below its sample's lower quantile fence, PCP above
``kn_pcp_max``, or S_TR in the Multi-Otsu class(es) ``tr_noisy_classes``.

Example::

    scorer = XTFScorer(model, XTFConfig(attn_layers="mean"))
    results = score_samples(scorer, samples)          # or xtf_kernels.pipeline.score_dataset(...)
    results[0].fired("KN")                            # (L,) bool: which tokens KN dropped
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from dataclasses import fields

import torch

from .. import select
from ..attention import query_counts
from ..datasets.samples import Batch
from ..datasets.samples import TokenizedSample
from ..functional import token_logprobs
from ._causal_lm import check_causal_lm
from ._causal_lm import final_hidden_states
from ._causal_lm import lm_head_of
from ._causal_lm import num_layers
from ._causal_lm import unwrap
from .attention_capture import capture_attention_received
from .attention_capture import resolve_layers
from .attention_diagonal import DiagonalRecorder
from .base import BatchScores
from .base import TokenScorer
from .safeguards import ANCHOR
from .safeguards import PROTECTED
from .safeguards import DropCounter
from .safeguards import Safeguards
from .safeguards import guard_sample_drops
from .safeguards import guard_score
from .safeguards import resolve_protected_ids

RULES = ("RI", "KN", "TR")
DISTANCES = ("cosine", "euclidean")
NORMALIZATIONS = ("minmax", "max", "rank")
RI_SCORES = ("mean", "sum", "offdiag", "relative")
RI_THRESHOLDS = ("fence", "rate")
KN_THRESHOLDS = ("absolute", "rate")
TR_THRESHOLDS = ("otsu", "rate")
OTSU_WEIGHTS = ("ids", "occurrences")
TR_DOMAINS = ("text", "response")
# A knob read in one threshold mode of its rule only: knob -> (mode field, the mode that reads it).
THRESHOLD_KNOBS = {"ri_fence_c": ("ri_threshold", "fence"), "ri_drop_rate": ("ri_threshold", "rate"),
                   "kn_pcp_max": ("kn_threshold", "absolute"), "kn_drop_rate": ("kn_threshold", "rate"),
                   "tr_drop_rate": ("tr_threshold", "rate"), "otsu_classes": ("tr_threshold", "otsu"),
                   "otsu_bins": ("tr_threshold", "otsu"), "otsu_weights": ("tr_threshold", "otsu"),
                   "tr_noisy_classes": ("tr_threshold", "otsu")}


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class XTFConfig:
    """Every knob of XTF (methods.md section 1) with its default.

    The defaults are the SAFE configuration: every rule at a target drop rate of 5% of each sample's response
    (TR: of the dataset's response tokens), protected tokens, a per-sample cap, RI without the diagonal, a
    random quarter of KN's and of TR's drops kept as anchors. :meth:`paper` is the paper-faithful one (methods.md as
    written: the per-sample RI fence, KN's absolute PCP > 0.95, TR's Multi-Otsu, no safeguard).

    Why (the miniature's safeguard ladder, ``python -m benchmarks.methods.miniature --safeguards``: 5 seeds, a
    1,200-problem SFT pool, held-out exact match; ``benchmarks/methods/results/safeguards/``): with the paper's
    thresholds XTF drops 84% of the response tokens at 15% noise and 92% without noise and the fine-tuned
    model stops writing the answer (exact match 0.0% against 59.9% for training on every token; 14-19%
    against 99.5% on clean data). Every other safeguard added alone (protected special tokens, the 40% cap,
    anchors, RI without the diagonal, occurrence-weighted Otsu, the response-only domain) lowers what is
    dropped from the template, eos and the answer, but none brings exact match off 0.0% at 15% noise; all of
    them together reach 1.5%. The 5% rate per rule is the change that matters: 64.7% at 15% noise (+4.8
    points [-1.2, +10.8] against every token) and no loss on clean data (+0.4 points), with the other
    safeguards on top (rule L2 of ``benchmarks/methods/miniature_criteria.py``, written before the run). At 5%
    noise that configuration scored 0.0% (against 89.3%): TR's rate mode dropped the template word " The" at
    every occurrence; with a quarter of TR's drops kept as anchors it scores 91.6% at 5%, 63.0% at 15% and
    loses nothing on clean data (the ladder's second round, ``--tr-anchors``, rule L3).

    Attributes:
        rules: the rules applied (their union drops a token); scores of disabled rules are not computed.
        attn_layers: RI layer reduction: "last", "mean" (every layer) or a tuple of layer indices (negative
            counts from the end); query heads are always averaged.
        ri_score: how the attention a key receives becomes S_RI:
            "mean": the mean over the n_j non-padding queries i >= j that see key j, diagonal included
            (methods.md; the paper preset);
            "sum": the total over those queries, no averaging: the literal reading of the paper's Eq. 5 ("the
            attention the token receives"); early tokens, seen by more queries, score higher;
            "offdiag" (default): the diagonal A[j, j] removed and the mean taken over the n_j - 1 OTHER queries
            that see the key; NaN (never dropped by RI) for a key no other query sees, the last token. Why:
            a token's attention to itself dominates the score of the last tokens, which made the fence fire
            7-11% in the last fifth of a response and <= 0.6% elsewhere on the toy benchmark;
            "relative": "offdiag" divided by what uniform attention would give the key (the mean over the
            other queries i of 1 / c_i, c_i the keys query i sees): a later key is seen only by queries that
            spread their attention over more keys, so its raw mean is lower whatever its importance; 1.0 =
            as much attention as a uniform reader would pay.
        ri_threshold: "fence" (``S_RI < q1 - ri_fence_c (q3 - q1)`` per sample) or "rate" (drop the
            ``ri_drop_rate`` lowest-RI response tokens of each sample, floor(rate n), ties to the earlier).
        ri_fence_c: c of the per-sample RI fence.
        ri_drop_rate: target drop rate of RI's "rate" mode.
        kn_threshold: "absolute" (PCP > ``kn_pcp_max``) or "rate" (drop the ``kn_drop_rate`` highest-PCP
            response tokens of each sample, floor(rate n), ties to the earlier).
        kn_pcp_max: KN fires where PCP = p(token) > this.
        kn_drop_rate: target drop rate of KN's "rate" mode.
        kn_anchor_fraction: fraction of KN's drops kept at random (seeded by ``seed`` and the sample's ids,
            so independent of batching and ranks): anchors against forgetting what the base already knows.
            Default 0.25: a token with PCP > 0.95 costs the fine-tuning little (its loss gradient at the
            logits, p - onehot, has norm < 0.07), and keeping some of them keeps the format in the training
            signal (KN alone drove the toy benchmark to 0.00 exact match while a random drop at KN's rate
            did not: 0.25).
        tr_anchor_fraction: fraction of TR's drops kept at random (the same seeded draws as KN's anchors).
            TR decides by token id, so without anchors a type it drops is gone at every occurrence: the
            template word " The" of "The answer is" on the miniature at 5% noise, where the fine-tuned model
            then wrote the artefact that preceded it in a few samples instead (exact match 0.0%).
        tr_threshold: "otsu" (Multi-Otsu classes ``tr_noisy_classes``) or "rate" (the ids with the lowest S_TR,
            protected ids skipped, taken in order while their response occurrences stay within
            ``tr_drop_rate`` of all response tokens; ties in S_TR to the lower id).
        tr_drop_rate: target drop rate of TR's "rate" mode.
        tr_distance: "cosine" (1 - cos(E[v], V)) or "euclidean" (||E[v] - V||).
        tr_normalization: how d over the ids that occur becomes [0, 1] before S_TR = 1 - normalized d:
            "minmax" ((d - min) / (max - min)), "max" (d / max) or "rank" (rank / (n - 1), ties averaged).
        tr_domain: "text" (methods.md: V and the ids that occur over every token of the dataset) or "response"
            (over response tokens only: the domain of what is trained on, not of the prompts).
        otsu_classes / otsu_bins: Multi-Otsu on the S_TR of the ids that occur.
        otsu_weights: "ids" (each occurring id counts once; methods.md) or "occurrences" (each id weighted by
            its number of occurrences in the domain set: thresholds follow the tokens, not the vocabulary).
        tr_noisy_classes: Otsu classes (0 = lowest S_TR) whose ids TR drops; (1,) = the class with the
            second-lowest mean (the lowest is mostly whitespace / special pieces and is kept).
        seed: seed of the KN and TR anchors.
        safeguards: :class:`~xtf_kernels.methods.safeguards.Safeguards` (protected tokens, caps).
        attention_backend / head_backend: backends of attention_received / token_logprobs ("auto").
        chunk_size: tokens per chunk of the fused lm_head pass (None = from the memory budget).
    """

    rules: tuple[str, ...] = RULES
    attn_layers: str | tuple[int, ...] = "mean"
    ri_score: str = "offdiag"
    ri_threshold: str = "rate"
    ri_fence_c: float = 1.0
    ri_drop_rate: float = 0.05
    kn_threshold: str = "rate"
    kn_pcp_max: float = 0.95
    kn_drop_rate: float = 0.05
    kn_anchor_fraction: float = 0.25
    tr_anchor_fraction: float = 0.25
    tr_threshold: str = "rate"
    tr_drop_rate: float = 0.05
    tr_distance: str = "cosine"
    tr_normalization: str = "minmax"
    tr_domain: str = "text"
    otsu_classes: int = 3
    otsu_bins: int = 256
    otsu_weights: str = "ids"
    tr_noisy_classes: tuple[int, ...] = (1,)
    seed: int = 0
    safeguards: Safeguards = field(default_factory=Safeguards)
    attention_backend: str = "auto"
    head_backend: str = "auto"
    chunk_size: int | None = field(default=None)

    @classmethod
    def paper(cls, **overrides) -> XTFConfig:
        """The paper-faithful configuration (methods.md section 1 as written): RI the mean received attention
        with the diagonal, the per-sample fence c = 1; KN PCP > 0.95 and TR with no anchor; TR Multi-Otsu (3 classes,
        256 bins, each occurring id once) over the whole text, class 1 dropped; no protected token and no cap
        (:meth:`Safeguards.off`). ``overrides`` replace single fields."""
        values = {"ri_score": "mean", "ri_threshold": "fence", "kn_threshold": "absolute", "tr_threshold": "otsu",
                  "kn_anchor_fraction": 0.0, "tr_anchor_fraction": 0.0, "safeguards": Safeguards.off()}
        values.update(overrides)
        return cls(**values)

    def __post_init__(self):
        rules = tuple(self.rules)
        if not rules or any(r not in RULES for r in rules) or len(set(rules)) != len(rules):
            raise ValueError(f"rules must be a non-empty subset of {RULES} without repeats, got {self.rules!r}")
        object.__setattr__(self, "rules", rules)
        if not isinstance(self.attn_layers, str):
            object.__setattr__(self, "attn_layers", tuple(self.attn_layers))
        elif self.attn_layers not in ("last", "mean"):
            raise ValueError(
                f"attn_layers must be 'last', 'mean' or a tuple of layer indices, got {self.attn_layers!r}"
            )
        for name, choices in (("ri_score", RI_SCORES), ("ri_threshold", RI_THRESHOLDS),
                              ("kn_threshold", KN_THRESHOLDS), ("tr_threshold", TR_THRESHOLDS),
                              ("tr_distance", DISTANCES), ("tr_normalization", NORMALIZATIONS),
                              ("tr_domain", TR_DOMAINS), ("otsu_weights", OTSU_WEIGHTS)):
            _check_choice(name, getattr(self, name), choices)
        for name, low, high in (("ri_fence_c", 0.0, math.inf), ("kn_pcp_max", 0.0, 1.0), ("ri_drop_rate", 0.0, 1.0),
                                ("kn_drop_rate", 0.0, 1.0), ("tr_drop_rate", 0.0, 1.0),
                                ("kn_anchor_fraction", 0.0, 1.0), ("tr_anchor_fraction", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
        for name, low in (("otsu_classes", 2), ("otsu_bins", 2), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.otsu_bins < self.otsu_classes:
            raise ValueError(f"otsu_bins ({self.otsu_bins}) must be >= otsu_classes ({self.otsu_classes})")
        noisy = tuple(self.tr_noisy_classes)
        if not noisy or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < self.otsu_classes
                            for c in noisy):
            raise ValueError(f"tr_noisy_classes must be a non-empty tuple of class indices in [0, "
                             f"{self.otsu_classes}), got {self.tr_noisy_classes!r}")
        object.__setattr__(self, "tr_noisy_classes", noisy)
        if not isinstance(self.safeguards, Safeguards):
            raise TypeError(f"safeguards must be a Safeguards, got {type(self.safeguards).__name__}")
        if self.chunk_size is not None and (isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int)
                                            or self.chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {self.chunk_size!r}")
        # A knob set away from its default while its rule is in another mode would silently do nothing (the
        # defaults are the rate modes: XTFConfig(kn_pcp_max=0.9) alone would still rank KN by rate).
        defaults = {f.name: f.default for f in fields(XTFConfig)}
        for knob, (mode, needed) in THRESHOLD_KNOBS.items():
            if getattr(self, mode) != needed and getattr(self, knob) != defaults[knob]:
                raise ValueError(f"{knob} is only read with {mode}={needed!r}, but {mode} is "
                                 f"{getattr(self, mode)!r}: pass {mode}={needed!r} too (the paper's thresholds: "
                                 "XTFConfig.paper(), --preset paper)")

    def to_dict(self) -> dict:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["safeguards"] = self.safeguards.to_dict()
        return out


def task_relevance(embedding: torch.Tensor, counts: torch.Tensor, *, distance: str = "cosine",
                   normalization: str = "minmax") -> tuple[torch.Tensor, torch.Tensor]:
    """S_TR of every vocabulary id that occurs, and the domain vector.

    Args:
        embedding: (V, H) input-embedding matrix, any float dtype.
        counts: (V,) int64 occurrences of each id in the whole dataset (prompts included).
        distance / normalization: see :class:`XTFConfig`.

    Returns:
        (s_tr (V,) fp32, NaN at ids that never occur; domain (H,) fp32 = counts @ E / sum(counts)),
        computed in float64.
    """
    if counts.dim() != 1 or counts.numel() != embedding.shape[0]:
        raise ValueError(f"counts must be (V,) = ({embedding.shape[0]},), got shape {tuple(counts.shape)}")
    total = int(counts.sum())
    if total == 0:
        raise ValueError("the dataset has no tokens; the domain vector is undefined")
    table = embedding.detach().to(device="cpu", dtype=torch.float64)
    weights = counts.to(device="cpu", dtype=torch.float64)
    domain = weights @ table / total
    occurring = counts.cpu() > 0
    rows = table[occurring]
    if distance == "cosine":
        denom = rows.norm(dim=1) * domain.norm()
        cos = torch.where(denom > 0, rows @ domain / denom.clamp_min(1e-300), torch.zeros_like(denom))
        dist = 1.0 - cos
    elif distance == "euclidean":
        dist = (rows - domain).norm(dim=1)
    else:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if normalization == "minmax":
        span = dist.max() - dist.min()
        norm = (dist - dist.min()) / span if span > 0 else torch.zeros_like(dist)
    elif normalization == "max":
        top = dist.max()
        norm = dist / top if top > 0 else torch.zeros_like(dist)
    elif normalization == "rank":
        ranks = _average_ranks(dist)
        norm = ranks / (dist.numel() - 1) if dist.numel() > 1 else torch.zeros_like(dist)
    else:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    s_tr = torch.full((embedding.shape[0],), math.nan, dtype=torch.float64)
    s_tr[occurring] = 1.0 - norm
    return s_tr.float(), domain.float()


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """0-based ranks, ties sharing their average rank."""
    order = torch.argsort(values, stable=True)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(values.numel(), dtype=values.dtype)
    unique, inverse = torch.unique(values, return_inverse=True)
    sums = torch.zeros(unique.numel(), dtype=values.dtype).index_add_(0, inverse, ranks)
    sizes = torch.bincount(inverse, minlength=unique.numel()).to(values.dtype)
    return (sums / sizes)[inverse]


class XTFScorer(TokenScorer):
    """XTF's scores and rules for one base model (see the module docstring).

    Args:
        model: a transformers causal LM (the model about to be fine-tuned); it is used under no_grad and
            left in its mode and attention implementation.
        config: :class:`XTFConfig`.
        tokenizer: optional; with ``config.safeguards.protect_special_tokens`` its special tokens are
            protected (the model's eos ids always are), and it resolves ``safeguards.protected_tokens``.

    Scores (each (B, L) fp32 per batch, NaN where not scored), for the enabled rules: ``ri`` (S_RI), ``kn``
    (1 - PCP), ``tr`` (S_TR); always ``guard``: what a safeguard did (codes of
    :data:`~xtf_kernels.methods.safeguards.GUARD_CODES`: 1 protected, 2 kept back by the per-sample cap,
    3 a KN anchor, 4 kept with its whole response). Rules: bits 0 / 1 / 2 of ``dropped_by`` = "RI" / "KN" /
    "TR", set only where the token is finally dropped.
    """

    name = "xtf"
    rule_names = RULES

    def __init__(self, model, config: XTFConfig | None = None, *, tokenizer=None):
        check_causal_lm(model)
        self.model = model
        self.config = config or XTFConfig()
        if not isinstance(self.config, XTFConfig):
            raise TypeError(f"config must be an XTFConfig, got {type(self.config).__name__}")
        self.layers = resolve_layers(self.config.attn_layers, num_layers(model)) if "RI" in self.config.rules else ()
        self.pad_token_id = int(getattr(unwrap(model).config, "pad_token_id", None) or 0)
        self.vocab_size = int(unwrap(model).get_input_embeddings().weight.shape[0])
        self.score_names = tuple(name for rule, name in zip(RULES, ("ri", "kn", "tr")) if rule in self.config.rules
                                 ) + ("guard",)
        guard = self.config.safeguards
        self.protected_ids = resolve_protected_ids(guard, model=model, tokenizer=tokenizer, vocab_size=self.vocab_size)
        self.drop_counter = DropCounter(guard, "XTF")  # batch by batch; score_samples checks the totals once
        self._counts: torch.Tensor | None = None
        self._response_counts: torch.Tensor | None = None
        self.s_tr: torch.Tensor | None = None
        self.domain: torch.Tensor | None = None
        self.tr_thresholds: torch.Tensor | None = None
        self.tr_noisy_ids: torch.Tensor | None = None

    @property
    def needs_dataset_pass(self) -> bool:
        return "TR" in self.config.rules

    @property
    def safeguards(self) -> Safeguards:
        return self.config.safeguards

    def config_dict(self) -> dict:
        return {"method": self.name, **self.config.to_dict(), "protected_ids_resolved": self.protected_ids.tolist()}

    def models(self) -> dict[str, torch.nn.Module]:
        return {"base": self.model}

    # ---- pass 1: the domain vector and S_TR per vocabulary id ----------------------------------------------

    def begin_dataset_pass(self) -> None:
        self._counts = torch.zeros(self.vocab_size, dtype=torch.int64)
        self._response_counts = torch.zeros(self.vocab_size, dtype=torch.int64)

    def observe(self, sample: TokenizedSample) -> None:
        if self._counts is None:
            raise RuntimeError("call begin_dataset_pass() before observe()")
        ids = sample.input_ids
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ValueError(f"input_ids must be in [0, {self.vocab_size}) (the model's vocabulary), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        self._counts += torch.bincount(ids, minlength=self.vocab_size)
        self._response_counts += torch.bincount(ids[sample.response_mask], minlength=self.vocab_size)

    def dataset_statistics(self) -> dict[str, torch.Tensor]:
        if self._counts is None:
            raise RuntimeError("call begin_dataset_pass() and observe() first")
        return {"token_counts": self._counts, "response_counts": self._response_counts}

    def load_dataset_statistics(self, statistics: dict[str, torch.Tensor]) -> None:
        for key in ("token_counts", "response_counts"):
            counts = statistics.get(key)
            if counts is None or counts.shape != (self.vocab_size,) or counts.dtype != torch.int64:
                got = "missing" if counts is None else f"{tuple(counts.shape)} {counts.dtype}"
                raise ValueError(f"{key} must be ({self.vocab_size},) int64, got {got}")
        self._counts = statistics["token_counts"].cpu().clone()
        self._response_counts = statistics["response_counts"].cpu().clone()

    def end_dataset_pass(self) -> None:
        if self._counts is None:
            raise RuntimeError("call begin_dataset_pass() and observe() first")
        self.fit_counts(self._counts, self._response_counts)

    def fit_counts(self, counts: torch.Tensor, response_counts: torch.Tensor) -> None:
        """S_TR, the domain vector and TR's noisy ids from the dataset's (V,) int64 token counts (every token)
        and response-token counts."""
        domain_counts = counts if self.config.tr_domain == "text" else response_counts
        if int(response_counts.sum()) == 0:
            raise ValueError("the dataset has no response token; there is nothing to score")
        embedding = unwrap(self.model).get_input_embeddings().weight
        self.s_tr, self.domain = task_relevance(embedding, domain_counts, distance=self.config.tr_distance,
                                                normalization=self.config.tr_normalization)
        occurring = ~torch.isnan(self.s_tr)
        if self.config.tr_threshold == "otsu":
            weights = domain_counts[occurring].double() if self.config.otsu_weights == "occurrences" else None
            self.tr_thresholds = select.multi_otsu(self.s_tr[occurring], classes=self.config.otsu_classes,
                                                   bins=self.config.otsu_bins, weights=weights).float()
            classes = select.otsu_class(torch.nan_to_num(self.s_tr), self.tr_thresholds)
            noisy = torch.zeros_like(occurring)
            for c in self.config.tr_noisy_classes:
                noisy |= classes == c
            self.tr_noisy_ids = noisy & occurring
        else:
            self.tr_noisy_ids = lowest_ids_within_rate(self.s_tr, response_counts, self.config.tr_drop_rate,
                                                       exclude=self.protected_ids)
            self.tr_thresholds = torch.zeros(0)
        self._counts, self._response_counts = counts.clone(), response_counts.clone()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.s_tr is None:
            return {}
        return {"token_counts": self._counts, "response_counts": self._response_counts, "s_tr": self.s_tr,
                "domain_vector": self.domain, "tr_thresholds": self.tr_thresholds, "tr_noisy_ids": self.tr_noisy_ids}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "token_counts" in tensors:
            if "response_counts" not in tensors:
                raise ValueError("saved XTF state has no response_counts (written by an older version); score again")
            self.fit_counts(tensors["token_counts"], tensors["response_counts"])

    # ---- pass 2: per-token scores and rules ----------------------------------------------------------------

    @torch.no_grad()
    def score_batch(self, batch: Batch) -> BatchScores:
        if "TR" in self.config.rules and self.s_tr is None:
            raise RuntimeError("TR needs the dataset pass first (score_samples / score_dataset run it; or call "
                               "begin_dataset_pass, observe every sample, end_dataset_pass)")
        config = self.config
        valid = batch.response_mask
        ids = batch.input_ids
        protected = valid & torch.isin(ids, self.protected_ids.to(ids.device))
        droppable = valid & ~protected  # the pool of the target-rate modes: protected tokens take no slot
        nan = torch.full(ids.shape, math.nan, dtype=torch.float32, device=ids.device)
        fired = {}
        scores: dict[str, torch.Tensor] = {}
        pcp = None
        if "RI" in config.rules or "KN" in config.rules:
            if "RI" in config.rules:
                with capture_attention_received(self.model, layers=self.layers, attention_mask=batch.attention_mask,
                                                backend=config.attention_backend) as recorder:
                    diagonal = None
                    if config.ri_score in ("offdiag", "relative"):
                        diagonal = DiagonalRecorder(self.layers, batch.attention_mask)
                        diagonal.attach(recorder)
                    hidden = final_hidden_states(self.model, ids, batch.attention_mask)
                ri = self._ri(recorder.mean().float(), None if diagonal is None else diagonal.mean(), batch)
                scores["ri"] = torch.where(valid, ri, nan)
                fired["RI"] = self._ri_rule(ri, valid & ~torch.isnan(ri), droppable)
            else:
                hidden = final_hidden_states(self.model, ids, batch.attention_mask)
            if "KN" in config.rules:
                pcp = self._pcp(hidden, ids, valid)
                scores["kn"] = torch.where(valid, 1.0 - pcp, nan)
                if config.kn_threshold == "absolute":
                    fired["KN"] = select.probability_mask(pcp, config.kn_pcp_max, valid=valid)
                else:
                    fired["KN"] = select.topk_mask(pcp, config.kn_drop_rate, valid=droppable, scope="sample")
        if "TR" in config.rules:
            safe_ids = ids.clamp(0, self.vocab_size - 1)
            scores["tr"] = torch.where(valid, self.s_tr.to(ids.device)[safe_ids], nan)
            fired["TR"] = self.tr_noisy_ids.to(ids.device)[safe_ids] & valid
        flags, guard = self._apply_safeguards(batch, fired, pcp, protected)
        scores["guard"] = guard
        return BatchScores(scores, flags)

    def _ri(self, mean: torch.Tensor, diagonal: torch.Tensor | None, batch: Batch) -> torch.Tensor:
        """(B, L) fp32 S_RI per ``config.ri_score`` from the recorder's mean received attention (NaN where
        undefined: padding, and with "offdiag" / "relative" a key no other query sees)."""
        batch_size, length = batch.input_ids.shape
        queries = query_counts(length, batch.attention_mask != 0, causal=True, batch=batch_size,
                               device=mean.device)  # n_j: non-padding queries i >= j
        if self.config.ri_score == "mean":
            return mean
        if self.config.ri_score == "sum":
            return mean * queries
        others = queries - 1.0
        offdiag = (mean * queries - diagonal) / others.clamp(min=1.0)
        offdiag = torch.where(others > 0, offdiag, torch.full_like(offdiag, math.nan))
        if self.config.ri_score == "offdiag":
            return offdiag
        real = (batch.attention_mask != 0).float()
        seen = real.cumsum(-1).clamp(min=1.0)  # c_i: keys query i sees (itself included)
        share = real / seen  # uniform attention query i pays each key it sees
        later = share.flip(-1).cumsum(-1).flip(-1) - share  # sum over real queries i > j of 1 / c_i
        return offdiag / (later / others.clamp(min=1.0)).clamp(min=1e-30)

    def _ri_rule(self, ri: torch.Tensor, scored: torch.Tensor, droppable: torch.Tensor) -> torch.Tensor:
        if self.config.ri_threshold == "fence":
            return select.quantile_fence(torch.nan_to_num(ri), scored, c=self.config.ri_fence_c)
        return select.topk_mask(torch.nan_to_num(ri), self.config.ri_drop_rate, valid=scored & droppable,
                                scope="sample", largest=False)

    def _apply_safeguards(self, batch: Batch, fired: dict[str, torch.Tensor], pcp: torch.Tensor | None,
                          protected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dropped_by (B, L) uint8, guard (B, L) fp32) after KN / TR anchors, protected tokens, the per-sample cap
        and the whole-response option, in that order."""
        config, guard_config = self.config, self.config.safeguards
        valid = batch.response_mask
        guard = guard_score(valid)
        anchors = torch.zeros_like(valid)
        uniforms = None
        for rule, fraction in (("KN", config.kn_anchor_fraction), ("TR", config.tr_anchor_fraction)):
            if rule in fired and fraction > 0:
                uniforms = anchor_uniforms(batch, config.seed) if uniforms is None else uniforms
                kept = fired[rule] & (uniforms < fraction)
                fired[rule] = fired[rule] & ~kept
                anchors |= kept
        flags = torch.zeros(valid.shape, dtype=torch.uint8, device=valid.device)
        for rule, mask in fired.items():
            flags |= mask.to(torch.uint8) * (1 << RULES.index(rule))
        guard[anchors & (flags == 0)] = ANCHOR
        flags[protected] = 0
        guard[protected] = PROTECTED
        # noisier = more rules fired, then (KN scored) the LOWER PCP: a corrupted token is one the base finds
        # improbable (KN's high-PCP drops were corrupted at precision 0.001 on the toy benchmark), so the
        # per-sample cap keeps back the tokens the base predicts best
        count = sum(((flags >> bit) & 1).float() for bit in range(len(RULES)))
        noise = count + (0.5 * (1.0 - pcp) if pcp is not None else 0.0)
        dropped, guard = guard_sample_drops(flags != 0, valid, noise, guard, guard_config)
        flags = torch.where(dropped, flags, torch.zeros_like(flags))
        self.drop_counter.add(flags != 0, valid)
        return flags, guard

    def _pcp(self, hidden: torch.Tensor, input_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, L) fp32 p(input_ids[t] | input_ids[<t]) at valid positions t (0 elsewhere), from the hidden
        state at t - 1 and the lm_head weight; no logits tensor."""
        head = lm_head_of(self.model)
        targets = torch.where(valid[:, 1:], input_ids[:, 1:], torch.full_like(input_ids[:, 1:], -100))
        logp = token_logprobs(hidden[:, :-1].to(head.weight.dtype), head.weight, targets, bias=head.bias,
                              temperature=head.temperature, softcap=head.softcap, backend=self.config.head_backend,
                              chunk_size=self.config.chunk_size)
        pcp = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        pcp[:, 1:] = torch.where(valid[:, 1:], logp.exp(), torch.zeros_like(logp))
        return pcp


def lowest_ids_within_rate(s_tr: torch.Tensor, response_counts: torch.Tensor, rate: float, *,
                           exclude: torch.Tensor | None = None) -> torch.Tensor:
    """TR's target-rate mode: (V,) bool, the ids of lowest S_TR (ties to the lower id), ``exclude`` and ids
    that never occur in a response skipped, taken in order while their response occurrences add up to at most
    ``select.keep_count(rate, total response tokens)``; the first id that would pass the budget stops it."""
    candidates = ~torch.isnan(s_tr) & (response_counts > 0)
    if exclude is not None and exclude.numel():
        candidates[exclude] = False
    order = candidates.nonzero().squeeze(1)
    order = order[torch.sort(s_tr[order].double(), stable=True).indices]  # ids ascend already: ties to the lower
    budget = select.keep_count(rate, int(response_counts.sum()))
    within = torch.cumsum(response_counts[order], 0) <= budget
    first_over = int((~within).nonzero()[0]) if bool((~within).any()) else order.numel()
    noisy = torch.zeros(s_tr.shape, dtype=torch.bool)
    noisy[order[:first_over]] = True
    return noisy


def anchor_uniforms(batch: Batch, seed: int) -> torch.Tensor:
    """(B, L) fp32 uniforms in [0, 1) from a generator seeded by ``seed`` and the row's real token ids, so a
    sample gets the same draws in any batch, shard or rank."""
    out = torch.ones(batch.input_ids.shape, dtype=torch.float32)
    rows = batch.input_ids.cpu()
    for row, length in enumerate(batch.lengths.tolist()):
        digest = hashlib.blake2b(rows[row, :length].numpy().tobytes(), digest_size=8, key=str(seed).encode())
        generator = torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") & (2**63 - 1))
        out[row, :length] = torch.rand(length, generator=generator)
    return out.to(batch.input_ids.device)

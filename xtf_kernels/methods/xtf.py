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

import math
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field

import torch

from .. import select
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
from .base import BatchScores
from .base import TokenScorer

RULES = ("RI", "KN", "TR")
DISTANCES = ("cosine", "euclidean")
NORMALIZATIONS = ("minmax", "max", "rank")


@dataclass(frozen=True)
class XTFConfig:
    """Every knob of XTF (methods.md section 1) with its default.

    Attributes:
        rules: the rules applied (their union drops a token); scores of disabled rules are not computed.
        attn_layers: RI layer reduction: "last", "mean" (every layer) or a tuple of layer indices (negative
            counts from the end); query heads are always averaged.
        ri_fence_c: c of the per-sample RI fence ``S_RI < q1 - c (q3 - q1)``.
        kn_pcp_max: KN fires where PCP = p(token) > this.
        tr_distance: "cosine" (1 - cos(E[v], V)) or "euclidean" (||E[v] - V||).
        tr_normalization: how d over the ids that occur becomes [0, 1] before S_TR = 1 - normalized d:
            "minmax" ((d - min) / (max - min)), "max" (d / max) or "rank" (rank / (n - 1), ties averaged).
        otsu_classes / otsu_bins: Multi-Otsu on the S_TR of the ids that occur.
        tr_noisy_classes: Otsu classes (0 = lowest S_TR) whose ids TR drops; (1,) = the class with the
            second-lowest mean (the lowest is mostly whitespace / special pieces and is kept).
        attention_backend / head_backend: backends of attention_received / token_logprobs ("auto").
        chunk_size: tokens per chunk of the fused lm_head pass (None = from the memory budget).
    """

    rules: tuple[str, ...] = RULES
    attn_layers: str | tuple[int, ...] = "mean"
    ri_fence_c: float = 1.0
    kn_pcp_max: float = 0.95
    tr_distance: str = "cosine"
    tr_normalization: str = "minmax"
    otsu_classes: int = 3
    otsu_bins: int = 256
    tr_noisy_classes: tuple[int, ...] = (1,)
    attention_backend: str = "auto"
    head_backend: str = "auto"
    chunk_size: int | None = field(default=None)

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
        for name, low, high in (("ri_fence_c", 0.0, math.inf), ("kn_pcp_max", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
        if self.tr_distance not in DISTANCES:
            raise ValueError(f"tr_distance must be one of {DISTANCES}, got {self.tr_distance!r}")
        if self.tr_normalization not in NORMALIZATIONS:
            raise ValueError(f"tr_normalization must be one of {NORMALIZATIONS}, got {self.tr_normalization!r}")
        for name, low in (("otsu_classes", 2), ("otsu_bins", 2)):
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
        if self.chunk_size is not None and (isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int)
                                            or self.chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {self.chunk_size!r}")

    def to_dict(self) -> dict:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
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

    Scores (each (B, L) fp32 per batch, NaN where not scored): ``ri`` (S_RI), ``kn`` (1 - PCP), ``tr`` (S_TR).
    Rules: bits 0 / 1 / 2 of ``dropped_by`` = "RI" / "KN" / "TR".
    """

    name = "xtf"
    rule_names = RULES
    score_names = ("ri", "kn", "tr")

    def __init__(self, model, config: XTFConfig | None = None):
        check_causal_lm(model)
        self.model = model
        self.config = config or XTFConfig()
        if not isinstance(self.config, XTFConfig):
            raise TypeError(f"config must be an XTFConfig, got {type(self.config).__name__}")
        self.layers = resolve_layers(self.config.attn_layers, num_layers(model)) if "RI" in self.config.rules else ()
        self.pad_token_id = int(getattr(unwrap(model).config, "pad_token_id", None) or 0)
        self.vocab_size = int(unwrap(model).get_input_embeddings().weight.shape[0])
        self._counts: torch.Tensor | None = None
        self.s_tr: torch.Tensor | None = None
        self.domain: torch.Tensor | None = None
        self.tr_thresholds: torch.Tensor | None = None
        self.tr_noisy_ids: torch.Tensor | None = None

    @property
    def needs_dataset_pass(self) -> bool:
        return "TR" in self.config.rules

    def config_dict(self) -> dict:
        return {"method": self.name, **self.config.to_dict()}

    def models(self) -> dict[str, torch.nn.Module]:
        return {"base": self.model}

    # ---- pass 1: the domain vector and S_TR per vocabulary id ----------------------------------------------

    def begin_dataset_pass(self) -> None:
        self._counts = torch.zeros(self.vocab_size, dtype=torch.int64)

    def observe(self, sample: TokenizedSample) -> None:
        if self._counts is None:
            raise RuntimeError("call begin_dataset_pass() before observe()")
        ids = sample.input_ids
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ValueError(f"input_ids must be in [0, {self.vocab_size}) (the model's vocabulary), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        self._counts += torch.bincount(ids, minlength=self.vocab_size)

    def dataset_statistics(self) -> dict[str, torch.Tensor]:
        if self._counts is None:
            raise RuntimeError("call begin_dataset_pass() and observe() first")
        return {"token_counts": self._counts}

    def load_dataset_statistics(self, statistics: dict[str, torch.Tensor]) -> None:
        counts = statistics["token_counts"]
        if counts.shape != (self.vocab_size,) or counts.dtype != torch.int64:
            raise ValueError(f"token_counts must be ({self.vocab_size},) int64, got {tuple(counts.shape)} "
                             f"{counts.dtype}")
        self._counts = counts.cpu().clone()

    def end_dataset_pass(self) -> None:
        if self._counts is None:
            raise RuntimeError("call begin_dataset_pass() and observe() first")
        self.fit_counts(self._counts)

    def fit_counts(self, counts: torch.Tensor) -> None:
        """S_TR, the domain vector and the TR thresholds from the dataset's (V,) token counts."""
        embedding = unwrap(self.model).get_input_embeddings().weight
        self.s_tr, self.domain = task_relevance(embedding, counts, distance=self.config.tr_distance,
                                                normalization=self.config.tr_normalization)
        occurring = ~torch.isnan(self.s_tr)
        self.tr_thresholds = select.multi_otsu(self.s_tr[occurring], classes=self.config.otsu_classes,
                                               bins=self.config.otsu_bins).float()
        classes = select.otsu_class(torch.nan_to_num(self.s_tr), self.tr_thresholds)
        noisy = torch.zeros_like(occurring)
        for c in self.config.tr_noisy_classes:
            noisy |= classes == c
        self.tr_noisy_ids = noisy & occurring
        self._counts = counts.clone()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.s_tr is None:
            return {}
        return {"token_counts": self._counts, "s_tr": self.s_tr, "domain_vector": self.domain,
                "tr_thresholds": self.tr_thresholds, "tr_noisy_ids": self.tr_noisy_ids}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "token_counts" in tensors:
            self.fit_counts(tensors["token_counts"])

    # ---- pass 2: per-token scores and rules ----------------------------------------------------------------

    @torch.no_grad()
    def score_batch(self, batch: Batch) -> BatchScores:
        if "TR" in self.config.rules and self.s_tr is None:
            raise RuntimeError("TR needs the dataset pass first (score_samples / score_dataset run it; or call "
                               "begin_dataset_pass, observe every sample, end_dataset_pass)")
        valid = batch.response_mask
        nan = torch.full(batch.input_ids.shape, math.nan, dtype=torch.float32, device=batch.input_ids.device)
        flags = torch.zeros(batch.input_ids.shape, dtype=torch.uint8, device=batch.input_ids.device)
        scores: dict[str, torch.Tensor] = {}

        needs_forward = "RI" in self.config.rules or "KN" in self.config.rules
        if needs_forward:
            if "RI" in self.config.rules:
                with capture_attention_received(self.model, layers=self.layers, attention_mask=batch.attention_mask,
                                                backend=self.config.attention_backend) as recorder:
                    hidden = final_hidden_states(self.model, batch.input_ids, batch.attention_mask)
                ri = torch.where(valid, recorder.mean().float(), nan)
                scores["ri"] = ri
                fence = select.quantile_fence(torch.nan_to_num(ri), valid, c=self.config.ri_fence_c)
                flags |= fence.to(torch.uint8) * 1
            else:
                hidden = final_hidden_states(self.model, batch.input_ids, batch.attention_mask)
            if "KN" in self.config.rules:
                pcp = self._pcp(hidden, batch.input_ids, valid)
                scores["kn"] = torch.where(valid, 1.0 - pcp, nan)
                noisy = select.probability_mask(torch.where(valid, pcp, torch.zeros_like(pcp)),
                                                self.config.kn_pcp_max, valid=valid)
                flags |= noisy.to(torch.uint8) * 2
        if "TR" in self.config.rules:
            ids = batch.input_ids.clamp(0, self.vocab_size - 1)
            s_tr = self.s_tr.to(ids.device)[ids]
            scores["tr"] = torch.where(valid, s_tr, nan)
            flags |= (self.tr_noisy_ids.to(ids.device)[ids] & valid).to(torch.uint8) * 4
        return BatchScores(scores, flags)

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

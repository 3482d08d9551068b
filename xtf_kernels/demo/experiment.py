"""One cell of the miniature comparison: one seed, one noise level, every method, each trained and evaluated.

For a pretrained base (:func:`xtf_kernels.datasets.miniature.load_base`), :func:`run_cell`:
1. data: the noisy SFT pool (``pool`` two-step problems, harmful noise at ``noise`` of the response tokens,
   boilerplate apart), a clean trusted set (Token Cleaning's and RHO-1's reference is the base fine-tuned on
   it) and clean held-out problems, all disjoint, all from the seed;
2. selection: which response tokens each method drops (:data:`ARMS`); XTF scores with the base only, Token
   Cleaning with base and reference, RHO-1 and self-evolving Token Cleaning decide while training; the oracle
   drops exactly the harmful noise; ``random:<arm>`` drops a uniformly random set of the same size as
   ``<arm>``'s drop;
3. training: a fresh copy of the base, one epoch over the pool in the same order for every arm, AdamW at a
   gentle constant rate, the fused loss averaged over kept tokens (:func:`xtf_kernels.methods.finetune`);
4. evaluation: held-out exact match (per problem, for paired tests), format adherence, noise reappearing in
   the outputs, NLL on clean held-out responses, retention on the pretraining tasks; per noise kind the
   precision / recall / AUROC / AUPRC of the drop, and how often protected tokens (answer digits, eos,
   template) and whole token types are dropped.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace

import torch

from ..datasets import IGNORE_INDEX
from ..datasets import TokenizedSample
from ..datasets import collate
from ..datasets.miniature import KIND_CODE
from ..datasets.miniature import NOISE_KINDS
from ..datasets.miniature import PROTECTED_KINDS
from ..datasets.miniature import generate
from ..datasets.miniature import make_heldout
from ..datasets.miniature import make_sft
from ..datasets.miniature import retention
from ..datasets.miniature import score_responses
from ..functional import token_logprobs
from ..methods import Safeguards
from ..methods import TokenCleaningConfig
from ..methods import TokenCleaningScorer
from ..methods import XTFConfig
from ..methods import XTFScorer
from ..methods import final_hidden_states
from ..methods import finetune
from ..methods import rho1_loss
from ..methods import score_samples
from ..methods import self_evolving_cleaning
from .statistics import auprc
from .statistics import auroc
from .training import heldout_loss

# XTF configurations the comparison can train on, by arm: the paper preset and the library's defaults (whatever
# they are), then the safeguard ladder: each safeguard added alone to the paper preset; "guarded", every
# safeguard together on the paper's thresholds (the library's defaults until the ladder's run chose the rate
# modes); and "guarded" with one part changed. Ladder arms are named by what they are, not by the defaults,
# so a result stays true when the defaults change (benchmarks/methods/miniature.py runs the ladder).
_RATE_MODES = dict(ri_threshold="rate", ri_drop_rate=0.05, kn_threshold="rate", kn_drop_rate=0.05,
                   tr_threshold="rate", tr_drop_rate=0.05)
RATE_FIELDS = tuple(_RATE_MODES)
_GUARDS = dict(ri_score="offdiag", kn_anchor_fraction=0.25, safeguards=Safeguards(max_sample_drop=0.4))
XTF_VARIANTS: dict[str, tuple[str, Callable[[], XTFConfig]]] = {
    "xtf_paper": ("XTF (paper preset)", lambda: XTFConfig.paper()),
    "xtf_safe": ("XTF (library defaults)", lambda: XTFConfig()),
    "xtf_paper+special": ("XTF paper + protected special tokens",
                          lambda: XTFConfig.paper(safeguards=replace(Safeguards.off(), protect_special_tokens=True))),
    "xtf_paper+cap": ("XTF paper + per-sample cap 0.4",
                      lambda: XTFConfig.paper(safeguards=replace(Safeguards.off(), max_sample_drop=0.4))),
    "xtf_paper+anchors": ("XTF paper + KN anchors 0.25", lambda: XTFConfig.paper(kn_anchor_fraction=0.25)),
    "xtf_paper+offdiag": ("XTF paper + RI without the diagonal", lambda: XTFConfig.paper(ri_score="offdiag")),
    "xtf_paper+occurrences": ("XTF paper + Otsu by occurrences", lambda: XTFConfig.paper(otsu_weights="occurrences")),
    "xtf_paper+response_domain": ("XTF paper + response-only domain", lambda: XTFConfig.paper(tr_domain="response")),
    "xtf_paper+rates": ("XTF paper + 5% rate per rule", lambda: XTFConfig.paper(**_RATE_MODES)),
    "xtf_guarded": ("XTF guarded (every safeguard, paper thresholds)", lambda: XTFConfig.paper(**_GUARDS)),
    "xtf_guarded+rates": ("XTF guarded + 5% rate per rule", lambda: XTFConfig.paper(**_GUARDS, **_RATE_MODES)),
    "xtf_guarded-KN": ("XTF guarded without KN", lambda: XTFConfig.paper(**_GUARDS, rules=("RI", "TR"))),
    # second round (after the main run found guarded + rates failing at 5% noise: TR dropped a template word at
    # every occurrence): TR anchors, or no TR
    "xtf_guarded+rates+tr_anchors": ("XTF guarded + rates + TR anchors 0.25",
                                     lambda: XTFConfig.paper(**_GUARDS, **_RATE_MODES, tr_anchor_fraction=0.25)),
    "xtf_guarded+rates+tr_anchors_half": ("XTF guarded + rates + TR anchors 0.5",
                                          lambda: XTFConfig.paper(**_GUARDS, **_RATE_MODES, tr_anchor_fraction=0.5)),
    "xtf_guarded+rates-TR": ("XTF guarded + rates without TR",
                             lambda: XTFConfig.paper(**_GUARDS, **_RATE_MODES, rules=("RI", "KN"))),
    # third round: RI's other scores on the library's defaults (which use "offdiag")
    "xtf_safe+ri_mean": ("XTF defaults + RI mean (diagonal included)", lambda: XTFConfig(ri_score="mean")),
    "xtf_safe+ri_relative": ("XTF defaults + RI relative", lambda: XTFConfig(ri_score="relative")),
    "xtf_safe+ri_sum": ("XTF defaults + RI summed", lambda: XTFConfig(ri_score="sum")),
}
TR_ANCHOR_LADDER = ("xtf_guarded+rates+tr_anchors", "xtf_guarded+rates+tr_anchors_half", "xtf_guarded+rates-TR")
RI_SCORE_LADDER = ("xtf_safe+ri_mean", "xtf_safe+ri_relative", "xtf_safe+ri_sum")
# Token Cleaning as published ("tc_fixed") and with the library's defaults (the special tokens protected; no
# cap, the top k fixes the drop rate): the Token Cleaning rung of the ladder.
TC_LADDER = ("tc_fixed_guarded",)
# Third round, beside the RI scores: self-evolving Token Cleaning with the trusted set as its first part, against
# the same schedule with nothing dropped (the control matched in data and steps: the trusted set adds 160
# clean problems to the 1,200 of the pool).
SELF_EVOLVING_LADDER = ("tc_self_evolving_trusted", "tc_trusted_then_all_tokens")
SAFEGUARD_LADDER = tuple(a for a in XTF_VARIANTS
                         if a not in ("xtf_paper", "xtf_safe", *TR_ANCHOR_LADDER, *RI_SCORE_LADDER))
# The configuration each rung of the ladders is compared with.
RUNG_PRESET = {**{rung: "xtf_paper" for rung in SAFEGUARD_LADDER},
               "xtf_guarded+rates": "xtf_guarded", "xtf_guarded-KN": "xtf_guarded",
               **{rung: "xtf_guarded+rates" for rung in TR_ANCHOR_LADDER}, "tc_fixed_guarded": "tc_fixed",
               **{rung: "xtf_safe" for rung in RI_SCORE_LADDER},
               "tc_self_evolving_trusted": "tc_trusted_then_all_tokens"}
# Every arm the comparison knows; "random:<arm>" is the matched random drop of <arm>.
METHOD_ARMS = ("all_tokens", "xtf_RI", "xtf_KN", "xtf_TR", "xtf_paper", "xtf_safe", "tc_fixed", "tc_self_evolving",
               "rho1", "oracle")
ARMS = (*METHOD_ARMS, *SAFEGUARD_LADDER, *TR_ANCHOR_LADDER, *TC_LADDER, *RI_SCORE_LADDER, *SELF_EVOLVING_LADDER)
ARM_LABELS = {"all_tokens": "all tokens", "xtf_RI": "XTF RI alone", "xtf_KN": "XTF KN alone",
              "xtf_TR": "XTF TR alone", **{arm: text for arm, (text, _) in XTF_VARIANTS.items()},
              "tc_fixed": "Token Cleaning (fixed)", "tc_fixed_guarded": "Token Cleaning (fixed, library defaults)",
              "tc_self_evolving": "Token Cleaning (self-evolving)",
              "tc_self_evolving_trusted": "Token Cleaning (self-evolving, trusted first part)",
              "tc_trusted_then_all_tokens": "trusted set, then all tokens",
              "rho1": "RHO-1", "oracle": "oracle"}
# An id counts as "dropped as a whole type" when every one of its (at least this many) response occurrences is.
WHOLE_TYPE_MIN_OCCURRENCES = 3


def label(arm: str) -> str:
    if arm.startswith("random:"):
        return f"random at {ARM_LABELS[arm[7:]]}'s rate"
    return ARM_LABELS[arm]


@dataclass(frozen=True)
class CellConfig:
    """Sizes and schedules of one cell (see the module docstring).

    pool / trusted / heldout: SFT samples, clean trusted samples, clean held-out problems; retention: problems
    of each pretraining task. lr / batch_size: the SFT (one epoch, constant rate, full fine-tuning; 3e-4 is
    the base's final pretraining rate: at 1e-3 fine-tuning on every token lost most of the base's one-step
    arithmetic and facts, 0.60 -> 0.18 retention, in a trial cell);
    reference_epochs: passes of the reference over the trusted set. token_cleaning_k / rho1_keep: kept
    fractions (methods.md defaults 0.6); self_evolving_parts: n; check_samples: clean samples (trained on by no
    arm) on which self-evolving cleaning checks its reference before every round. arms: the arms run;
    random_for: the arms that get a matched random drop; score_only: arms whose selection is measured but not
    trained on (e.g. XTF's single rules in the demo, which trains on the union only).
    """

    pool: int = 480
    trusted: int = 160
    heldout: int = 200
    retention: int = 60
    lr: float = 3e-4
    batch_size: int = 16
    reference_epochs: int = 2
    token_cleaning_k: float = 0.6
    rho1_keep: float = 0.6
    self_evolving_parts: int = 5
    check_samples: int = 80
    arms: tuple[str, ...] = METHOD_ARMS
    random_for: tuple[str, ...] = tuple(a for a in METHOD_ARMS if a != "all_tokens")
    score_only: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("pool", "trusted", "heldout", "retention", "batch_size", "reference_epochs",
                     "self_evolving_parts", "check_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("lr", "token_cleaning_k", "rho1_keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
        unknown = [a for a in (*self.arms, *self.random_for, *self.score_only) if a not in ARMS]
        if unknown or "all_tokens" not in self.arms:
            raise ValueError(f"arms must include 'all_tokens' and come from {ARMS}, got {self.arms!r} / "
                             f"{self.random_for!r}")


@dataclass
class Selection:
    """dropped: per sample (L,) bool, the response tokens the arm trained without; score: per sample (L,) fp32
    noise score (higher = more likely dropped; NaN where the method gave none) or None (binary drop only);
    config: the method's configuration as JSON (recorded with the arm's results), None for the controls;
    rounds: self-evolving cleaning's rounds (:meth:`~xtf_kernels.methods.SelfEvolvingResult.report` rows with
    the precision and recall of each round's drop), None for the other arms."""

    dropped: list[torch.Tensor]
    score: list[torch.Tensor] | None = None
    trained: torch.nn.Module | None = field(default=None, repr=False)
    config: dict | None = None
    rounds: list[dict] | None = None


def _xtf_scorer(model, config: XTFConfig, tokenizer):
    return XTFScorer(model, config, tokenizer=tokenizer.to_transformers())


def xtf_selections(base, samples, tokenizer, arms) -> dict[str, Selection]:
    """XTF's arms: each rule alone (its fired mask under the paper preset) and every configuration of
    :data:`XTF_VARIANTS` in ``arms`` (its union's drop)."""
    out = {}
    paper, paper_config = None, XTFConfig.paper()
    if any(a in arms for a in ("xtf_RI", "xtf_KN", "xtf_TR", "xtf_paper")):
        paper = score_samples(_xtf_scorer(base, paper_config, tokenizer), samples, batch_size=32)
    for arm, name in (("xtf_RI", "ri"), ("xtf_KN", "kn"), ("xtf_TR", "tr")):
        if arm in arms:
            # RI and TR drop low scores; KN's score is 1 - PCP and drops high PCP: all three drop low values,
            # so minus the score ranks what the rule drops first.
            out[arm] = Selection([r.fired(arm[4:]) for r in paper], [-r.scores[name] for r in paper],
                                 config=paper_config.to_dict())
    for arm, (_, make_config) in XTF_VARIANTS.items():
        if arm in arms:
            config = make_config()
            results = paper if arm == "xtf_paper" else score_samples(_xtf_scorer(base, config, tokenizer), samples,
                                                                      batch_size=32)
            out[arm] = Selection([r.dropped for r in results], config=config.to_dict())
    return out


def _finetune(model, samples, config: CellConfig, seed: int, optimizer=None):
    return finetune(model, samples, epochs=1, lr=config.lr, batch_size=config.batch_size, seed=seed,
                    optimizer=optimizer)


def self_evolving_selection(base, samples, config: CellConfig, seed: int, *, check, trusted=None,
                            k: float | None = None) -> Selection:
    """Self-evolving Token Cleaning as published (part 0 of the pool trained on every token) or, with
    ``trusted``, the trusted set as round 0 and every part of the pool cleaned; its trained model is theta_n.
    Before every round the reference is checked against the base on ``check`` (clean samples no arm trains
    on; recorded, never acted on). ``k``: the kept fraction (default the cell's; 1.0 drops nothing: the
    schedule's control)."""
    state = {}

    def train(model, part, index):
        if "optimizer" not in state:  # one optimizer across the parts: one epoch of one run, as for the others
            state["optimizer"] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                                   weight_decay=0.0)
        _finetune(model, part, config, seed + index, state["optimizer"])

    k = config.token_cleaning_k if k is None else k
    result = self_evolving_cleaning(base, samples, train, n_parts=config.self_evolving_parts, k=k, batch_size=32,
                                    trusted=trusted, held_out=check, on_no_gain="ignore",
                                    safeguards=TokenCleaningConfig.paper().safeguards)
    uncleaned = 0 if trusted is not None else len(result.parts[0])  # the published form trains part 0 as is
    dropped = [torch.zeros(len(s), dtype=torch.bool) for s in samples[:uncleaned]]
    scores = [torch.full((len(s),), float("nan")) for s in samples[:uncleaned]]
    rounds, start = result.report(), uncleaned
    for row, part in zip(rounds, result.scores):
        dropped += [r.dropped for r in part]
        scores += [-r.scores["influence"] for r in part]
        part_samples, part_dropped = samples[start:start + len(part)], dropped[start:]
        start += len(part)
        hits = sum(int((d & s.noise_mask & s.response_mask).sum()) for d, s in zip(part_dropped, part_samples))
        harmful = sum(int((s.noise_mask & s.response_mask).sum()) for s in part_samples)
        count = sum(int(d.sum()) for d in part_dropped)
        row.update(dropped=count, precision=hits / count if count else None,
                   recall=hits / harmful if harmful else None)
    method = {**TokenCleaningConfig.paper(k=k).to_dict(), "n_parts": config.self_evolving_parts,
              "first_part": "trusted set" if trusted is not None else "pool part 0"}
    return Selection(dropped, scores, result.model, method, rounds)


@torch.no_grad()
def token_losses(model, samples: list[TokenizedSample]) -> list[torch.Tensor]:
    """Per sample (L,) fp32 ``-log p(token)`` at each labelled position t >= 1 (0 elsewhere)."""
    out = []
    device = next(model.parameters()).device
    for start in range(0, len(samples), 32):
        group = samples[start:start + 32]
        batch = collate(group, 0).to(device)
        hidden = final_hidden_states(model, batch.input_ids, batch.attention_mask)[:, :-1]
        targets = batch.labels[:, 1:]
        logp = token_logprobs(hidden, model.lm_head.weight, targets).cpu()
        losses = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        losses[:, 1:] = torch.where(targets.cpu() != IGNORE_INDEX, -logp, torch.zeros_like(logp))
        out += [losses[row, :len(s)] for row, s in enumerate(group)]
    return out


def rho1_selection(base, reference, samples, config: CellConfig, seed: int) -> Selection:
    """RHO-1: each step keeps the ``rho1_keep`` tokens of the batch with the largest excess loss over the
    reference; the same sample order and optimizer as :func:`finetune`. The recorded noise score is minus the
    excess loss at the step the token was seen."""
    reference_losses = token_losses(reference, samples)
    model = copy.deepcopy(base)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    dropped = [torch.zeros(len(s), dtype=torch.bool) for s in samples]
    scores = [torch.full((len(s),), float("nan")) for s in samples]
    model.train()
    for start in range(0, len(order), config.batch_size):
        indices = order[start:start + config.batch_size]
        batch = collate([samples[i] for i in indices], 0).to(device)
        width = batch.input_ids.shape[1]
        ref = torch.zeros(len(indices), width)
        for row, i in enumerate(indices):
            ref[row, :len(samples[i])] = reference_losses[i]
        ref = ref.to(device)
        hidden = final_hidden_states(model, batch.input_ids, batch.attention_mask)[:, :-1]
        targets = batch.labels[:, 1:]
        loss, kept = rho1_loss(hidden, model.lm_head.weight, targets, ref[:, 1:], keep_ratio=config.rho1_keep,
                               return_mask=True)
        with torch.no_grad():
            current = -token_logprobs(hidden.detach(), model.lm_head.weight.detach(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        labelled, kept, current, ref = (t.cpu() for t in (targets != IGNORE_INDEX, kept, current, ref))
        for row, i in enumerate(indices):
            n = len(samples[i]) - 1
            dropped[i][1:] = (labelled[row, :n] & ~kept[row, :n])
            scores[i][1:] = torch.where(labelled[row, :n], -(current[row, :n] - ref[row, 1:n + 1]),
                                        torch.full((n,), float("nan")))
    model.eval()
    return Selection(dropped, scores, model, {"keep_ratio": config.rho1_keep, "window": "one batch"})


def random_selection(samples, rate: float, seed: int) -> Selection:
    """A uniformly random set of exactly round(rate N) of the N response tokens."""
    masks = [s.response_mask for s in samples]
    flat = torch.cat(masks)
    positions = flat.nonzero().flatten()
    count = round(rate * positions.numel())
    chosen = positions[torch.randperm(positions.numel(), generator=torch.Generator().manual_seed(seed))[:count]]
    drop = torch.zeros_like(flat)
    drop[chosen] = True
    return Selection(list(torch.split(drop, [m.numel() for m in masks])))


def selection_metrics(selection: Selection, samples, kinds, *, ids_to_text: Callable[[int], str]) -> dict:
    """Drop rate; precision / recall / AUROC / AUPRC overall (harmful kinds against clean tokens, boilerplate
    apart) and per harmful kind; drop rates of boilerplate and protected kinds; whole token types dropped."""
    response = torch.cat([s.response_mask for s in samples])
    kind = torch.cat(kinds)[response].long()
    ids = torch.cat([s.input_ids for s in samples])[response]
    dropped = torch.cat(selection.dropped)[response]
    score = torch.cat(selection.score)[response] if selection.score is not None else dropped.double()
    scored = ~torch.isnan(score)
    harmful = torch.zeros_like(dropped)
    for name in NOISE_KINDS:
        harmful |= kind == KIND_CODE[name]
    boilerplate = kind == KIND_CODE["boilerplate"]
    clean = ~harmful & ~boilerplate
    n_dropped = int(dropped.sum())

    def ranking(positive: torch.Tensor) -> tuple[float | None, float | None]:
        use = scored & (positive | clean)
        return auroc(score[use], positive[use]), auprc(score[use], positive[use])

    def precision_recall(positive: torch.Tensor) -> dict:
        hits = int((dropped & positive).sum())
        roc, pr = ranking(positive)
        return {"tokens": int(positive.sum()), "precision": hits / n_dropped if n_dropped else None,
                "recall": hits / int(positive.sum()) if int(positive.sum()) else None, "auroc": roc, "auprc": pr}

    counts = torch.bincount(ids, minlength=int(ids.max()) + 1)
    dropped_counts = torch.bincount(ids[dropped], minlength=counts.numel())
    whole = (counts >= WHOLE_TYPE_MIN_OCCURRENCES) & (dropped_counts == counts)
    whole_ids = whole.nonzero().flatten()
    top = whole_ids[torch.argsort(counts[whole_ids], descending=True, stable=True)][:8].tolist()
    return {
        "dropped": n_dropped,
        "drop_rate": n_dropped / dropped.numel(),
        "harmful": precision_recall(harmful),
        "by_kind": {name: precision_recall(kind == KIND_CODE[name]) for name in NOISE_KINDS},
        "boilerplate_drop_rate": float(dropped[boilerplate].double().mean()) if bool(boilerplate.any()) else None,
        "protected_drop_rate": {name: float(dropped[kind == KIND_CODE[name]].double().mean())
                                for name in PROTECTED_KINDS},
        "whole_types": {"count": int(whole.sum()), "token_share": float(counts[whole].sum()) / dropped.numel(),
                        "examples": [ids_to_text(i) for i in top]},
    }


def evaluate(model, tokenizer, heldout, heldout_samples) -> dict:
    """Held-out exact match (and per-problem correctness), format, noise reappearing, clean NLL (and per problem
    its summed NLL and token count), retention."""
    responses = generate(model, tokenizer, heldout.problems)
    scored = score_responses(responses, heldout.problems)
    clean_nll, nll_sums, token_counts = heldout_loss(model, heldout_samples)
    return {"exact_match": scored["exact_match"], "correct": scored["correct"], "format": scored["format"],
            "noise_reappears": scored["noise_reappears"], "clean_nll": clean_nll,
            "clean_nll_sum_per_problem": nll_sums, "clean_tokens_per_problem": token_counts,
            "retention": retention(model, tokenizer, heldout.one_step, heldout.facts),
            "example": responses[0]}


def without_dropped(samples, dropped) -> list[TokenizedSample]:
    """``samples`` with the labels of the ``dropped`` tokens (per sample (L,) bool) set to the ignore index."""
    return [s.with_labels(torch.where(d, torch.full_like(s.labels, IGNORE_INDEX), s.labels))
            for s, d in zip(samples, dropped)]


@dataclass
class CellArtifacts:
    """What a cell trained on, for reports that show it token by token: the pool, its kinds, each arm's drop."""

    samples: list[TokenizedSample] = field(default_factory=list)
    kinds: list[torch.Tensor] = field(default_factory=list)
    dropped: dict[str, list[torch.Tensor]] = field(default_factory=dict)


def cell_data(tokenizer, *, noise: float, seed: int, config: CellConfig):
    """(pool, trusted, held-out) of one cell, all drawn from ``seed`` and disjoint: the noisy SFT pool
    (:class:`~xtf_kernels.datasets.miniature.MiniatureSFT`), the clean trusted set and the clean held-out
    problems (:class:`~xtf_kernels.datasets.miniature.HeldOut`)."""
    sft = make_sft(tokenizer, config.pool, noise=noise, seed=seed)
    pool_prompts = {d.prompt_text for d in sft.documents}
    trusted = make_sft(tokenizer, config.trusted, noise=0.0, seed=1_000_000 + seed, exclude=pool_prompts)
    trusted_prompts = {d.prompt_text for d in trusted.documents}
    heldout = make_heldout(config.heldout, seed=seed, exclude=pool_prompts | trusted_prompts,
                           retention=config.retention)
    return sft, trusted, heldout


def run_cell(base, tokenizer, *, noise: float, seed: int, config: CellConfig,
             log: Callable[[str], None] | None = None, artifacts: CellArtifacts | None = None) -> dict:
    """Every arm of ``config`` at one noise level and seed (see the module docstring); JSON-ready results:
    {"noise", "seed", "data": counts, "base": evaluation, "reference": evaluation, "arms": {arm: {"selection":
    selection metrics (absent for all tokens), "evaluation": evaluation (None for score-only arms),
    "seconds"}}}. ``artifacts``, if given, is filled with the pool and every arm's drop."""
    log = log or (lambda _message: None)
    start = time.perf_counter()
    sft, trusted, heldout = cell_data(tokenizer, noise=noise, seed=seed, config=config)
    heldout_samples = heldout.samples(tokenizer)
    samples = sft.samples
    ids_to_text = tokenizer.id_to_token

    reference = copy.deepcopy(base)
    finetune(reference, trusted.samples, epochs=config.reference_epochs, lr=config.lr, batch_size=config.batch_size,
             seed=seed + 7)
    cell = {"noise": noise, "seed": seed,
            "data": {"pool": len(samples), "response_tokens": sft.response_tokens(),
                     "kind_fraction": {k: sft.kind_fraction(k) for k in (*NOISE_KINDS, "boilerplate")},
                     "trusted": len(trusted.samples), "heldout": len(heldout.problems)},
            "base": evaluate(base, tokenizer, heldout, heldout_samples),
            "reference": evaluate(reference, tokenizer, heldout, heldout_samples), "arms": {}}
    log(f"noise {noise:.0%} seed {seed}: data, reference and base evaluation in {time.perf_counter() - start:.0f} s")

    selections: dict[str, Selection] = {}
    xtf_arms = [a for a in (*config.arms, *config.score_only) if a.startswith("xtf_")]
    if xtf_arms:
        selections.update(xtf_selections(base, samples, tokenizer, xtf_arms))
    for arm, tc_config in (("tc_fixed", TokenCleaningConfig.paper(k=config.token_cleaning_k)),
                           ("tc_fixed_guarded", TokenCleaningConfig(k=config.token_cleaning_k))):
        if arm in config.arms:
            scorer = TokenCleaningScorer(base, reference, tc_config)
            results = score_samples(scorer, samples, batch_size=32)
            selections[arm] = Selection([r.dropped for r in results], [-r.scores["influence"] for r in results],
                                        config=scorer.config_dict())
    if "oracle" in config.arms:
        selections["oracle"] = Selection([s.noise_mask & s.response_mask for s in samples],
                                         [(s.noise_mask & s.response_mask).float() for s in samples])
    if any(a in config.arms for a in ("tc_self_evolving", *SELF_EVOLVING_LADDER)):
        check = make_sft(tokenizer, config.check_samples, noise=0.0, seed=2_000_000 + seed,
                         exclude={d.prompt_text for d in (*sft.documents, *trusted.documents)}).samples
        for arm, first, k in (("tc_self_evolving", None, None), ("tc_self_evolving_trusted", trusted.samples, None),
                              ("tc_trusted_then_all_tokens", trusted.samples, 1.0)):
            if arm in config.arms:
                selections[arm] = self_evolving_selection(base, samples, config, seed, check=check, trusted=first,
                                                          k=k)
    if "rho1" in config.arms:
        selections["rho1"] = rho1_selection(base, reference, samples, config, seed)
    del reference
    scored_only = {a: selections[a] for a in config.score_only if a in selections}
    selections = {"all_tokens": Selection([torch.zeros(len(s), dtype=torch.bool) for s in samples]),
                  **{a: selections[a] for a in config.arms if a in selections}}
    response_tokens = cell["data"]["response_tokens"]
    for index, arm in enumerate(config.arms):
        if arm in config.random_for and arm in selections:
            rate = int(sum(int((d & s.response_mask).sum()) for d, s in zip(selections[arm].dropped, samples)))
            selections[f"random:{arm}"] = random_selection(samples, rate / response_tokens, 7919 * seed + index)

    for arm, selection in scored_only.items():
        cell["arms"][arm] = {"evaluation": None, "seconds": 0.0,
                             "selection": selection_metrics(selection, samples, sft.kinds, ids_to_text=ids_to_text)}
    if artifacts is not None:
        artifacts.samples, artifacts.kinds = samples, sft.kinds
        artifacts.dropped = {arm: s.dropped for arm, s in {**scored_only, **selections}.items()}
    for arm, selection in selections.items():
        arm_start = time.perf_counter()
        model = selection.trained
        if model is None:
            model = copy.deepcopy(base)
            _finetune(model, without_dropped(samples, selection.dropped), config, seed)
        entry = {"evaluation": evaluate(model, tokenizer, heldout, heldout_samples)}
        if arm != "all_tokens":
            entry["selection"] = selection_metrics(selection, samples, sft.kinds, ids_to_text=ids_to_text)
        if selection.config is not None:
            entry["config"] = selection.config
        if selection.rounds is not None:
            entry["rounds"] = selection.rounds
        entry["seconds"] = time.perf_counter() - arm_start
        cell["arms"][arm] = entry
        selection.trained = None
        log(f"noise {noise:.0%} seed {seed}: {label(arm)}: exact match {entry['evaluation']['exact_match']:.3f}, "
            f"drop {entry.get('selection', {}).get('drop_rate', 0.0):.1%} ({entry['seconds']:.0f} s)")
    cell["seconds"] = time.perf_counter() - start
    return cell

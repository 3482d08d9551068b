"""Pick a filter's threshold from data: sweep one knob over values and measure, on a trusted dev set, what each
value drops and what that costs.

For every value of ``param`` (any field of :class:`~xtf_kernels.methods.XTFConfig` or
:class:`~xtf_kernels.methods.TokenCleaningConfig`, e.g. ``kn_pcp_max``, ``ri_fence_c``, ``ri_drop_rate``,
``k``), :func:`sweep_threshold`:

1. scores the trusted dev set with that configuration (safeguards included) and reports its drop rate, per
   rule too: on trusted data every dropped token is a false positive;
2. reports the base model's NLL and top-1 token accuracy on the dev tokens the rule drops and on those it
   keeps (a rule that drops what the base predicts well, like KN, shows a low dropped NLL);
3. with ``train_samples`` and ``train``: filters the training set with the same configuration, fine-tunes a
   fresh copy of the model on it, and reports the tuned model's dev NLL and token accuracy over every dev
   response token, plus whatever ``evaluate(model)`` returns (e.g. exact match) -- the drop rate against the
   dev score a user picks the threshold from.

Token accuracy needs each token's argmax over the vocabulary: it is computed in chunks of rows of the logits
(never the whole (tokens x vocab) matrix), from the final hidden states and the lm_head weight.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from collections.abc import Sequence

import torch

from ..datasets.samples import IGNORE_INDEX
from ..datasets.samples import TokenizedSample
from ..datasets.samples import batches
from ..datasets.samples import collate
from ._causal_lm import check_causal_lm
from ._causal_lm import final_hidden_states
from ._causal_lm import lm_head_of
from ._causal_lm import model_device
from ._causal_lm import unwrap
from .base import SampleScores
from .base import filter_samples
from .base import score_samples
from .nll import token_nll
from .safeguards import finalize
from .token_cleaning import TokenCleaningConfig
from .token_cleaning import TokenCleaningScorer
from .xtf import THRESHOLD_KNOBS
from .xtf import XTFConfig
from .xtf import XTFScorer

# rows of logits built at once for the argmax: 256 x 128256 fp32 = 125 MiB on the Llama-3 head
_ARGMAX_ROWS = 256


@torch.no_grad()
def token_correct(model, batch) -> torch.Tensor:
    """(B, L) bool: the model's top-1 prediction at position t - 1 equals token t (labelled t >= 1 only).

    The logits (softcap / scale applied as the model does; the argmax does not depend on them) are built
    for at most 256 rows at a time."""
    head = lm_head_of(model)
    hidden = final_hidden_states(model, batch.input_ids, batch.attention_mask)[:, :-1]
    labelled = batch.labels[:, 1:] != IGNORE_INDEX
    rows = hidden[labelled]
    targets = batch.input_ids[:, 1:][labelled]
    hits = torch.zeros(targets.shape, dtype=torch.bool, device=targets.device)
    for start in range(0, rows.shape[0], _ARGMAX_ROWS):
        logits = rows[start:start + _ARGMAX_ROWS].to(head.weight.dtype) @ head.weight.T
        if head.bias is not None:
            logits = logits + head.bias
        hits[start:start + _ARGMAX_ROWS] = logits.argmax(-1) == targets[start:start + _ARGMAX_ROWS]
    out = torch.zeros(batch.input_ids.shape, dtype=torch.bool, device=targets.device)
    out[:, 1:][labelled] = hits
    return out


@torch.no_grad()
def _token_metrics(model, samples: Sequence[TokenizedSample], batch_size: int) -> list[tuple[torch.Tensor, ...]]:
    """Per sample: ((L,) fp32 NLL, NaN where not labelled; (L,) bool correct)."""
    pad = int(getattr(unwrap(model).config, "pad_token_id", None) or 0)
    device = model_device(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for group in batches(list(samples), batch_size):
            batch = collate(group, pad).to(device)
            nll, correct = token_nll(model, batch).cpu(), token_correct(model, batch).cpu()
            out.extend((nll[row, : len(s)], correct[row, : len(s)]) for row, s in enumerate(group))
    finally:
        model.train(was_training)
    return out


def _summary(metrics, masks) -> dict:
    nll = torch.cat([m[0][mask] for m, mask in zip(metrics, masks)]).double()
    correct = torch.cat([m[1][mask] for m, mask in zip(metrics, masks)])
    count = int(nll.numel())
    return {"tokens": count, "nll": float(nll.mean()) if count else math.nan,
            "token_accuracy": float(correct.double().mean()) if count else math.nan}


@dataclasses.dataclass
class CalibrationSweep:
    """The sweep of one knob: ``rows[i]`` belongs to ``values[i]`` (see :func:`sweep_threshold`)."""

    param: str
    values: list
    rows: list[dict]

    def to_dict(self) -> dict:
        return {"param": self.param, "values": list(self.values), "rows": self.rows}

    def table(self) -> str:
        """A plain-text table, one line per value."""
        head = (f"{self.param:>16} {'dev drop':>9} {'NLL dropped':>12} {'NLL kept':>9} {'acc dropped':>12} "
                f"{'acc kept':>9}")
        tuned = any("tuned_dev_nll" in r for r in self.rows)
        if tuned:
            head += f" {'train drop':>11} {'tuned NLL':>10} {'tuned acc':>10}"
        lines = [head]
        for row in self.rows:
            line = (f"{row['value']!s:>16} {row['dev_drop_rate']:>9.1%} {row['base_nll_dropped']:>12.4f} "
                    f"{row['base_nll_kept']:>9.4f} {row['base_accuracy_dropped']:>12.1%} "
                    f"{row['base_accuracy_kept']:>9.1%}")
            if tuned:
                line += (f" {row['train_drop_rate']:>11.1%} {row['tuned_dev_nll']:>10.4f} "
                         f"{row['tuned_dev_accuracy']:>10.1%}")
            lines.append(line)
        return "\n".join(lines)


def _score(model, samples, config, ref, tokenizer, batch_size) -> list[SampleScores]:
    # The global cap is a check, not a selection: it would warn about (or stop the sweep at) the very values
    # whose drop rates the sweep exists to show, so the sweep scores without it.
    config = dataclasses.replace(config, safeguards=dataclasses.replace(config.safeguards, max_total_drop=None))
    if isinstance(config, XTFConfig):
        return score_samples(XTFScorer(model, config, tokenizer=tokenizer), samples, batch_size=batch_size)
    scorer = TokenCleaningScorer(model, ref, config, tokenizer=tokenizer)
    results = score_samples(scorer, samples, batch_size=batch_size)
    if scorer.global_topk is None:  # scope "sample": its safeguards were applied while scoring
        return results
    return finalize(results, config.safeguards, noise="influence", largest_is_noisiest=False, what="Token Cleaning")


def in_mode_of(config: XTFConfig | TokenCleaningConfig, param: str) -> XTFConfig | TokenCleaningConfig:
    """``config`` with ``param``'s rule in the threshold mode that reads ``param`` (a sweep of ``kn_pcp_max``
    under the rate defaults would otherwise sweep nothing, and the config refuses it); unchanged otherwise."""
    if isinstance(config, XTFConfig) and param in THRESHOLD_KNOBS:
        mode, needed = THRESHOLD_KNOBS[param]
        return dataclasses.replace(config, **{mode: needed})
    return config


def sweep_threshold(
    model,
    dev_samples: Sequence[TokenizedSample],
    *,
    param: str,
    values: Sequence,
    config: XTFConfig | TokenCleaningConfig | None = None,
    ref=None,
    tokenizer=None,
    train_samples: Sequence[TokenizedSample] | None = None,
    train: Callable[[torch.nn.Module, list[TokenizedSample]], object] | None = None,
    evaluate: Callable[[torch.nn.Module], dict] | None = None,
    batch_size: int = 16,
) -> CalibrationSweep:
    """Sweep ``param`` over ``values`` (see the module docstring).

    Args:
        model: the base causal LM (scored with, and copied for fine-tuning; never modified).
        dev_samples: trusted samples; their labelled response tokens are scored and evaluated.
        param / values: a config field and the values to try (each must pass the config's validation). A
            threshold knob read in one mode of its rule (``kn_pcp_max``: "absolute", ``ri_fence_c``: "fence",
            the Otsu knobs: "otsu", the ``*_drop_rate`` knobs: "rate"; :data:`~.xtf.THRESHOLD_KNOBS`) puts its
            rule in that mode for the sweep.
        config: the other knobs (default ``XTFConfig()``); a :class:`TokenCleaningConfig` needs ``ref``.
        tokenizer: for the protected tokens (see :class:`~xtf_kernels.methods.Safeguards`).
        train_samples / train: fine-tune a deep copy of ``model`` on the filtered ``train_samples`` per value
            with ``train(model_copy, filtered)`` (in place, or returning the trained model).
        evaluate: ``evaluate(tuned_model) -> dict`` of extra dev metrics per value (with ``train``).

    Returns:
        :class:`CalibrationSweep`; each row holds ``value``, ``dev_drop_rate``, ``dev_dropped``,
        ``dev_scored``, ``dev_drop_rate_by_rule``, ``base_nll_dropped`` / ``base_nll_kept``,
        ``base_accuracy_dropped`` / ``base_accuracy_kept`` and, with ``train``, ``train_drop_rate``,
        ``tuned_dev_nll``, ``tuned_dev_accuracy`` and ``evaluate``'s keys.
    """
    check_causal_lm(model)
    config = XTFConfig() if config is None else config
    if not isinstance(config, (XTFConfig, TokenCleaningConfig)):
        raise TypeError(f"config must be an XTFConfig or a TokenCleaningConfig, got {type(config).__name__}")
    fields = {f.name for f in dataclasses.fields(config)}
    if param not in fields:
        raise ValueError(f"param must be a field of {type(config).__name__} ({sorted(fields)}), got {param!r}")
    values = list(values)
    if not values:
        raise ValueError("values must hold at least one value")
    if isinstance(config, TokenCleaningConfig) and ref is None:
        raise ValueError("a TokenCleaningConfig needs ref= (the reference model)")
    if (train is None) != (train_samples is None):
        raise ValueError("train and train_samples go together")
    if evaluate is not None and train is None:
        raise ValueError("evaluate needs train and train_samples")
    dev_samples = list(dev_samples)
    config = in_mode_of(config, param)
    configs = [dataclasses.replace(config, **{param: value}) for value in values]  # validates every value first
    base_metrics = _token_metrics(model, dev_samples, batch_size)
    rows = []
    for value, swept in zip(values, configs):
        results = _score(model, dev_samples, swept, ref, tokenizer, batch_size)
        scored = [s.response_mask for s in dev_samples]
        dropped = [r.dropped & v for r, v in zip(results, scored)]
        n_scored, n_dropped = sum(int(v.sum()) for v in scored), sum(int(d.sum()) for d in dropped)
        rules = swept.rules if isinstance(swept, XTFConfig) else TokenCleaningScorer.rule_names
        by_rule = {rule: sum(int(r.fired(rule).sum()) for r in results) / max(n_scored, 1) for rule in rules}
        gone, kept = _summary(base_metrics, dropped), _summary(base_metrics, [v & ~d for v, d in zip(scored, dropped)])
        row = {"value": value, "dev_drop_rate": n_dropped / max(n_scored, 1), "dev_dropped": n_dropped,
               "dev_scored": n_scored, "dev_drop_rate_by_rule": by_rule, "base_nll_dropped": gone["nll"],
               "base_nll_kept": kept["nll"], "base_accuracy_dropped": gone["token_accuracy"],
               "base_accuracy_kept": kept["token_accuracy"]}
        if train is not None:
            row.update(_tune(model, dev_samples, list(train_samples), swept, ref, tokenizer, train, evaluate,
                             batch_size))
        rows.append(row)
    return CalibrationSweep(param, values, rows)


def _tune(model, dev_samples, train_samples, config, ref, tokenizer, train, evaluate, batch_size) -> dict:
    results = _score(model, train_samples, config, ref, tokenizer, batch_size)
    filtered = filter_samples(train_samples, results)
    scored = sum(int(s.response_mask.sum()) for s in train_samples)
    dropped = sum(int((r.dropped & s.response_mask).sum()) for r, s in zip(results, train_samples))
    tuned = copy.deepcopy(model)
    returned = train(tuned, filtered)
    if isinstance(returned, torch.nn.Module):
        tuned = returned
    metrics = _token_metrics(tuned, dev_samples, batch_size)
    everything = _summary(metrics, [s.response_mask for s in dev_samples])
    out = {"train_drop_rate": dropped / max(scored, 1), "tuned_dev_nll": everything["nll"],
           "tuned_dev_accuracy": everything["token_accuracy"]}
    if evaluate is not None:
        extra = evaluate(tuned)
        if not isinstance(extra, dict):
            raise TypeError(f"evaluate must return a dict, got {type(extra).__name__}")
        out.update(extra)
    return out

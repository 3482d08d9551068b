"""``report.json`` of ``xtf demo``: its fields, writing it atomically, reading it back validated.

Every field, by dotted path (``*`` = one entry per key, e.g. each method); "(timing)" marks the fields
that change from run to run (wall times and what is derived from them); every other field is the same
for the same ``--seed``, preset and overrides on the same machine and device. Token counts are over the
scored response tokens of the training pool: labelled positions t >= 1 (eos included).

    format                              "xtf-demo-report"
    version                             1 (bumped when a field changes meaning or goes away)
    config                              every :class:`~xtf_kernels.demo.config.DemoConfig` field
    environment.xtf_kernels             package version
    environment.torch                   torch version
    environment.transformers            transformers version
    environment.device                  the device in words (CPU model and threads, or GPU name)
    environment.device_type             "cpu" or "cuda"
    environment.threads                 torch CPU threads
    data.train_samples                  samples in the noisy training pool
    data.response_tokens                scored response tokens in it
    data.noisy_tokens                   of those, corrupted ones (ground truth)
    data.noise_fraction                 noisy_tokens / response_tokens: the precision of dropping at random
    data.pretrain_samples               clean samples the base model was pretrained on
    data.warmup_samples                 clean samples the Token Cleaning reference was fine-tuned on
    data.heldout_problems               held-out problems (exact match, held-out loss)
    data.vocab_size                     rows of the model's embedding and lm_head
    model.arch                          "llama" or "qwen2"
    model.parameters                    trainable parameters
    base.pretrain_final_loss            mean loss of the last 10 pretraining steps
    base.exact_match                    held-out exact match of the base model (before fine-tuning)
    base.heldout_loss                   held-out loss of the base model
    reference.exact_match               held-out exact match of Token Cleaning's reference model
    reference.heldout_loss              held-out loss of the reference model
    methods.*                           "all_tokens", "xtf", "token_cleaning"; each:
    methods.*.kept_tokens               response tokens left with a label
    methods.*.dropped_tokens            response tokens set to -100 by the method
    methods.*.kept_fraction             kept_tokens / data.response_tokens
    methods.*.precision                 corrupted / dropped tokens (null when nothing was dropped)
    methods.*.recall                    dropped corrupted / all corrupted tokens
    methods.*.f1                        harmonic mean of the two (null when nothing was dropped)
    methods.*.rules.*                   per rule of the method (XTF: "RI", "KN", "TR"; Token Cleaning:
                                        "low_influence"; all tokens: none); each:
    methods.*.rules.*.dropped           tokens the rule fired on (a token can be dropped by several rules)
    methods.*.rules.*.fraction          dropped / data.response_tokens
    methods.*.rules.*.only_this_rule    tokens no other rule dropped
    methods.*.rules.*.precision         corrupted / dropped by this rule (0.0 when it dropped none)
    methods.*.rules.*.recall            corrupted tokens this rule dropped / all corrupted
    methods.*.rules.*.f1                harmonic mean of the two
    methods.*.loss_tokens               tokens that carried a loss over the whole fine-tuning run
    methods.*.loss_curve                loss of every fine-tuning step, over that batch's kept tokens
    methods.*.final_train_loss          mean of the last 10 entries of loss_curve
    methods.*.eval_steps                steps at which the held-out loss was measured (0 first)
    methods.*.heldout_loss_curve        held-out loss at those steps (every held-out response token)
    methods.*.heldout_loss              the last entry of heldout_loss_curve
    methods.*.exact_match               held-out exact match after fine-tuning (greedy decoding)
    methods.*.train_seconds             (timing) wall time of the fine-tuning steps
    methods.*.tokens_per_second         (timing) input tokens (padding excluded) per second of fine-tuning
    methods.*.scoring_seconds           (timing) wall time of scoring the pool (null for all tokens)
    xtf_overlap.*                       per pair of XTF rules ("RI&KN", ...); each:
    xtf_overlap.*.both                  tokens both rules dropped
    xtf_overlap.*.jaccard               both / tokens either rule dropped
    xtf_overlap.*.of_smaller            both / tokens the rule that dropped fewer dropped
    memory.tokens                       hidden-state rows (label positions of memory batches)
    memory.hidden                       hidden size (the demo model's)
    memory.vocab                        lm_head rows measured against
    memory.dtype                        "float32"
    memory.mode                         "fwd_bwd": loss forward and backward, gradients to hidden and weight
    memory.device                       the device in words
    memory.method                       how peak memory was measured (:mod:`xtf_kernels.bench.memory`)
    memory.fused                        the fused loss (xtf_kernels.linear_cross_entropy); fields below
    memory.materialised                 logits.float() + F.cross_entropy; fields below
    memory.*.provider                   the benchmark provider that ran
    memory.*.status                     "ok", or why it did not run ("missing", "error", "oom", "timeout")
    memory.*.reason                     the reason (or warnings) in words, "" if none
    memory.*.peak_bytes                 peak bytes, inputs included (null unless status is "ok")
    memory.*.extra_bytes                peak bytes over the inputs: what the loss itself needed
    memory.*.ms                         (timing) median milliseconds of one step
    memory.*.tokens_per_second          (timing) memory.tokens / that time
    memory.extra_ratio                  materialised extra_bytes / fused extra_bytes (null if either failed)
    verdict.best_method                 the method with the highest held-out exact match (ties: all tokens)
    verdict.filtering_wins              a filtered method beat all tokens by more than verdict.margin
    verdict.margin                      95% half-width of an exact-match difference at this many
                                        held-out problems (1.96 sqrt(p1 q1 / n + p2 q2 / n), largest of
                                        the two comparisons)
    verdict.findings                    the report's conclusions in sentences (what the run showed)
    timings.*                           (timing) seconds per stage: "data", "pretrain" (model built and
                                        pretrained), "reference", "scoring", "finetune", "evaluation",
                                        "memory", "report", "total"
    files.json                          "report.json"
    files.html                          "report.html"
    files.scores.*                      per scored method, its results folder (relative to the output folder)
    files.method_reports.*              per scored method, its own explainability page (relative)

:func:`read_report` checks every one of these (and nothing else) is present with its type, and that
``config`` is a valid :class:`~xtf_kernels.demo.config.DemoConfig`; anything else raises
:class:`~xtf_kernels.errors.CorruptFileError`.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass

from .._atomic import atomic_write_bytes
from ..errors import CorruptFileError
from .config import DemoConfig

FORMAT = "xtf-demo-report"
VERSION = 1
METHODS = ("all_tokens", "xtf", "token_cleaning")
STAGES = ("data", "pretrain", "reference", "scoring", "finetune", "evaluation", "memory", "report", "total")

NUMBER = (int, float)


@dataclass(frozen=True)
class Leaf:
    """A value of one of ``types`` (None allowed if ``nullable``); ``items``: element types of a list."""

    types: tuple[type, ...]
    nullable: bool = False
    items: tuple[type, ...] | None = None


@dataclass(frozen=True)
class Each:
    """A dict with any keys (``keys``: the allowed ones, None = any string), every value following ``spec``."""

    spec: object
    keys: tuple[str, ...] | None = None


_RULE = {"dropped": Leaf((int,)), "fraction": Leaf(NUMBER), "only_this_rule": Leaf((int,)),
         "precision": Leaf(NUMBER), "recall": Leaf(NUMBER), "f1": Leaf(NUMBER)}
_METHOD = {
    "kept_tokens": Leaf((int,)), "dropped_tokens": Leaf((int,)), "kept_fraction": Leaf(NUMBER),
    "precision": Leaf(NUMBER, nullable=True), "recall": Leaf(NUMBER), "f1": Leaf(NUMBER, nullable=True),
    "rules": Each(_RULE), "loss_tokens": Leaf((int,)), "loss_curve": Leaf((list,), items=NUMBER),
    "final_train_loss": Leaf(NUMBER), "eval_steps": Leaf((list,), items=(int,)),
    "heldout_loss_curve": Leaf((list,), items=NUMBER), "heldout_loss": Leaf(NUMBER),
    "exact_match": Leaf(NUMBER), "train_seconds": Leaf(NUMBER), "tokens_per_second": Leaf(NUMBER),
    "scoring_seconds": Leaf(NUMBER, nullable=True),
}
_MEMORY_SIDE = {
    "provider": Leaf((str,)), "status": Leaf((str,)), "reason": Leaf((str,)),
    "peak_bytes": Leaf((int,), nullable=True), "extra_bytes": Leaf((int,), nullable=True),
    "ms": Leaf(NUMBER, nullable=True), "tokens_per_second": Leaf(NUMBER, nullable=True),
}
SCHEMA: dict = {
    "format": Leaf((str,)),
    "version": Leaf((int,)),
    "config": Leaf((dict,)),
    "environment": {"xtf_kernels": Leaf((str,)), "torch": Leaf((str,)), "transformers": Leaf((str,)),
                    "device": Leaf((str,)), "device_type": Leaf((str,)), "threads": Leaf((int,))},
    "data": {"train_samples": Leaf((int,)), "response_tokens": Leaf((int,)), "noisy_tokens": Leaf((int,)),
             "noise_fraction": Leaf(NUMBER), "pretrain_samples": Leaf((int,)), "warmup_samples": Leaf((int,)),
             "heldout_problems": Leaf((int,)), "vocab_size": Leaf((int,))},
    "model": {"arch": Leaf((str,)), "parameters": Leaf((int,))},
    "base": {"pretrain_final_loss": Leaf(NUMBER), "exact_match": Leaf(NUMBER), "heldout_loss": Leaf(NUMBER)},
    "reference": {"exact_match": Leaf(NUMBER), "heldout_loss": Leaf(NUMBER)},
    "methods": Each(_METHOD, keys=METHODS),
    "xtf_overlap": Each({"both": Leaf((int,)), "jaccard": Leaf(NUMBER), "of_smaller": Leaf(NUMBER)}),
    "memory": {
        "tokens": Leaf((int,)), "hidden": Leaf((int,)), "vocab": Leaf((int,)), "dtype": Leaf((str,)),
        "mode": Leaf((str,)), "device": Leaf((str,)), "method": Leaf((str,)),
        "fused": _MEMORY_SIDE, "materialised": _MEMORY_SIDE, "extra_ratio": Leaf(NUMBER, nullable=True),
    },
    "verdict": {"best_method": Leaf((str,)), "filtering_wins": Leaf((bool,)), "margin": Leaf(NUMBER),
                "findings": Leaf((list,), items=(str,))},
    "timings": Each(Leaf(NUMBER), keys=STAGES),
    "files": {"json": Leaf((str,)), "html": Leaf((str,)), "scores": Each(Leaf((str,))),
              "method_reports": Each(Leaf((str,)))},
}

# Fields that change from run to run (fnmatch patterns over dotted paths); everything else is deterministic.
TIMING_FIELDS = ("methods.*.train_seconds", "methods.*.tokens_per_second", "methods.*.scoring_seconds",
                 "memory.*.ms", "memory.*.tokens_per_second", "timings.*")


def schema_paths(spec=SCHEMA, prefix: str = "") -> list[str]:
    """The dotted path of every leaf field of ``spec`` (``*`` standing for the entries of an :class:`Each`)."""
    if isinstance(spec, Leaf):
        return [prefix]
    if isinstance(spec, Each):
        return schema_paths(spec.spec, f"{prefix}.*")
    paths = []
    for key, child in spec.items():
        paths.extend(schema_paths(child, f"{prefix}.{key}" if prefix else key))
    return paths


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def _check_leaf(path: str, value, leaf: Leaf) -> None:
    if value is None:
        if not leaf.nullable:
            raise CorruptFileError(f"{path} is null but must be {_type_name(leaf.types)}")
        return
    # bool is an int subclass: only a field declared bool takes True / False.
    if (isinstance(value, bool) and bool not in leaf.types) or not isinstance(value, leaf.types):
        raise CorruptFileError(f"{path} must be {_type_name(leaf.types)}, got {type(value).__name__}")
    if leaf.items is not None:
        for index, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, leaf.items):
                raise CorruptFileError(f"{path}[{index}] must be {_type_name(leaf.items)}, got {type(item).__name__}")


def _check(path: str, value, spec) -> None:
    if isinstance(spec, Leaf):
        _check_leaf(path, value, spec)
        return
    if not isinstance(value, dict):
        raise CorruptFileError(f"{path or 'the report'} must be an object, got {type(value).__name__}")
    if isinstance(spec, Each):
        for key, child in value.items():
            if spec.keys is not None and key not in spec.keys:
                raise CorruptFileError(f"{path} has an unknown entry {key!r} (expected some of {list(spec.keys)})")
            _check(f"{path}.{key}", child, spec.spec)
        return
    missing = [k for k in spec if k not in value]
    extra = [k for k in value if k not in spec]
    if missing or extra:
        raise CorruptFileError(f"{path or 'the report'}: missing fields {missing}, unknown fields {extra}")
    for key, child in spec.items():
        _check(f"{path}.{key}" if path else key, value[key], child)


def validate_report(report) -> dict:
    """``report`` if it has exactly the documented fields with their types, else CorruptFileError."""
    _check("", report, SCHEMA)
    if report["format"] != FORMAT or report["version"] != VERSION:
        raise CorruptFileError(f"not an xtf demo report of version {VERSION}: format {report['format']!r}, "
                               f"version {report['version']!r}")
    if set(report["methods"]) != set(METHODS):
        raise CorruptFileError(f"methods must be exactly {list(METHODS)}, got {list(report['methods'])}")
    try:
        DemoConfig(**report["config"])
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"config is not a valid demo config: {exc}") from None
    return report


def write_report_json(path: str | os.PathLike, report: dict) -> None:
    """Validate ``report`` and write it to ``path`` atomically (temporary file + ``os.replace``)."""
    validate_report(report)
    atomic_write_bytes(os.fspath(path), (json.dumps(report, indent=1, allow_nan=False) + "\n").encode())


def read_report(path: str | os.PathLike) -> dict:
    """The validated report at ``path`` (FileNotFoundError if absent, CorruptFileError if malformed)."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        return validate_report(report)
    except CorruptFileError as exc:
        raise CorruptFileError(f"{path}: {exc}") from None


def without_timings(report: dict) -> dict:
    """A copy of ``report`` without the (timing) fields: what two runs with the same seed share."""

    def strip(value, path: str):
        if not isinstance(value, dict):
            return value
        out = {}
        for key, child in value.items():
            child_path = f"{path}.{key}" if path else key
            if any(fnmatch.fnmatchcase(child_path, pattern) for pattern in TIMING_FIELDS):
                continue
            stripped = strip(child, child_path)
            if child and stripped == {}:
                continue  # a group of timings only (``timings``) goes with them
            out[key] = stripped
        return out

    return strip(report, "")

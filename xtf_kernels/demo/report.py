"""``report.json`` of ``xtf demo``: its fields, writing it atomically, reading it back validated.

Every field, by dotted path (``*`` = one entry per key, e.g. each arm); "(timing)" marks the fields that
change from run to run (wall times, what is derived from them, the machine's load and whether the base was
cached); every other field is the same for the same ``--seed``, preset and overrides on the same machine and
device. Token counts are over the scored response tokens of the training pool (labelled positions t >= 1, eos
included); "harmful" tokens are the wrong-number, off-domain and garbled kinds, boilerplate is counted apart.

    format                              "xtf-demo-report"
    version                             2 (bumped when a field changes meaning or goes away)
    config                              every :class:`~xtf_kernels.demo.config.DemoConfig` field
    environment.xtf_kernels             package version
    environment.torch                   torch version
    environment.transformers            transformers version
    environment.device                  the device in words (CPU model and threads, or GPU name)
    environment.device_type             "cpu" or "cuda"
    environment.threads                 torch CPU threads
    environment.load_average            (timing) 1-minute load average of the machine when the run began
    data.train_samples                  samples in the noisy training pool
    data.response_tokens                scored response tokens in it
    data.noise_fraction                 share of them that are harmful: the precision of a random drop
    data.kind_fraction.*                share of each kind ("wrong_number", "off_domain", "garbled",
                                        "boilerplate")
    data.trusted_samples                clean samples the reference model (Token Cleaning, RHO-1) learned
    data.heldout_problems               clean held-out problems (exact match, format, noise, NLL)
    data.vocab_size                     pieces of the byte-level BPE tokenizer
    model.arch                          "llama"
    model.parameters                    parameters of the base model
    model.pretrain_tokens               tokens the base was pretrained on
    model.pretrain_final_loss           mean loss of its last 20 pretraining steps
    model.cached                        (timing) whether the base came from the on-disk cache
    base.*                              the base model before fine-tuning; fields as arms.*.evaluation
    reference.*                         the reference model; fields as arms.*.evaluation
    arms.*                              per arm ("all_tokens", "xtf_paper", ..., "random:<arm>"); each:
    arms.*.label                        the arm in words
    arms.*.evaluation                   after fine-tuning (null for XTF's single rules, scored only):
    arms.*.evaluation.exact_match       held-out exact match (greedy decoding)
    arms.*.evaluation.format            share of held-out responses in the two-step template
    arms.*.evaluation.clean_nll         mean NLL of the clean held-out responses
    arms.*.evaluation.retention         exact match on the pretraining tasks (one-step sums, facts)
    arms.*.evaluation.noise_reappears.* share of held-out responses containing each harmful kind
    arms.*.selection                    what the arm dropped (null for all tokens):
    arms.*.selection.drop_rate          dropped / response tokens
    arms.*.selection.precision          harmful / dropped (null when nothing was dropped)
    arms.*.selection.recall             dropped harmful / harmful (null when there is none)
    arms.*.selection.auroc              AUROC of the arm's noise score, harmful against clean tokens
    arms.*.selection.auprc              average precision of the same ranking
    arms.*.selection.by_kind.*          per harmful kind, against clean tokens:
    arms.*.selection.by_kind.*.recall   share of the kind dropped (null when absent)
    arms.*.selection.by_kind.*.auroc    AUROC (null when absent)
    arms.*.selection.boilerplate_dropped  share of boilerplate tokens dropped (null when none)
    arms.*.selection.protected_dropped.*  share of answer digits / eos / template tokens dropped
    arms.*.selection.whole_types        token ids (>= 3 occurrences) dropped at every occurrence
    arms.*.selection.whole_type_examples  up to 8 of them, most frequent first
    arms.*.vs_all_tokens                exact match minus all tokens', per held-out problem (null for all
                                        tokens and score-only arms):
    arms.*.vs_all_tokens.mean           the difference
    arms.*.vs_all_tokens.low            its 95% interval (t over the per-problem 0/1 differences): low end
    arms.*.vs_all_tokens.high           high end
    arms.*.vs_all_tokens.permutation_p  two-sided sign-flip permutation test
    arms.*.vs_all_tokens.mcnemar_p      exact McNemar test
    arms.*.vs_all_tokens.clean_nll      the clean held-out NLL's difference, per held-out problem (each
                                        response's summed NLL over the mean response length, so the mean is
                                        the difference of the evaluations' clean_nll; lower is better):
    arms.*.vs_all_tokens.clean_nll.mean the difference (nats per token)
    arms.*.vs_all_tokens.clean_nll.low  its 95% interval (t over the per-problem differences): low end
    arms.*.vs_all_tokens.clean_nll.high high end
    arms.*.vs_random                    the same against the random drop of equal size (null without one)
    arms.*.vs_random.mean               the difference
    arms.*.vs_random.low                low end of its 95% interval
    arms.*.vs_random.high               high end
    arms.*.vs_random.permutation_p      two-sided sign-flip permutation test
    arms.*.vs_random.mcnemar_p          exact McNemar test
    arms.*.vs_random.clean_nll          the clean held-out NLL's difference, per held-out problem
    arms.*.vs_random.clean_nll.mean     the difference (nats per token)
    arms.*.vs_random.clean_nll.low      low end of its 95% interval
    arms.*.vs_random.clean_nll.high     high end
    arms.*.seconds                      (timing) wall time of its training and evaluation
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
    verdict.best_arm                    the trained arm with the highest exact match (oracle and random
                                        drops excluded; ties: all tokens)
    verdict.filtering_wins              a filter's interval against all tokens AND against its random drop
                                        lies above 0
    verdict.findings                    the report's conclusions in sentences (what the run showed)
    timings.*                           (timing) seconds per stage: "base" (loaded or built), "methods"
                                        (data, reference, scoring, training, evaluation), "memory",
                                        "report", "total"
    files.json                          "report.json"
    files.html                          "report.html"

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
from ..datasets.miniature.text import NOISE_KINDS
from ..datasets.miniature.text import PROTECTED_KINDS
from ..errors import CorruptFileError
from .config import DemoConfig

FORMAT = "xtf-demo-report"
VERSION = 3
STAGES = ("base", "methods", "memory", "report", "total")

NUMBER = (int, float)


@dataclass(frozen=True)
class Leaf:
    """A value of one of ``types`` (None allowed if ``nullable``); ``items``: element types of a list."""

    types: tuple[type, ...]
    nullable: bool = False
    items: tuple[type, ...] | None = None


@dataclass(frozen=True)
class Nullable:
    """An object following ``spec``, or null."""

    spec: dict


@dataclass(frozen=True)
class Each:
    """A dict with any keys (``keys``: the allowed ones, None = any string), every value following ``spec``."""

    spec: object
    keys: tuple[str, ...] | None = None


_EVALUATION = {"exact_match": Leaf(NUMBER), "format": Leaf(NUMBER), "clean_nll": Leaf(NUMBER),
               "retention": Leaf(NUMBER), "noise_reappears": Each(Leaf(NUMBER), keys=NOISE_KINDS)}
_PAIRED = {"mean": Leaf(NUMBER), "low": Leaf(NUMBER), "high": Leaf(NUMBER), "permutation_p": Leaf(NUMBER),
           "mcnemar_p": Leaf(NUMBER), "clean_nll": {"mean": Leaf(NUMBER), "low": Leaf(NUMBER), "high": Leaf(NUMBER)}}
_SELECTION = {
    "drop_rate": Leaf(NUMBER), "precision": Leaf(NUMBER, nullable=True), "recall": Leaf(NUMBER, nullable=True),
    "auroc": Leaf(NUMBER, nullable=True), "auprc": Leaf(NUMBER, nullable=True),
    "by_kind": Each({"recall": Leaf(NUMBER, nullable=True), "auroc": Leaf(NUMBER, nullable=True)}, keys=NOISE_KINDS),
    "boilerplate_dropped": Leaf(NUMBER, nullable=True),
    "protected_dropped": Each(Leaf(NUMBER), keys=PROTECTED_KINDS), "whole_types": Leaf((int,)),
    "whole_type_examples": Leaf((list,), items=(str,)),
}
_ARM = {"label": Leaf((str,)), "evaluation": Nullable(_EVALUATION), "selection": Nullable(_SELECTION),
        "vs_all_tokens": Nullable(_PAIRED), "vs_random": Nullable(_PAIRED), "seconds": Leaf(NUMBER)}
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
                    "device": Leaf((str,)), "device_type": Leaf((str,)), "threads": Leaf((int,)),
                    "load_average": Leaf(NUMBER)},
    "data": {"train_samples": Leaf((int,)), "response_tokens": Leaf((int,)), "noise_fraction": Leaf(NUMBER),
             "kind_fraction": Each(Leaf(NUMBER), keys=(*NOISE_KINDS, "boilerplate")),
             "trusted_samples": Leaf((int,)), "heldout_problems": Leaf((int,)), "vocab_size": Leaf((int,))},
    "model": {"arch": Leaf((str,)), "parameters": Leaf((int,)), "pretrain_tokens": Leaf((int,)),
              "pretrain_final_loss": Leaf(NUMBER), "cached": Leaf((bool,))},
    "base": _EVALUATION,
    "reference": _EVALUATION,
    "arms": Each(_ARM),
    "memory": {
        "tokens": Leaf((int,)), "hidden": Leaf((int,)), "vocab": Leaf((int,)), "dtype": Leaf((str,)),
        "mode": Leaf((str,)), "device": Leaf((str,)), "method": Leaf((str,)),
        "fused": _MEMORY_SIDE, "materialised": _MEMORY_SIDE, "extra_ratio": Leaf(NUMBER, nullable=True),
    },
    "verdict": {"best_arm": Leaf((str,)), "filtering_wins": Leaf((bool,)), "findings": Leaf((list,), items=(str,))},
    "timings": Each(Leaf(NUMBER), keys=STAGES),
    "files": {"json": Leaf((str,)), "html": Leaf((str,))},
}

# Fields that change from run to run (fnmatch patterns over dotted paths); everything else is deterministic.
TIMING_FIELDS = ("environment.load_average", "model.cached", "arms.*.seconds", "memory.*.ms",
                 "memory.*.tokens_per_second", "timings.*")


def schema_paths(spec=SCHEMA, prefix: str = "") -> list[str]:
    """The dotted path of every leaf field of ``spec`` (``*`` standing for the entries of an :class:`Each`)."""
    if isinstance(spec, Leaf):
        return [prefix]
    if isinstance(spec, Each):
        return schema_paths(spec.spec, f"{prefix}.*")
    if isinstance(spec, Nullable):
        return schema_paths(spec.spec, prefix)
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
    if isinstance(spec, Nullable):
        if value is not None:
            _check(path, value, spec.spec)
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
    if "all_tokens" not in report["arms"]:
        raise CorruptFileError(f"arms must include 'all_tokens', got {list(report['arms'])}")
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

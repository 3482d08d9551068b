"""``xtf score DATA --model PATH --out DIR``: score a dataset's response tokens and write the results.

DATA is a JSONL file: one ``{"prompt": ..., "response": ...}`` object per line (tokenised with the model's
tokenizer as ``[bos] prompt response [eos]``, the response and eos trained on), or already tokenised
``{"input_ids": [...], "labels": [...]}`` (or ``prompt_length`` / ``loss_mask`` instead of labels); or a
Hugging Face dataset with those columns: a ``save_to_disk`` folder or a ``.parquet`` file.
Methods: ``xtf`` (reasoning importance, knowledge novelty and task relevance of the base model's tokens;
arXiv 2602.14536) and ``token-cleaning`` (influence of a reference model over the base, top k kept; arXiv
2502.01968; needs ``--ref``). The results folder is resumable: run
the same command again after an interruption. Then ``xtf filter`` writes the masked dataset.

Presets: ``--preset safe`` (default; XTFConfig() / TokenCleaningConfig(): each XTF rule at a 5% target drop
rate, protected special tokens, per-sample and global drop caps, RI without the diagonal, KN anchors) or
``--preset paper`` (XTFConfig.paper() / TokenCleaningConfig.paper(): the papers' rules and thresholds as
written, no safeguard). A threshold knob given alone selects its rule's mode (``--kn-pcp-max 0.9``: KN's
absolute threshold; ``--ri-fence-c``: RI's fence; ``--otsu-bins``: TR's Multi-Otsu). A flag given on the command line
replaces the preset's value of that knob; the defaults below name each preset's value where they differ.
Pre-tokenised DATA needs no tokenizer: without one (no ``--tokenizer`` and none saved in the ``--model``
folder) only the model's end-of-sequence ids are protected as special tokens.

Examples::

    xtf score train.jsonl --model ./my-model --out scores/
    xtf score train.jsonl --model ./base --method token-cleaning --ref ./warmed-up --k 0.6 --out tc/
    xtf score train.jsonl --model ./my-model --preset paper --out paper/        # the papers' rules, no safeguard
    xtf score train.jsonl --model ./my-model --kn-drop-rate 0.05 --protect "The answer is" --protect 2 --out s/
    xtf filter train.jsonl --scores scores/ --out train.filtered.jsonl

Many GPUs and nodes: launch the same command with torchrun, accelerate launch or srun; each rank scores its
share of the shards on its own GPU (cuda:LOCAL_RANK) and the results are those of one process::

    torchrun --nproc-per-node 8 -m xtf_kernels score train.jsonl --model ./my-model --out scores/
    accelerate launch --multi_gpu --num_processes 8 -m xtf_kernels score train.jsonl --model ./my-model --out s/

accelerate on CPUs: --multi_gpu --num_processes N starts N processes (through torchrun, gloo) with or
without a GPU; --cpu --num_processes N starts only one (accelerate runs several CPU processes only under
mpirun, given --mpirun_hostfile), which then scores everything alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys

from ..methods.xtf import THRESHOLD_KNOBS
from . import CliError

METHODS = ("xtf", "token-cleaning")
PRESETS = ("safe", "paper")
RULES = ("RI", "KN", "TR")
# flags whose dest is a field of XTFConfig / TokenCleaningConfig / Safeguards; None = not given: the preset's value
XTF_FIELDS = ("rules", "attn_layers", "ri_score", "ri_threshold", "ri_fence_c", "ri_drop_rate", "kn_threshold",
              "kn_pcp_max", "kn_drop_rate", "kn_anchor_fraction", "tr_anchor_fraction", "tr_threshold", "tr_drop_rate",
              "tr_distance", "tr_normalization", "tr_domain", "otsu_classes", "otsu_bins", "otsu_weights",
              "tr_noisy_classes", "seed")
TC_FIELDS = ("k", "scope")
GUARD_FIELDS = ("protect_special_tokens", "max_sample_drop", "max_total_drop", "on_exceed", "all_dropped")
TEXT_PREFIX = "text:"


def _flag(field: str) -> str:
    return "--protect-special" if field == "protect_special_tokens" else "--" + field.replace("_", "-")


def _layers(text: str):
    if text in ("mean", "last"):
        return text
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected mean, last or comma-separated layer indices, got {text!r}"
        ) from None


def _rules(text: str) -> tuple[str, ...]:
    rules = tuple(part.strip() for part in text.split(",") if part.strip())
    if not rules or any(r not in RULES for r in rules) or len(set(rules)) != len(rules):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(RULES)}, got {text!r}")
    return rules


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _fraction_or_none(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return _fraction(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or none, got {text!r}") from None


def _non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def _protected(text: str) -> int | str:
    """A bare non-negative integer is a token id; anything else (or ``text:...``) a string to protect."""
    if text.startswith(TEXT_PREFIX):
        text = text[len(TEXT_PREFIX):]
    elif text.strip().isdigit():
        return int(text)
    if not text:
        raise argparse.ArgumentTypeError("expected a token id or a non-empty string, got ''")
    return text


def _presets() -> dict:
    from ..methods import TokenCleaningConfig
    from ..methods import XTFConfig

    return {("xtf", "safe"): XTFConfig(), ("xtf", "paper"): XTFConfig.paper(),
            ("token-cleaning", "safe"): TokenCleaningConfig(), ("token-cleaning", "paper"): TokenCleaningConfig.paper()}


def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _default(field: str, methods: tuple[str, ...] = ("xtf",)) -> str:
    """"default X", or each method's and preset's value where they differ (read from the configs themselves)."""
    presets = _presets()
    parts = []
    for method in methods:
        values = [_shown(getattr(presets[(method, p)].safeguards, field) if field in GUARD_FIELDS
                         else getattr(presets[(method, p)], field)) for p in PRESETS]
        shown = values[0] if values[0] == values[1] else f"{values[0]} (safe) / {values[1]} (paper)"
        parts.append(shown if len(methods) == 1 else f"{method} {shown}")
    if len(methods) > 1 and len({part.split(" ", 1)[1] for part in parts}) == 1:
        parts = [parts[0].split(" ", 1)[1]]
    return "default " + ", ".join(parts)


def register(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.replace("``", "")
    parser.add_argument("data", metavar="DATA", help="JSONL file (prompt/response text or tokenised records), or a "
                        "datasets save_to_disk folder / .parquet file")
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="local transformers causal LM folder: the base model (the one to fine-tune)")
    parser.add_argument("--out", required=True, metavar="DIR", help="results folder (created; resumable)")
    parser.add_argument("--method", choices=METHODS, default="xtf", help="scoring method (default xtf)")
    parser.add_argument("--preset", choices=PRESETS, default="safe",
                        help="safe: the library's defaults with safeguards; paper: the papers' rules as written, no "
                        "safeguard (default safe)")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer folder (default: the --model folder if it "
                        "holds one; pre-tokenised DATA needs none)")
    parser.add_argument("--max-length", type=_int_at_least(1), help="truncate samples to this many tokens "
                        "(default: no truncation)")

    xtf = parser.add_argument_group("XTF (--method xtf)")
    xtf.add_argument("--rules", type=_rules, help=f"rules applied, their union drops a token ({_default('rules')})")
    xtf.add_argument("--attn-layers", dest="attn_layers", type=_layers,
                     help=f"RI layers: mean (all), last, or indices like 0,-1 ({_default('attn_layers')})")
    xtf.add_argument("--ri-score", choices=("mean", "sum", "offdiag", "relative"),
                     help="S_RI: mean received attention with the diagonal (the paper), sum (Eq. 5 read literally), "
                     "offdiag (mean over the other queries) or relative (offdiag over uniform attention) "
                     f"({_default('ri_score')})")
    xtf.add_argument("--ri-threshold", choices=("fence", "rate"),
                     help=f"RI rule: per-sample fence or a target drop rate ({_default('ri_threshold')})")
    xtf.add_argument("--ri-fence-c", type=_non_negative,
                     help=f"RI fence q1 - c (q3 - q1); implies --ri-threshold fence ({_default('ri_fence_c')})")
    xtf.add_argument("--ri-drop-rate", type=_fraction, help="drop this fraction of each sample's response tokens "
                     f"with the lowest RI; implies --ri-threshold rate ({_default('ri_drop_rate')})")
    xtf.add_argument("--kn-threshold", choices=("absolute", "rate"),
                     help=f"KN rule: PCP above --kn-pcp-max or a target drop rate ({_default('kn_threshold')})")
    xtf.add_argument("--kn-pcp-max", type=_fraction,
                     help="KN drops tokens with p(token) above this; implies --kn-threshold absolute "
                     f"({_default('kn_pcp_max')})")
    xtf.add_argument("--kn-drop-rate", type=_fraction, help="drop this fraction of each sample's response tokens "
                     f"with the highest p(token); implies --kn-threshold rate ({_default('kn_drop_rate')})")
    xtf.add_argument("--kn-anchor-fraction", type=_fraction,
                     help=f"fraction of KN's drops kept at random as anchors ({_default('kn_anchor_fraction')})")
    xtf.add_argument("--tr-anchor-fraction", type=_fraction,
                     help=f"fraction of TR's drops kept at random as anchors ({_default('tr_anchor_fraction')})")
    xtf.add_argument("--tr-threshold", choices=("otsu", "rate"),
                     help=f"TR rule: Multi-Otsu classes or a target drop rate ({_default('tr_threshold')})")
    xtf.add_argument("--tr-drop-rate", type=_fraction, help="drop the lowest-S_TR token types while their response "
                     f"occurrences stay within this fraction; implies --tr-threshold rate ({_default('tr_drop_rate')})")
    xtf.add_argument("--tr-distance", choices=("cosine", "euclidean"),
                     help=f"TR distance to the domain vector ({_default('tr_distance')})")
    xtf.add_argument("--tr-normalization", choices=("minmax", "max", "rank"),
                     help=f"TR normalisation of the distances ({_default('tr_normalization')})")
    xtf.add_argument("--tr-domain", choices=("text", "response"),
                     help=f"tokens the domain vector is averaged over ({_default('tr_domain')})")
    xtf.add_argument("--otsu-classes", type=_int_at_least(2),
                     help=f"Multi-Otsu classes of S_TR ({_default('otsu_classes')})")
    xtf.add_argument("--otsu-bins", type=_int_at_least(2), help=f"Multi-Otsu histogram bins ({_default('otsu_bins')})")
    xtf.add_argument("--otsu-weights", choices=("ids", "occurrences"),
                     help=f"Multi-Otsu counts each id once or by occurrences ({_default('otsu_weights')})")
    xtf.add_argument("--tr-noisy-classes", type=_ints, help="Otsu classes TR drops, 0 = lowest S_TR "
                     f"({_default('tr_noisy_classes')}: the second-lowest)")
    xtf.add_argument("--seed", type=_int_at_least(0), help=f"seed of the KN and TR anchors ({_default('seed')})")

    tc = parser.add_argument_group("Token Cleaning (--method token-cleaning)")
    tc.add_argument("--ref", metavar="PATH", help="reference model folder (the base fine-tuned on trusted data; "
                    "required by this method, no default)")
    tc.add_argument("--k", type=_fraction, help="fraction of response tokens kept "
                    f"({_default('k', ('token-cleaning',))})")
    tc.add_argument("--scope", choices=("global", "sample"),
                    help=f"top k over the whole dataset or per sample ({_default('scope', ('token-cleaning',))})")

    both = METHODS
    guard = parser.add_argument_group("safeguards (both methods)")
    guard.add_argument("--protect", action="append", type=_protected, default=[], metavar="ID|TEXT",
                       help="never drop this token id (a bare integer) or the tokens of this text (text:... forces "
                       "text; needs a tokenizer); repeatable (default: nothing beyond the special tokens)")
    guard.add_argument("--protect-special", dest="protect_special_tokens", action=argparse.BooleanOptionalAction,
                       default=None, help="never drop the model's eos ids and the tokenizer's special tokens "
                       f"({_default('protect_special_tokens', both)})")
    guard.add_argument("--max-sample-drop", type=_fraction_or_none, metavar="F|none",
                       help=f"cap on the fraction of a sample's response tokens dropped "
                       f"({_default('max_sample_drop', both)})")
    guard.add_argument("--max-total-drop", type=_fraction_or_none, metavar="F|none",
                       help="cap on the fraction of all response tokens dropped, checked once over every rank "
                       f"({_default('max_total_drop', both)})")
    guard.add_argument("--on-exceed", choices=("warn", "error"),
                       help=f"when --max-total-drop is exceeded: a warning or exit status 1 "
                       f"({_default('on_exceed', both)})")
    guard.add_argument("--all-dropped", choices=("keep", "remove"),
                       help="a sample whose whole response would be dropped: keep it whole or train on none of it "
                       f"({_default('all_dropped', both)})")

    run_group = parser.add_argument_group("run")
    run_group.add_argument("--device", default="auto", help="auto (CUDA if available; cuda:LOCAL_RANK under a "
                           "distributed launcher), cpu or cuda[:N] (default auto)")
    run_group.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                           help="model dtype (default auto: bfloat16 on CUDA, float32 on CPU)")
    run_group.add_argument("--batch-size", type=_int_at_least(1), default=8,
                           help="samples per forward pass (default 8)")
    run_group.add_argument("--max-batch-tokens", type=_int_at_least(1),
                           help="cap on padded tokens per forward pass (default: no cap)")
    run_group.add_argument("--shard-size", type=_int_at_least(1), default=1024,
                           help="samples per results shard, the unit of resumption (default 1024)")
    run_group.add_argument("--overwrite", action="store_true",
                           help="discard results in --out computed for other data or settings")
    run_group.add_argument("--no-report", action="store_true",
                           help="skip report.html / report.json / histograms.png in --out")
    run_group.add_argument("--report-samples", type=_int_at_least(0), default=50,
                           help="samples shown in report.html (default 50)")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bars")
    run_group.add_argument("--num-workers", type=_int_at_least(0), help="DataLoader workers per rank that read, "
                           "tokenise and batch (default: the rank's share of the CPU cores less one, at most 4)")
    run_group.add_argument("--break-lock", action="store_true",
                           help="take --out's run lock even if another run seems to hold it (only when that run "
                           "is known to be gone, e.g. its node died)")


def _flagged(exc: Exception, fields: tuple[str, ...]) -> str:
    """A config error with the names of ``fields`` (and the safeguards') written as the flags that set them."""
    text = str(exc)
    for field in (*fields, *GUARD_FIELDS, "protected_ids", "protected_tokens"):
        flag = "--protect" if field.startswith("protected_") else _flag(field)
        text = re.sub(rf"\b{field}\b", flag, text)
    return text


def build_config(args: argparse.Namespace):
    """The method's config: the ``--preset``'s, with every knob given on the command line replacing its value.

    Raises:
        CliError: a knob of the other method, a knob of a mode its rule is not in, or a value the config refuses
            (the message names the flag).
    """
    fields, other = (XTF_FIELDS, TC_FIELDS) if args.method == "xtf" else (TC_FIELDS, XTF_FIELDS)
    for field in other:
        if getattr(args, field) is not None:
            used = "token-cleaning" if args.method == "xtf" else "xtf"
            raise CliError(f"{_flag(field)} is only used with --method {used}")
    preset = _presets()[(args.method, args.preset)]
    overrides = {field: getattr(args, field) for field in fields if getattr(args, field) is not None}
    given_modes = {mode for mode, _ in THRESHOLD_KNOBS.values() if mode in overrides}
    for field, (mode, needed) in THRESHOLD_KNOBS.items():  # a mode's knob given alone selects that mode
        if field in overrides and mode not in given_modes:
            overrides.setdefault(mode, needed)
    guard = {field: getattr(args, field) for field in GUARD_FIELDS if getattr(args, field) is not None}
    ids = tuple(p for p in args.protect if isinstance(p, int))
    texts = tuple(p for p in args.protect if isinstance(p, str))
    try:
        safeguards = dataclasses.replace(preset.safeguards, **guard,
                                         protected_ids=preset.safeguards.protected_ids + ids,
                                         protected_tokens=preset.safeguards.protected_tokens + texts)
        config = dataclasses.replace(preset, **overrides, safeguards=safeguards)
    except (ValueError, TypeError) as exc:
        raise CliError(_flagged(exc, fields)) from None
    return config  # a knob of a mode its rule is not in: refused by the config itself (named by _flagged)


def _tokenizer(args: argparse.Namespace, config):
    """(tokenizer or None, its folder or None): --tokenizer, else the --model folder's if it holds one; none is
    needed for pre-tokenised data unless --protect names text."""
    from ..pipeline.loading import has_tokenizer
    from ..pipeline.loading import load_tokenizer
    from ..pipeline.loading import needs_tokenizer

    path = args.tokenizer or (args.model if has_tokenizer(args.model) else None)
    if path is not None:
        return load_tokenizer(path), path
    if needs_tokenizer(args.data):
        raise CliError(f"DATA holds text and the --model folder {args.model} holds no tokenizer; give --tokenizer "
                       "PATH (or pre-tokenised input_ids)")
    if config.safeguards.protected_tokens:
        raise CliError(f"--protect {config.safeguards.protected_tokens[0]!r} is text and needs a tokenizer, but the "
                       f"--model folder {args.model} holds none; give --tokenizer PATH or the token ids")
    return None, None


def _scorer(args, config, model, tokenizer, device: str):
    if args.method == "xtf":
        from ..methods import XTFScorer

        return XTFScorer(model, config, tokenizer=tokenizer)
    from ..methods import TokenCleaningScorer
    from ..pipeline.loading import load_causal_lm

    ref = load_causal_lm(args.ref, device=device, dtype=args.dtype)
    return TokenCleaningScorer(model, ref, config, tokenizer=tokenizer)


def run(args: argparse.Namespace) -> int:
    from ..errors import DropCapExceededError
    from ..pipeline import ScoreResult
    from ..pipeline import rule_statistics
    from ..pipeline import score_dataset
    from ..pipeline import write_report
    from ..pipeline.distributed import join
    from ..pipeline.distributed import resolve_rank_device
    from ..pipeline.loading import check_model_dir
    from ..pipeline.loading import load_causal_lm

    if not os.path.exists(args.data):
        raise FileNotFoundError(f"dataset file not found: {args.data}")
    if args.method == "token-cleaning" and not args.ref:
        raise CliError("--method token-cleaning needs --ref PATH (the reference model)")
    if args.method != "token-cleaning" and args.ref:
        raise CliError("--ref is only used with --method token-cleaning")
    config = build_config(args)
    check_model_dir(args.model)
    if args.no_progress:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise NotADirectoryError(f"--out {args.out} exists and is not a folder")
    group = join(args.device)  # under torchrun / accelerate launch / srun: this rank's process group
    try:
        device = str(resolve_rank_device(args.device, group.local_rank))
        model = load_causal_lm(args.model, device=device, dtype=args.dtype)
        tokenizer, tokenizer_path = _tokenizer(args, config)
        scorer = _scorer(args, config, model, tokenizer, device)
        source_info = {"data": os.path.abspath(args.data), "model": os.path.abspath(args.model),
                       "tokenizer": os.path.abspath(tokenizer_path) if tokenizer_path else None,
                       "max_length": args.max_length, "ref": os.path.abspath(args.ref) if args.ref else None,
                       "preset": args.preset}
        exceeded = None
        try:
            result = score_dataset(scorer, args.data, args.out, tokenizer=tokenizer, max_length=args.max_length,
                                   batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                                   shard_size=args.shard_size, overwrite=args.overwrite,
                                   progress=not args.no_progress, source_info=source_info,
                                   num_workers=args.num_workers, break_lock=args.break_lock)
        except DropCapExceededError as exc:  # the results are complete: report them, then fail
            exceeded, result = exc, ScoreResult(args.out)
    finally:
        group.close()
    if not group.is_main:
        if exceeded is not None:
            raise exceeded
        return 0  # rank 0 writes the report and prints the summary
    if tokenizer is None and config.safeguards.protect_special_tokens:
        print("note: no tokenizer, so only the model's end-of-sequence ids are protected as special tokens",
              file=sys.stderr)
    if args.no_report:
        statistics = rule_statistics(result)
    else:
        statistics = write_report(result, data=args.data, tokenizer=tokenizer, max_length=args.max_length,
                                  max_samples=args.report_samples)["statistics"]
    print(f"{result.method} ({args.preset} preset): {statistics['num_samples']} samples, "
          f"{statistics['scored_tokens']} response tokens scored, {statistics['dropped_tokens']} dropped "
          f"({statistics['dropped_fraction']:.1%})")
    for rule, counts in statistics["rules"].items():
        print(f"  {rule:>14}: {counts['fired']} tokens ({counts['fraction']:.1%}), {counts['only_this_rule']} by this "
              "rule alone")
    throughput = result.manifest["throughput"]
    if throughput is not None and throughput["tokens"]:
        ranks = ", ".join(f"{r['tokens_per_s']:,.0f}" for r in throughput["ranks"])
        print(f"scored {throughput['tokens']:,} tokens at {throughput['tokens_per_s']:,.0f} tokens/s on "
              f"{throughput['world_size']} rank(s) (per rank: {ranks})")
    print(f"results in {args.out}" + ("" if args.no_report else f" (report: {os.path.join(args.out, 'report.html')})"))
    if exceeded is not None:
        raise DropCapExceededError(f"{exceeded} (--max-total-drop; results and report kept in {args.out})")
    print("next: xtf filter " + " ".join([args.data, "--scores", args.out, "--out", "FILTERED.jsonl"]))
    return 0

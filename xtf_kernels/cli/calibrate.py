"""``xtf calibrate DEV --model PATH --param NAME --values V1,V2,...``: sweep one knob of a token filter on a
trusted dev set, so the threshold is picked from data.

For each value: the dev tokens the filter drops (on trusted data every one is a false positive), per rule,
and the base model's NLL and top-1 accuracy on the dropped and on the kept dev tokens. With ``--train DATA``
a copy of the model is also fine-tuned on the filtered training set per value and its dev NLL and token
accuracy are reported. DEV / DATA are JSONL files in the form ``xtf score`` reads.

Examples::

    xtf calibrate dev.jsonl --model ./base --rules KN --param kn_pcp_max --values 0.9,0.95,0.99
    xtf calibrate dev.jsonl --model ./base --param ri_fence_c --values 0.5,1,1.5 --preset paper --json sweep.json
    xtf calibrate dev.jsonl --model ./base --method token-cleaning --ref ./warmed-up --param k --values 0.5,0.6,0.7 \\
        --train train.jsonl --epochs 1 --lr 1e-4
"""

from __future__ import annotations

import argparse
import json
import os

from . import CliError

METHODS = ("xtf", "token-cleaning")
PRESETS = ("safe", "paper")


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _values(text: str) -> list:
    values = [_value(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def register(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.replace("``", "")
    parser.add_argument("dev", metavar="DEV", help="trusted dev set, JSONL (prompt/response text or tokenised)")
    parser.add_argument("--model", required=True, metavar="PATH", help="local transformers causal LM folder (the base)")
    parser.add_argument("--param", required=True, help="the knob swept: a field of XTFConfig (kn_pcp_max, ri_fence_c, "
                        "ri_drop_rate, kn_drop_rate, tr_drop_rate, ...) or of TokenCleaningConfig (k)")
    parser.add_argument("--values", required=True, type=_values, help="comma-separated values of --param")
    parser.add_argument("--method", choices=METHODS, default="xtf", help="filter (default xtf)")
    parser.add_argument("--preset", choices=PRESETS, default="safe",
                        help="the other knobs: safe defaults or the paper-faithful preset (default safe)")
    parser.add_argument("--rules", type=_names, help="XTF rules applied (default: all three)")
    parser.add_argument("--ref", metavar="PATH", help="reference model folder (--method token-cleaning)")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer folder (default: the --model folder)")
    parser.add_argument("--max-length", type=int, help="truncate samples to this many tokens")
    tune = parser.add_argument_group("fine-tuning per value (optional)")
    tune.add_argument("--train", metavar="DATA", help="training set (JSONL) to filter and fine-tune on per value")
    tune.add_argument("--epochs", type=int, default=1, help="epochs per fine-tuning (default 1)")
    tune.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:N]")
    run_group.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                           help="model dtype (default auto: bfloat16 on CUDA, float32 on CPU)")
    run_group.add_argument("--batch-size", type=int, default=8, help="samples per forward pass (default 8)")
    run_group.add_argument("--json", metavar="FILE", help="also write the sweep as JSON")


def _config(args):
    from ..methods import TokenCleaningConfig
    from ..methods import XTFConfig

    if args.method == "token-cleaning":
        if args.rules:
            raise CliError("--rules is only used with --method xtf")
        return TokenCleaningConfig.paper() if args.preset == "paper" else TokenCleaningConfig()
    extra = {"rules": args.rules} if args.rules else {}
    return XTFConfig.paper(**extra) if args.preset == "paper" else XTFConfig(**extra)


def _check_param(config, param: str, values: list) -> None:
    """Refuse an unknown knob or a bad value before any model is loaded."""
    import dataclasses

    fields = sorted(f.name for f in dataclasses.fields(config))
    if param not in fields:
        raise CliError(f"--param must be a field of {type(config).__name__} ({', '.join(fields)}), got {param!r}")
    for value in values:
        dataclasses.replace(config, **{param: value})


def _load(path: str, tokenizer, max_length):
    from ..datasets import as_source

    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset file not found: {path}")
    return list(as_source(path, tokenizer, max_length=max_length))


def run(args: argparse.Namespace) -> int:
    from .._atomic import atomic_write_text
    from ..methods import finetune
    from ..methods.calibration import in_mode_of
    from ..methods.calibration import sweep_threshold
    from ..pipeline.loading import load_causal_lm
    from ..pipeline.loading import load_tokenizer

    if args.method == "token-cleaning" and not args.ref:
        raise CliError("--method token-cleaning needs --ref PATH (the reference model)")
    if args.method != "token-cleaning" and args.ref:
        raise CliError("--ref is only used with --method token-cleaning")
    config = in_mode_of(_config(args), args.param)  # what the sweep runs, and what the JSON records
    _check_param(config, args.param, args.values)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # one line per error, no loading bars in the output
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    dev = _load(args.dev, tokenizer, args.max_length)
    train_samples = None if args.train is None else _load(args.train, tokenizer, args.max_length)
    model = load_causal_lm(args.model, device=args.device, dtype=args.dtype)
    ref = load_causal_lm(args.ref, device=args.device, dtype=args.dtype) if args.ref else None

    def train(copy_of_model, filtered):
        finetune(copy_of_model, filtered, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)

    sweep = sweep_threshold(model, dev, param=args.param, values=args.values, config=config, ref=ref,
                            tokenizer=tokenizer, train_samples=train_samples,
                            train=None if train_samples is None else train, batch_size=args.batch_size)
    print(f"{args.method} ({args.preset} preset), {len(dev)} dev samples, {sweep.rows[0]['dev_scored']} dev tokens")
    print(sweep.table())
    if args.json:
        payload = {"method": args.method, "preset": args.preset, "config": config.to_dict(), **sweep.to_dict()}
        atomic_write_text(args.json, json.dumps(payload, indent=2, default=str) + "\n")
        print(f"sweep written to {args.json}")
    return 0

"""``xtf bench``: memory and throughput of the fused ops on this device, side by side with the peers.

Without a shape it runs the device's standard set (GPU: the ``gpu`` case set of
:mod:`xtf_kernels.bench.suites`, the Llama-3-8B and Gemma-2-2B heads with every backend and installed
peer; CPU: a small case in seconds). With ``--model NAME`` (a named head, see ``--list-models``) or
``--hidden H --vocab V`` it runs that head at ``--tokens N``. Results are printed as a table, appended to
``--output`` (CSV, validated and written atomically) and drawn to ``--plot`` when asked.
"""

from __future__ import annotations

import argparse

import torch

from ..bench.cases import DTYPES
from ..bench.cases import MODES
from ..bench.cases import Case
from ..bench.models import MODEL_HEADS
from ..bench.providers import PROVIDERS
from ..bench.runner import RunSettings
from ..bench.runner import SuiteEntry
from ..bench.session import measure_and_record
from ..bench.suites import suite

_XTF_BACKENDS = tuple(name.removeprefix("xtf-") for name, p in PROVIDERS.items() if p.family == "xtf")
# "triton" selects both Triton paths (XTF_TRITON_PATH=fused and =chunked).
_BACKEND_CHOICES = (*_XTF_BACKENDS, "triton")
_PEERS = tuple(name for name, p in PROVIDERS.items() if p.family == "peer")
_DEFAULT_TOKENS = {"cuda": 8192, "cpu": 1024}


def register(parser: argparse.ArgumentParser) -> None:
    shape = parser.add_argument_group("shape (default: the device's standard case set)")
    shape.add_argument("--model", choices=sorted(MODEL_HEADS), metavar="NAME",
                       help=f"a named lm_head: {', '.join(sorted(MODEL_HEADS))}")
    shape.add_argument("--tokens", type=int, help="tokens N (default 8192 on CUDA, 1024 on CPU)")
    shape.add_argument("--hidden", type=int, help="hidden size H (with --vocab, instead of --model)")
    shape.add_argument("--vocab", type=int, help="vocabulary V (with --hidden, instead of --model)")
    shape.add_argument("--softcap", type=float, help="logit softcap (default: the model's; 0 turns it off)")
    parser.add_argument("--dtype", choices=sorted(DTYPES) + ["bf16", "fp16", "fp32"],
                        help="input dtype (default bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--mode", default="fwd_bwd",
                        help=f"comma-separated modes from {', '.join(MODES)} (default fwd_bwd)")
    parser.add_argument("--keep", type=float, default=1.0, help="fraction of tokens carrying a loss (default 1)")
    parser.add_argument(
        "--backend", help=f"comma-separated xtf backends from {', '.join(_BACKEND_CHOICES)} (default all)"
    )
    parser.add_argument("--peers", help=f"comma-separated peers from {', '.join(_PEERS)}, or 'none' (default all)")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    parser.add_argument("--warmup", type=int, help="untimed steps per measurement (default 3 CUDA, 1 CPU)")
    parser.add_argument("--repeats", type=int, help="timed steps, the median is reported (default 10 CUDA, 3 CPU)")
    parser.add_argument("--rounds", type=int, help="interleaved repetitions of every measurement (default 1)")
    parser.add_argument("--output", default="xtf_bench.csv", help="results CSV to append to (default xtf_bench.csv)")
    parser.add_argument("--no-output", action="store_true", help="do not write a results file")
    parser.add_argument("--plot", help="write a PNG of the results")


def _names(raw: str | None, choices: tuple[str, ...], option: str) -> list[str] | None:
    if raw is None:
        return None
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if names == ["none"] and option == "--peers":
        return []
    unknown = [name for name in names if name not in choices]
    if unknown or not names:
        raise ValueError(f"{option} must be a comma-separated list from {', '.join(choices)}, got {raw!r}")
    return names


def _providers(args: argparse.Namespace) -> tuple[str, ...]:
    backends = _names(args.backend, _BACKEND_CHOICES, "--backend")
    peers = _names(args.peers, _PEERS, "--peers")
    wanted = set(_XTF_BACKENDS if backends is None else backends)
    if "triton" in wanted:
        wanted |= {"triton-fused", "triton-chunked"}
    xtf = [f"xtf-{b}" for b in _XTF_BACKENDS if b in wanted]
    return tuple(xtf + (peers if peers is not None else list(_PEERS)))


def _entries(args: argparse.Namespace, device: torch.device) -> list[SuiteEntry]:
    explicit_shape = args.hidden is not None or args.vocab is not None
    if args.model and explicit_shape:
        raise ValueError("give either --model or --hidden/--vocab, not both")
    if explicit_shape and (args.hidden is None or args.vocab is None):
        raise ValueError("--hidden and --vocab go together")
    modes = _names(args.mode, MODES, "--mode")
    if not (args.model or explicit_shape):
        if args.tokens is not None or args.softcap is not None:
            raise ValueError("--tokens / --softcap need a head: --model NAME or --hidden H --vocab V")
        entries = suite("gpu" if device.type == "cuda" else "cpu-quick")
        if args.backend is not None or args.peers is not None:
            keep = set(_providers(args))
            entries = [SuiteEntry(e.case, tuple(p for p in e.providers if p in keep)) for e in entries]
        return [e for e in entries if e.providers]

    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    tokens = args.tokens if args.tokens is not None else _DEFAULT_TOKENS[device.type]
    options = dict(dtype=dtype, keep=args.keep)
    if args.softcap is not None:
        options["softcap"] = args.softcap or None
    providers = _providers(args)
    entries = []
    for mode in modes:
        if args.model:
            case = Case.for_model(args.model, tokens, mode=mode, **options)
        else:
            case = Case(tokens=tokens, hidden=args.hidden, vocab=args.vocab, mode=mode, **options)
        entries.append(SuiteEntry(case, providers))
    return entries


def run(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    entries = _entries(args, device)
    if not entries:
        raise ValueError("the --backend / --peers selection leaves nothing to run")
    settings = RunSettings.for_device(device, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds)
    outputs = [] if args.no_output else [args.output]
    measure_and_record(entries, settings, outputs=outputs, plot=args.plot)
    return 0

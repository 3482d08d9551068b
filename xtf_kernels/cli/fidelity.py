"""``xtf fidelity REAL SYNTH [SYNTH ...]``: rank synthetic sets by their estimated TV distance to a real set.

Inputs are all embeddings files (.npy / .pt / .safetensors, one (n, d) array each) or all JSONL text files,
embedded with the local transformers model given by --model (mean-pooled last hidden states). Prints a
table (or JSON with --json), most faithful set first; each TV_hat is a lower bound on the true distance.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..fidelity import CLASSIFIERS
from ..fidelity import embed_texts
from ..fidelity import load_embeddings
from ..fidelity import load_text_encoder
from ..fidelity import rank_fidelity
from ..fidelity import read_jsonl_texts
from ..fidelity.files import file_kind
from . import CliError


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "real", metavar="REAL", help="real samples: embeddings (.npy, .pt, .safetensors; shape (n, d)) or JSONL text"
    )
    parser.add_argument("synthetic", metavar="SYNTH", nargs="+", help="synthetic sample sets, same format as REAL")
    parser.add_argument(
        "--classifier",
        choices=(*CLASSIFIERS, "max"),
        default="linear",
        help="hypothesis class: linear (logistic), quadratic (Gaussian discriminant), mlp, or max (select the "
        "best on a validation split, report it on a separate test split); default linear",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of subsampling, splits and MLP init (default 0)")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="held-out share (default 0.3)")
    parser.add_argument(
        "--validation-fraction", type=float, default=0.2, help="selection share, --classifier max only (default 0.2)"
    )
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument("--max-samples", type=int, default=None, help="cap on rows used per set (default all)")
    parser.add_argument("--model", metavar="PATH", help="local transformers model directory to embed JSONL text")
    parser.add_argument(
        "--text-field",
        action="append",
        metavar="NAME",
        help="JSONL field holding the text; repeat to join several fields with a newline (default: text)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="texts per forward pass (default 16)")
    parser.add_argument("--max-length", type=int, default=512, help="tokens kept per text (default 512)")
    parser.add_argument("--device", default=None, help="torch device for embedding and classifiers (default: "
                        "cuda when available, else cpu)")
    parser.add_argument("--json", action="store_true", help="print the ranking as JSON")


def run(args: argparse.Namespace) -> int:
    paths = [args.real, *args.synthetic]
    repeated = sorted({path for path in paths if paths.count(path) > 1})
    if repeated:
        raise CliError(f"each input must be given once; repeated: {', '.join(repeated)}")
    kinds = {file_kind(path) for path in paths}
    if len(kinds) > 1:
        raise CliError("inputs mix embeddings files and JSONL text; embed all sets the same way")
    is_text = kinds == {"text"}
    if is_text and args.model is None:
        raise CliError("JSONL text inputs need --model PATH (a local transformers model directory to embed them)")
    if not is_text and (args.model is not None or args.text_field is not None):
        raise CliError("--model and --text-field apply to JSONL text inputs only; these inputs are embeddings")
    device = _device(args.device)

    if is_text:
        fields = args.text_field or ["text"]
        texts = {path: read_jsonl_texts(path, fields) for path in paths}  # all parsed before the model loads
        model, tokenizer = load_text_encoder(args.model, device=device)
        samples = {
            path: embed_texts(
                texts[path],
                model,
                tokenizer,
                batch_size=args.batch_size,
                max_length=args.max_length,
                progress=sys.stderr.isatty(),
            )
            for path in paths
        }
    else:
        samples = {path: load_embeddings(path).to(device) for path in paths}

    real = samples.pop(args.real)
    ranking = rank_fidelity(
        real,
        samples,
        classifier=args.classifier,
        seed=args.seed,
        test_fraction=args.test_fraction,
        validation_fraction=args.validation_fraction,
        confidence=args.confidence,
        max_samples=args.max_samples,
    )
    if args.json:
        report = {"real": args.real, "classifier": args.classifier, "device": str(device), **ranking.to_dict()}
        print(json.dumps(report, indent=2))
    else:
        print(f"real set: {args.real} ({real.shape[0]} rows, {real.shape[1]} features); device {device}")
        print(ranking.table())
    return 0


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise CliError(f"--device {name!r} is not a torch device ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name!r}: CUDA is not available on this machine")
    return device

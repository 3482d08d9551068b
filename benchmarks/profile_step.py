"""A torch.profiler breakdown of one training step of one provider (default: xtf's Triton chunked path on the
Llama-3-8B head, N 16384, bf16, forward + backward).

    python benchmarks/profile_step.py --out DIR
    python benchmarks/profile_step.py --out DIR --provider xtf-cuda --tokens 4096
    python benchmarks/profile_step.py --out DIR --dry-run      # the CPU rehearsal: xtf-torch, tiny shape

Writes DIR/profile.txt (time by category, then the top kernels) and DIR/profile.json; prints the table.
How kernels are categorised: xtf_kernels/bench/profile.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from xtf_kernels.bench.cases import Case  # noqa: E402
from xtf_kernels.bench.inputs import make_inputs  # noqa: E402
from xtf_kernels.bench.profile import profile_step  # noqa: E402
from xtf_kernels.bench.providers import get_provider  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for profile.txt and profile.json")
    parser.add_argument("--provider", default="xtf-triton-chunked", help="benchmark provider to profile")
    parser.add_argument("--model", default="llama3-8b", help="named head (xtf_kernels/bench/models.py)")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--mode", default="fwd_bwd", choices=("fwd_bwd", "frozen", "fwd"))
    parser.add_argument("--dry-run", action="store_true", help="CPU, xtf-torch, N 256 x H 64 x V 4096 fp32")
    args = parser.parse_args(argv)

    if args.dry_run:
        device = torch.device("cpu")
        provider = get_provider("xtf-torch")
        case = Case(tokens=256, hidden=64, vocab=4096, dtype="float32", mode=args.mode)
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device (use --dry-run to rehearse on the CPU)")
        device = torch.device("cuda")
        provider = get_provider(args.provider)
        case = Case.for_model(args.model, args.tokens, dtype="bfloat16", mode=args.mode)
    os.environ.update(dict(provider.env))  # e.g. XTF_TRITON_PATH=chunked, read at every call
    unavailable = provider.check(device, case)
    if unavailable is not None:
        print(f"{provider.name} cannot run {case.label}: {unavailable.status} ({unavailable.reason})", file=sys.stderr)
        return 1
    inputs = make_inputs(case, device)
    breakdown = profile_step(provider.build(inputs, case), device)
    header = f"{provider.name} ({provider.path}), {case.label}, {case.flops / 1e12:.2f} TFLOP floor"
    text = header + "\n" + breakdown.table() + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.txt").write_text(text)
    (out / "profile.json").write_text(breakdown.to_json())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

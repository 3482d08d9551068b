"""The chunk-size sweep and the fused / chunked crossover (xtf_kernels/bench/sweep.py) on this device.

    python benchmarks/sweep.py --out DIR              # GPU: Llama-3-8B head, bf16
    python benchmarks/sweep.py --out DIR --dry-run    # the CPU rehearsal: torch backend, tiny shapes

GPU: chunk sizes 1024, 2048, 2752 (the old default at N 16384), 4096, 5376 (the largest the 4 GiB budget
holds) and 8192 at N 16384 on the Triton chunked and CUDA paths, and the default chunks; crossover at
N 128 to 8192 on the Triton fused and chunked paths. Writes DIR/sweep.txt and DIR/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from xtf_kernels.bench import sweep  # noqa: E402
from xtf_kernels.bench.cases import Case  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for sweep.txt and sweep.json")
    parser.add_argument("--dry-run", action="store_true", help="CPU, torch backend, tiny shapes")
    args = parser.parse_args(argv)

    if args.dry_run:
        device = torch.device("cpu")
        head = Case(tokens=256, hidden=32, vocab=2048, dtype="float32")
        points = sweep.chunk_sweep(head, [sweep.TORCH, sweep.CUDA_EXTENSION], [64, 128], device, repeats=2)
        points += sweep.crossover(head, [sweep.TRITON_FUSED, sweep.TORCH], [16, 128], device, repeats=2)
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device (use --dry-run to rehearse on the CPU)")
        device = torch.device("cuda")
        head = Case.for_model("llama3-8b", 16384, dtype="bfloat16")
        points = sweep.chunk_sweep(head, [sweep.TRITON_CHUNKED, sweep.CUDA_EXTENSION],
                                   [1024, 2048, 2752, 4096, 5376, 8192], device)
        points += sweep.crossover(head, [sweep.TRITON_FUSED, sweep.TRITON_CHUNKED],
                                  [128, 256, 512, 1024, 2048, 4096, 8192], device)
    text = f"{head.label} on {device}\n" + sweep.format_points(points) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.txt").write_text(text)
    (out / "sweep.json").write_text(json.dumps([p._asdict() for p in points], indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Append the rows of one results file (e.g. a GPU machine's $OUT/gpu_results.csv) to another.

    python benchmarks/merge_results.py path/to/gpu_results.csv [benchmarks/data/results.csv]

Both files are validated; rows already present in the target (same run, provider and case) are skipped,
so merging twice adds nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from xtf_kernels.bench.store import read_rows  # noqa: E402
from xtf_kernels.bench.store import write_rows  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "results.csv"


def _key(row) -> tuple:
    return (row.run_id, row.provider, row.case)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="results CSV to take rows from")
    parser.add_argument("target", nargs="?", default=str(DEFAULT_DATA), help="results CSV to append to")
    args = parser.parse_args(argv)

    source, target = read_rows(args.source), read_rows(args.target)
    if not source and not Path(args.source).exists():
        print(f"{args.source}: no such file", file=sys.stderr)
        return 1
    present = {_key(r) for r in target}
    new = [r for r in source if _key(r) not in present]
    write_rows(args.target, target + new)
    print(f"{len(new)} new rows appended to {args.target} ({len(source) - len(new)} already there)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

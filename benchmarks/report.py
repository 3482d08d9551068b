"""Print the side-by-side table and the target verdicts of one run from a results file.

    python benchmarks/report.py                                  # the latest run in benchmarks/data/results.csv
    python benchmarks/report.py --run-id ID --device-type cuda   # e.g. a GPU run split over several commands
    python benchmarks/report.py --list                           # the runs in the file

The file is validated on read (a corrupt file is an error naming the line and the field).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from xtf_kernels.bench.plot import latest_run  # noqa: E402
from xtf_kernels.bench.report import format_table  # noqa: E402
from xtf_kernels.bench.store import read_rows  # noqa: E402
from xtf_kernels.bench.targets import evaluate  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "results.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="results CSV (default %(default)s)")
    parser.add_argument("--run-id", help="the run to show (default: the latest)")
    parser.add_argument("--device-type", choices=("cuda", "cpu"), help="latest run on this device type")
    parser.add_argument("--list", action="store_true", help="list the runs (id, device, rows) and stop")
    args = parser.parse_args(argv)

    rows = read_rows(args.data)
    if args.list:
        for (run_id, device), count in Counter((r.run_id, r.device) for r in rows).items():
            print(f"{run_id}  {device}  {count} rows")
        return 0
    selected = [r for r in rows if r.run_id == args.run_id] if args.run_id else latest_run(rows, args.device_type)
    if not selected:
        print(f"no rows for that run in {args.data}", file=sys.stderr)
        return 1
    print(format_table(selected))
    for verdict in evaluate(selected):
        print("  " + verdict.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())

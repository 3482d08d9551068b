"""Draw one run of the results file to a PNG (median time and extra peak memory per provider and case).

    python benchmarks/plot.py                                    # latest run -> benchmarks/data/latest.png
    python benchmarks/plot.py --device-type cpu --png cpu.png    # latest CPU run
    python benchmarks/plot.py --run-id ID --png run.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from xtf_kernels.bench.plot import latest_run  # noqa: E402
from xtf_kernels.bench.plot import plot_rows  # noqa: E402
from xtf_kernels.bench.store import read_rows  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA / "results.csv"), help="results CSV (default %(default)s)")
    parser.add_argument("--run-id", help="the run to draw (default: the latest)")
    parser.add_argument("--device-type", choices=("cuda", "cpu"), help="latest run on this device type")
    parser.add_argument("--png", default=str(DATA / "latest.png"), help="output PNG (default %(default)s)")
    args = parser.parse_args(argv)

    rows = read_rows(args.data)
    selected = [r for r in rows if r.run_id == args.run_id] if args.run_id else latest_run(rows, args.device_type)
    if not selected:
        print(f"no rows for that run in {args.data}", file=sys.stderr)
        return 1
    print(plot_rows(selected, args.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())

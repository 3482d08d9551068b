#!/usr/bin/env bash
# The whole CPU suite: lint, the cpu tier (tests + benchmark smoke runs), then the Triton kernels under
# the interpreter in their own pytest invocation (TRITON_INTERPRET must be set before Triton kernels are
# imported). On a GPU machine, run `python -m pytest -m cuda` for the device tier.
set -uo pipefail
cd "$(dirname "$0")/.."

run_pytest() {  # pytest exits 5 when a tier selects no test; that is not a failure here
    python -m pytest "$@"
    local status=$?
    if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then exit "$status"; fi
}

python -m ruff check . || exit 1
run_pytest -q -m "not interpret and not cuda" --benchmark-disable
TRITON_INTERPRET=1 run_pytest -q -m interpret --benchmark-disable tests

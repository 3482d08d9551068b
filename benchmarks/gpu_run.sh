#!/usr/bin/env bash
# The GPU run in one command, for a CUDA machine without network access (H200, Python 3.12, torch 2.11,
# Triton 3.6, nvcc 13.0): install the carried wheels, build the CUDA extension, run the cuda test tier,
# then the side-by-side benchmark.
#
#   bash benchmarks/gpu_run.sh                  # install + test + bench
#   bash benchmarks/gpu_run.sh test             # install (skipped when done) + the cuda test tier
#   bash benchmarks/gpu_run.sh bench [ARGS...]  # install (skipped when done) + benchmarks/run.py ARGS
#                                               # e.g. --providers xtf-auto,liger,cce to split a long run
#
# Wheels: .whl/ (git-ignored; carry it to the machine) holds pure-Python wheels of the peers
# (liger-kernel, cut-cross-entropy: their only dependencies, torch and triton, are on the machine) and of
# the test tools (pytest, pytest-benchmark, hypothesis, ...) and pybind11, installed only where missing.
# Everything the run writes goes to $OUT (default ./gpu_out): env.txt, build.log, pytest_cuda.log,
# pytest_bench.json, bench.log, gpu_results.csv, gpu_bench.png. The rows are also appended to
# benchmarks/data/results.csv of this checkout; on a machine whose files do not come back, merge
# $OUT/gpu_results.csv into the committed file with `python benchmarks/merge_results.py`.
#
# Environment: OUT (results folder), XTF_CUDA_ARCHS (default 90: H100 / H200 only, the fastest build).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/.whl"
export XTF_CUDA_ARCHS="${XTF_CUDA_ARCHS:-90}"
step="${1:-all}"
[ $# -gt 0 ] && shift

log() { echo "gpu_run: $*" | tee -a "$OUT/gpu_run.log"; }

ensure_installed() {
    if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        log "no CUDA device visible to torch; stopping"
        exit 1
    fi
    # test tools and build helpers, from .whl/, only where missing (import name:distribution)
    for pair in pytest:pytest pytest_benchmark:pytest-benchmark hypothesis:hypothesis tqdm:tqdm pybind11:pybind11; do
        python -c "import ${pair%%:*}" 2>/dev/null || pip install -q "${pair#*:}" || log "could not install ${pair#*:}"
    done
    # the peers: --no-deps, their requirements (torch, triton) are the machine's own
    for wheel in .whl/liger_kernel-*.whl .whl/cut_cross_entropy-*.whl; do
        if [ -f "$wheel" ]; then
            pip install -q --no-deps "$wheel" || log "could not install $wheel"
        else
            log "missing $wheel: that peer will be reported as not installed"
        fi
    done
    if python -c "import xtf_kernels._C" 2>/dev/null && python -c "import xtf_kernels" 2>/dev/null; then
        log "xtf_kernels with its CUDA extension is already installed"
    else
        log "building xtf_kernels with the CUDA extension (XTF_CUDA_ARCHS=$XTF_CUDA_ARCHS)"
        XTF_BUILD_CUDA=1 pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 \
            || log "the CUDA build failed (see build.log); the cuda backend will be reported missing"
        python -c "import xtf_kernels" 2>/dev/null || pip install -q --no-build-isolation --no-deps -e . \
            || { log "xtf_kernels does not install; stopping"; exit 1; }
    fi
    python -m xtf_kernels env >"$OUT/env.txt" 2>&1
    python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
        >>"$OUT/env.txt" 2>&1
}

run_tests() {
    log "pytest -m cuda (tests and benchmark cases)"
    python -m pytest -m cuda -q -p no:cacheprovider --benchmark-json "$OUT/pytest_bench.json" \
        >"$OUT/pytest_cuda.log" 2>&1
    local status=$?
    log "pytest -m cuda exit status $status; $(tail -n 1 "$OUT/pytest_cuda.log")"
}

run_bench() {
    log "benchmarks/run.py $*"
    python benchmarks/run.py --output "$OUT/gpu_results.csv" --output benchmarks/data/results.csv \
        --plot "$OUT/gpu_bench.png" --timeout 540 "$@" 2>&1 | tee "$OUT/bench.log"
    log "benchmarks/run.py exit status ${PIPESTATUS[0]}"
}

ensure_installed
case "$step" in
    all) run_tests; run_bench "$@" ;;
    test) run_tests ;;
    bench) run_bench "$@" ;;
    install) ;;
    *) log "unknown step '$step' (all | install | test | bench)"; exit 2 ;;
esac

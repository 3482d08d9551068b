#!/usr/bin/env bash
# The GPU check of the CUDA backend, one command on a machine with an NVIDIA GPU, nvcc and a CUDA build of
# torch (written for Python 3.12 / nvcc 13.0 / an H200, without network):
#
#   bash csrc/gpu_check.sh                    # every step below, in order
#   bash csrc/gpu_check.sh build test         # only some steps: build env test sanitize bench
#
#   build     compile xtf_kernels._C in place for this GPU's architecture (XTF_CUDA_ARCHS overrides it)
#   env       python -m xtf_kernels.env (must report no PROBLEM and backend cuda available)
#   test      the cuda tier: python -m pytest -m cuda tests (every op suite runs backend="cuda" through the
#             `impl` fixture, plus tests/ops/_cuda)
#   sanitize  compute-sanitizer memcheck and racecheck over tests/ops/_cuda (skipped, and said so, when
#             compute-sanitizer is not installed)
#   bench     python benchmarks/run.py --suite gpu (every provider, xtf-cuda included)
#
# Logs and results go to ${XTF_GPU_LOG_DIR:-build/gpu_check}/ (one file per step); the exit status is the
# number of failed steps. Offline machines: the build needs setuptools and pybind11 importable (ninja is
# optional); when they are missing and a .whl/ folder at the repository root holds their wheels (fetched
# elsewhere with `pip download setuptools wheel pybind11 ninja -d .whl --only-binary :all:
# --python-version 3.12`), they are installed from there.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"  # the GPU image has python3 only
log_dir="${XTF_GPU_LOG_DIR:-build/gpu_check}"
mkdir -p "$log_dir"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(build env test sanitize bench)
failed=0

run_step() {  # run_step NAME COMMAND...: tee the output into the step's log, count a failure
    local name=$1
    shift
    echo "=== $name: $*"
    local start=$SECONDS
    "$@" 2>&1 | tee "$log_dir/$name.log"
    local status=${PIPESTATUS[0]}
    echo "=== $name: exit $status after $((SECONDS - start)) s"
    [ "$status" -eq 0 ] || failed=$((failed + 1))
}

ensure_build_requirements() {
    local missing=()
    for module in setuptools pybind11; do
        "$PY" -c "import $module" 2>/dev/null || missing+=("$module")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ -d .whl ]; then
        "$PY" -m pip install --no-index --find-links .whl "${missing[@]}" wheel ninja || return 1
    else
        echo "missing build requirements: ${missing[*]}; no .whl/ folder to install them from (see the header)"
        return 1
    fi
}

build() {
    ensure_build_requirements || return 1
    local archs="${XTF_CUDA_ARCHS:-$("$PY" -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())')}"
    echo "compiling for sm_$archs with $(command -v nvcc || echo "nvcc from CUDA_HOME=${CUDA_HOME:-unset}")"
    XTF_BUILD_CUDA=1 XTF_CUDA_ARCHS="$archs" MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" setup.py build_ext --inplace
}

check_env() {
    "$PY" -m xtf_kernels.env || return 1
    "$PY" - <<'PY'
import torch
from xtf_kernels.ops.registry import resolve_backend
print("backend='cuda' resolves to", resolve_backend("cuda", torch.device("cuda")))
PY
}

sanitize() {
    local sanitizer
    sanitizer="$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")"
    if [ ! -x "$sanitizer" ]; then
        echo "compute-sanitizer not found: memcheck / racecheck not run"
        return 0
    fi
    local status=0
    for tool in memcheck racecheck; do
        "$sanitizer" --tool "$tool" --error-exitcode 1 --target-processes all \
            "$PY" -m pytest -m cuda -q -p no:cacheprovider tests/ops/_cuda || status=1
    done
    return $status
}

for step in "${steps[@]}"; do
    case "$step" in
        build) run_step build build ;;
        env) run_step env check_env ;;
        test) run_step test "$PY" -m pytest -m cuda -q -rs tests ;;
        sanitize) run_step sanitize sanitize ;;
        bench) run_step bench "$PY" benchmarks/run.py --suite gpu --output "$log_dir/bench_results.csv" \
            --plot "$log_dir/bench.png" ;;
        *) echo "unknown step '$step' (build env test sanitize bench)"; failed=$((failed + 1)) ;;
    esac
done
echo "gpu_check: $failed failed step(s); logs in $log_dir/"
exit "$failed"

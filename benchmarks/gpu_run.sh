#!/usr/bin/env bash
# The GPU run in one command, inside a time budget, for a CUDA machine without network access (written for
# an H200 with Python 3.12, torch 2.11, Triton 3.6, nvcc 13.0, 16 cores):
#
#   bash benchmarks/gpu_run.sh                  # every step below, in this order, within the budget
#   bash benchmarks/gpu_run.sh checks bench     # only these steps (on a fresh machine name install build too)
#   bash benchmarks/gpu_run.sh --dry-run        # the CPU rehearsal: no install, no build, tiny shapes, the
#                                               # torch backend; proves every command, import and path
#
#   install  the peers from carried wheels in .whl/ (liger-kernel, cut-cross-entropy 25.6 for its exact
#            mode; make them with benchmarks/peer_wheels.sh where there is network), --no-deps: torch and
#            triton are the machine's own
#   build    the CUDA extension in place for sm_90 (XTF_CUDA_ARCHS), then `python -m xtf_kernels.env`
#   checks   tests/gpu (marker cuda): every path at N 4096 against float64 with a NaN-poisoned allocator and
#            a bitwise repeat, a misaligned hidden, N*V > 2^31, per-token gradients with 60% kept and every
#            option on, path selection under memory pressure, the out_dtype GEMM forms
#   bench    benchmarks/run.py --suite gpu-run (Llama-3-8B head, N 4096 and 16384, frozen, 60% kept,
#            forward-only): xtf's default and fast paths with the fused peers, then (after the profile) the
#            peers that form the full logits and xtf's slower paths; one run id for both
#   profile  benchmarks/profile_step.py: torch.profiler breakdown of one Triton chunked step (N 16384)
#   sweep    benchmarks/sweep.py: chunk sizes 1024-8192 at N 16384 on the chunked paths, and the N at which
#            the Triton fused path stops beating the chunked one (its place in "auto")
#   tier     the cuda test tier (pytest -m cuda tests benchmarks, 4 xdist workers when xdist is there) with
#            whatever time is left
#
# Budget: XTF_GPU_RUN_BUDGET_S seconds in all (default 480: 8 minutes); each step gets at most its own cap
# and what the budget has left, and a step that runs out is stopped and reported "timeout"; the order puts
# what matters most first. The step times on an H200 are not measured yet: the first run's summary.txt
# says which steps the budget cut.
#
# With the device tool: run `bash benchmarks/gpu_run.sh` with carry [".whl"] and timeout_s 600 (the
# budget plus the machine's start-up of Python); OUT is set there.
#
# Output, in $OUT (default ./gpu_out), six files so that a device tool that returns at most 8 brings all:
#   summary.txt      step statuses and times, the checks' measurements, the benchmark table, the profile
#   gpu_results.csv  the benchmark rows (merge here with `python benchmarks/merge_results.py`; on the GPU
#                    machine they are also appended to benchmarks/data/results.csv, except in a dry run)
#   checks.jsonl     one JSON line per check measurement (errors against float64, timings, path choices)
#   profile.txt      the profiler breakdown
#   sweep.txt        the chunk sweep and the fused / chunked crossover
#   logs.tar.gz      every step's log, env.txt, the pytest junit files, the benchmark plot, profile.json,
#                    sweep.json
# The exit status is the number of steps that failed or timed out.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/gpu_out}"
BUDGET="${XTF_GPU_RUN_BUDGET_S:-480}"
DRY_RUN=0
steps=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        install|build|checks|bench|profile|sweep|tier) steps+=("$arg") ;;
        *) echo "gpu_run: unknown argument '$arg' (--dry-run, install build checks bench profile sweep tier)"; exit 2 ;;
    esac
done
[ ${#steps[@]} -eq 0 ] && steps=(install build checks bench profile sweep tier)
if [ "$DRY_RUN" -eq 1 ]; then  # nothing to install or build on the CPU
    kept=()
    for step in "${steps[@]}"; do [ "$step" = install ] || [ "$step" = build ] || kept+=("$step"); done
    steps=("${kept[@]}")
fi

if [ "$DRY_RUN" -eq 0 ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_run: torch sees no CUDA device here; bash benchmarks/gpu_run.sh --dry-run rehearses the run on the CPU"
    exit 1
fi
mkdir -p "$OUT"
LOGS="$(mktemp -d "${TMPDIR:-/tmp}/xtf-gpu-run.XXXXXX")"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 XTF_CUDA_ARCHS="${XTF_CUDA_ARCHS:-90}"
RESERVE=15  # seconds kept for packing the output
failed=0
STATUS_LINES=()

say() { echo "gpu_run: $*" | tee -a "$LOGS/gpu_run.log"; }

run_step() {  # run_step NAME CAP_S COMMAND...: run under a timeout of min(CAP_S, budget left), log, record
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - SECONDS - RESERVE))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -le 5 ]; then
        STATUS_LINES+=("$(printf '%-8s skipped: budget spent' "$name")")
        say "$name: skipped, the budget ($BUDGET s) is spent"
        failed=$((failed + 1))
        return
    fi
    say "$name: up to $limit s: $*"
    local start=$SECONDS
    # timeout signals its whole process group, so pytest's and run.py's worker processes stop too.
    timeout --kill-after=10 "$limit" bash -c '"$@"' bash "$@" >"$LOGS/$name.log" 2>&1
    local status=$? took=$((SECONDS - start)) verdict=ok
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        verdict="timeout after $limit s"
    elif [ "$status" -ne 0 ]; then
        verdict="exit $status"
    fi
    [ "$verdict" = ok ] || failed=$((failed + 1))
    local last
    last="$(grep -v '^[[:space:]]*$' "$LOGS/$name.log" | tail -n 1 | cut -c1-90)"
    STATUS_LINES+=("$(printf '%-8s %4d s  %s  (%s)' "$name" "$took" "$verdict" "$last")")
    say "$name: $verdict after $took s"
}

install_peers() {
    local wheels=()
    for pattern in '.whl/liger_kernel-*.whl' '.whl/cut_cross_entropy-*.whl'; do
        for wheel in $pattern; do [ -f "$wheel" ] && wheels+=("$wheel"); done
    done
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "no peer wheels in .whl/ (benchmarks/peer_wheels.sh makes them): the peers report missing"
        return 0
    fi
    "$PY" -m pip install -q --no-index --no-deps "${wheels[@]}" && echo "installed ${wheels[*]}"
}

build_extension() {
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" || return 1
    XTF_BUILD_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" setup.py build_ext --inplace || return 1
    "$PY" -m xtf_kernels.env | tee "$LOGS/env.txt"
    "$PY" -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" \
        | sed 's/^/torch, triton, device: /' | tee -a "$LOGS/env.txt"
}

pytest_cuda() {  # pytest_cuda JUNIT ARGS...: the cuda marker, junit XML into the logs
    local junit=$1
    shift
    "$PY" -m pytest -m cuda -q -rfEs -p no:cacheprovider --junitxml "$LOGS/$junit" "$@"
}

run_checks() {
    rm -f "$OUT/checks.jsonl"
    if [ "$DRY_RUN" -eq 1 ]; then
        XTF_GPU_DRY_RUN=1 XTF_GPU_REPORT="$OUT/checks.jsonl" pytest_cuda checks.xml tests/gpu
    else
        XTF_GPU_REPORT="$OUT/checks.jsonl" pytest_cuda checks.xml tests/gpu
    fi
}

bench() {  # bench PROVIDERS: one benchmarks/run.py invocation, the run id shared by both groups; it appends
    # each provider's rows as its worker ends, so a step the budget cuts keeps the providers it finished
    if [ "$DRY_RUN" -eq 1 ]; then
        "$PY" benchmarks/run.py --suite dry-run --device cpu --warmup 0 --repeats 1 --run-id "$RUN_ID" \
            --providers "$1" --output "$OUT/gpu_results.csv"
    else
        # 90 s per worker (one provider, all its cases; about 30 s estimated, not measured).
        "$PY" benchmarks/run.py --suite gpu-run --device cuda --warmup 2 --repeats 5 --timeout 90 \
            --run-id "$RUN_ID" --providers "$1" --output "$OUT/gpu_results.csv" --output benchmarks/data/results.csv
    fi
}

profile() {
    if [ "$DRY_RUN" -eq 1 ]; then
        "$PY" benchmarks/profile_step.py --out "$LOGS/profile" --dry-run
    else
        "$PY" benchmarks/profile_step.py --out "$LOGS/profile" --provider xtf-triton-chunked --tokens 16384
    fi
}

run_sweep() {
    if [ "$DRY_RUN" -eq 1 ]; then
        "$PY" benchmarks/sweep.py --out "$LOGS/sweep" --dry-run
    else
        "$PY" benchmarks/sweep.py --out "$LOGS/sweep"
    fi
}

tier() {
    if [ "$DRY_RUN" -eq 1 ]; then  # the command line and the collection, not the GPU tests themselves
        pytest_cuda tier.xml --collect-only tests/ops/_cuda benchmarks
        return
    fi
    local workers=()
    "$PY" -c "import xdist" 2>/dev/null && workers=(-n 4)
    pytest_cuda tier.xml "${workers[@]}" --benchmark-disable --ignore tests/gpu tests benchmarks
}

RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)-gpu-run"
[ "$DRY_RUN" -eq 1 ] && RUN_ID="${RUN_ID%-gpu-run}-dry-run"
export ROOT PY OUT LOGS DRY_RUN RUN_ID
export -f install_peers build_extension pytest_cuda run_checks bench profile run_sweep tier
say "run $RUN_ID, budget $BUDGET s, steps: ${steps[*]}, dry run: $DRY_RUN, out: $OUT"
wants() { [[ " ${steps[*]} " == *" $1 "* ]]; }
# Most valuable first, so that what the budget cuts is the least valuable: the benchmark's second group
# (the peers that form full logits, and xtf's slower paths) and the tier come after the profile.
wants install && run_step install 60 install_peers
wants build && run_step build 180 build_extension
wants checks && run_step checks 180 run_checks
wants bench && run_step bench 180 bench xtf-auto,xtf-triton-chunked,xtf-cuda,cce,cce-exact,liger
wants profile && run_step profile 60 profile
wants sweep && run_step sweep 90 run_sweep
wants bench && run_step bench2 150 bench xtf-triton-fused,xtf-torch,torch-compile,torch-materialised,torch-chunked
wants tier && run_step tier 600 tier

{
    echo "gpu_run $RUN_ID: ${SECONDS} s of a $BUDGET s budget, $failed step(s) failed or timed out"
    echo
    printf '%s\n' "${STATUS_LINES[@]}"
    echo
    echo "== checks ($OUT/checks.jsonl)"
    grep -h -E "passed|failed|error" "$LOGS/checks.log" 2>/dev/null | tail -n 3
    [ -f "$OUT/checks.jsonl" ] && cut -c1-400 "$OUT/checks.jsonl"
    echo
    echo "== benchmark (every provider of the run, with the target verdicts)"
    [ -f "$OUT/gpu_results.csv" ] && "$PY" benchmarks/report.py --data "$OUT/gpu_results.csv" --run-id "$RUN_ID"
    echo
    echo "== profile"
    cat "$LOGS/profile/profile.txt" 2>/dev/null
    echo
    echo "== sweep"
    cat "$LOGS/sweep/sweep.txt" 2>/dev/null
    echo
    echo "== tier"
    tail -n 15 "$LOGS/tier.log" 2>/dev/null
} >"$OUT/summary.txt"
[ -f "$OUT/gpu_results.csv" ] && [ "$DRY_RUN" -eq 0 ] \
    && "$PY" benchmarks/plot.py --data "$OUT/gpu_results.csv" --run-id "$RUN_ID" --png "$LOGS/bench.png" >/dev/null
[ -f "$LOGS/profile/profile.txt" ] && cp "$LOGS/profile/profile.txt" "$OUT/profile.txt"
[ -f "$LOGS/sweep/sweep.txt" ] && cp "$LOGS/sweep/sweep.txt" "$OUT/sweep.txt"
tar -czf "$OUT/logs.tar.gz" -C "$LOGS" . && rm -rf "$LOGS"
cat "$OUT/summary.txt"
exit "$failed"

#!/usr/bin/env bash
# The peers' wheels for the GPU run, made where there is network (the GPU machine has none) into .whl/
# (git-ignored; carry it to the machine), both pure Python and installed there with --no-deps:
#
#   bash benchmarks/peer_wheels.sh ML_CROSS_ENTROPY_SOURCE
#
#   liger-kernel 0.8.5        from the package index
#   cut-cross-entropy 25.6.4  built from ML_CROSS_ENTROPY_SOURCE, a checkout (or export) of
#                             apple/ml-cross-entropy at commit d42911f: the package index's newest release,
#                             25.1.1, has no impl="cce_exact", the exact mode the benchmark times beside the
#                             default gradient filter
#
# QuACK (quack-kernels) is not among them: it needs nvidia-cutlass-dsl-libs-cu13, a 92 MB wheel, more than
# the 64 MiB a device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LIGER_VERSION=0.8.5
CCE_VERSION=25.6.4
if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/peer_wheels.sh ML_CROSS_ENTROPY_SOURCE  (a checkout of apple/ml-cross-entropy)"
    exit 2
fi
source_dir=$1
version_file="$source_dir/cut_cross_entropy/__init__.py"
if ! grep -q "__version__ = \"$CCE_VERSION\"" "$version_file" 2>/dev/null; then
    echo "$version_file does not declare __version__ = \"$CCE_VERSION\" (check out commit d42911f)"
    exit 1
fi
mkdir -p .whl
rm -f .whl/liger_kernel-*.whl .whl/cut_cross_entropy-*.whl  # one version of each: two stop the install
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform any -d .whl "liger-kernel==$LIGER_VERSION"
"$PY" -m pip wheel --no-deps --no-build-isolation -w .whl "$source_dir"
ls -l .whl

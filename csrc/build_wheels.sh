#!/usr/bin/env bash
# Wheels for GPU clusters: the CUDA wheel for the chosen architectures, and the pure-Python wheel.
#
#   bash csrc/build_wheels.sh                          # sm_80 + sm_90 (A100, H100 / H200), PTX for sm_90
#   XTF_CUDA_ARCHS="90" bash csrc/build_wheels.sh      # Hopper only (about half the compile time)
#   bash csrc/build_wheels.sh --no-build-isolation     # offline: use this environment's setuptools, wheel,
#                                                      # pybind11 (and ninja, when installed)
#
# Needs nvcc (CUDA_HOME, or nvcc on PATH) but no GPU, and no CUDA build of torch: the extension includes
# no torch header. Writes into ${XTF_WHEEL_DIR:-dist}/ at the repository root:
#   xtf_kernels-<version>+cu<XY>-cp<py>-cp<py>-linux_x86_64.whl   the extension built with CUDA X.Y; it runs
#       where the NVIDIA driver supports CUDA X.Y (`nvidia-smi` shows the highest it supports) and the GPU is
#       one of the archs, or newer than the PTX arch. One wheel per Python version: run this with each.
#   xtf_kernels-<version>-py3-none-any.whl   pure Python (torch and Triton backends) for everything else.
# On a cluster node: pip install <wheel>; then `python -m xtf_kernels.env` shows what the wheel holds and
# whether backend="cuda" runs there.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${XTF_WHEEL_DIR:-dist}"
mkdir -p "$out"

export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
XTF_BUILD_CUDA=1 XTF_CUDA_ARCHS="${XTF_CUDA_ARCHS:-80;90}" python -m pip wheel . --no-deps -w "$out" "$@"
XTF_BUILD_CUDA=0 python -m pip wheel . --no-deps -w "$out" "$@"
ls -l "$out"/xtf_kernels-*.whl

// Row compaction: gather the kept rows of a (N, D) tensor into (M, D), and scatter (M, D) rows back.
//
// One block per copied row; threads copy the row in the widest unit (16, 8, 4, 2 or 1 bytes) that the
// base pointers, both strides and the row length are multiples of: a bf16 hidden row of H = 4096 is
// 8 KiB = 512 16-byte copies, two per thread of a 256-thread block. Any element type works since rows
// are moved as bytes. Indices outside [0, index_bound) are skipped rather than followed.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_check.h"
#include "xtf_kernels.h"

namespace xtf {
namespace {

constexpr int kThreads = 256;

template <typename Unit, bool kScatter>
__global__ void __launch_bounds__(kThreads) copy_rows_kernel(RowCopyParams p) {
  const int64_t i = blockIdx.x;
  const int64_t idx = p.index[i];
  if (idx < 0 || idx >= p.index_bound) return;
  const int64_t src_row = kScatter ? i : idx;
  const int64_t dst_row = kScatter ? idx : i;
  const Unit* src = reinterpret_cast<const Unit*>(p.src + src_row * p.src_stride);
  Unit* dst = reinterpret_cast<Unit*>(p.dst + dst_row * p.dst_stride);
  const int64_t units = p.row_bytes / static_cast<int64_t>(sizeof(Unit));
  for (int64_t j = threadIdx.x; j < units; j += kThreads) dst[j] = src[j];
}

template <bool kScatter>
void launch_copy_rows(const RowCopyParams& p, const char* name) {
  if (p.rows < 0 || p.rows > INT32_MAX || p.row_bytes < 0 || p.index_bound < 0) {
    throw std::invalid_argument(std::string("xtf_kernels: ") + name +
                                " needs rows in [0, 2^31), row_bytes >= 0 and index_bound >= 0");
  }
  if (p.rows == 0 || p.row_bytes == 0) return;
  const uint64_t alignment = reinterpret_cast<uintptr_t>(p.src) | reinterpret_cast<uintptr_t>(p.dst) |
                             static_cast<uint64_t>(p.src_stride) | static_cast<uint64_t>(p.dst_stride) |
                             static_cast<uint64_t>(p.row_bytes);
  const dim3 grid(static_cast<unsigned>(p.rows));
  if (alignment % 16 == 0) {
    copy_rows_kernel<uint4, kScatter><<<grid, kThreads, 0, p.stream>>>(p);
  } else if (alignment % 8 == 0) {
    copy_rows_kernel<uint2, kScatter><<<grid, kThreads, 0, p.stream>>>(p);
  } else if (alignment % 4 == 0) {
    copy_rows_kernel<uint32_t, kScatter><<<grid, kThreads, 0, p.stream>>>(p);
  } else if (alignment % 2 == 0) {
    copy_rows_kernel<uint16_t, kScatter><<<grid, kThreads, 0, p.stream>>>(p);
  } else {
    copy_rows_kernel<uint8_t, kScatter><<<grid, kThreads, 0, p.stream>>>(p);
  }
  check_launch(name);
}

}  // namespace

void gather_rows(const RowCopyParams& p) { launch_copy_rows<false>(p, "gather_rows"); }

void scatter_rows(const RowCopyParams& p) { launch_copy_rows<true>(p, "scatter_rows"); }

}  // namespace xtf

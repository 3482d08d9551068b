// Row kernels of the chunked head pass: softmax statistics, in-place logit gradients, two-model delta.
//
// The logits chunk is (rows, vocab) fp32, written by the GEMM hidden @ weight.T + bias. Each block owns
// one vocabulary slice of one row and walks it with 16-byte loads (float4): a row starts 16-byte aligned
// only when vocab % 4 == 0 (e.g. V = 128256), so up to 3 leading and 3 trailing elements of a slice go
// through scalar loads. The loop keeps kUnroll float4 loads in flight per thread, 16 KiB per 256-thread
// block, which with several resident blocks per SM is enough to stream at DRAM rate: these kernels do
// one exp and about ten other operations per 4-byte logit, below what an SM issues per byte of DRAM
// bandwidth, so memory bandwidth bounds them. All arithmetic is fp32 (xtf_row_math.h); row offsets and
// element indices are 64-bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_check.h"
#include "xtf_kernels.h"
#include "xtf_row_math.h"

namespace xtf {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 4;
constexpr unsigned kFullMask = 0xffffffffu;

struct Slice {
  int64_t lo, hi;
};

// Slices are equal runs of a multiple of 4 elements; trailing ones may be empty when vocab is small.
__device__ __forceinline__ Slice slice_of(const LogitsChunk& c, int split) {
  const int64_t len = ((c.vocab + c.splits - 1) / c.splits + 3) / 4 * 4;
  const int64_t lo = min(c.vocab, split * len);
  return {lo, min(c.vocab, lo + len)};
}

// The aligned middle of a slice: [lo, head_end) scalar, nvec float4 from head_end, [tail, hi) scalar.
struct SliceLayout {
  int64_t head_end, nvec, tail;
};

__device__ __forceinline__ SliceLayout layout_of(const float* row, Slice s) {
  const int64_t misaligned = (reinterpret_cast<uintptr_t>(row + s.lo) >> 2) & 3;
  const int64_t head_end = min(s.hi, s.lo + ((4 - misaligned) & 3));
  const int64_t nvec = (s.hi - head_end) / 4;
  return {head_end, nvec, head_end + nvec * 4};
}

// Calls f(j, y_j) for every j of the slice, spread over the block.
template <typename F>
__device__ __forceinline__ void visit_slice(const float* row, Slice s, F&& f) {
  const SliceLayout l = layout_of(row, s);
  if (s.lo + threadIdx.x < l.head_end) f(s.lo + threadIdx.x, row[s.lo + threadIdx.x]);
  const float4* vec = reinterpret_cast<const float4*>(row + l.head_end);
  for (int64_t base = threadIdx.x; base < l.nvec; base += kThreads * kUnroll) {
    float4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads;
      if (i < l.nvec) v[u] = __ldg(vec + i);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads;
      if (i < l.nvec) {
        const int64_t j = l.head_end + 4 * i;
        f(j, v[u].x);
        f(j + 1, v[u].y);
        f(j + 2, v[u].z);
        f(j + 3, v[u].w);
      }
    }
  }
  if (l.tail + threadIdx.x < s.hi) f(l.tail + threadIdx.x, row[l.tail + threadIdx.x]);
}

// 16-bit copies of the gradient: 1 or 4 values per store (4 values = one 8-byte store).
struct NoHalf {};

__device__ __forceinline__ void store_half(__half* dst, float g) { *dst = __float2half_rn(g); }
__device__ __forceinline__ void store_half(__nv_bfloat16* dst, float g) { *dst = __float2bfloat16_rn(g); }

template <typename Half2>
__device__ __forceinline__ uint32_t bits_of(Half2 h) {
  uint32_t u;
  memcpy(&u, &h, sizeof(u));
  return u;
}

__device__ __forceinline__ void store_half4(__half* dst, float4 g) {
  *reinterpret_cast<uint2*>(dst) =
      make_uint2(bits_of(__floats2half2_rn(g.x, g.y)), bits_of(__floats2half2_rn(g.z, g.w)));
}
__device__ __forceinline__ void store_half4(__nv_bfloat16* dst, float4 g) {
  *reinterpret_cast<uint2*>(dst) =
      make_uint2(bits_of(__floats2bfloat162_rn(g.x, g.y)), bits_of(__floats2bfloat162_rn(g.z, g.w)));
}

// Where one row's gradient goes: over the fp32 logits (write_fp32) and / or into a 16-bit row.
template <typename Half>
struct GradRow {
  float* fp32;
  Half* half;         // unused for NoHalf
  bool write_fp32;
  bool half_aligned;  // half + j is 8-byte aligned whenever fp32 + j is 16-byte aligned
};

template <typename Half>
__device__ __forceinline__ void store_grad(const GradRow<Half>& out, int64_t j, float g) {
  if (out.write_fp32) out.fp32[j] = g;
  if constexpr (!std::is_same_v<Half, NoHalf>) store_half(out.half + j, g);
}

template <typename Half>
__device__ __forceinline__ void store_grad4(const GradRow<Half>& out, int64_t j, float4 g) {
  if (out.write_fp32) *reinterpret_cast<float4*>(out.fp32 + j) = g;
  if constexpr (!std::is_same_v<Half, NoHalf>) {
    if (out.half_aligned) {
      store_half4(out.half + j, g);
    } else {
      store_half(out.half + j, g.x);
      store_half(out.half + j + 1, g.y);
      store_half(out.half + j + 2, g.z);
      store_half(out.half + j + 3, g.w);
    }
  }
}

// out_j <- f(j, y_j) for every j of the slice; an element of the fp32 row is read and then overwritten
// by the same thread, so the in-place update needs no synchronisation.
template <typename Half, typename F>
__device__ __forceinline__ void write_grad_slice(const float* row, Slice s, const GradRow<Half>& out, F&& f) {
  const SliceLayout l = layout_of(row, s);
  if (s.lo + threadIdx.x < l.head_end) {
    const int64_t j = s.lo + threadIdx.x;
    store_grad(out, j, f(j, row[j]));
  }
  const float4* vec = reinterpret_cast<const float4*>(row + l.head_end);
  for (int64_t base = threadIdx.x; base < l.nvec; base += kThreads * kUnroll) {
    float4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads;
      if (i < l.nvec) v[u] = vec[i];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads;
      if (i < l.nvec) {
        const int64_t j = l.head_end + 4 * i;
        store_grad4(out, j, make_float4(f(j, v[u].x), f(j + 1, v[u].y), f(j + 2, v[u].z), f(j + 3, v[u].w)));
      }
    }
  }
  if (l.tail + threadIdx.x < s.hi) {
    const int64_t j = l.tail + threadIdx.x;
    store_grad(out, j, f(j, row[j]));
  }
}

__device__ __forceinline__ RowPartial empty_partial() { return {-INFINITY, 0.f, 0.f, 0.f}; }

__device__ __forceinline__ RowPartial merge_partials(RowPartial a, RowPartial b) {
  const SoftmaxStats st = merge_stats({a.max, a.sum_exp, a.shifted}, {b.max, b.sum_exp, b.shifted});
  return {st.max, st.sum_exp, st.shifted, a.sum + b.sum};
}

// Butterfly merge: every lane ends with the merge of all 32 lanes' partials.
__device__ __forceinline__ RowPartial warp_merge(RowPartial x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    RowPartial other;
    other.max = __shfl_xor_sync(kFullMask, x.max, offset);
    other.sum_exp = __shfl_xor_sync(kFullMask, x.sum_exp, offset);
    other.shifted = __shfl_xor_sync(kFullMask, x.shifted, offset);
    other.sum = __shfl_xor_sync(kFullMask, x.sum, offset);
    x = merge_partials(x, other);
  }
  return x;
}

// The merge of every thread's partial; valid in thread 0.
__device__ __forceinline__ RowPartial block_merge(RowPartial x) {
  __shared__ RowPartial per_warp[kWarps];
  x = warp_merge(x);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) per_warp[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = warp_merge(lane < kWarps ? per_warp[lane] : empty_partial());
  }
  return x;
}

__device__ __forceinline__ ArgMax warp_merge_argmax(ArgMax x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    ArgMax other;
    other.value = __shfl_xor_sync(kFullMask, x.value, offset);
    other.index = __shfl_xor_sync(kFullMask, x.index, offset);
    x = merge_argmax(x, other);
  }
  return x;
}

// The merge of every thread's argmax; valid in thread 0. Its own shared array, so it may follow
// block_merge without a barrier in between (thread 0 reads block_merge's array only before this one's
// __syncthreads, and nobody writes it again).
__device__ __forceinline__ ArgMax block_merge_argmax(ArgMax x) {
  __shared__ ArgMax per_warp[kWarps];
  x = warp_merge_argmax(x);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) per_warp[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = warp_merge_argmax(lane < kWarps ? per_warp[lane] : empty_argmax());
  }
  return x;
}

// The merge of a row's `splits` partials (<= 32), computed by each warp with its lanes.
__device__ __forceinline__ RowPartial merge_row_partials(const RowPartial* partials, int64_t row, int splits) {
  const int lane = threadIdx.x % 32;
  return warp_merge(lane < splits ? partials[row * splits + lane] : empty_partial());
}

__device__ __forceinline__ bool valid_target(int64_t t, int64_t vocab) { return t >= 0 && t < vocab; }

__global__ void __launch_bounds__(kThreads) row_stats_kernel(RowStatsParams p) {
  const LogitsChunk& c = p.chunk;
  const int64_t row = blockIdx.x;
  const int split = blockIdx.y;
  const float* y = c.logits + row * c.row_stride;
  const Slice s = slice_of(c, split);
  const LogitTransform tr = make_transform(c.softcap, c.inv_temperature, c.logit_scale);
  const bool want_argmax = p.partial_argmax != nullptr;

  SoftmaxStats st = empty_stats();
  ArgMax best = empty_argmax();
  float sum = 0.f;
  visit_slice(y, s, [&](int64_t j, float raw) {
    const float z = final_logit(raw, tr);
    push_logit(st, z);
    sum += c.class_weights != nullptr ? c.class_weights[j] * z : z;
    if (want_argmax) push_argmax(best, z, j);
  });
  const RowPartial merged = block_merge({st.max, st.sum_exp, st.shifted, sum});
  if (want_argmax) best = block_merge_argmax(best);  // uniform branch: every thread reaches its barrier
  if (threadIdx.x != 0) return;
  p.partials[row * c.splits + split] = merged;
  if (want_argmax) p.partial_argmax[row * c.splits + split] = best.index;
  if (p.target_logit != nullptr) {
    const int64_t t = c.targets[row];
    if (t >= s.lo && t < s.hi) {
      p.target_logit[row] = final_logit(y[t], tr);
    } else if (split == 0 && !valid_target(t, c.vocab)) {
      p.target_logit[row] = NAN;
    }
  }
}

__device__ __forceinline__ float load_or_zero(const float* x, int64_t row) { return x != nullptr ? x[row] : 0.f; }

__host__ __device__ __forceinline__ bool writes_grad(const RowFinalizeParams& p) {
  return p.write_fp32_grad || p.half_grad != nullptr;
}

// The 16-bit row r starts at element r * half_grad_stride of an 8-byte aligned buffer whose element
// offsets line up with the fp32 rows' modulo 4; then every 16-byte aligned fp32 position j has an
// 8-byte aligned 16-bit position j.
__host__ __device__ __forceinline__ bool half_rows_aligned(const RowFinalizeParams& p) {
  const uintptr_t fp32_offset = reinterpret_cast<uintptr_t>(p.chunk.logits) / 4;
  const uintptr_t half_offset = reinterpret_cast<uintptr_t>(p.half_grad) / 2;
  return reinterpret_cast<uintptr_t>(p.chunk.logits) % 4 == 0 && reinterpret_cast<uintptr_t>(p.half_grad) % 2 == 0 &&
         (fp32_offset - half_offset) % 4 == 0 && (p.chunk.row_stride - p.half_grad_stride) % 4 == 0;
}

// Registers (sm_90, nvcc 13): at most 48 per thread, so 5 blocks of 256 threads stay resident per SM (the
// split heuristic's BLOCKS_PER_SM = 4 plus one); unbounded, the 16-bit instantiations take 52 (4 blocks).
// kClassWeights is a separate instantiation bounded at 4 blocks: its loads and coefficients need 55
// registers (48 would spill 4 bytes), and the common kernel does not pay for them.
template <typename Half, bool kClassWeights>
__global__ void __launch_bounds__(kThreads, kClassWeights ? 4 : 5) row_finalize_kernel(RowFinalizeParams p) {
  const LogitsChunk& c = p.chunk;
  const int64_t row = blockIdx.x;
  const int split = blockIdx.y;
  float* y = c.logits + row * c.row_stride;
  const Slice s = slice_of(c, split);
  const LogitTransform tr = make_transform(c.softcap, c.inv_temperature, c.logit_scale);
  const int64_t t = c.targets[row];

  float lse, entropy = 0.f, mean = 0.f;
  SoftmaxNormalizer norm;
  if (p.partials != nullptr) {
    const RowPartial merged = merge_row_partials(p.partials, row, c.splits);
    const SoftmaxStats st{merged.max, merged.sum_exp, merged.shifted};
    lse = p.lse_in != nullptr ? p.lse_in[row] : stats_lse(st);
    norm = p.lse_in != nullptr ? normalizer_from_lse(lse) : normalizer_from_stats(st);
    entropy = stats_entropy(st);
    mean = merged.sum / static_cast<float>(c.vocab);
  } else {
    lse = p.lse_in[row];
    norm = normalizer_from_lse(lse);
  }
  if (p.entropy_in != nullptr) entropy = p.entropy_in[row];

  if (split == 0 && threadIdx.x == 0) {
    if (p.lse_out != nullptr) p.lse_out[row] = lse;
    if (p.mean_logit_out != nullptr) p.mean_logit_out[row] = mean;
    if (p.entropy_out != nullptr) p.entropy_out[row] = entropy;
  }
  if (p.partials == nullptr && p.target_logit_out != nullptr) {
    // The block owning the target reads it before any thread of the block overwrites it below.
    if (threadIdx.x == 0) {
      if (t >= s.lo && t < s.hi) {
        p.target_logit_out[row] = final_logit(y[t], tr);
      } else if (split == 0 && !valid_target(t, c.vocab)) {
        p.target_logit_out[row] = NAN;
      }
    }
    __syncthreads();
  }
  if (!writes_grad(p)) return;

  const float* w = c.class_weights;
  const float target_weight = kClassWeights && valid_target(t, c.vocab) ? w[t] : 1.f;
  const float weight_mean = kClassWeights ? *p.class_weight_sum / static_cast<float>(c.vocab) : 1.f;
  const RowGradCoefficients k = row_grad_coefficients(
      load_or_zero(p.grad_loss, row), load_or_zero(p.grad_logprob, row), load_or_zero(p.grad_entropy, row),
      load_or_zero(p.grad_lse, row), lse, norm.log_norm, entropy, p.label_smoothing, p.z_loss, c.vocab,
      target_weight, weight_mean);
  Half* half_row = p.half_grad != nullptr ? static_cast<Half*>(p.half_grad) + row * p.half_grad_stride : nullptr;
  const GradRow<Half> out{y, half_row, p.write_fp32_grad, half_rows_aligned(p)};
  write_grad_slice(y, s, out, [&](int64_t j, float raw) {
    // w_j only scales C (label smoothing's term): no load per logit when C is 0.
    return raw_logit_grad(raw, j == t, kClassWeights && k.c != 0.f ? w[j] : 1.f, norm, k, tr);
  });
}

__global__ void __launch_bounds__(kThreads) row_delta_kernel(RowDeltaParams p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= p.rows) return;  // whole warps leave together, so the shuffles below stay converged
  const RowPartial base = merge_row_partials(p.base_partials, row, p.splits);
  const RowPartial ref = merge_row_partials(p.ref_partials, row, p.splits);
  if (threadIdx.x % 32 != 0) return;
  const float base_logprob = p.base_target_logit[row] - stats_lse({base.max, base.sum_exp, base.shifted});
  const float ref_logprob = p.ref_target_logit[row] - stats_lse({ref.max, ref.sum_exp, ref.shifted});
  p.delta[row] = ref_logprob - base_logprob;
}

template <bool kClassWeights>
void launch_finalize(const RowFinalizeParams& p, dim3 grid) {
  switch (p.half_grad_kind) {
    case HalfKind::kFloat16:
      row_finalize_kernel<__half, kClassWeights><<<grid, kThreads, 0, p.stream>>>(p);
      break;
    case HalfKind::kBFloat16:
      row_finalize_kernel<__nv_bfloat16, kClassWeights><<<grid, kThreads, 0, p.stream>>>(p);
      break;
    default:
      row_finalize_kernel<NoHalf, kClassWeights><<<grid, kThreads, 0, p.stream>>>(p);
  }
}

void check_chunk(const LogitsChunk& c) {
  if (c.rows < 0 || c.rows > INT32_MAX || c.vocab <= 0 || c.row_stride < c.vocab || c.splits < 1 ||
      c.splits > kMaxSplits) {
    throw std::invalid_argument("xtf_kernels: bad logits chunk (rows must be in [0, 2^31), vocab > 0, "
                                "row_stride >= vocab, splits in [1, 32])");
  }
}

}  // namespace

void row_stats(const RowStatsParams& p) {
  check_chunk(p.chunk);
  if (p.chunk.rows == 0) return;
  const dim3 grid(static_cast<unsigned>(p.chunk.rows), static_cast<unsigned>(p.chunk.splits));
  row_stats_kernel<<<grid, kThreads, 0, p.stream>>>(p);
  check_launch("row_stats");
}

void row_finalize(const RowFinalizeParams& p) {
  check_chunk(p.chunk);
  if (p.partials == nullptr && p.lse_in == nullptr) {
    throw std::invalid_argument("xtf_kernels: row_finalize needs partials from row_stats or a known lse");
  }
  if ((p.half_grad == nullptr) != (p.half_grad_kind == HalfKind::kNone) ||
      (p.half_grad != nullptr && p.half_grad_stride < p.chunk.vocab)) {
    throw std::invalid_argument("xtf_kernels: row_finalize needs half_grad and a 16-bit half_grad_kind together, "
                                "with half_grad_stride >= vocab");
  }
  if (p.chunk.class_weights != nullptr && p.class_weight_sum == nullptr) {
    throw std::invalid_argument("xtf_kernels: row_finalize with class weights needs class_weight_sum");
  }
  if (p.chunk.rows == 0) return;
  // Every slice has work when it writes its gradient or may own the target logit to read; otherwise only
  // split 0 has (the per-row outputs).
  const bool per_slice = writes_grad(p) || (p.partials == nullptr && p.target_logit_out != nullptr);
  const unsigned splits = per_slice ? static_cast<unsigned>(p.chunk.splits) : 1u;
  const dim3 grid(static_cast<unsigned>(p.chunk.rows), splits);
  if (p.chunk.class_weights != nullptr) {
    launch_finalize<true>(p, grid);
  } else {
    launch_finalize<false>(p, grid);
  }
  check_launch("row_finalize");
}

void row_delta(const RowDeltaParams& p) {
  if (p.rows < 0 || p.splits < 1 || p.splits > kMaxSplits) {
    throw std::invalid_argument("xtf_kernels: row_delta needs rows >= 0 and splits in [1, 32]");
  }
  if (p.rows == 0) return;
  const unsigned blocks = static_cast<unsigned>((p.rows + kWarps - 1) / kWarps);
  row_delta_kernel<<<blocks, kThreads, 0, p.stream>>>(p);
  check_launch("row_delta");
}

std::vector<int> compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
  return {__CUDA_ARCH_LIST__};
#else
  return {};
#endif
}

std::string current_device_support() {
  cudaFuncAttributes attributes;
  const cudaError_t err = cudaFuncGetAttributes(&attributes, row_finalize_kernel<NoHalf, false>);
  if (err == cudaSuccess) return "";
  cudaGetLastError();  // not sticky: clear it so the next launch does not report it
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

}  // namespace xtf

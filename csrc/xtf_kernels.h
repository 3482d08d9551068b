// Launch parameters and entry points of the CUDA kernels: raw device pointers, sizes, strides and a stream.
//
// No torch type appears below the pybind11 binding (bindings.cpp): the Python driver
// (xtf_kernels/ops/_cuda/) checks dtypes, devices and layouts and passes tensor.data_ptr() and the current
// stream's handle. Optional per-row arrays are nullptr when absent. Sizes and offsets are 64-bit.
//
// Per logits chunk the row pass runs as two kernels over a grid of (rows, splits) blocks, each block
// owning one slice of one row's vocabulary (splits > 1 only when there are too few rows to fill the GPU):
//   1. row_stats:    online softmax statistics of the slice -> one RowPartial per (row, split),
//                    the target's final logit from the block whose slice holds the target, and, when
//                    asked, the first index of the slice's maximum;
//   2. row_finalize: merges the row's partials into lse / mean logit / entropy and, when gradients are
//                    wanted, overwrites the slice's raw logits with dL/dy in place (and / or writes it
//                    rounded to 16 bits into a second buffer).
// row_stats is skipped when the caller already has the log-sum-exp (the backward recompute) and needs
// no other statistic; row_finalize then reads the target logit itself before writing the gradient.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

namespace xtf {

// Partial statistics of one vocabulary slice of one row (16 bytes: one vector load when merging).
struct alignas(16) RowPartial {
  float max;      // running max of the final logits
  float sum_exp;  // sum exp(z - max)
  float shifted;  // sum exp(z - max) (z - max)
  float sum;      // sum w z, w the class weights or 1 (for the mean logit of label smoothing)
};

// A (rows, vocab) fp32 logits chunk with unit column stride; row r starts at logits + r * row_stride.
struct LogitsChunk {
  float* logits;
  int64_t rows;
  int64_t vocab;
  int64_t row_stride;
  const int64_t* targets;  // (rows,) in [0, vocab); any other value yields a NaN target logit
  float softcap;           // 0: off
  float inv_temperature;
  float logit_scale;       // multiplies the raw logits before softcap (1: none)
  const float* class_weights;  // (vocab,) per-class weights of the loss, or nullptr (all 1): row_stats
                               // weights the mean logit's sum w z, row_finalize the loss gradient (w_t, C w_j)
  int splits;              // vocabulary slices per row, 1 .. kMaxSplits
};

constexpr int kMaxSplits = 32;  // one warp merges a row's partials

enum class HalfKind : int { kNone = 0, kFloat16 = 1, kBFloat16 = 2 };

struct RowStatsParams {
  LogitsChunk chunk;
  RowPartial* partials;     // (rows, splits)
  float* target_logit;      // (rows,) or nullptr
  int64_t* partial_argmax;  // (rows, splits) first index of each slice's maximum, or nullptr (the
                            // row's argmax: the first slice holding the row's max; the driver merges)
  cudaStream_t stream;
};

struct RowFinalizeParams {
  LogitsChunk chunk;
  const RowPartial* partials;  // (rows, splits) from row_stats, or nullptr when row_stats was skipped
  const float* lse_in;         // (rows,) known log-sum-exp, or nullptr (then partials are required)
  const float* entropy_in;     // (rows,) known entropy, or nullptr
  // Upstream per-row gradients, each (rows,) or nullptr (= 0).
  const float* grad_loss;
  const float* grad_logprob;
  const float* grad_entropy;
  const float* grad_lse;
  float label_smoothing;
  float z_loss;
  const float* class_weight_sum;  // (1,) sum of chunk.class_weights (with class weights), else nullptr
  // Where dL/dy goes (nothing when both are off): over the fp32 logits, and/or rounded into a 16-bit
  // (rows, vocab) buffer with unit column stride, the operand of the backward matmuls for 16-bit
  // inputs (writing it here saves a (C, V) fp32 read and 16-bit write per chunk).
  bool write_fp32_grad;
  void* half_grad;           // nullptr, or __half / __nv_bfloat16 per half_grad_kind
  HalfKind half_grad_kind;
  int64_t half_grad_stride;  // elements
  // Per-row outputs, each (rows,) or nullptr.
  float* lse_out;
  float* target_logit_out;  // written here only when partials == nullptr (else row_stats wrote it)
  float* mean_logit_out;
  float* entropy_out;
  cudaStream_t stream;
};

// delta[r] = (target_ref - lse_ref) - (target_base - lse_base) from the two models' row_stats outputs.
struct RowDeltaParams {
  int64_t rows;
  int splits;
  const RowPartial* base_partials;
  const float* base_target_logit;
  const RowPartial* ref_partials;
  const float* ref_target_logit;
  float* delta;
  cudaStream_t stream;
};

// dst row i <- src row index[i] (gather) or dst row index[i] <- src row i (scatter), for rows of
// row_bytes bytes; strides in bytes. Copies use the widest of 16 / 8 / 4 / 2 / 1 bytes that the
// pointers, strides and row length allow.
struct RowCopyParams {
  const char* src;
  char* dst;
  const int64_t* index;  // (rows,) indices into the (index_bound,) side
  int64_t rows;
  int64_t index_bound;   // rows on the indexed side; an out-of-range index is skipped
  int64_t row_bytes;
  int64_t src_stride;
  int64_t dst_stride;
  cudaStream_t stream;
};

// Each launcher throws std::runtime_error with the CUDA error string when the launch fails.
void row_stats(const RowStatsParams& p);
void row_finalize(const RowFinalizeParams& p);
void row_delta(const RowDeltaParams& p);
void gather_rows(const RowCopyParams& p);
void scatter_rows(const RowCopyParams& p);

// The virtual architectures the device code was compiled for (nvcc's __CUDA_ARCH_LIST__, e.g. {800, 900}).
std::vector<int> compiled_archs();
// "" when the current device (of this module's CUDA runtime) can run these kernels, else the CUDA error
// (no kernel image for the device's architecture, driver older than the runtime, no device).
std::string current_device_support();

}  // namespace xtf

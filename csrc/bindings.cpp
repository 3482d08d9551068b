// The Python module xtf_kernels._C: the one file that knows about Python (through pybind11).
//
// Tensors arrive as integers (tensor.data_ptr(), 0 for "absent") and the stream as the integer handle
// torch.cuda.current_stream().cuda_stream; the Python driver (xtf_kernels/ops/_cuda/) checks dtypes,
// devices, shapes and layouts before calling. No torch header is included, so this builds with nvcc and
// a host compiler on a machine whose torch has no CUDA, and the module imports without a GPU driver
// (the CUDA runtime is linked statically and the driver library is never linked).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "xtf_kernels.h"

namespace py = pybind11;

namespace {

template <typename T>
T* pointer(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

std::string error_text(cudaError_t err) {
  cudaGetLastError();  // clear it: the next call must not report it again
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

// Makes `device` current for this module's CUDA runtime (a static copy, separate from torch's) and returns
// the stream. The Python side launches inside `torch.cuda.device(device)`, so this is the device torch
// already made current: the call changes nothing for torch and pins the launch to the stream's device.
cudaStream_t on_device(int device, std::uintptr_t stream) {
  const cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) {
    throw std::runtime_error("xtf_kernels: cudaSetDevice(" + std::to_string(device) + ") failed: " + error_text(err));
  }
  return reinterpret_cast<cudaStream_t>(stream);
}

// "" when `device` can run the kernels, else the CUDA error (driver too old for this runtime, no kernel
// image for the device's architecture, no device).
std::string device_support(int device) {
  const cudaError_t err = cudaSetDevice(device);
  return err == cudaSuccess ? xtf::current_device_support() : error_text(err);
}

xtf::LogitsChunk chunk_of(std::uintptr_t logits, int64_t rows, int64_t vocab, int64_t row_stride,
                          std::uintptr_t targets, float softcap, float inv_temperature, float logit_scale,
                          std::uintptr_t class_weights, int splits) {
  return {pointer<float>(logits), rows,        vocab,       row_stride, pointer<const int64_t>(targets),
          softcap,                inv_temperature, logit_scale, pointer<const float>(class_weights), splits};
}

void row_stats(std::uintptr_t logits, int64_t rows, int64_t vocab, int64_t row_stride, std::uintptr_t targets,
               float softcap, float inv_temperature, float logit_scale, std::uintptr_t class_weights, int splits,
               std::uintptr_t partials, std::uintptr_t target_logit, std::uintptr_t partial_argmax, int device,
               std::uintptr_t stream) {
  xtf::row_stats({chunk_of(logits, rows, vocab, row_stride, targets, softcap, inv_temperature, logit_scale,
                           class_weights, splits),
                  pointer<xtf::RowPartial>(partials), pointer<float>(target_logit), pointer<int64_t>(partial_argmax),
                  on_device(device, stream)});
}

void row_finalize(std::uintptr_t logits, int64_t rows, int64_t vocab, int64_t row_stride, std::uintptr_t targets,
                  float softcap, float inv_temperature, float logit_scale, std::uintptr_t class_weights, int splits,
                  std::uintptr_t partials, std::uintptr_t lse_in, std::uintptr_t entropy_in, std::uintptr_t grad_loss,
                  std::uintptr_t grad_logprob, std::uintptr_t grad_entropy, std::uintptr_t grad_lse,
                  float label_smoothing, float z_loss, std::uintptr_t class_weight_sum, bool write_fp32_grad,
                  std::uintptr_t half_grad, int half_grad_kind, int64_t half_grad_stride, std::uintptr_t lse_out,
                  std::uintptr_t target_logit_out, std::uintptr_t mean_logit_out, std::uintptr_t entropy_out,
                  int device, std::uintptr_t stream) {
  if (half_grad_kind < 0 || half_grad_kind > 2) {
    throw std::invalid_argument("half_grad_kind must be 0 (none), 1 (float16) or 2 (bfloat16)");
  }
  xtf::RowFinalizeParams p;
  p.chunk = chunk_of(logits, rows, vocab, row_stride, targets, softcap, inv_temperature, logit_scale, class_weights,
                     splits);
  p.partials = pointer<const xtf::RowPartial>(partials);
  p.lse_in = pointer<const float>(lse_in);
  p.entropy_in = pointer<const float>(entropy_in);
  p.grad_loss = pointer<const float>(grad_loss);
  p.grad_logprob = pointer<const float>(grad_logprob);
  p.grad_entropy = pointer<const float>(grad_entropy);
  p.grad_lse = pointer<const float>(grad_lse);
  p.label_smoothing = label_smoothing;
  p.z_loss = z_loss;
  p.class_weight_sum = pointer<const float>(class_weight_sum);
  p.write_fp32_grad = write_fp32_grad;
  p.half_grad = pointer<void>(half_grad);
  p.half_grad_kind = static_cast<xtf::HalfKind>(half_grad_kind);
  p.half_grad_stride = half_grad_stride;
  p.lse_out = pointer<float>(lse_out);
  p.target_logit_out = pointer<float>(target_logit_out);
  p.mean_logit_out = pointer<float>(mean_logit_out);
  p.entropy_out = pointer<float>(entropy_out);
  p.stream = on_device(device, stream);
  xtf::row_finalize(p);
}

void row_delta(int64_t rows, int splits, std::uintptr_t base_partials, std::uintptr_t base_target_logit,
               std::uintptr_t ref_partials, std::uintptr_t ref_target_logit, std::uintptr_t delta,
               int device, std::uintptr_t stream) {
  xtf::row_delta({rows, splits, pointer<const xtf::RowPartial>(base_partials), pointer<const float>(base_target_logit),
                  pointer<const xtf::RowPartial>(ref_partials), pointer<const float>(ref_target_logit),
                  pointer<float>(delta), on_device(device, stream)});
}

xtf::RowCopyParams copy_params(std::uintptr_t src, std::uintptr_t dst, std::uintptr_t index, int64_t rows,
                               int64_t index_bound, int64_t row_bytes, int64_t src_stride, int64_t dst_stride,
                               int device, std::uintptr_t stream) {
  return {pointer<const char>(src), pointer<char>(dst), pointer<const int64_t>(index), rows, index_bound, row_bytes,
          src_stride, dst_stride, on_device(device, stream)};
}

int driver_version() {
  int version = 0;
  // Returns 0 (and success) when no driver is installed.
  if (cudaDriverGetVersion(&version) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return version;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "CUDA kernels of xtf_kernels (row statistics, in-place logit gradients, row compaction).";
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("row_stats", &row_stats, nogil,
        "Online softmax statistics (and, with partial_argmax, the first index of the maximum) per (row, vocabulary "
        "slice).", py::kw_only(),
        py::arg("logits"), py::arg("rows"), py::arg("vocab"), py::arg("row_stride"), py::arg("targets"),
        py::arg("softcap"), py::arg("inv_temperature"), py::arg("logit_scale"), py::arg("class_weights"),
        py::arg("splits"), py::arg("partials"), py::arg("target_logit"), py::arg("partial_argmax"), py::arg("device"),
        py::arg("stream"));
  m.def("row_finalize", &row_finalize, nogil,
        "Per-row lse / mean logit / entropy from the partials; dL/dy over the fp32 logits and / or into a 16-bit "
        "buffer (half_grad_kind 1 = float16, 2 = bfloat16).", py::kw_only(),
        py::arg("logits"), py::arg("rows"), py::arg("vocab"), py::arg("row_stride"), py::arg("targets"),
        py::arg("softcap"), py::arg("inv_temperature"), py::arg("logit_scale"), py::arg("class_weights"),
        py::arg("splits"), py::arg("partials"), py::arg("lse_in"), py::arg("entropy_in"), py::arg("grad_loss"),
        py::arg("grad_logprob"), py::arg("grad_entropy"), py::arg("grad_lse"), py::arg("label_smoothing"),
        py::arg("z_loss"), py::arg("class_weight_sum"), py::arg("write_fp32_grad"), py::arg("half_grad"),
        py::arg("half_grad_kind"), py::arg("half_grad_stride"), py::arg("lse_out"), py::arg("target_logit_out"),
        py::arg("mean_logit_out"), py::arg("entropy_out"), py::arg("device"), py::arg("stream"));
  m.def("row_delta", &row_delta, nogil, "Per-row logp_ref - logp_base from two models' row_stats outputs.",
        py::kw_only(), py::arg("rows"), py::arg("splits"), py::arg("base_partials"), py::arg("base_target_logit"),
        py::arg("ref_partials"), py::arg("ref_target_logit"), py::arg("delta"), py::arg("device"),
        py::arg("stream"));
  m.def(
      "gather_rows",
      [](std::uintptr_t src, std::uintptr_t dst, std::uintptr_t index, int64_t rows, int64_t index_bound,
         int64_t row_bytes, int64_t src_stride, int64_t dst_stride, int device, std::uintptr_t stream) {
        xtf::gather_rows(
            copy_params(src, dst, index, rows, index_bound, row_bytes, src_stride, dst_stride, device, stream));
      },
      nogil, "dst row i <- src row index[i] (strides in bytes).", py::kw_only(), py::arg("src"), py::arg("dst"),
      py::arg("index"), py::arg("rows"), py::arg("index_bound"), py::arg("row_bytes"), py::arg("src_stride"),
      py::arg("dst_stride"), py::arg("device"), py::arg("stream"));
  m.def(
      "scatter_rows",
      [](std::uintptr_t src, std::uintptr_t dst, std::uintptr_t index, int64_t rows, int64_t index_bound,
         int64_t row_bytes, int64_t src_stride, int64_t dst_stride, int device, std::uintptr_t stream) {
        xtf::scatter_rows(
            copy_params(src, dst, index, rows, index_bound, row_bytes, src_stride, dst_stride, device, stream));
      },
      nogil, "dst row index[i] <- src row i (strides in bytes).", py::kw_only(), py::arg("src"), py::arg("dst"),
      py::arg("index"), py::arg("rows"), py::arg("index_bound"), py::arg("row_bytes"), py::arg("src_stride"),
      py::arg("dst_stride"), py::arg("device"), py::arg("stream"));

  m.def("max_splits", [] { return xtf::kMaxSplits; }, "Most vocabulary slices per row.");
  m.def("compiled_archs", &xtf::compiled_archs, "Virtual architectures of the device code, e.g. [800, 900].");
  m.def("cuda_runtime_version", [] { return CUDART_VERSION; }, "CUDA runtime version built against (13000 = 13.0).");
  m.def("cuda_driver_version", &driver_version, "CUDA version the installed driver supports; 0 without a driver.");
  m.def("device_support", &device_support, py::arg("device"),
        "'' when CUDA device `device` can run the kernels, else the CUDA error saying why not.");
}

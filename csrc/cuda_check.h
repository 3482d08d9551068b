// Turns a failed kernel launch into a C++ exception (pybind11 raises it in Python as RuntimeError).
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace xtf {

inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("xtf_kernels: launching ") + kernel + " failed: " + cudaGetErrorName(err) +
                             " (" + cudaGetErrorString(err) + ")");
  }
}

}  // namespace xtf

#pragma once
// The CUDA backend: BF16 activations and weights on one GPU, cuBLASLt matrix products,
// fused small kernels and paged attention over the KV pool's block tables.
// Plain C++ header: users need no CUDA headers to call it.
#include <memory>
#include <string>

#include "backend/backend.h"

namespace batchmax {

struct CudaBackendOptions {
  int device = 0;
  size_t gemm_workspace_bytes = size_t(32) << 20;  // cuBLASLt's suggestion for Hopper
  // Products of at most this many rows use the few-row kernel (small_m_gemm.h); 0: none,
  // -1: BATCHMAX_CUDA_SMALL_GEMM_ROWS if set, else none (an experiment, off by default).
  int small_m_max_rows = -1;
};

// Throws batchmax::Error when no CUDA device can be used.
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& opts = {});

// Devices the runtime sees (0 when there is no driver or no GPU; never throws).
int cuda_device_count();

// The card's measured ceilings, the yardsticks benchmarks report against.
struct CudaCeilings {
  std::string device_name;
  double bf16_gemm_tflops = 0;  // cuBLASLt bf16 x bf16 -> bf16, fp32 accumulate, 8192^3
  double copy_gbps = 0;         // device-to-device cudaMemcpy of 1 GiB, read + write bytes
};
CudaCeilings measure_ceilings(int device = 0);

// Free and total device memory now (benchmarks size "the whole GPU" from it).
struct CudaMemoryInfo {
  int64_t free_bytes = 0, total_bytes = 0;
};
CudaMemoryInfo cuda_memory_info(int device = 0);

// Makes "cuda" available to make_backend() (backend/backend_registry.h).
void register_cuda_backend();

}  // namespace batchmax

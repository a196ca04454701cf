// The MLP's swiglu folded into its gate product through cuDNN's runtime fusion (a matmul
// with pointwise ops after it): out = silu(x . w_gate^T) * up, where up = x . w_up^T comes
// first from cuBLASLt. cuBLASLt has no swiglu epilogue, so without this a prefill layer
// runs the stacked gate/up product and then a swiglu pass that reads both halves back.
// On an H100 at 2048 rows of Llama-3-8B's MLP (bench/device/cudnn_swiglu_gemm.cu): 306 us
// (up) + 334 us (fused gate) against 611 us (gate/up) + 66 us (swiglu).
//
// cuDNN's fused kernels are compiled per shape class and some row counts run far slower
// than others (2049-2168 rows: 470-620 us for the fused gate), so each row count is timed
// against the two-pass path on its own operands before it is used, once it has recurred.
//
// Off by default. Inside W-full (Llama-3.1-8B dummy weights, H100) it took 3-18% off the
// gate/up pair at 1912-2048 rows and added 1-41% at 1080-1656 rows; a traced 2048-token
// step went from 53.33 to 52.86 ms. But a decision took 0.05-3.7 s of host time (cuDNN
// compiles its kernels with NVRTC), which in `full`'s run of varied row counts cost more
// than the fused products saved (bench/results/cudnn_swiglu_2026-11-28/).
// BATCHMAX_CUDA_CUDNN_SWIGLU=1 turns it on; =force also skips the timing (tests).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "backend/backend.h"

namespace batchmax::cuda {

class CudnnSwiglu {
 public:
  // Null when cuDNN cannot be used (no libcudnn.so.9, or BATCHMAX_CUDA_CUDNN_SWIGLU=0);
  // `why` then says which.
  static std::unique_ptr<CudnnSwiglu> open(cudaStream_t stream, std::string& why);
  virtual ~CudnnSwiglu() = default;

  // The two launches of each path, on the stream given to open():
  //   up_product: up = x . w_up^T;   two_pass: the stacked product, then the swiglu.
  // run() writes out = silu(x . w_gate^T) * up through cuDNN (after up_product) and returns
  // true, or returns false having launched nothing that the caller must redo: the caller
  // then runs the two-pass path. bf16 x [rows, k], w_gate [n, k], up and out [rows, n],
  // rows contiguous along k and n (up may have a wider row stride).
  virtual bool run(const Tensor& x, const Tensor& w_gate, const Tensor& up, Tensor& out,
                   const std::function<void()>& up_product,
                   const std::function<void()>& two_pass) = 0;
  // Products that ran fused so far (tests, logs).
  virtual int64_t fused_runs() const = 0;
};

}  // namespace batchmax::cuda

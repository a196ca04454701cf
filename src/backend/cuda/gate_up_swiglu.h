#pragma once
// The first half of a decode step's MLP in one kernel: out = swiglu(x . w_gate^T, x . w_up^T)
// for a stacked w_gate_up (the gate rows over the up rows, as the model stacks them on
// this backend), x of at most kMaxRows rows, bf16 in and out, fp32 accumulation.
//
// Through cuBLASLt the product and the swiglu are two kernels, and the product cannot
// start its loads before the kernel before it (add + norm) has ended. This kernel:
// - takes 64 features a CTA, gate and up rows in the same warps (a warp's mma tile is 8
//   gate rows over the same features' 8 up rows), so the swiglu runs on the fp32
//   accumulators and the gate/up product is never written;
// - streams the weights through TMA boxes (16 KB a stage) in a 3-deep ring, 2 CTAs an SM
//   (the shape that matched cuBLASLt on this product in bench/results/small_m_gemm_*);
// - is a programmatic dependent launch that starts its first weight stages before
//   waiting for the kernel before (the weights are not that kernel's output; x is).
//
// BATCHMAX_CUDA_FUSED_GATE_UP=0 turns it off (the product and swiglu as before).
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "backend/backend.h"

namespace batchmax::cuda {

class GateUpSwiglu {
 public:
  static constexpr int64_t kMaxRows = 128;
  static constexpr int64_t kFeaturesPerCta = 64;

  GateUpSwiglu();
  // Whether run() takes this product: bf16 x, w and out with 16-byte aligned rows,
  // 1 <= x.rows <= kMaxRows, x.cols (k) a multiple of 64, w.rows = 2 * out.cols with
  // out.cols a multiple of 64 and at least one CTA per SM (fewer leave the card
  // half idle: cuBLASLt then), and the kernel switched on.
  bool accepts(const Tensor& x, const Tensor& w, const Tensor& out) const;
  void run(const Tensor& x, const Tensor& w, Tensor& out, cudaStream_t s);

 private:
  struct Maps {
    CUtensorMap w, x;
  };
  // (x, rows, x stride, w, w rows, k): the TMA maps are encoded once per operand set.
  using Key = std::tuple<const void*, int64_t, size_t, const void*, int64_t, int64_t>;
  const Maps& maps(const Tensor& x, const Tensor& w);

  bool enabled_;
  int sms_ = 0;
  std::map<Key, Maps> maps_;
};

}  // namespace batchmax::cuda

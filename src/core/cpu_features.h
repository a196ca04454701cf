#pragma once
// Run-time CPU feature detection: the SIMD kernels are compiled for AVX2/FMA/F16C and
// chosen only when the machine we run on has them, so the binary stays portable.
namespace batchmax {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  // Everything kernels_avx2.cpp needs.
  bool has_avx2_kernels() const { return avx2 && fma && f16c; }
};

// Detected once, then cached.
const CpuFeatures& cpu_features();

}  // namespace batchmax

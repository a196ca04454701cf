#pragma once
// Shared by the standalone device benchmarks (gemm_candidates.cu, cudnn_swiglu_gemm.cu):
// exit-on-error checks, a random bf16 fill and a stream timer.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CK(x)                                                                         \
  do {                                                                                \
    cudaError_t e_ = (x);                                                             \
    if (e_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)
#define CL(x)                                                                          \
  do {                                                                                 \
    cublasStatus_t s_ = (x);                                                           \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                 \
      std::fprintf(stderr, "%s:%d cublasLt status %d\n", __FILE__, __LINE__, int(s_)); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

// bf16 bits with magnitude in [2^(e0-127), 2^(e0-119)), random sign and mantissa
// (e0 = 119: values in (-1, 1)).
static __global__ void fill_bf16_bits(unsigned short* p, size_t n, unsigned seed, int e0 = 119) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    unsigned z = unsigned(i) * 2654435761u + seed;
    z ^= z >> 15;
    z *= 2246822519u;
    z ^= z >> 13;
    p[i] = (unsigned short)(((z >> 31) << 15) | ((e0 + (z >> 8) % 8) << 7) | (z & 0x7f));
  }
}

// Mean time (ms) of `runs` calls of f on stream s, after one unmeasured call.
template <class F>
float time_ms(cudaStream_t s, int runs, F&& f) {
  f();
  cudaEvent_t t0, t1;
  CK(cudaEventCreate(&t0));
  CK(cudaEventCreate(&t1));
  CK(cudaEventRecord(t0, s));
  for (int r = 0; r < runs; ++r) f();
  CK(cudaEventRecord(t1, s));
  CK(cudaEventSynchronize(t1));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, t0, t1));
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  return ms / runs;
}

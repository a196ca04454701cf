// The card's two ceilings, measured rather than read off a datasheet: a large bf16
// matrix product through the same cuBLASLt path matmul() uses, and a 1 GiB
// device-to-device copy. Median of timed repeats after warm-up, on random data.
#include <algorithm>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/gemm.h"

namespace batchmax {

namespace {

template <class F>
double median_ms(cudaStream_t s, int warmup, int reps, F&& f) {
  cudaEvent_t a, b;
  BMX_CUDA(cudaEventCreate(&a));
  BMX_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < warmup; ++i) f();
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; ++i) {
    BMX_CUDA(cudaEventRecord(a, s));
    f();
    BMX_CUDA(cudaEventRecord(b, s));
    BMX_CUDA(cudaEventSynchronize(b));
    BMX_CUDA(cudaEventElapsedTime(&ms[i], a, b));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[reps / 2];
}

}  // namespace

CudaCeilings measure_ceilings(int device) {
  CudaCeilings c;
  BMX_CUDA(cudaSetDevice(device));
  cudaDeviceProp prop{};
  BMX_CUDA(cudaGetDeviceProperties(&prop, device));
  c.device_name = prop.name;
  cudaStream_t s;
  BMX_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  {
    const int64_t n = 8192;
    Tensor x{nullptr, GgmlType::BF16, n, n, size_t(n) * 2}, w = x, o = x;
    for (Tensor* t : {&x, &w, &o}) BMX_CUDA(cudaMalloc(&t->data, t->bytes()));
    cuda::launch_fill_random(x.data, GgmlType::BF16, n * n, 1, s);
    cuda::launch_fill_random(w.data, GgmlType::BF16, n * n, 2, s);
    cuda::Gemm gemm(size_t(32) << 20);
    const double ms = median_ms(s, 3, 10, [&] { gemm.run(x, w, o, s); });
    c.bf16_gemm_tflops = 2.0 * n * n * n / (ms * 1e-3) / 1e12;
    for (Tensor* t : {&x, &w, &o}) cudaFree(t->data);
  }
  {
    const size_t bytes = size_t(1) << 30;
    void *a, *b;
    BMX_CUDA(cudaMalloc(&a, bytes));
    BMX_CUDA(cudaMalloc(&b, bytes));
    cuda::launch_fill_random(a, GgmlType::F32, int64_t(bytes / 4), 3, s);
    const double ms = median_ms(s, 2, 10, [&] {
      BMX_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s));
    });
    c.copy_gbps = 2.0 * double(bytes) / (ms * 1e-3) / 1e9;  // read + write
    cudaFree(a);
    cudaFree(b);
  }
  BMX_CUDA(cudaStreamSynchronize(s));
  cudaStreamDestroy(s);
  return c;
}

CudaMemoryInfo cuda_memory_info(int device) {
  BMX_CUDA(cudaSetDevice(device));
  size_t free_b = 0, total_b = 0;
  BMX_CUDA(cudaMemGetInfo(&free_b, &total_b));
  return {int64_t(free_b), int64_t(total_b)};
}

}  // namespace batchmax

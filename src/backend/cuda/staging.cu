#include "backend/cuda/staging.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/cuda_common.cuh"

namespace batchmax::cuda {

Staging::Staging(size_t half_bytes) : half_(half_bytes) {
  BMX_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&host_), 2 * half_, cudaHostAllocDefault));
  BMX_CUDA(cudaMalloc(reinterpret_cast<void**>(&dev_), 2 * half_));
  for (auto& e : left_) BMX_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  BMX_CUDA(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
  BMX_CUDA(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));
  BMX_CUDA(cudaEventCreateWithFlags(&queued_, cudaEventDisableTiming));
}

Staging::~Staging() {
  cudaStreamSynchronize(copy_);
  for (auto& e : left_) cudaEventDestroy(e);
  cudaEventDestroy(copied_);
  cudaEventDestroy(queued_);
  cudaStreamDestroy(copy_);
  cudaFree(dev_);
  cudaFreeHost(host_);
}

void Staging::grow(size_t need, cudaStream_t s) {
  if (const char* e = std::getenv("BATCHMAX_CUDA_MEMLOG"); e && *e && *e != '0')
    std::fprintf(stderr, "[cuda mem] staging: half %zu -> >= %zu bytes\n", half_, need);
  BMX_CUDA(cudaStreamSynchronize(s));  // nothing in flight reads the old buffers
  BMX_CUDA(cudaStreamSynchronize(copy_));
  cudaFree(dev_);
  cudaFreeHost(host_);
  while (half_ < need) half_ *= 2;
  BMX_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&host_), 2 * half_, cudaHostAllocDefault));
  BMX_CUDA(cudaMalloc(reinterpret_cast<void**>(&dev_), 2 * half_));
  cur_ = 0;
  off_ = 0;
  pending_[0] = pending_[1] = false;
}

Staging::Wait Staging::wait_mode() {
  static const Wait w = [] {
    const char* e = std::getenv("BATCHMAX_CUDA_STAGING_WAIT");
    if (!e || !*e || std::strcmp(e, "auto") == 0) return Wait::Auto;
    if (std::strcmp(e, "stream") == 0) return Wait::Stream;
    if (std::strcmp(e, "host") == 0) return Wait::Host;
    throw Error(std::string("BATCHMAX_CUDA_STAGING_WAIT: '") + e + "' (expected auto, host or stream)");
  }();
  return w;
}

void* Staging::put(const void* src, size_t n, cudaStream_t s) {
  const size_t bytes = n;
  n = (n + 15) / 16 * 16;  // keeps every put 16-byte aligned
  if (n > half_) {
    grow(n, s);
  } else if (off_ + n > half_) {
    BMX_CUDA(cudaEventRecord(left_[cur_], s));
    pending_[cur_] = true;
    cur_ ^= 1;
    if (pending_[cur_]) BMX_CUDA(cudaEventSynchronize(left_[cur_]));
    pending_[cur_] = false;
    off_ = 0;
  }
  char* h = host_ + cur_ * half_ + off_;
  char* d = dev_ + cur_ * half_ + off_;
  std::memcpy(h, src, bytes);
  // Safe to overwrite d now: the last reader of this half finished (the wait above), and
  // the host wrote h before the copy was queued.
  BMX_CUDA(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, copy_));
  BMX_CUDA(cudaEventRecord(copied_, copy_));
  const Wait mode = wait_mode();
  bool on_host = false;
  if (mode != Wait::Stream) {
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    BMX_CUDA(cudaStreamIsCapturing(s, &capturing));
    if (capturing == cudaStreamCaptureStatusNone) {
      on_host = mode == Wait::Host;
      if (mode == Wait::Auto) {
        // Not ready: the GPU still runs work queued before the previous put.
        const cudaError_t q = queued_set_ ? cudaEventQuery(queued_) : cudaSuccess;
        if (q != cudaSuccess && q != cudaErrorNotReady) BMX_CUDA(q);
        on_host = q == cudaErrorNotReady;
        if (on_host && cudaPeekAtLastError() == cudaErrorNotReady) cudaGetLastError();  // not an error
        BMX_CUDA(cudaEventRecord(queued_, s));
        queued_set_ = true;
      }
    }
  }
  if (on_host)
    BMX_CUDA(cudaEventSynchronize(copied_));  // the bytes are on the device before any launch reads them
  else
    BMX_CUDA(cudaStreamWaitEvent(s, copied_, 0));
  off_ += n;
  return d;
}

}  // namespace batchmax::cuda

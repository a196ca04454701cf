#include "backend/cuda/kept_picks.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "backend/cuda/cuda_common.cuh"

namespace batchmax::cuda {
namespace {

__global__ void resolve_ids_kernel(int32_t* ids, const int32_t* index, const int32_t* picks,
                                   int64_t n) {
  pdl_begin();
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < n;
       r += int64_t(gridDim.x) * blockDim.x)
    if (index[r] >= 0) ids[r] = picks[index[r]];
}

}  // namespace

KeptPicks::KeptPicks() {
  for (Set& s : sets_) BMX_CUDA(cudaEventCreateWithFlags(&s.copied, cudaEventDisableTiming));
}

KeptPicks::~KeptPicks() {
  for (Set& s : sets_) {
    if (s.copied) cudaEventSynchronize(s.copied);
    if (s.dev) cudaFree(s.dev);
    if (s.host) cudaFreeHost(s.host);
    if (s.copied) cudaEventDestroy(s.copied);
  }
}

KeptPicks::Set& KeptPicks::at(int set) {
  if (set < 0 || set > 1) throw Error("cuda: pick set " + std::to_string(set) + " is not 0 or 1");
  return sets_[set];
}

int32_t* KeptPicks::device(int set, int64_t n, cudaStream_t s) {
  Set& k = at(set);
  if (n > k.cap) {
    const int64_t cap = std::max<int64_t>({n, 2 * k.cap, 4096});
    BMX_CUDA(cudaStreamSynchronize(s));
    int32_t *dev = nullptr, *host = nullptr;
    BMX_CUDA(cudaMalloc(&dev, size_t(cap) * 4));
    BMX_CUDA(cudaMallocHost(&host, size_t(cap) * 4));
    if (k.made > 0) {
      BMX_CUDA(cudaMemcpy(dev, k.dev, size_t(k.made) * 4, cudaMemcpyDeviceToDevice));
      std::memcpy(host, k.host, size_t(k.made) * 4);
    }
    if (k.dev) BMX_CUDA(cudaFree(k.dev));
    if (k.host) BMX_CUDA(cudaFreeHost(k.host));
    k.dev = dev;
    k.host = host;
    k.cap = cap;
  }
  return k.dev;
}

void KeptPicks::copy_back(int set, int64_t first, int64_t n, cudaStream_t s) {
  Set& k = at(set);
  if (first < 0 || n < 0 || first + n > k.cap) throw Error("cuda: picks copied back past their room");
  if (n == 0) return;
  BMX_CUDA(cudaMemcpyAsync(k.host + first, k.dev + first, size_t(n) * 4, cudaMemcpyDeviceToHost, s));
  BMX_CUDA(cudaEventRecord(k.copied, s));
  k.made = std::max(k.made, first + n);
}

void KeptPicks::fetch(int set, int64_t n, int32_t* out) {
  Set& k = at(set);
  if (n < 0 || n > k.made) throw Error("cuda: fetch of picks never made");
  BMX_CUDA(cudaEventSynchronize(k.copied));
  std::memcpy(out, k.host, size_t(n) * 4);
}

void KeptPicks::resolve(int set, int32_t* d_ids, const int32_t* d_index, int64_t n, cudaStream_t s) {
  Set& k = at(set);
  if (n == 0) return;
  if (!k.dev) throw Error("cuda: embed of picks never made");
  const int threads = 256;
  const unsigned blocks = unsigned(std::min<int64_t>((n + threads - 1) / threads, 1024));
  launch_pdl(resolve_ids_kernel, blocks, threads, 0, s, d_ids, d_index,
             static_cast<const int32_t*>(k.dev), n);
  BMX_LAUNCHED();
}

}  // namespace batchmax::cuda

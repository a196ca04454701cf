#pragma once
// Host spans (token ids, positions, slots, block tables) reach the GPU through a pinned
// ring of two halves mirrored on the device. Each op makes ONE put() before its
// launches; when the ring moves to the other half it first waits for the event recorded
// when that half was last left, which follows every launch that read it.
// The copies run on a stream of their own: a copy queued on the compute stream stalled it
// for the DMA's round trip (~5-10 us, several per layer), while on the side it lands
// before the kernels reach it. How a copy is ordered before its readers
// (BATCHMAX_CUDA_STAGING_WAIT):
//   stream: the compute stream waits on the copy's event. The wait is a node between two
//           kernels, so it ends a chain of programmatic dependent launches (~1-2.5 us of
//           idle GPU before each op that stages, three a layer in decode).
//   host:   put() returns once the copy is done (the host waits on its event), and the
//           stream gets no dependency. That costs the host the DMA's round trip
//           (~5-10 us) each put: free while it runs ahead of the GPU, a bubble when the
//           GPU waits for it (small models).
//   auto (default): host when the GPU is still running what was queued before the
//           previous put (the host is at least an op ahead), stream otherwise.
// A stream being captured into a graph always takes the event (its capture then fails,
// as before: a graph cannot hold staged data).
#include <cuda_runtime.h>

#include <cstddef>

namespace batchmax::cuda {

class Staging {
 public:
  explicit Staging(size_t half_bytes = size_t(4) << 20);
  ~Staging();
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  // Copies n bytes to the device (stream-ordered); the pointer stays valid for launches
  // made before the next put().
  void* put(const void* src, size_t n, cudaStream_t s);

  enum class Wait { Stream, Host, Auto };
  static Wait wait_mode();  // BATCHMAX_CUDA_STAGING_WAIT

 private:
  void grow(size_t need, cudaStream_t s);
  char* host_ = nullptr;
  char* dev_ = nullptr;
  size_t half_ = 0;
  int cur_ = 0;
  size_t off_ = 0;
  cudaEvent_t left_[2]{};
  cudaStream_t copy_ = nullptr;
  cudaEvent_t copied_ = nullptr;
  cudaEvent_t queued_ = nullptr;  // auto: the compute stream's tail at the last put
  bool queued_set_ = false;
  bool pending_[2] = {false, false};
};

}  // namespace batchmax::cuda

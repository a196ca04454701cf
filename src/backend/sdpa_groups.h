#pragma once
// How a fused-attention (SDPA) call over many (sequence, KV head) entries is cut so that
// each piece's K/V, gathered into dense rows padded to a power of two, fit a scratch cap.
// cuDNN runs its Hopper kernel on dense K/V and an older one on paged K/V, so the CUDA
// backend (cuda/cudnn_attention.cpp) gathers dense whenever a group fits. Host-only logic,
// tested on the CPU.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace batchmax {

// Consecutive entries [begin, end) of a call that run as one SDPA call; s_kv > 0: K/V
// gathered to [entry][s_kv][head_dim] (s_kv = the group's most entries, padded), 0: paged.
struct SdpaGroup {
  int begin = 0, end = 0;
  int64_t s_kv = 0;
};

// The smallest power-of-two multiple of lo that is >= v (lo when v <= lo).
int64_t round_up_pow2(int64_t v, int64_t lo);
// Bytes of K and V (bf16) of `entries` entries gathered to s_kv rows of head_dim.
size_t dense_kv_bytes(int64_t entries, int64_t s_kv, int head_dim);

// kv_entries[i]: entry i's cache entries. Greedy groups in order, each of dense K/V
// <= cap. One paged group of all entries when `paged` or when one entry alone passes cap.
std::vector<SdpaGroup> sdpa_dense_groups(std::span<const int32_t> kv_entries, int head_dim,
                                         size_t cap, bool paged);

}  // namespace batchmax

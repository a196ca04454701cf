#pragma once
// Weights pulled into L2 ahead of a few-row product. A decode step's products read their
// weights once and are bound by that read, while the small kernels between them (add +
// norm, swiglu, rope: a few microseconds each) leave the memory system idle. A tiny
// kernel issued just before such a small kernel asks L2 for the next product's first
// bytes (cp.async.bulk.prefetch.L2, fire and forget), so the product finds them there.
//
// BATCHMAX_CUDA_L2_PREFETCH: the bytes asked per product, in MiB (0 turns it off);
// BATCHMAX_CUDA_L2_PREFETCH_PATTERN: `rows` (the first bytes of every weight row: the
// product's CTAs all walk k from 0 at once) or `front` (the matrix's first bytes);
// BATCHMAX_CUDA_L2_PREFETCH_ROWS: products of at most this many rows are prefetched for.
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/backend.h"

namespace batchmax::cuda {

struct L2PrefetchConfig {
  int64_t bytes = 0;        // per product; 0: off
  bool row_prefix = true;   // false: the matrix's first bytes
  int64_t max_rows = 256;   // products of more rows are compute-bound: no prefetch
};

// From the environment (read once).
const L2PrefetchConfig& l2_prefetch_config();

// Asks L2 for up to cfg.bytes of w (a device weight matrix), stream-ordered on s after
// the kernel before it; the kernel after it may launch at once (it calls
// launch_dependents first and reads nothing itself).
void launch_l2_prefetch(const Tensor& w, const L2PrefetchConfig& cfg, cudaStream_t s);

}  // namespace batchmax::cuda

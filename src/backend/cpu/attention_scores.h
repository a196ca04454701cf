#pragma once
// Attention mass per cache entry for the eviction policies (the "second pass" of
// DESIGN.md section 1), and key norms, on host memory pools. Plain code: these run only
// for the few queries a policy observes.
#include <span>

#include "backend/backend.h"

namespace batchmax::cpu {

// One sequence, KV heads [g0, g1): out rows as Backend::attention_scores documents.
void attention_scores_seq(const Tensor& q, const AttentionSeq& s, const AttentionParams& p,
                          const KVPoolView& pool, int g0, int g1, float* out, int64_t stride);

void key_norms(const KVPoolView& pool, std::span<const int32_t> blocks, int64_t n_entries,
               float* out);

}  // namespace batchmax::cpu

#include "engine/scheduler.h"

#include <algorithm>

namespace batchmax {

namespace {

// Prefill chunks in admission order within `budget` tokens; returns the tokens used.
int64_t plan_prefill(const std::vector<SeqProgress>& seqs, int64_t budget, int64_t chunk,
                     const std::function<bool(size_t, int64_t)>& room, std::vector<StepItem>& items) {
  int64_t used = 0;
  for (size_t i = 0; i < seqs.size() && used < budget; ++i) {
    const SeqProgress& s = seqs[i];
    if (s.decoding) continue;
    const int64_t left = s.prompt_tokens - s.computed;
    if (left <= 0) continue;
    int64_t n = std::min(left, budget - used);
    if (chunk > 0) n = std::min(n, chunk);
    if (s.chunk > 0) n = std::min(n, s.chunk);
    if (room && !room(i, n)) break;
    items.push_back({i, n, true, n == left});
    used += n;
  }
  return used;
}

}  // namespace

std::vector<StepItem> plan_step(const std::vector<SeqProgress>& seqs, int64_t step_tokens,
                                int64_t chunk, const std::function<bool(size_t, int64_t)>& room,
                                StepOrder order) {
  int64_t decoders = 0;
  for (const SeqProgress& s : seqs) decoders += s.decoding ? 1 : 0;
  std::vector<StepItem> prefill;
  int64_t decode_rows = decoders;
  if (order == StepOrder::DecodeFirst) {
    // Decode tokens always run; prefill takes what is left, at least one token so a
    // step with many decoders cannot starve prefill forever.
    plan_prefill(seqs, std::max<int64_t>(step_tokens - decoders, 1), chunk, room, prefill);
  } else {
    const int64_t used = plan_prefill(seqs, step_tokens, chunk, room, prefill);
    if (used > 0) decode_rows = std::min(decoders, step_tokens - used);
  }
  std::vector<StepItem> items;
  for (size_t i = 0; i < seqs.size() && int64_t(items.size()) < decode_rows; ++i)
    if (seqs[i].decoding) items.push_back({i, 1, false, false});
  items.insert(items.end(), prefill.begin(), prefill.end());
  return items;
}

}  // namespace batchmax

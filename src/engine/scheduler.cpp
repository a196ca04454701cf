#include "engine/scheduler.h"

#include <algorithm>

namespace batchmax {

std::vector<StepItem> plan_step(const std::vector<SeqProgress>& seqs, int64_t step_tokens,
                                int64_t chunk, const std::function<bool(size_t, int64_t)>& room) {
  std::vector<StepItem> items;
  int64_t budget = step_tokens;
  for (size_t i = 0; i < seqs.size(); ++i)
    if (seqs[i].decoding) {
      items.push_back({i, 1, false, false});
      --budget;
    }
  // Decode tokens always run; prefill takes what is left, at least one token so a
  // step with many decoders cannot starve prefill forever.
  budget = std::max<int64_t>(budget, 1);
  for (size_t i = 0; i < seqs.size() && budget > 0; ++i) {
    const SeqProgress& s = seqs[i];
    if (s.decoding) continue;
    int64_t left = s.prompt_tokens - s.computed;
    if (left <= 0) continue;
    int64_t n = std::min(left, budget);
    if (chunk > 0) n = std::min(n, chunk);
    if (s.chunk > 0) n = std::min(n, s.chunk);
    if (room && !room(i, n)) break;
    items.push_back({i, n, true, n == left});
    budget -= n;
  }
  return items;
}

}  // namespace batchmax

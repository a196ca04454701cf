// SnapKV: attention of the last obs_window queries, max-pooled over neighbouring
// entries so that whole phrases around a strongly attended token survive together.
#include <algorithm>

#include "kv/policies/policies.h"

namespace batchmax {
namespace {
class SnapKVPolicy final : public EvictionPolicy {
 public:
  explicit SnapKVPolicy(int kernel) : half_(std::max(0, kernel / 2)) {}
  std::string name() const override { return "snapkv"; }
  ScoreNeed score_need() const override { return ScoreNeed::ObsWindow; }
  void score(const HeadEntries& e, std::span<float> out) const override {
    const int64_t n = int64_t(out.size());
    for (int64_t i = 0; i < n; ++i) {
      float m = e.attn[i];
      for (int64_t j = std::max<int64_t>(0, i - half_); j <= std::min(n - 1, i + half_); ++j)
        m = std::max(m, e.attn[j]);
      out[i] = m;
    }
  }

 private:
  int64_t half_;
};
}  // namespace
std::unique_ptr<EvictionPolicy> make_snapkv_policy(int kernel) {
  return std::make_unique<SnapKVPolicy>(kernel);
}
}  // namespace batchmax

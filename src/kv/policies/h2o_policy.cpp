// H2O heavy hitters: the attention probability each entry has received, summed over
// every query seen so far (kept per entry and compacted with the cache).
#include "kv/policies/policies.h"

namespace batchmax {
namespace {
class H2OPolicy final : public EvictionPolicy {
 public:
  std::string name() const override { return "h2o"; }
  ScoreNeed score_need() const override { return ScoreNeed::AllQueries; }
  bool keeps_state() const override { return true; }
  void observe(HeadEntries& e) const override {
    for (size_t i = 0; i < e.acc.size() && i < e.attn.size(); ++i) e.acc[i] += e.attn[i];
  }
  void score(const HeadEntries& e, std::span<float> out) const override {
    for (size_t i = 0; i < out.size(); ++i) out[i] = e.acc[i];
  }
};
}  // namespace
std::unique_ptr<EvictionPolicy> make_h2o_policy() { return std::make_unique<H2OPolicy>(); }
}  // namespace batchmax

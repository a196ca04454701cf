// TOVA: keep what the most recent query attends to most.
#include "kv/policies/policies.h"

namespace batchmax {
namespace {
class TovaPolicy final : public EvictionPolicy {
 public:
  std::string name() const override { return "tova"; }
  ScoreNeed score_need() const override { return ScoreNeed::LastQuery; }
  void score(const HeadEntries& e, std::span<float> out) const override {
    for (size_t i = 0; i < out.size(); ++i) out[i] = e.attn[i];
  }
};
}  // namespace
std::unique_ptr<EvictionPolicy> make_tova_policy() { return std::make_unique<TovaPolicy>(); }
}  // namespace batchmax

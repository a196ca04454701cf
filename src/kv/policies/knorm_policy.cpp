// K-norm: keys with a small L2 norm tend to draw the most attention, so the entries
// with the largest key norms go first. Needs no attention probabilities.
#include "kv/policies/policies.h"

namespace batchmax {
namespace {
class KNormPolicy final : public EvictionPolicy {
 public:
  std::string name() const override { return "knorm"; }
  bool needs_key_norms() const override { return true; }
  void score(const HeadEntries& e, std::span<float> out) const override {
    for (size_t i = 0; i < out.size(); ++i) out[i] = -e.key_norm[i];
  }
};
}  // namespace
std::unique_ptr<EvictionPolicy> make_knorm_policy() { return std::make_unique<KNormPolicy>(); }
}  // namespace batchmax

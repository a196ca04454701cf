// StreamingLLM: attention sinks plus the most recent entries. Sinks are protected by
// select_keep(); the rest is kept by recency.
#include "kv/policies/policies.h"

namespace batchmax {
namespace {
class WindowPolicy final : public EvictionPolicy {
 public:
  std::string name() const override { return "window"; }
  void score(const HeadEntries& e, std::span<float> out) const override {
    for (size_t i = 0; i < e.pos.size(); ++i) out[i] = float(e.pos[i]);
  }
};
}  // namespace
std::unique_ptr<EvictionPolicy> make_window_policy() { return std::make_unique<WindowPolicy>(); }
}  // namespace batchmax

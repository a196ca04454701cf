// Random eviction, the ablation baseline: a hash of (seed, position) so the choice is
// reproducible and independent of batch composition.
#include "kv/policies/policies.h"

namespace batchmax {
namespace {
uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
class RandomPolicy final : public EvictionPolicy {
 public:
  explicit RandomPolicy(uint64_t seed) : seed_(seed) {}
  std::string name() const override { return "random"; }
  void score(const HeadEntries& e, std::span<float> out) const override {
    for (size_t i = 0; i < out.size(); ++i)
      out[i] = float(mix(seed_ ^ uint64_t(uint32_t(e.pos[i]))) >> 40);
  }

 private:
  uint64_t seed_;
};
}  // namespace
std::unique_ptr<EvictionPolicy> make_random_policy(uint64_t seed) {
  return std::make_unique<RandomPolicy>(seed);
}
}  // namespace batchmax

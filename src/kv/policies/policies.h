#pragma once
// Factories of the built-in eviction policies (one small class each).
#include <cstdint>
#include <memory>

#include "kv/eviction_policy.h"

namespace batchmax {

std::unique_ptr<EvictionPolicy> make_window_policy();
std::unique_ptr<EvictionPolicy> make_h2o_policy();
std::unique_ptr<EvictionPolicy> make_tova_policy();
std::unique_ptr<EvictionPolicy> make_snapkv_policy(int pool_kernel);
std::unique_ptr<EvictionPolicy> make_knorm_policy();
std::unique_ptr<EvictionPolicy> make_random_policy(uint64_t seed);

}  // namespace batchmax

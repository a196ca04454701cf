#include "kv/eviction_policy.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "kv/policies/policies.h"

namespace batchmax {

const std::vector<std::string>& policy_names() {
  static const std::vector<std::string> names = {"full", "window", "h2o", "tova",
                                                 "snapkv", "knorm", "random"};
  return names;
}

std::unique_ptr<EvictionPolicy> make_policy(const std::string& name, const EvictionParams& p) {
  if (p.budget <= 0) throw Error("kv budget must be positive");
  if (p.sinks < 0 || p.window < 0) throw Error("sinks and window must be >= 0");
  if (p.sinks + p.window > p.budget)
    throw Error("kv budget " + std::to_string(p.budget) + " is smaller than sinks + window (" +
                std::to_string(p.sinks + p.window) + ")");
  if (name == "window") return make_window_policy();
  if (name == "h2o") return make_h2o_policy();
  if (name == "tova") return make_tova_policy();
  if (name == "snapkv") return make_snapkv_policy(p.pool_kernel);
  if (name == "knorm") return make_knorm_policy();
  if (name == "random") return make_random_policy(p.seed);
  if (name == "full") return nullptr;
  std::string known;
  for (const auto& n : policy_names()) known += (known.empty() ? "" : ", ") + n;
  throw Error("unknown kv policy '" + name + "' (known: " + known + ")");
}

std::vector<int32_t> select_keep(std::span<const int32_t> pos, std::span<const float> scores,
                                 const EvictionParams& p) {
  const int64_t n = int64_t(pos.size());
  std::vector<int32_t> keep;
  if (n <= p.budget) {
    keep.resize(n);
    std::iota(keep.begin(), keep.end(), 0);
    return keep;
  }
  std::vector<uint8_t> kept(n, 0);
  int64_t n_kept = 0;
  auto take = [&](int64_t i) {
    if (!kept[i] && n_kept < p.budget) { kept[i] = 1; ++n_kept; }
  };
  // Protected: attention sinks (by true position) and the most recent entries.
  for (int64_t i = 0; i < n; ++i)
    if (pos[i] < p.sinks) take(i);
  for (int64_t i = n - 1; i >= std::max<int64_t>(0, n - p.window); --i) take(i);
  std::vector<int32_t> order;
  order.reserve(n);
  for (int64_t i = 0; i < n; ++i)
    if (!kept[i]) order.push_back(int32_t(i));
  const int64_t room = p.budget - n_kept;
  auto better = [&](int32_t a, int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a > b);
  };
  if (room < int64_t(order.size()))
    std::nth_element(order.begin(), order.begin() + room, order.end(), better);
  for (int64_t i = 0; i < room && i < int64_t(order.size()); ++i) take(order[i]);
  for (int64_t i = 0; i < n; ++i)
    if (kept[i]) keep.push_back(int32_t(i));
  return keep;
}

}  // namespace batchmax

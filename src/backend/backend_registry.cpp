#include "backend/backend_registry.h"

#include <map>
#include <mutex>

#include "core/error.h"

namespace batchmax {
namespace {
std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::map<std::string, BackendFactory>& registry() {
  static std::map<std::string, BackendFactory> r = {
      {"cpu", [](const BackendOptions& o) {
         CpuBackendOptions c;
         c.n_threads = o.n_threads;
         c.force_scalar = o.force_scalar;
         c.q8_activations = o.q8_activations;
         return make_cpu_backend(c);
       }}};
  return r;
}
}  // namespace

void register_backend(const std::string& name, BackendFactory factory) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry()[name] = std::move(factory);
}

std::vector<std::string> backend_names() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  std::vector<std::string> names;
  for (const auto& [n, f] : registry()) names.push_back(n);
  return names;
}

std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& opts) {
  BackendFactory f;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    auto it = registry().find(name);
    if (it != registry().end()) f = it->second;
  }
  if (!f) {
    std::string known;
    for (const auto& n : backend_names()) known += (known.empty() ? "" : ", ") + n;
    throw Error("backend '" + name + "' is not in this build (available: " + known +
                (name == "cuda" ? "; build with -DBATCHMAX_CUDA=ON" : "") + ")");
  }
  return f(opts);
}

}  // namespace batchmax

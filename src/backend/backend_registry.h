#pragma once
// Backends by name. The CPU backend is always there; others (CUDA) register themselves
// from the library that holds them, so the engine never depends on CUDA at build time.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace batchmax {

struct BackendOptions {
  int n_threads = 0;            // CPU
  bool force_scalar = false;    // CPU
  bool q8_activations = false;  // CPU
  int device = 0;               // CUDA
};

using BackendFactory = std::function<std::unique_ptr<Backend>(const BackendOptions&)>;

void register_backend(const std::string& name, BackendFactory factory);
// Throws batchmax::Error naming the backends this build has.
std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& opts);
std::vector<std::string> backend_names();

}  // namespace batchmax

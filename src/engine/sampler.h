#pragma once
// Token sampling: greedy, or temperature with top-k / top-p, from a per-request seeded
// generator so a request's tokens do not depend on what else is in the batch.
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "batchmax/engine.h"

namespace batchmax {

// Throws batchmax::Error naming a parameter that is out of range.
void validate_sampling(const SamplingParams& p);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  int32_t sample(std::span<const float> logits);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
  std::vector<double> weights_;
};

int32_t argmax(std::span<const float> logits);

}  // namespace batchmax

#pragma once
// Token sampling: greedy, or temperature with top-k / top-p, from a per-request seeded
// generator so a request's tokens do not depend on what else is in the batch.
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <vector>

#include "backend/row_sampling.h"
#include "batchmax/engine.h"

namespace batchmax {

// Throws batchmax::Error naming a parameter that is out of range.
void validate_sampling(const SamplingParams& p);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  int32_t sample(std::span<const float> logits);

  // Temperature over the whole vocabulary (no top-k, no top-p): then a token is
  // sample_row_in_order(logits, inv_temperature(), draw_uniform()), which a backend can
  // compute where the logits are (Backend::sample_rows).
  bool samples_in_order() const;
  float inv_temperature() const;  // 0 when greedy
  // The next uniform in [0, 1) of this request's generator; sample() takes one per
  // token when the temperature is above 0.
  double draw_uniform();

  // Top-k / top-p (of a row `vocab` wide): whether the row's best kMaxTopCandidates
  // entries (Backend::top_candidates) may decide, and how many to ask for.
  bool samples_from_candidates(int64_t vocab) const;
  int candidates_wanted(int64_t vocab) const;
  // sample() from the row's best entries, sorted by value then index, and the row's mass
  // at this temperature; the same token as sample() on the whole row. Empty (and nothing
  // drawn) when they do not decide (candidates_decide): then sample() the whole row.
  // uniform: the draw's uniform, taken from draw_uniform() beforehand (null: drawn here).
  std::optional<int32_t> sample_candidates(std::span<const float> values,
                                           std::span<const int32_t> ids, double whole_mass,
                                           int64_t vocab, const double* uniform = nullptr);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  // The draw shared by sample() and sample_candidates(): cand sorted by value, then index.
  int32_t draw_from_sorted(std::span<const std::pair<float, int32_t>> cand, double whole_mass,
                           const double* uniform = nullptr);
  std::vector<std::pair<float, int32_t>> cand_;
  std::vector<double> prob_;
};

}  // namespace batchmax

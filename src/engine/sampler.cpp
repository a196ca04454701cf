#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "core/error.h"

namespace batchmax {

void validate_sampling(const SamplingParams& p) {
  if (!(p.temperature >= 0) || !std::isfinite(p.temperature) || p.temperature > 100)
    throw Error("temperature must be between 0 and 100, got " + std::to_string(p.temperature));
  if (p.top_k < 0) throw Error("top_k must be >= 0, got " + std::to_string(p.top_k));
  if (!(p.top_p > 0 && p.top_p <= 1))
    throw Error("top_p must be in (0, 1], got " + std::to_string(p.top_p));
  if (p.max_tokens < 0) throw Error("max_tokens must be >= 0, got " + std::to_string(p.max_tokens));
}

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {}

bool Sampler::samples_in_order() const {
  return p_.temperature > 0 && p_.top_k <= 0 && p_.top_p >= 1.0f;
}

float Sampler::inv_temperature() const { return p_.temperature > 0 ? 1.0f / p_.temperature : 0.0f; }

double Sampler::draw_uniform() {
  // What std::uniform_real_distribution<double>(0, total) scales by total (libstdc++), so
  // the draws of a seed are the same as before this was split out.
  return std::generate_canonical<double, std::numeric_limits<double>::digits>(rng_);
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (p_.temperature <= 0) return argmax_row(logits);
  const float inv_t = inv_temperature();
  // The whole vocabulary: no order needed (a sort of a 128k vocabulary per token cost
  // more than the GPU's decode step). Backend::sample_rows does the same on the device.
  if (samples_in_order()) return sample_row_in_order(logits, inv_t, draw_uniform());
  const float top = *std::max_element(logits.begin(), logits.end());
  cand_.clear();
  cand_.reserve(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) cand_.push_back({logits[i], int32_t(i)});
  size_t n = cand_.size();
  double whole_mass = 0;  // top-p alone: the nucleus is cut against the whole softmax
  if (p_.top_k > 0 && size_t(p_.top_k) < n) {
    std::partial_sort(cand_.begin(), cand_.begin() + p_.top_k, cand_.end(), candidate_before);
    n = size_t(p_.top_k);
  } else {
    // Top-p alone: sort only as many of the best as the nucleus needs, growing the
    // sorted prefix until its mass (of the whole softmax) reaches top_p.
    for (float x : logits) whole_mass += std::exp(double((x - top) * inv_t));
    size_t k = std::min<size_t>(n, 64);
    for (;;) {
      std::partial_sort(cand_.begin(), cand_.begin() + ptrdiff_t(k), cand_.end(), candidate_before);
      double acc = 0;
      for (size_t i = 0; i < k; ++i) acc += std::exp(double((cand_[i].first - top) * inv_t));
      if (k == n || acc / whole_mass >= p_.top_p) break;
      k = std::min(n, k * 4);
    }
    n = k;  // the nucleus below is cut from these k
  }
  return draw_from_sorted(std::span(cand_.data(), n), whole_mass);
}

int32_t Sampler::draw_from_sorted(std::span<const std::pair<float, int32_t>> cand, double whole_mass,
                                  const double* uniform) {
  // draw_sorted takes the uniform first; the generator's sequence is the same as when it
  // was drawn after the softmax (nothing else draws in between).
  return draw_sorted(cand, inv_temperature(), whole_mass, p_.top_p, uniform ? *uniform : draw_uniform(),
                     prob_);
}

bool Sampler::samples_from_candidates(int64_t vocab) const {
  if (!(p_.temperature > 0) || samples_in_order()) return false;
  return (p_.top_k > 0 && p_.top_k < vocab) ? p_.top_k <= kMaxTopCandidates : p_.top_p < 1.0f;
}

int Sampler::candidates_wanted(int64_t vocab) const {
  const int64_t k = (p_.top_k > 0 && p_.top_k < vocab) ? p_.top_k : kMaxTopCandidates;
  return int(std::min<int64_t>(k, vocab));
}

std::optional<int32_t> Sampler::sample_candidates(std::span<const float> values,
                                                  std::span<const int32_t> ids, double whole_mass,
                                                  int64_t vocab, const double* uniform) {
  if (values.size() != ids.size() || values.empty()) return std::nullopt;
  if (!candidates_decide(values, whole_mass, inv_temperature(), p_.top_k, p_.top_p, vocab))
    return std::nullopt;
  const bool top_k = p_.top_k > 0 && p_.top_k < vocab;
  const size_t n = top_k ? size_t(p_.top_k) : values.size();
  cand_.resize(n);
  for (size_t i = 0; i < n; ++i) cand_[i] = {values[i], ids[i]};
  return draw_from_sorted(std::span(cand_.data(), n), top_k ? 0.0 : whole_mass, uniform);
}

}  // namespace batchmax

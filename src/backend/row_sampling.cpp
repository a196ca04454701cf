#include "backend/row_sampling.h"

#include <algorithm>
#include <cmath>

namespace batchmax {

int32_t argmax_row(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[size_t(best)]) best = int32_t(i);
  return best;
}

int32_t sample_row_in_order(std::span<const float> logits, float inv_temperature, double u) {
  if (logits.empty()) return 0;
  const float top = *std::max_element(logits.begin(), logits.end());
  double total = 0;
  for (float x : logits) total += std::exp(double((x - top) * inv_temperature));
  // The running sum again instead of a stored copy: a second pass over a row that is in
  // cache costs less than a vocabulary-sized buffer per call.
  double r = u * total;
  for (size_t i = 0; i < logits.size(); ++i) {
    r -= std::exp(double((logits[i] - top) * inv_temperature));
    if (r < 0) return int32_t(i);
  }
  return argmax_row(logits);
}

bool candidates_decide(std::span<const float> values, double whole_mass, float inv_temperature,
                       int top_k, float top_p, int64_t vocab) {
  const int64_t k = int64_t(values.size());
  if (top_k > 0 && top_k < vocab) return top_k <= k;
  if (k >= vocab) return true;
  if (values.empty() || !(whole_mass > 0)) return false;
  double acc = 0;  // the Sampler's test: the mass of the sorted prefix against the whole
  for (float v : values) acc += std::exp(double((v - values[0]) * inv_temperature));
  return acc / whole_mass >= top_p;
}

int32_t draw_sorted(std::span<const std::pair<float, int32_t>> cand, float inv_temperature,
                    double whole_mass, float top_p, double u, std::vector<double>& prob) {
  const size_t n = cand.size();
  const float mx = cand[0].first;
  prob.resize(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += prob[i] = std::exp(double((cand[i].first - mx) * inv_temperature));
  if (whole_mass > 0) sum = whole_mass;
  size_t keep = n;
  if (top_p < 1.0f) {
    double acc = 0;
    for (size_t i = 0; i < n; ++i) {
      acc += prob[i] / sum;
      if (acc >= top_p) { keep = i + 1; break; }
    }
  }
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += prob[i];
  double r = u * total;
  for (size_t i = 0; i < keep; ++i) {
    r -= prob[i];
    if (r < 0) return cand[i].second;
  }
  return cand[keep - 1].second;
}

}  // namespace batchmax

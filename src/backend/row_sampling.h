#pragma once
// Picking a token from one row of logits, given the random number beforehand, so that
// the host and a backend's kernels pick the same token from the same row: the engine's
// Sampler draws `u` from the request's generator and either calls these or hands `u` to
// Backend::sample_rows.
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace batchmax {

// The order of a row's candidates (value, index): larger value first, then smaller index.
inline bool candidate_before(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

// Index of the largest value, the first on ties.
int32_t argmax_row(std::span<const float> logits);

// A draw from softmax(logits * inv_temperature) by the inverse of its distribution in
// vocabulary order: with w_i = exp(double((logits[i] - max) * inv_temperature)) (the
// difference and product in float, the exponential in double), the first i whose running
// sum of w exceeds u * sum(w). u in [0, 1). Where rounding leaves no such i, the argmax.
int32_t sample_row_in_order(std::span<const float> logits, float inv_temperature, double u);

// What the sampling ops do to each row: inv_temperature <= 0 takes the argmax, anything
// else sample_row_in_order with that row's u.
inline int32_t pick_row(std::span<const float> logits, float inv_temperature, double u) {
  return inv_temperature > 0 ? sample_row_in_order(logits, inv_temperature, u) : argmax_row(logits);
}

// Top-k and top-p draw from a row's best entries only (Backend::top_candidates gives
// them sorted by value, then index, with the row's whole mass at the temperature). Do
// `values` (the row's k best, sorted; vocab the row's width) decide the draw? Yes when
// top_k is among them (0 < top_k <= k and top_k < vocab), or, with top-p alone, when they
// are the whole row or their mass reaches top_p of whole_mass: then the nucleus is
// inside them, as the host's Sampler would find it.
bool candidates_decide(std::span<const float> values, double whole_mass, float inv_temperature,
                       int top_k, float top_p, int64_t vocab);

// The top-k / top-p draw over candidates sorted by candidate_before (the row's best, or
// all of it): p_i = exp(double((v_i - v_0) * inv_temperature)) (difference and product
// in float), normalised by whole_mass where it is > 0 (top-p alone: the nucleus is cut
// against the whole row's softmax) or else by their own sum; the nucleus is the shortest
// prefix whose running sum of p_i / sum reaches top_p (all of them when top_p >= 1); the
// pick is the first i whose running sum of p_i exceeds u * the nucleus's mass (where
// rounding leaves none, the nucleus's last). prob: scratch.
int32_t draw_sorted(std::span<const std::pair<float, int32_t>> cand, float inv_temperature,
                    double whole_mass, float top_p, double u, std::vector<double>& prob);

// One row's parameters of draw_sorted, for Backend::draw_sorted_rows.
struct SortedDraw {
  double whole_mass = 0;
  double u = 0;
  float inv_temperature = 0;
  float top_p = 1;
};

// The most candidates Backend::top_candidates gives a row.
constexpr int kMaxTopCandidates = 1024;
// Where they do not decide, the sorted prefix Backend::sorted_prefix sends first (32 KiB of
// values a row), before the whole sorted row.
constexpr int64_t kSortedPrefix = 4096;

}  // namespace batchmax

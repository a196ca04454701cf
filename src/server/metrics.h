#pragma once
// The server's counters and histograms, rendered in the Prometheus text format
// (version 0.0.4) for GET /metrics. Everything is safe to update from any thread (the
// engine thread observes finished requests; connection threads count outcomes).
#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "batchmax/engine.h"
#include "batchmax/engine_loop.h"

namespace batchmax::server {

// A cumulative histogram with fixed upper bounds (seconds).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  // "<name>_bucket{le=...}", "<name>_sum" and "<name>_count" lines.
  void render(std::string& out, const std::string& name, const std::string& help) const;
  int64_t count() const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<int64_t> counts_;  // per bucket, not cumulative; the last is +Inf
  double sum_ = 0;
  int64_t count_ = 0;
};

// Outcomes of HTTP requests to the completion endpoints (the "outcome" label).
namespace outcome {
inline constexpr const char* kOk = "ok";
inline constexpr const char* kInvalid = "invalid_request";    // 400, 404 (model), 413
inline constexpr const char* kUnauthorized = "unauthorized";  // 401
inline constexpr const char* kQueueFull = "queue_full";       // 429
inline constexpr const char* kUnavailable = "unavailable";    // 503: loading or draining
inline constexpr const char* kDisconnected = "client_disconnected";
inline constexpr const char* kTimeout = "timeout";
inline constexpr const char* kError = "error";                // engine error
}  // namespace outcome

class ServerMetrics {
 public:
  ServerMetrics();
  void count_request(const std::string& outcome);
  // A finished engine request: tokens, TTFT (first_token_s < 0: none) and time per
  // output token.
  void observe_finished(const Output& out, double first_token_s, double total_s);

  // Gauges come from the engine loop (nullptr while the model is loading).
  std::string render(const EngineLoopStats* loop, bool ready, bool draining) const;

  int64_t requests(const std::string& outcome) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, int64_t> requests_;
  std::atomic<int64_t> prompt_tokens_{0}, generated_tokens_{0};
  Histogram ttft_, tpot_, e2e_;
};

}  // namespace batchmax::server

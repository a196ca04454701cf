#pragma once
// Where a step's time goes, when BATCHMAX_PROFILE is set (off otherwise: no cost but a
// branch). Each scope synchronises the backend at both ends so GPU time lands in the
// section that queued it; that removes host/GPU overlap, so profiled runs are slower
// and only the split between sections is meant to be read.
#include <chrono>
#include <cstdio>
#include <string>

namespace batchmax {
class Backend;

namespace prof {

enum StepKind { kDecode = 0, kPrefill = 1, kMixed = 2, kKinds = 3 };
enum Section {
  kForward = 0,  // embedding + layers (attention scores included, see kScores)
  kScores,       // attention mass for the policies (inside kForward)
  kEvictLayer,   // per-layer eviction queued from the forward (inside kForward)
  kLogits,       // final norm, lm head, download
  kCommit,       // PagedKVCache::commit (host selection + kv_move)
  kMove,         // kv_move launches and their work (inside kCommit)
  kBetween,      // host time between forwards (commit included: sampling, scheduling)
  kSections
};

// BATCHMAX_PROFILE=1: section timing (synchronising). BATCHMAX_PROFILE=ops: the
// backend times each op with GPU events instead (no host waits), see add_op().
// BATCHMAX_PROFILE=host: the host's own time in each part of a forward (HostScope), with
// no synchronisation: where a step is bound by the host (the GPU idles between ops), what
// the host spends it on. Waits inside a part (a full launch queue, a staging ring) count.
bool enabled();
bool ops_enabled();
bool host_enabled();
// Any mode: steps are counted and classified.
bool counting();
void set_step_kind(StepKind k);
StepKind step_kind();
void add(Section s, double seconds);
void count_step();
// GPU time of one op (ops mode), charged to the step kind current when it was queued.
// `name` must outlive the process (a string literal).
void add_op(StepKind k, const char* name, double seconds);
// Host time since the last forward ended (kBetween); called when a forward starts/ends.
void forward_begin();
void forward_end();
void reset();
// One table per step kind: steps, seconds and ms/step per section.
std::string report();

// Host time of a named part of the forward until destruction (BATCHMAX_PROFILE=host).
// `name` must outlive the process (a string literal).
class HostScope {
 public:
  explicit HostScope(const char* name);
  ~HostScope();
  HostScope(const HostScope&) = delete;
  HostScope& operator=(const HostScope&) = delete;

 private:
  const char* name_ = nullptr;
  std::chrono::steady_clock::time_point t0_;
};

// Synchronises `b` and times until destruction (when profiling is on).
class Scope {
 public:
  Scope(Section s, Backend& b);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  Section s_;
  Backend* b_ = nullptr;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace prof
}  // namespace batchmax

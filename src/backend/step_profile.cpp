#include "backend/step_profile.h"

#include <cstdlib>

#include "backend/backend.h"

namespace batchmax::prof {
namespace {
using Clock = std::chrono::steady_clock;
struct State {
  StepKind kind = kDecode;
  double sec[kKinds][kSections] = {};
  long steps[kKinds] = {};
  bool have_end = false;
  Clock::time_point last_end;
};
State& st() {
  static State s;
  return s;
}
}  // namespace

bool enabled() {
  static const bool on = [] {
    const char* e = std::getenv("BATCHMAX_PROFILE");
    return e && *e && std::string(e) != "0";
  }();
  return on;
}

void set_step_kind(StepKind k) { st().kind = k; }
StepKind step_kind() { return st().kind; }
void add(Section s, double seconds) { st().sec[st().kind][s] += seconds; }
void count_step() { ++st().steps[st().kind]; }

void forward_begin() {
  if (!enabled()) return;
  State& s = st();
  // Attributed to the kind of the previous step: its commit and sampling ran then.
  if (s.have_end) add(kBetween, std::chrono::duration<double>(Clock::now() - s.last_end).count());
}
void forward_end() {
  if (!enabled()) return;
  st().have_end = true;
  st().last_end = Clock::now();
}

void reset() { st() = State{}; }

std::string report() {
  static const char* kinds[kKinds] = {"decode", "prefill", "mixed"};
  static const char* names[kSections] = {"forward", "  scores", "  evict(layer)", "logits",
                                         "commit", "  kv_move", "between(all host)"};
  const State& s = st();
  std::string out;
  char line[256];
  for (int k = 0; k < kKinds; ++k) {
    if (!s.steps[k]) continue;
    std::snprintf(line, sizeof line, "profile %s steps: %ld\n", kinds[k], s.steps[k]);
    out += line;
    for (int i = 0; i < kSections; ++i) {
      std::snprintf(line, sizeof line, "  %-20s %9.3f s %9.3f ms/step\n", names[i], s.sec[k][i],
                    1e3 * s.sec[k][i] / double(s.steps[k]));
      out += line;
    }
  }
  return out;
}

Scope::Scope(Section s, Backend& b) : s_(s) {
  if (!enabled()) return;
  b_ = &b;
  b.synchronize();
  t0_ = Clock::now();
}

Scope::~Scope() {
  if (!b_) return;
  b_->synchronize();
  add(s_, std::chrono::duration<double>(Clock::now() - t0_).count());
}

}  // namespace batchmax::prof

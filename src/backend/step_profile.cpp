#include "backend/step_profile.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <vector>

#include "backend/backend.h"

namespace batchmax::prof {
namespace {
using Clock = std::chrono::steady_clock;
struct State {
  StepKind kind = kDecode;
  double sec[kKinds][kSections] = {};
  long steps[kKinds] = {};
  bool have_end = false;
  Clock::time_point last_end, last_begin;
  double forward_wall[kKinds] = {};  // ops and host modes: forward begin to end, no syncs added
  std::map<std::string, double> ops[kKinds];   // ops mode: GPU time; host mode: host time
};
State& st() {
  static State s;
  return s;
}
}  // namespace

namespace {
std::string profile_env() {
  const char* e = std::getenv("BATCHMAX_PROFILE");
  return e ? std::string(e) : std::string();
}
}  // namespace

bool enabled() {
  static const bool on = [] {
    const std::string e = profile_env();
    return !e.empty() && e != "0" && e != "ops" && e != "host";
  }();
  return on;
}
bool ops_enabled() {
  static const bool on = profile_env() == "ops";
  return on;
}
bool host_enabled() {
  static const bool on = profile_env() == "host";
  return on;
}
bool counting() { return enabled() || ops_enabled() || host_enabled(); }
void add_op(StepKind k, const char* name, double seconds) { st().ops[k][name] += seconds; }

void set_step_kind(StepKind k) { st().kind = k; }
StepKind step_kind() { return st().kind; }
void add(Section s, double seconds) { st().sec[st().kind][s] += seconds; }
void count_step() { ++st().steps[st().kind]; }

void forward_begin() {
  if (!counting()) return;
  State& s = st();
  s.last_begin = Clock::now();
  // Attributed to the kind of the previous step: its commit and sampling ran then.
  if (s.have_end) add(kBetween, std::chrono::duration<double>(Clock::now() - s.last_end).count());
}
void forward_end() {
  if (!counting()) return;
  State& s = st();
  s.have_end = true;
  s.last_end = Clock::now();
  s.forward_wall[s.kind] += std::chrono::duration<double>(s.last_end - s.last_begin).count();
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
    if (ops_enabled() || host_enabled()) {
      // Ops: GPU time per op (events around each op; a gap while the GPU waited for the
      // host to queue an op counts to that op). Host: the host's time in each part.
      // Either against the forward's wall time.
      std::vector<std::pair<double, std::string>> rows;
      double sum = 0;
      for (const auto& [name, sec] : s.ops[k]) {
        rows.push_back({sec, name});
        sum += sec;
      }
      std::sort(rows.rbegin(), rows.rend());
      const double n = double(s.steps[k]);
      std::snprintf(line, sizeof line, "  %-34s %9.3f ms/step\n", "forward wall (host view)",
                    1e3 * s.forward_wall[k] / n);
      out += line;
      std::snprintf(line, sizeof line, "  %-34s %9.3f ms/step\n",
                    host_enabled() ? "sum of host parts" : "sum of op GPU times", 1e3 * sum / n);
      out += line;
      // Host time from one forward's end to the next one's start (commit, sampling,
      // scheduling): the GPU idles through it.
      std::snprintf(line, sizeof line, "  %-34s %9.3f ms/step\n", "between forwards (host)",
                    1e3 * s.sec[k][kBetween] / n);
      out += line;
      for (const auto& [sec, name] : rows) {
        std::snprintf(line, sizeof line, "    %-32s %9.3f ms/step %5.1f%%\n", name.c_str(),
                      1e3 * sec / n, sum > 0 ? 100 * sec / sum : 0.0);
        out += line;
      }
      continue;
    }
    for (int i = 0; i < kSections; ++i) {
      std::snprintf(line, sizeof line, "  %-20s %9.3f s %9.3f ms/step\n", names[i], s.sec[k][i],
                    1e3 * s.sec[k][i] / double(s.steps[k]));
      out += line;
    }
  }
  return out;
}

HostScope::HostScope(const char* name) {
  if (!host_enabled()) return;
  name_ = name;
  t0_ = Clock::now();
}

HostScope::~HostScope() {
  if (name_) add_op(st().kind, name_, std::chrono::duration<double>(Clock::now() - t0_).count());
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

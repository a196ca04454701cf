// libbatchmax_kernel_trace.so: a kernel timeline for any CUDA program, through CUPTI's
// activity records, for machines without Nsight Systems (the device image has none) and
// for runs too long for ncu (which replays each kernel it profiles).
//
//   LD_PRELOAD=libbatchmax_kernel_trace.so BMX_TRACE_OUT=trace.txt batchmax ...
//
// Every kernel, memcpy and memset the GPU runs is recorded (start, end, name) with no
// replay and no host waits; CUDA graph nodes are recorded like any launch. At exit the
// records in a window [first record + BMX_TRACE_SKIP_S, + BMX_TRACE_LEN_S] (default
// 20 s and 20 s) are summarised into BMX_TRACE_OUT (stderr without it):
// - per name: launches, total time, mean, share of the window, and exclusive time (sorted
//   by it): a record's time after the previous record of its stream ended. A kernel
//   launched with programmatic dependent launch (PDL) starts while its predecessor runs
//   and waits inside (griddepcontrol.wait), so its total counts that wait; the exclusive
//   time does not (on one stream the exclusive times add up to the busy time);
// - the GPU's busy time (the union of all records) and idle time in the window, and the
//   idle intervals counted by length;
// - with BMX_TRACE_DUMP=n, the n records after the window's middle in start order, with
//   the gap before each: what one step looks like, kernel by kernel.
#include <cupti.h>
#include <cxxabi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

struct Record {
  uint64_t start, end;
  uint32_t name;  // index into Trace::names
  uint32_t stream;
};

struct Trace {
  std::mutex mu;
  std::vector<Record> records;
  std::vector<std::string> names;
  std::unordered_map<std::string, uint32_t> ids;
  std::unordered_map<const char*, uint32_t> by_ptr;  // CUPTI's name strings live on
  bool dumped = false;

  uint32_t id(const std::string& n) {
    auto it = ids.find(n);
    if (it != ids.end()) return it->second;
    names.push_back(n);
    return ids[n] = uint32_t(names.size() - 1);
  }
  uint32_t kernel_id(const char* mangled) {
    auto it = by_ptr.find(mangled);
    if (it != by_ptr.end()) return it->second;
    int st = 0;
    char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &st);
    std::string n = st == 0 && d ? d : mangled;
    std::free(d);
    if (n.size() > 150) n = n.substr(0, 147) + "...";
    return by_ptr[mangled] = id(n);
  }
};

Trace& trace() {
  static Trace* t = new Trace;  // never destroyed: CUPTI may deliver after static teardown
  return *t;
}

constexpr size_t kBufferBytes = 8 << 20;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = kBufferBytes;
  *max_records = 0;
}

const char* copy_kind(uint8_t k) {
  switch (k) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "[memcpy HtoD]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "[memcpy DtoH]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "[memcpy DtoD]";
    default: return "[memcpy other]";
  }
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  Trace& t = trace();
  {
    std::lock_guard<std::mutex> lock(t.mu);
    CUpti_Activity* r = nullptr;
    while (cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
      if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || r->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
        auto* k = reinterpret_cast<CUpti_ActivityKernel10*>(r);
        t.records.push_back({k->start, k->end, t.kernel_id(k->name), k->streamId});
      } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
        auto* m = reinterpret_cast<CUpti_ActivityMemcpy6*>(r);
        t.records.push_back({m->start, m->end, t.id(copy_kind(m->copyKind)), m->streamId});
      } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
        auto* m = reinterpret_cast<CUpti_ActivityMemset4*>(r);
        t.records.push_back({m->start, m->end, t.id("[memset]"), m->streamId});
      }
    }
  }
  std::free(buffer);
}

double env_seconds(const char* name, double def) {
  const char* v = std::getenv(name);
  return v && *v ? std::atof(v) : def;
}

void summarise() {
  cuptiActivityFlushAll(1);
  Trace& t = trace();
  std::lock_guard<std::mutex> lock(t.mu);
  if (t.dumped) return;
  t.dumped = true;
  FILE* out = stderr;
  if (const char* path = std::getenv("BMX_TRACE_OUT"); path && *path) {
    if (FILE* f = std::fopen(path, "w")) out = f;
    else std::fprintf(stderr, "kernel_trace: cannot write %s; the summary follows here\n", path);
  }
  std::vector<Record>& rs = t.records;
  std::sort(rs.begin(), rs.end(), [](const Record& a, const Record& b) { return a.start < b.start; });
  if (rs.empty()) {
    std::fprintf(out, "kernel_trace: no GPU activity recorded\n");
    if (out != stderr) std::fclose(out);
    return;
  }
  const uint64_t w0 = rs.front().start + uint64_t(env_seconds("BMX_TRACE_SKIP_S", 20) * 1e9);
  const uint64_t w1 = w0 + uint64_t(env_seconds("BMX_TRACE_LEN_S", 20) * 1e9);
  struct Sum {
    uint64_t n = 0;
    double ns = 0, excl_ns = 0;
  };
  std::map<uint32_t, Sum> per;
  std::unordered_map<uint32_t, uint64_t> stream_end;  // the last end on each stream so far
  uint64_t busy = 0, cover_end = w0, last_end = w0, first = 0, n_in = 0;
  // The window's idle intervals by length: short ones are launch and graph boundaries,
  // long ones the GPU waiting for the host.
  constexpr double kIdleEdgesUs[] = {1, 3, 10, 30, 100, 1000};
  constexpr int kIdleBins = int(std::size(kIdleEdgesUs)) + 1;
  uint64_t idle_n[kIdleBins] = {}, idle_ns[kIdleBins] = {};
  for (const Record& r : rs) {
    uint64_t& se = stream_end[r.stream];
    const uint64_t own_start = std::max(r.start, se);
    se = std::max(se, r.end);
    if (r.start < w0 || r.start >= w1) continue;
    if (!n_in++) first = r.start;
    Sum& s = per[r.name];
    ++s.n;
    s.ns += double(r.end - r.start);
    s.excl_ns += r.end > own_start ? double(r.end - own_start) : 0.0;
    if (n_in > 1 && r.start > cover_end) {
      const uint64_t gap = r.start - cover_end;
      int bin = 0;
      while (bin < kIdleBins - 1 && double(gap) * 1e-3 >= kIdleEdgesUs[bin]) ++bin;
      ++idle_n[bin];
      idle_ns[bin] += gap;
    }
    // Union of the intervals, in start order: the GPU is busy where any record runs.
    const uint64_t b = std::max(r.start, cover_end), e = std::min(r.end, w1);
    if (e > b) busy += e - b;
    cover_end = std::max(cover_end, r.end);
    last_end = std::max(last_end, std::min(r.end, w1));
  }
  if (n_in == 0) {
    std::fprintf(out, "kernel_trace: no record in the window (run %.1f s; lower BMX_TRACE_SKIP_S)\n",
                 double(rs.back().end - rs.front().start) * 1e-9);
    if (out != stderr) std::fclose(out);
    return;
  }
  const double span = double(last_end - first);
  std::fprintf(out,
               "kernel_trace: window %.3f s from %.3f s after the first record; %llu records;"
               " GPU busy %.1f%% (idle %.3f s)\n",
               span * 1e-9, double(first - rs.front().start) * 1e-9,
               static_cast<unsigned long long>(n_in), 100.0 * double(busy) / span,
               (span - double(busy)) * 1e-9);
  std::fprintf(out, "idle intervals by length:");
  for (int i = 0; i < kIdleBins; ++i) {
    const double lo = i ? kIdleEdgesUs[i - 1] : 0;
    std::fprintf(out, "  [%g, %s us) %llu = %.3f ms", lo,
                 i < kIdleBins - 1 ? std::to_string(int(kIdleEdgesUs[i])).c_str() : "inf",
                 static_cast<unsigned long long>(idle_n[i]), double(idle_ns[i]) * 1e-6);
  }
  std::fprintf(out, "\n");
  std::vector<std::pair<uint32_t, Sum>> sorted(per.begin(), per.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.second.excl_ns > b.second.excl_ns; });
  std::fprintf(out, "%10s %12s %10s %7s %10s %7s  %s\n", "launches", "total ms", "mean us", "% win",
               "excl ms", "% win", "name");
  for (const auto& [id, s] : sorted)
    std::fprintf(out, "%10llu %12.3f %10.2f %7.2f %10.3f %7.2f  %s\n",
                 static_cast<unsigned long long>(s.n), s.ns * 1e-6, s.ns * 1e-3 / double(s.n),
                 100.0 * s.ns / span, s.excl_ns * 1e-6, 100.0 * s.excl_ns / span,
                 t.names[id].c_str());
  if (const long dump = std::atol(std::getenv("BMX_TRACE_DUMP") ? std::getenv("BMX_TRACE_DUMP") : "0");
      dump > 0) {
    const uint64_t mid = first + uint64_t(span / 2);
    auto it = std::lower_bound(rs.begin(), rs.end(), mid,
                               [](const Record& r, uint64_t v) { return r.start < v; });
    std::fprintf(out, "\ntimeline from the window's middle (us from the first row; gap = idle before)\n");
    std::fprintf(out, "%12s %10s %9s %6s  %s\n", "start us", "dur us", "gap us", "stream", "name");
    uint64_t t0 = it != rs.end() ? it->start : 0, prev_end = t0;
    for (long i = 0; i < dump && it != rs.end(); ++i, ++it) {
      const double gap = it->start > prev_end ? double(it->start - prev_end) * 1e-3 : 0.0;
      std::fprintf(out, "%12.2f %10.2f %9.2f %6u  %s\n", double(it->start - t0) * 1e-3,
                   double(it->end - it->start) * 1e-3, gap, it->stream, t.names[it->name].c_str());
      prev_end = std::max(prev_end, it->end);
    }
  }
  // BMX_TRACE_PHASES=ms: the window in slices of that many ms, each with its idle time,
  // its host-to-device copies (count, mean duration) and its steps (argmax launches).
  if (const double slice_ms = env_seconds("BMX_TRACE_PHASES", 0); slice_ms > 0) {
    const uint64_t slice = uint64_t(slice_ms * 1e6);
    const size_t n_slices = size_t((w1 - first) / slice) + 1;
    std::vector<double> idle(n_slices), h2d_ns(n_slices);
    std::vector<long> h2d(n_slices), steps(n_slices);
    uint64_t cover = first;
    for (const Record& r : rs) {
      if (r.start < first || r.start >= w1) continue;
      const size_t k = size_t((r.start - first) / slice);
      if (r.start > cover) idle[k] += double(r.start - cover);
      cover = std::max(cover, r.end);
      const std::string& nm = t.names[r.name];
      if (nm == "[memcpy HtoD]") ++h2d[k], h2d_ns[k] += double(r.end - r.start);
      if (nm.find("argmax_kernel") != std::string::npos) ++steps[k];
    }
    std::fprintf(out, "\nslices of %.0f ms: start s, steps, idle ms, copies to the GPU (n, mean us)\n", slice_ms);
    for (size_t k = 0; k < n_slices; ++k)
      std::fprintf(out, "  %7.2f %4ld %8.2f %6ld %7.2f\n", double(k) * slice_ms * 1e-3, steps[k], idle[k] * 1e-6,
                   h2d[k], h2d[k] ? h2d_ns[k] * 1e-3 / double(h2d[k]) : 0.0);
  }
  // BMX_TRACE_GAPS=n: the first n idle intervals of >= 30 us in the window, each with the
  // records around it: what the GPU waits for when the host falls behind.
  if (const long n_gaps = std::atol(std::getenv("BMX_TRACE_GAPS") ? std::getenv("BMX_TRACE_GAPS") : "0");
      n_gaps > 0) {
    std::fprintf(out, "\nidle intervals of >= 30 us (ms from the window's start; records around each)\n");
    uint64_t cover = 0;
    long shown = 0;
    for (size_t i = 0; i < rs.size() && shown < n_gaps; ++i) {
      const Record& r = rs[i];
      if (r.start >= w0 && r.start < w1 && cover > w0 && r.start >= cover + 30000) {
        std::fprintf(out, "gap %.1f us at %.3f ms\n", double(r.start - cover) * 1e-3,
                     double(cover - first) * 1e-6);
        for (size_t j = i >= 3 ? i - 3 : 0; j < std::min(rs.size(), i + 3); ++j)
          std::fprintf(out, "  %12.3f ms %9.2f us %4u  %s\n", double(int64_t(rs[j].start - first)) * 1e-6,
                       double(rs[j].end - rs[j].start) * 1e-3, rs[j].stream, t.names[rs[j].name].c_str());
        ++shown;
      }
      cover = std::max(cover, r.end);
    }
  }
  if (out != stderr) std::fclose(out);
}

bool enable() {
  if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS) return false;
  bool ok = cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) == CUPTI_SUCCESS;
  ok = ok && cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY) == CUPTI_SUCCESS;
  ok = ok && cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET) == CUPTI_SUCCESS;
  cuptiActivityFlushPeriod(500);  // buffers reach us every 0.5 s, not only at exit
  return ok;
}

__attribute__((constructor)) void start() {
  if (!enable()) {
    std::fprintf(stderr, "kernel_trace: CUPTI would not enable activity records; no trace\n");
    return;
  }
  std::atexit(summarise);
}

}  // namespace

// CPU matmul throughput on the SmolLM2-135M shapes: GFLOP/s and GB/s of weight
// streaming, for decode (n = 1, 8) and prefill (n = 512), on 1 and 2 threads; decode
// with float-decoded weights (q8:0) and with Q8 activations and integer dots (q8:1).
//   bench_cpu_kernels [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "core/thread_pool.h"
#include "format/tensor_types.h"

namespace batchmax {
namespace {

Backend& backend(int threads, bool q8) {
  static std::map<std::pair<int, bool>, std::unique_ptr<Backend>> cache;
  auto& b = cache[{threads, q8}];
  if (!b) b = make_cpu_backend({threads, false, q8});
  return *b;
}

// Random valid blocks: quantised bytes anywhere, scales set to small normal halves.
std::vector<uint8_t> random_weight(GgmlType type, int64_t rows, int64_t cols) {
  std::mt19937 gen(42);
  std::vector<uint8_t> bytes(row_bytes(type, cols) * rows);
  for (auto& b : bytes) b = uint8_t(gen());
  const size_t bb = type_traits(type).block_bytes;
  for (size_t off = 0; off < bytes.size(); off += bb) {
    const uint16_t d = fp32_to_fp16(0.01f), m = fp32_to_fp16(-0.05f);
    std::memcpy(&bytes[off], &d, 2);  // d first in Q8_0 / Q4_0 / Q4_1
    if (type == GgmlType::Q4_1) std::memcpy(&bytes[off + 2], &m, 2);
  }
  return bytes;
}

void BM_Matmul(benchmark::State& state, GgmlType type, int64_t k, int64_t m) {
  const int64_t n = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  const bool q8 = state.range(2) != 0;
  Backend& be = backend(threads, q8);
  static std::map<std::tuple<GgmlType, int64_t, int64_t>, std::vector<uint8_t>> weights;
  auto& wb = weights[{type, k, m}];
  if (wb.empty()) wb = random_weight(type, m, k);
  Tensor w = be.load_weight(type, wb.data(), m, k);
  Tensor x = be.alloc(GgmlType::F32, n, k), out = be.alloc(GgmlType::F32, n, m);
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (int64_t i = 0; i < n * k; ++i) x.f32()[i] = u(gen);
  for (auto _ : state) {
    be.matmul(x, w, nullptr, out);
    benchmark::DoNotOptimize(out.data);
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * k * m * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] = benchmark::Counter(double(w.bytes()) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(be.name() + (q8 && n <= 4 ? " q8-activations" : ""));
  be.free(x);
  be.free(out);
}

// The cost of one parallel_for hand-off: ~10 per layer per decode step.
void BM_ParallelForOverhead(benchmark::State& state) {
  ThreadPool pool(static_cast<int>(state.range(0)));
  std::vector<int64_t> sink(64);
  for (auto _ : state) {
    pool.parallel_for(64, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) sink[i] += i;
    });
  }
  benchmark::DoNotOptimize(sink.data());
}
BENCHMARK(BM_ParallelForOverhead)->Arg(1)->Arg(2)->UseRealTime();

void register_matmuls() {
  struct Shape { const char* name; GgmlType type; int64_t k, m; };
  const Shape shapes[] = {
      {"attn_576x576_Q4_1", GgmlType::Q4_1, 576, 576},
      {"ffn_up_576to1536_Q4_1", GgmlType::Q4_1, 576, 1536},
      {"ffn_down_1536to576_Q4_1", GgmlType::Q4_1, 1536, 576},
      {"lm_head_576to49152_Q8_0", GgmlType::Q8_0, 576, 49152},
  };
  for (const Shape& s : shapes) {
    auto* b = benchmark::RegisterBenchmark((std::string("Matmul/") + s.name).c_str(),
                                           [s](benchmark::State& st) { BM_Matmul(st, s.type, s.k, s.m); });
    b->ArgNames({"n", "threads", "q8"})->UseRealTime()->Unit(benchmark::kMicrosecond);
    for (int64_t n : {1, 8, 512})
      for (int64_t t : {1, 2})
        for (int64_t q8 : {0, 1})
          if (q8 == 0 || n <= 4) b->Args({n, t, q8});
  }
}

}  // namespace
}  // namespace batchmax

int main(int argc, char** argv) {
  batchmax::register_matmuls();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

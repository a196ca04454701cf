// Per-op timings of the CUDA backend at Llama-3-8B shapes, next to the card's measured
// ceilings: matmul TFLOP/s against the bf16 GEMM peak (and weight GB/s at small n),
// attention decode GB/s against the copy bandwidth, prefill attention TFLOP/s.
// Times are through the Backend interface (host staging and launches included): a run
// of back-to-back calls between two synchronisations, median of several such runs.
// Inputs rotate over copies bigger than L2 where one copy would fit in it.
//
// usage: batchmax_cuda_bench [out.json]
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/cuda/cuda_backend.h"
#include "format/tensor_types.h"

using namespace batchmax;
using json = nlohmann::json;

namespace {

std::mt19937 rng(1234);

template <class F>
double time_ms(Backend& b, F&& f, int inner = 20, int samples = 7) {
  f(0);
  b.synchronize();
  std::vector<double> v;
  for (int s = 0; s < samples; ++s) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < inner; ++i) f(i);
    b.synchronize();
    auto t1 = std::chrono::steady_clock::now();
    v.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count() / inner);
  }
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Uniform [-1, 1) in bf16 (a cheap generator: these run to 10^9 elements).
std::vector<uint16_t> random_bf16(size_t n) {
  std::vector<uint16_t> h(n);
  uint64_t z = rng();
  for (auto& x : h) {
    z = z * 6364136223846793005ull + 1442695040888963407ull;
    x = fp32_to_bf16(float(z >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
  return h;
}

Tensor random_tensor(Backend& b, int64_t rows, int64_t cols) {
  Tensor t = b.alloc(GgmlType::BF16, rows, cols);
  b.upload(random_bf16(size_t(rows * cols)).data(), t);
  return t;
}

Tensor random_weight(Backend& b, int64_t rows, int64_t cols) {
  std::vector<uint16_t> h(size_t(rows * cols));
  std::uniform_real_distribution<float> d(-0.05f, 0.05f);
  for (auto& x : h) x = fp32_to_bf16(d(rng));
  return b.load_weight(GgmlType::BF16, h.data(), rows, cols);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string out_path = argc > 1 ? argv[1] : "cuda_kernels_bench.json";
  json j;
  CudaCeilings c = measure_ceilings();
  std::printf("device %s: bf16 GEMM %.0f TFLOP/s, D2D copy %.0f GB/s\n", c.device_name.c_str(),
              c.bf16_gemm_tflops, c.copy_gbps);
  j["device"] = c.device_name;
  j["ceilings"] = {{"bf16_gemm_tflops", c.bf16_gemm_tflops}, {"copy_gbps", c.copy_gbps}};
  auto be = make_cuda_backend();
  Backend& b = *be;
  // BMX_BENCH_ATTENTION_ONLY=1: attention cases alone (A/B runs of the two kernels).
  const char* only_env = std::getenv("BMX_BENCH_ATTENTION_ONLY");
  const bool attention_only = only_env && *only_env == '1';
  const char* simt_env = std::getenv("BATCHMAX_CUDA_SIMT_ATTENTION");
  j["attention_kernel"] = simt_env && *simt_env && *simt_env != '0' ? "simt" : "flash";

  // ---- matmul: Llama-3-8B projections ----
  struct W { const char* name; int64_t m, k; };
  const W shapes[] = {{"wq/wo 4096x4096", 4096, 4096}, {"gate/up 14336x4096", 14336, 4096},
                      {"down 4096x14336", 4096, 14336}};
  for (const W& w : attention_only ? std::span<const W>() : std::span<const W>(shapes)) {
    const int copies = w.m * w.k * 2 < (int64_t(96) << 20) ? 4 : 2;  // beat the 50 MB L2
    std::vector<Tensor> ws;
    for (int i = 0; i < copies; ++i) ws.push_back(random_weight(b, w.m, w.k));
    for (int64_t n : {1, 32, 512, 4096}) {
      Tensor x = random_tensor(b, n, w.k), o = b.alloc(GgmlType::BF16, n, w.m);
      const double ms = time_ms(b, [&](int i) { b.matmul(x, ws[i % copies], nullptr, o); });
      const double tflops = 2.0 * n * w.m * w.k / (ms * 1e-3) / 1e12;
      const double gbps = (2.0 * (w.m * w.k + n * w.k + n * w.m)) / (ms * 1e-3) / 1e9;
      std::printf("matmul %-20s n=%-5lld %9.4f ms %7.1f TFLOP/s (%5.1f%% of peak) %7.0f GB/s (%5.1f%% of copy)\n",
                  w.name, (long long)n, ms, tflops, 100 * tflops / c.bf16_gemm_tflops, gbps,
                  100 * gbps / c.copy_gbps);
      j["matmul"].push_back({{"shape", w.name}, {"m", w.m}, {"k", w.k}, {"n", n}, {"ms", ms},
                             {"tflops", tflops}, {"pct_peak", 100 * tflops / c.bf16_gemm_tflops},
                             {"gbps", gbps}, {"pct_copy", 100 * gbps / c.copy_gbps}});
      b.free(x);
      b.free(o);
    }
    for (Tensor& t : ws) b.free(t);
  }

  // ---- attention over 4096-entry caches (Llama-3-8B heads), bf16 pool ----
  const int H = 32, KVH = 8, HD = 128, BT = 16;
  AttentionParams ap{H, KVH, HD, float(1.0 / std::sqrt(double(HD)))};
  // Each chunk's keys are its tables' last entries (as in the engine): prefill may take
  // cuDNN's SDPA (BATCHMAX_CUDA_CUDNN=0: our kernel).
  ap.queries_newest = true;
  j["backend"] = b.name();
  auto attention_case = [&](int n_seq, int n_q, const char* kind, int E = 4096) {
    const int64_t blocks_per_head = (E + BT - 1) / BT;
    const int64_t n_blocks = int64_t(n_seq) * KVH * blocks_per_head;
    KVPoolView pool = b.alloc_kv_pool(GgmlType::BF16, n_blocks, BT, HD);
    std::vector<int32_t> ids(n_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    // Random K/V in every slot (raw bf16 through views of the pool), then positions so
    // that each (sequence, KV head) table holds entries 0..E-1 in order.
    const int64_t n_slots = n_blocks * BT;
    for (void* base : {pool.k, pool.v}) {
      Tensor view{base, GgmlType::BF16, n_slots, HD, size_t(HD) * 2};
      b.upload(random_bf16(size_t(n_slots) * HD).data(), view);
    }
    std::vector<int32_t> sp(size_t(n_blocks) * BT);
    std::vector<std::vector<int32_t>> tables(size_t(n_seq) * KVH);
    for (int64_t t = 0; t < int64_t(tables.size()); ++t)
      for (int64_t i = 0; i < blocks_per_head; ++i) {
        const int32_t blk = ids[t * blocks_per_head + i];
        tables[t].push_back(blk);
        for (int o = 0; o < BT; ++o) sp[size_t(blk) * BT + o] = int32_t(i * BT + o);
      }
    Tensor pos_view{pool.pos, GgmlType::F32, 1, int64_t(sp.size()), sp.size() * 4};
    b.upload(sp.data(), pos_view);
    Tensor q = random_tensor(b, int64_t(n_seq) * n_q, int64_t(H) * HD);
    Tensor o = b.alloc(GgmlType::BF16, int64_t(n_seq) * n_q, int64_t(H) * HD);
    std::vector<std::vector<int32_t>> qp(n_seq);
    std::vector<AttentionSeq> seqs(n_seq);
    for (int s = 0; s < n_seq; ++s) {
      for (int i = 0; i < n_q; ++i) qp[s].push_back(E - n_q + i);  // chunk at the end: causal
      seqs[s].q_begin = int64_t(s) * n_q;
      seqs[s].n_q = n_q;
      seqs[s].q_pos = qp[s].data();
      for (int h = 0; h < KVH; ++h) {
        seqs[s].head_blocks.push_back(tables[size_t(s) * KVH + h]);
        seqs[s].head_entries.push_back(E);
      }
    }
    const double ms = time_ms(b, [&](int) { b.attention(q, seqs, ap, pool, o); }, 10, 5);
    const double kv_bytes = double(n_seq) * KVH * E * HD * 2 * 2;
    // Causal chunk at the end: query i sees E - n_q + i + 1 keys.
    double pairs = 0;
    for (int i = 0; i < n_q; ++i) pairs += E - n_q + i + 1;
    const double flops = 4.0 * n_seq * H * HD * pairs;
    const double gbps = kv_bytes / (ms * 1e-3) / 1e9, tflops = flops / (ms * 1e-3) / 1e12;
    std::printf("attention %-7s seqs=%-3d n_q=%-4d E=%d  %9.4f ms %7.0f GB/s (%5.1f%% of copy) %6.1f TFLOP/s (%5.1f%% of peak)\n",
                kind, n_seq, n_q, E, ms, gbps, 100 * gbps / c.copy_gbps, tflops,
                100 * tflops / c.bf16_gemm_tflops);
    j["attention"].push_back({{"kind", kind}, {"seqs", n_seq}, {"n_q", n_q}, {"entries", E},
                              {"heads", H}, {"kv_heads", KVH}, {"head_dim", HD}, {"ms", ms},
                              {"kv_gbps", gbps}, {"pct_copy", 100 * gbps / c.copy_gbps},
                              {"tflops", tflops}, {"pct_peak", 100 * tflops / c.bf16_gemm_tflops}});
    // Batch-Max's scoring after a chunk (snapkv: its last 32 queries' attention mass over
    // every entry, one row per (sequence, KV head)), alone and after the attention whose
    // log-sum-exps it reuses; through the Backend, staging and memset included.
    if (n_q >= 32 && E <= 2048) {
      std::vector<AttentionSeq> obs = seqs;
      for (int s = 0; s < n_seq; ++s) {
        obs[s].q_begin = seqs[s].q_begin + n_q - 32;
        obs[s].n_q = 32;
        obs[s].q_pos = qp[s].data() + n_q - 32;
      }
      Tensor mass = b.alloc(GgmlType::F32, int64_t(n_seq) * KVH, E);
      b.attention(q, seqs, ap, pool, o);
      const double scores_ms = time_ms(b, [&](int) { b.attention_scores_to(q, obs, ap, pool, mass); }, 20, 5);
      const double both_ms = time_ms(b, [&](int) {
        b.attention(q, seqs, ap, pool, o);
        b.attention_scores_to(q, obs, ap, pool, mass);
      }, 10, 5);
      std::printf("scores  %-7s seqs=%-3d obs=32   E=%d  %9.4f ms alone, attention + scores %9.4f ms (attention alone %9.4f)\n",
                  kind, n_seq, E, scores_ms, both_ms, ms);
      j["scores"].push_back({{"seqs", n_seq}, {"obs", 32}, {"entries", E}, {"ms", scores_ms},
                             {"with_attention_ms", both_ms}, {"attention_ms", ms}});
      b.free(mass);
    }
    b.free(q);
    b.free(o);
    b.free_kv_pool(pool);
  };
  attention_case(1, 1, "decode");
  attention_case(16, 1, "decode");
  attention_case(32, 1, "decode");
  attention_case(64, 1, "decode");
  // Batch-Max's decode rows: budget 512 plus slack, ~100-200 sequences a W-full step.
  attention_case(64, 1, "decode", 576);
  attention_case(128, 1, "decode", 576);
  attention_case(256, 1, "decode", 576);
  attention_case(1, 512, "prefill");
  attention_case(4, 512, "prefill");
  attention_case(1, 4096, "prefill");  // a whole 4096-token prompt in one causal chunk
  attention_case(8, 512, "prefill", 1024);  // batchmax 512: kept entries + a 512 chunk
  attention_case(8, 512, "prefill", 2048);
  attention_case(4, 512, "prefill", 1024);  // W-full's ~4 batchmax chunks a step
  attention_case(1, 512, "prefill", 1024);  // W-limited's one chunk

  // ---- small fused ops at a 4096-token step ----
  if (!attention_only) {
    const int64_t T = 4096, D = 4096, F = 14336;
    Tensor x = random_tensor(b, T, D), h = b.alloc(GgmlType::BF16, T, D);
    Tensor g = random_tensor(b, T, F), u = random_tensor(b, T, F), a = b.alloc(GgmlType::BF16, T, F);
    std::vector<float> wv(D, 1.0f);
    Tensor w = b.load_weight(GgmlType::F32, wv.data(), 1, D);
    Tensor q = random_tensor(b, T, int64_t(H) * HD);
    RopeParams rp;
    rp.head_dim = HD;
    rp.rotary_dim = HD;
    for (int i = 0; i < HD / 2; ++i) rp.inv_freq.push_back(float(std::pow(500000.0, -2.0 * i / HD)));
    std::vector<int32_t> pos(T);
    std::iota(pos.begin(), pos.end(), 0);
    struct Op { const char* name; double bytes; double ms; };
    std::vector<Op> ops = {
        {"rms_norm 4096x4096", 2.0 * T * D * 2, time_ms(b, [&](int) { b.rms_norm(x, w, 1e-5f, h); })},
        {"add 4096x4096", 3.0 * T * D * 2, time_ms(b, [&](int) { b.add(h, x); })},
        {"swiglu 4096x14336", 3.0 * T * F * 2, time_ms(b, [&](int) { b.swiglu(g, u, a); })},
        {"rope q 4096x32x128", 2.0 * T * H * HD * 2, time_ms(b, [&](int) { b.rope(q, H, pos, rp); })},
    };
    for (const Op& op : ops) {
      const double gbps = op.bytes / (op.ms * 1e-3) / 1e9;
      std::printf("%-24s %9.4f ms %7.0f GB/s (%5.1f%% of copy)\n", op.name, op.ms, gbps,
                  100 * gbps / c.copy_gbps);
      j["ops"].push_back({{"op", op.name}, {"ms", op.ms}, {"gbps", gbps},
                          {"pct_copy", 100 * gbps / c.copy_gbps}});
    }
    for (Tensor* t : {&x, &h, &g, &u, &a, &w, &q}) b.free(*t);
  }
  std::ofstream(out_path) << j.dump(2) << "\n";
  std::printf("wrote %s\n", out_path.c_str());
  return 0;
}

// Pipeline variants of the few-row product kernel (small_m_gemm_kernel.cuh) side by side
// on Llama-3-8B decode products, against cuBLASLt, each checked against cuBLASLt's
// output. Prints % of the card's copy bandwidth (weights + x + out bytes).
//
// usage: batchmax_small_m_variants [out.json]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/small_m_gemm_kernel.cuh"
#include "format/tensor_types.h"

using namespace batchmax;
using namespace batchmax::cuda;
using namespace batchmax::cuda::small_m;

namespace {

__global__ void fill(bf16* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = (i + seed) * 0x9E3779B97F4A7C15ull;
    z ^= z >> 31;
    z *= 0xBF58476D1CE4E5B9ull;
    p[i] = __float2bfloat16(float(int(z >> 40) & 0xffff) / 32768.0f - 1.0f);
  }
}

using Fn = void (*)(Args, CUtensorMap, CUtensorMap);
struct Variant {
  const char* name;
  int bk;
  bool tma;
  size_t (*smem)(int nt);
  Fn (*fn)(int nt);
};

template <int BK, int ST, Load L, int MB>
Variant make(const char* name) {
  auto smem = [](int nt) -> size_t {
    switch (nt) {
      case 1: return Shape<1, BK, ST, L == Load::Tma>::kSmem;
      case 4: return Shape<4, BK, ST, L == Load::Tma>::kSmem;
      case 6: return Shape<6, BK, ST, L == Load::Tma>::kSmem;
      default: return Shape<8, BK, ST, L == Load::Tma>::kSmem;
    }
  };
  auto fn = [](int nt) -> Fn {
    switch (nt) {
      case 1: return gemm_kernel<1, BK, ST, L, MB, bf16>;
      case 4: return gemm_kernel<4, BK, ST, L, MB, bf16>;
      case 6: return gemm_kernel<6, BK, ST, L, MB, bf16>;
      default: return gemm_kernel<8, BK, ST, L, MB, bf16>;
    }
  };
  return {name, BK, L == Load::Tma, smem, fn};
}

}  // namespace

int main(int argc, char** argv) {
  const std::string out_path = argc > 1 ? argv[1] : "small_m_variants.json";
  CudaCeilings c = measure_ceilings();
  std::printf("device %s: bf16 GEMM %.0f TFLOP/s, D2D copy %.0f GB/s\n", c.device_name.c_str(),
              c.bf16_gemm_tflops, c.copy_gbps);
  nlohmann::json j;
  j["device"] = c.device_name;
  j["ceilings"] = {{"bf16_gemm_tflops", c.bf16_gemm_tflops}, {"copy_gbps", c.copy_gbps}};
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  cudaStream_t s;
  cudaStreamCreate(&s);
  Gemm lt(size_t(32) << 20, 0);
  const size_t partial_bytes = size_t(32) << 20;
  float* partials;
  int* counters;
  cudaMalloc(&partials, partial_bytes);
  cudaMalloc(&counters, 8192 * 4);
  cudaMemset(counters, 0, 8192 * 4);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);

  const Variant variants[] = {
      make<64, 4, Load::CpAsync, 2>("cp.async bk64 st4 2/SM"),
      make<64, 4, Load::CpAsyncNoMath, 2>("loads only bk64 st4 2/SM"),
      make<128, 4, Load::CpAsync, 1>("cp.async bk128 st4 1/SM"),
      make<128, 4, Load::Bulk, 1>("bulk bk128 st4 1/SM"),
      make<64, 4, Load::Tma, 2>("tma st4 2/SM"),
      make<64, 6, Load::Tma, 1>("tma st6 1/SM"),
      make<64, 8, Load::Tma, 1>("tma st8 1/SM"),
      make<64, 3, Load::Tma, 2>("tma st3 2/SM"),
  };
  struct P { const char* name; int64_t m, k; };
  const P prods[] = {{"qkv 6144x4096", 6144, 4096},
                     {"o 4096x4096", 4096, 4096},
                     {"gate_up 28672x4096", 28672, 4096},
                     {"down 4096x14336", 4096, 14336}};
  for (const P& p : prods) {
    const size_t welems = size_t(p.m * p.k);
    const int copies = int(std::max<size_t>(2, (size_t(256) << 20) / (welems * 2) + 1));
    std::vector<bf16*> ws(copies);
    for (int i = 0; i < copies; ++i) {
      cudaMalloc(&ws[i], welems * 2);
      fill<<<1024, 256>>>(ws[i], welems, 77 + i);
    }
    for (int64_t n : {1, 32, 48, 64}) {
      const int nt = int((n + 7) / 8);
      bf16 *x, *o, *o_ref;
      cudaMalloc(&x, size_t(n * p.k) * 2);
      cudaMalloc(&o, size_t(n * p.m) * 2);
      cudaMalloc(&o_ref, size_t(n * p.m) * 2);
      fill<<<256, 256>>>(x, size_t(n * p.k), 5);
      Tensor tx{x, GgmlType::BF16, n, p.k, size_t(p.k) * 2};
      Tensor tw{ws[0], GgmlType::BF16, p.m, p.k, size_t(p.k) * 2};
      Tensor tr{o_ref, GgmlType::BF16, n, p.m, size_t(p.m) * 2};
      lt.run(tx, tw, tr, s);
      auto time = [&](auto&& launch) {
        launch(0);
        cudaStreamSynchronize(s);
        float best = 1e30f;
        for (int rep = 0; rep < 5; ++rep) {
          cudaEventRecord(e0, s);
          for (int i = 0; i < 40; ++i) launch(i);
          cudaEventRecord(e1, s);
          cudaEventSynchronize(e1);
          float ms = 0;
          cudaEventElapsedTime(&ms, e0, e1);
          best = std::min(best, ms / 40);
        }
        return double(best);
      };
      const double bytes = double(welems) * 2 + 2.0 * n * p.k + 2.0 * n * p.m;
      auto pct = [&](double ms) { return 100 * bytes / (ms * 1e-3) / 1e9 / c.copy_gbps; };
      const double ms_lt = time([&](int i) {
        Tensor w = tw;
        w.data = ws[i % copies];
        Tensor out{o, GgmlType::BF16, n, p.m, size_t(p.m) * 2};
        lt.run(tx, w, out, s);
      });
      std::printf("%-20s n=%-3lld %-26s %8.4f ms %5.1f%% of copy\n", p.name, (long long)n,
                  "cuBLASLt", ms_lt, pct(ms_lt));
      j["rows"].push_back({{"shape", p.name}, {"n", n}, {"variant", "cublaslt"}, {"ms", ms_lt},
                           {"pct_copy", pct(ms_lt)}});
      std::vector<uint16_t> ref(size_t(n * p.m)), got(ref.size());
      cudaMemcpy(ref.data(), o_ref, ref.size() * 2, cudaMemcpyDeviceToHost);
      for (const Variant& v : variants) {
        Fn f = v.fn(nt);
        const size_t smem = v.smem(nt);
        if (smem > 227 * 1024) continue;
        cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
        int occ = 0;
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, f, kThreads, smem);
        if (occ < 1) continue;
        const Split sp = choose_split(n, p.m, p.k, v.bk, int64_t(occ) * sms, partial_bytes, 8192);
        std::vector<CUtensorMap> wmaps(copies);
        CUtensorMap xmap{};
        if (v.tma) {
          bool ok = make_tma_map(&xmap, x, n, p.k, p.k, nt * 8);
          for (int i = 0; i < copies; ++i) ok = ok && make_tma_map(&wmaps[i], ws[i], p.m, p.k, p.k, kBN);
          if (!ok) {
            std::printf("%s: no TMA map\n", v.name);
            continue;
          }
        }
        auto launch = [&](int i) {
          Args a{x, ws[i % copies], o, partials, counters, int(n), int(p.m), sp.k_tiles, sp.splits,
                 sp.tiles * sp.splits, p.k, p.k, p.m};
          f<<<sp.grid, kThreads, smem, s>>>(a, wmaps[i % copies], xmap);
        };
        const double ms = time(launch);
        launch(0);
        cudaMemcpy(got.data(), o, got.size() * 2, cudaMemcpyDeviceToHost);
        double num = 0, den = 0;
        for (size_t i = 0; i < ref.size(); ++i) {
          const double r = bf16_to_fp32(ref[i]), g = bf16_to_fp32(got[i]);
          num += (g - r) * (g - r);
          den += r * r;
        }
        const double err = std::sqrt(num / std::max(den, 1e-30));
        const cudaError_t e = cudaGetLastError();
        std::printf("%-20s n=%-3lld %-26s %8.4f ms %5.1f%% of copy  x%.2f vs cuBLASLt  occ %d splits %d grid %d err %.1e%s\n",
                    p.name, (long long)n, v.name, ms, pct(ms), ms_lt / ms, occ, sp.splits, sp.grid,
                    err, e == cudaSuccess ? "" : cudaGetErrorString(e));
        j["rows"].push_back({{"shape", p.name}, {"n", n}, {"variant", v.name}, {"ms", ms},
                             {"pct_copy", pct(ms)}, {"occupancy", occ}, {"splits", sp.splits},
                             {"grid", sp.grid}, {"err_vs_cublaslt", err}});
      }
      cudaFree(x);
      cudaFree(o);
      cudaFree(o_ref);
    }
    for (bf16* w : ws) cudaFree(w);
  }
  std::ofstream(out_path) << j.dump(2) << "\n";
  return 0;
}

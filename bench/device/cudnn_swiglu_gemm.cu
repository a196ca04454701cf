// Can cuDNN fold the MLP's swiglu into the gate product? cuBLASLt has no swiglu epilogue,
// so a prefill layer runs the stacked gate/up product, then a swiglu pass that reads both
// halves back (~60 us a layer of 2048 rows on an H100). cuDNN's runtime fusion takes a
// matmul with pointwise ops after it: act = swish(h . Wg^T) * U, with U = h . Wu^T from
// cuBLASLt. This times every plan cuDNN offers for that graph (and for a plain matmul of
// the stacked shape) against cuBLASLt, and checks the fused output against the two-pass one.
//
// usage: batchmax_cudnn_swiglu_gemm [rows]   (default 2048; Llama-3-8B's 14336 x 4096 MLP)
// needs libcudnn.so.9 on the library path (the pip wheel nvidia-cudnn-cu13 has it).
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <chrono>
#include <cmath>
#include <string>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <unordered_map>
#include <vector>

#include <cudnn_frontend.h>

#include "bench_cuda_checks.cuh"

namespace fe = cudnn_frontend;

namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;  // the frontend's dynamic loading reads libcudnn through this
}

namespace {

constexpr int kRuns = 20;
constexpr size_t kWorkspace = 256ull << 20;

// act[r, f] = silu(gu[r, f]) * gu[r, N + f]: the engine's swiglu pass on the stacked output.
__global__ void swiglu(const __nv_bfloat16* gu, long n, long rows, __nv_bfloat16* act) {
  const long total = rows * n / 8;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < total; i += long(gridDim.x) * blockDim.x) {
    const long r = i / (n / 8), c = (i % (n / 8)) * 8;
    const uint4 g = *reinterpret_cast<const uint4*>(gu + r * 2 * n + c);
    const uint4 u = *reinterpret_cast<const uint4*>(gu + r * 2 * n + n + c);
    const __nv_bfloat16* gb = reinterpret_cast<const __nv_bfloat16*>(&g);
    const __nv_bfloat16* ub = reinterpret_cast<const __nv_bfloat16*>(&u);
    uint4 o;
    __nv_bfloat16* ob = reinterpret_cast<__nv_bfloat16*>(&o);
    for (int j = 0; j < 8; ++j) {
      const float x = __bfloat162float(gb[j]);
      ob[j] = __float2bfloat16(x / (1.0f + __expf(-x)) * __bfloat162float(ub[j]));
    }
    *reinterpret_cast<uint4*>(act + r * n + c) = o;
  }
}

// out[rows x n] = x[rows x k] . w[n x k]^T through cuBLASLt's first heuristic pick (the
// engine's gemm.cu layout: column-major out^T = w^T . x^T, "TN").
struct LtProduct {
  cublasLtMatmulDesc_t desc{};
  cublasLtMatrixLayout_t la{}, lb{}, lc{};
  cublasLtMatmulAlgo_t algo{};
  LtProduct(cublasLtHandle_t lt, long rows, long n, long k) {
    CL(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CL(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    CL(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    CL(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, k, n, k));
    CL(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, rows, k));
    CL(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, n, rows, n));
    cublasLtMatmulPreference_t pref;
    CL(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = kWorkspace;
    CL(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    CL(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 1, &res, &found));
    if (!found) {
      std::fprintf(stderr, "cuBLASLt: no algorithm\n");
      std::exit(1);
    }
    algo = res.algo;
    cublasLtMatmulPreferenceDestroy(pref);
  }
  void run(cublasLtHandle_t lt, const void* x, const void* w, void* out, void* ws, cudaStream_t s) const {
    const float alpha = 1, beta = 0;
    CL(cublasLtMatmul(lt, desc, &alpha, w, la, x, lb, &beta, out, lc, out, lc, &algo, ws, kWorkspace, s));
  }
};

enum Uid : int64_t { kA = 1, kB, kU, kO };

// act = swish(a . b^T) * u when `fused`, else out = a . b^T; bf16 in and out, fp32 inside.
// The graph with its candidate plans listed and checked, none built yet. `cache`: a
// dynamic-shape graph that shares compiled kernels through it.
std::shared_ptr<fe::graph::Graph> make_graph(cudnnHandle_t h, long rows, long n, long k, bool fused,
                                             const std::shared_ptr<fe::KernelCache>& cache = nullptr) {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  if (cache) g->set_dynamic_shape_enabled(true).set_kernel_cache(cache);
  auto A = g->tensor(fe::graph::Tensor_attributes().set_name("a").set_uid(kA)
                         .set_dim({1, rows, k}).set_stride({rows * k, k, 1}));
  auto B = g->tensor(fe::graph::Tensor_attributes().set_name("b").set_uid(kB)
                         .set_dim({1, k, n}).set_stride({n * k, 1, k}));
  auto C = g->matmul(A, B, fe::graph::Matmul_attributes().set_name("mm")
                               .set_compute_data_type(fe::DataType_t::FLOAT));
  std::shared_ptr<fe::graph::Tensor_attributes> O = C;
  if (fused) {
    C->set_data_type(fe::DataType_t::FLOAT);
    auto S = g->pointwise(C, fe::graph::Pointwise_attributes().set_name("swish")
                                 .set_mode(fe::PointwiseMode_t::SWISH_FWD));
    auto U = g->tensor(fe::graph::Tensor_attributes().set_name("u").set_uid(kU)
                           .set_dim({1, rows, n}).set_stride({rows * n, n, 1}));
    O = g->pointwise(S, U, fe::graph::Pointwise_attributes().set_name("mul")
                               .set_mode(fe::PointwiseMode_t::MUL));
  }
  O->set_output(true).set_uid(kO).set_data_type(fe::DataType_t::BFLOAT16);
  auto step = [&](const char* what, fe::error_t st) {
    if (st.is_bad()) std::printf("  cuDNN %s graph: %s failed: %s\n", fused ? "fused" : "plain", what,
                                 st.get_message().c_str());
    return st.is_good();
  };
  if (!step("validate", g->validate()) || !step("build_operation_graph", g->build_operation_graph(h)) ||
      !step("create_execution_plans", g->create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK})) ||
      !step("check_support", g->check_support(h)))
    return nullptr;
  return g;
}

std::shared_ptr<fe::graph::Graph> build(cudnnHandle_t h, long rows, long n, long k, bool fused) {
  auto g = make_graph(h, rows, n, k, fused);
  if (g && g->build_plans(fe::BuildPlanPolicy_t::ALL).is_bad()) return nullptr;
  return g;
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Every built plan of g, timed; returns the best time (ms), < 0 if none ran.
float time_plans(cudnnHandle_t h, fe::graph::Graph& g, std::unordered_map<int64_t, void*>& pack,
                 void* ws, cudaStream_t s, double flop, const char* label, std::string* best_name = nullptr) {
  float best = -1;
  const int64_t count = g.get_execution_plan_count();
  for (int64_t i = 0; i < count; ++i) {
    int64_t need = 0;
    if (g.get_workspace_size_plan_at_index(i, need).is_bad() || size_t(need) > kWorkspace) continue;
    if (g.execute_plan_at_index(h, pack, ws, i).is_bad()) continue;
    const float ms = time_ms(s, kRuns, [&] { (void)g.execute_plan_at_index(h, pack, ws, i); });
    std::string name;
    (void)g.get_plan_name_at_index(i, name);
    std::printf("  %s plan %2lld of %2lld: %8.1f us %6.1f TF/s  %s\n", label, (long long)i, (long long)count,
                ms * 1e3, flop / (ms * 1e-3) / 1e12, name.c_str());
    if (best < 0 || ms < best) {
      best = ms;
      if (best_name) *best_name = name;
    }
  }
  return best;
}

// ||a - b|| / ||b|| over bf16 arrays of n values (host).
double normalised_error(const std::vector<__nv_bfloat16>& a, const std::vector<__nv_bfloat16>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = __bfloat162float(a[i]), y = __bfloat162float(b[i]);
    num += (x - y) * (x - y);
    den += y * y;
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

}  // namespace

int main(int argc, char** argv) {
  const long rows = argc > 1 ? std::atol(argv[1]) : 2048, n = 14336, k = 4096;
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, rows %ld, MLP %ld x %ld\n", prop.name, rows, n, k);
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  cublasLtHandle_t lt;
  CL(cublasLtCreate(&lt));
  void* ws;
  CK(cudaMalloc(&ws, kWorkspace));
  __nv_bfloat16 *x, *wgu, *gu, *u, *act_ref, *act;
  const long cap = rows + 128;  // the row counts of the shapes section below
  CK(cudaMalloc(&x, size_t(cap) * k * 2));
  CK(cudaMalloc(&wgu, size_t(2 * n) * k * 2));  // gate rows, then up rows (the engine's stacking)
  CK(cudaMalloc(&gu, size_t(cap) * 2 * n * 2));
  CK(cudaMalloc(&u, size_t(cap) * n * 2));
  CK(cudaMalloc(&act_ref, size_t(cap) * n * 2));
  CK(cudaMalloc(&act, size_t(cap) * n * 2));
  fill_bf16_bits<<<1024, 256, 0, s>>>(reinterpret_cast<unsigned short*>(x), size_t(cap) * k, 1, 119);   // |x| < 1
  fill_bf16_bits<<<1024, 256, 0, s>>>(reinterpret_cast<unsigned short*>(wgu), size_t(2 * n) * k, 2, 114);  // |w| < 1/32
  const __nv_bfloat16* wg = wgu;
  const __nv_bfloat16* wu = wgu + size_t(n) * k;

  // The engine's path: stacked product, then the swiglu pass.
  const LtProduct stacked(lt, rows, 2 * n, k), half(lt, rows, n, k);
  const double flop_half = 2.0 * rows * n * k;
  const float t_stacked = time_ms(s, kRuns, [&] { stacked.run(lt, x, wgu, gu, ws, s); });
  const float t_swiglu = time_ms(s, kRuns, [&] { swiglu<<<prop.multiProcessorCount * 8, 256, 0, s>>>(gu, n, rows, act_ref); });
  const float t_half = time_ms(s, kRuns, [&] { half.run(lt, x, wu, u, ws, s); });
  std::printf("cuBLASLt stacked gate/up %8.1f us %6.1f TF/s | swiglu pass %6.1f us | sum %8.1f us\n",
              t_stacked * 1e3, 2 * flop_half / (t_stacked * 1e-3) / 1e12, t_swiglu * 1e3,
              (t_stacked + t_swiglu) * 1e3);
  std::printf("cuBLASLt up alone        %8.1f us %6.1f TF/s\n", t_half * 1e3, flop_half / (t_half * 1e-3) / 1e12);

  for (const char* name : {"libcudnn.so.9", "libcudnn.so"})
    if ((fe::cudnn_dlhandle = dlopen(name, RTLD_NOW | RTLD_GLOBAL))) break;
  if (!fe::cudnn_dlhandle) {
    std::printf("no libcudnn.so.9\n");
    return 1;
  }
  std::printf("cuDNN %lld\n", (long long)fe::detail::get_backend_version());
  cudnnHandle_t h;
  if (fe::detail::create_handle(&h) != CUDNN_STATUS_SUCCESS) {
    std::printf("cudnnCreate failed\n");
    return 1;
  }
  fe::detail::set_stream(h, s);

  // Plain matmul of the stacked shape: cuDNN's own matmul rate.
  if (auto g = build(h, rows, 2 * n, k, false)) {
    std::unordered_map<int64_t, void*> pack{{kA, x}, {kB, wgu}, {kO, gu}};
    const float best = time_plans(h, *g, pack, ws, s, 2 * flop_half, "plain");
    std::printf("cuDNN plain stacked product: best %8.1f us (cuBLASLt %8.1f)\n", best * 1e3, t_stacked * 1e3);
  }
  // The fused gate product, after cuBLASLt's up product.
  std::string best_name;
  if (auto g = build(h, rows, n, k, true)) {
    half.run(lt, x, wu, u, ws, s);
    std::unordered_map<int64_t, void*> pack{{kA, x}, {kB, const_cast<__nv_bfloat16*>(wg)}, {kU, u}, {kO, act}};
    const float best = time_plans(h, *g, pack, ws, s, flop_half, "fused", &best_name);
    if (best > 0) {
      std::printf("up (cuBLASLt) + fused gate (cuDNN): %8.1f us against %8.1f us (%.3fx)\n",
                  (t_half + best) * 1e3, (t_stacked + t_swiglu) * 1e3,
                  (t_stacked + t_swiglu) / (t_half + best));
      // Correctness: the default plan's output against the two-pass path.
      stacked.run(lt, x, wgu, gu, ws, s);
      swiglu<<<prop.multiProcessorCount * 8, 256, 0, s>>>(gu, n, rows, act_ref);
      CK(cudaMemsetAsync(act, 0xff, size_t(rows) * n * 2, s));  // poison: every value must be written
      if (g->execute(h, pack, ws).is_bad()) std::printf("fused execute failed\n");
      CK(cudaStreamSynchronize(s));
      std::vector<__nv_bfloat16> a(size_t(rows) * n), b(size_t(rows) * n);
      CK(cudaMemcpy(a.data(), act, a.size() * 2, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(b.data(), act_ref, b.size() * 2, cudaMemcpyDeviceToHost));
      std::printf("fused vs two-pass: normalised error %.3e\n", normalised_error(a, b));
    }
  }
  // Other row counts (a step's rows vary): what a graph costs to make, and the fastest
  // plan of `rows` (by name) against the heuristic's first, at each.
  auto cache = std::make_shared<fe::KernelCache>();
  for (long m : {rows, rows + 1, rows + 62, rows + 120, rows - 117, rows / 2 + 3}) {
    for (int dyn = 0; dyn < 2; ++dyn) {
      const double t0 = now_ms();
      auto g = make_graph(h, m, n, k, true, dyn ? cache : nullptr);
      const double t1 = now_ms();
      if (!g) continue;
      int64_t idx = -1;
      for (int64_t i = 0; i < g->get_execution_plan_count(); ++i) {
        std::string nm;
        if (g->get_plan_name_at_index(i, nm).is_good() && nm == best_name) idx = i;
      }
      const bool ok0 = g->build_plan_at_index(0).is_good();
      const double t2 = now_ms();
      const bool ok = idx >= 0 && g->build_plan_at_index(idx).is_good();
      const double t3 = now_ms();
      std::unordered_map<int64_t, void*> pack{{kA, x}, {kB, const_cast<__nv_bfloat16*>(wg)}, {kU, u}, {kO, act}};
      float ms0 = -1, ms1 = -1;
      if (ok0 && g->execute_plan_at_index(h, pack, ws, 0).is_good())
        ms0 = time_ms(s, kRuns, [&] { (void)g->execute_plan_at_index(h, pack, ws, 0); });
      if (ok && g->execute_plan_at_index(h, pack, ws, idx).is_good())
        ms1 = time_ms(s, kRuns, [&] { (void)g->execute_plan_at_index(h, pack, ws, idx); });
      std::printf("rows %5ld %s: graph %7.1f ms, plan 0 build %7.1f ms run %7.1f us | best-named plan #%lld build %7.1f ms run %7.1f us\n",
                  m, dyn ? "dynamic+cache" : "static       ", t1 - t0, t2 - t1, ms0 * 1e3, (long long)idx,
                  t3 - t2, ms1 * 1e3);
    }
  }
  return 0;
}

// cuDNN's fused gate product (cudnn_swiglu.h): a graph per shape, its plans timed against
// the two-pass path on the call's own operands once the shape has recurred.
#include "backend/cuda/cudnn_swiglu.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <cudnn_frontend.h>

#include "backend/cuda/cudnn_attention.h"
#include "core/error.h"

namespace batchmax::cuda {
namespace {

namespace fe = cudnn_frontend;

enum Uid : int64_t { kX = 1, kW, kUp, kOut };

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string("cudnn swiglu: ") + what + ": " + cudaGetErrorString(e));
}
#define SWIGLU_CUDA(call) check((call), #call)

bool verbose() { return std::getenv("BATCHMAX_CUDA_CUDNN_VERBOSE") != nullptr; }

class CudnnSwigluImpl final : public CudnnSwiglu {
 public:
  CudnnSwigluImpl(cudnnHandle_t h, cudaStream_t s, bool force) : handle_(h), stream_(s), force_(force) {
    fe::detail::set_stream(handle_, s);
    if (cudaEventCreate(&t0_) != cudaSuccess || cudaEventCreate(&t1_) != cudaSuccess)
      throw Error("cudnn swiglu: cudaEventCreate failed");
  }
  ~CudnnSwigluImpl() override {
    cudaStreamSynchronize(stream_);
    shapes_.clear();
    if (workspace_) cudaFree(workspace_);
    cudaEventDestroy(t0_);
    cudaEventDestroy(t1_);
    fe::detail::destroy_handle(handle_);
  }

  bool run(const Tensor& x, const Tensor& w_gate, const Tensor& up, Tensor& out,
           const std::function<void()>& up_product, const std::function<void()>& two_pass) override {
    const int64_t rows = x.rows, n = w_gate.rows, k = w_gate.cols;
    if (x.type != GgmlType::BF16 || w_gate.type != GgmlType::BF16 || up.type != GgmlType::BF16 ||
        out.type != GgmlType::BF16 || x.cols != k || up.rows != rows || up.cols != n ||
        out.rows != rows || out.cols != n || rows <= 0)
      return false;
    const int64_t ldx = int64_t(x.row_stride / 2), ldw = int64_t(w_gate.row_stride / 2),
                  ldu = int64_t(up.row_stride / 2), ldo = int64_t(out.row_stride / 2);
    const Key key{rows, n, k, ldx, ldw, ldu, ldo};
    Shape& sh = shapes_[key];
    if (!sh.decided) {
      // Shapes seen once (a run's ramp and tail) never pay for a graph.
      if (++sh.seen < (force_ ? 1 : kSeenBeforeTune) || decisions_ >= kMaxDecisions) return false;
      cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(stream_, &cap) != cudaSuccess || cap != cudaStreamCaptureStatusNone)
        return false;
      decide(sh, key, x, w_gate, up, out, up_product, two_pass);
      if (shapes_.size() > kMaxShapes) forget_undecided();
    }
    if (!sh.use) return false;
    up_product();
    std::unordered_map<int64_t, void*> pack{{kX, x.data}, {kW, w_gate.data}, {kUp, up.data}, {kOut, out.data}};
    auto st = sh.graph->execute_plan_at_index(handle_, pack, workspace(sh.workspace), sh.plan);
    if (st.is_bad()) throw Error("cuDNN fused gate product failed to run: " + st.get_message());
    ++fused_runs_;
    return true;
  }

  int64_t fused_runs() const override { return fused_runs_; }

 private:
  // rows, n, k, and the row strides (elements) of x, w_gate, up, out.
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>;
  struct Shape {
    int seen = 0;
    bool decided = false, use = false;
    std::shared_ptr<fe::graph::Graph> graph;
    int64_t plan = 0, workspace = 0;
  };
  // A decision costs ~50-200 ms of host time (a graph, plan builds, timed runs), so only
  // row counts that recur are decided, and at most kMaxDecisions of them.
  static constexpr int kSeenBeforeTune = 8;
  static constexpr size_t kMaxDecisions = 32;
  // cuDNN's first few plans by its heuristic: the fastest at 2048 rows on an H100 was its
  // second (bench/device/cudnn_swiglu_gemm.cu); the rest were 5-130% slower. Once a plan
  // has won, later row counts try it and the heuristic's first only.
  static constexpr int64_t kCandidates = 4;
  static constexpr int64_t kMaxWorkspace = int64_t(64) << 20;
  static constexpr size_t kMaxShapes = 1024;

  std::shared_ptr<fe::graph::Graph> make_graph(const Key& key) const {
    const auto [rows, n, k, ldx, ldw, ldu, ldo] = key;
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    using TA = fe::graph::Tensor_attributes;
    auto X = g->tensor(TA().set_name("x").set_uid(kX).set_dim({1, rows, k}).set_stride({rows * ldx, ldx, 1}));
    auto W = g->tensor(TA().set_name("w_gate").set_uid(kW).set_dim({1, k, n}).set_stride({n * ldw, 1, ldw}));
    auto G = g->matmul(X, W, fe::graph::Matmul_attributes().set_name("gate")
                                 .set_compute_data_type(fe::DataType_t::FLOAT));
    G->set_data_type(fe::DataType_t::FLOAT);
    auto S = g->pointwise(G, fe::graph::Pointwise_attributes().set_name("silu")
                                 .set_mode(fe::PointwiseMode_t::SWISH_FWD));
    auto U = g->tensor(TA().set_name("up").set_uid(kUp).set_dim({1, rows, n}).set_stride({rows * ldu, ldu, 1}));
    auto O = g->pointwise(S, U, fe::graph::Pointwise_attributes().set_name("mul")
                                    .set_mode(fe::PointwiseMode_t::MUL));
    O->set_output(true).set_uid(kOut).set_data_type(fe::DataType_t::BFLOAT16)
        .set_dim({1, rows, n}).set_stride({rows * ldo, ldo, 1});
    fe::error_t st;
    try {
      st = g->validate();
      if (st.is_good()) st = g->build_operation_graph(handle_);
      if (st.is_good()) st = g->create_execution_plans({fe::HeurMode_t::A});
      if (st.is_good()) st = g->check_support(handle_);
    } catch (const std::exception& e) {
      st = {fe::error_code_t::GRAPH_NOT_SUPPORTED, e.what()};
    }
    if (st.is_bad()) {
      if (verbose())
        std::fprintf(stderr, "[cudnn swiglu] no graph for %lld rows: %s\n", (long long)rows,
                     st.get_message().c_str());
      return nullptr;
    }
    return g;
  }

  // Mean time (ms) of f over two runs after one unmeasured run.
  template <class F>
  float time_ms(F&& f) {
    f();
    SWIGLU_CUDA(cudaEventRecord(t0_, stream_));
    f();
    f();
    SWIGLU_CUDA(cudaEventRecord(t1_, stream_));
    SWIGLU_CUDA(cudaEventSynchronize(t1_));
    float ms = 0;
    SWIGLU_CUDA(cudaEventElapsedTime(&ms, t0_, t1_));
    return ms / 2;
  }

  // Builds the graph's first plans and times each against the two-pass path. The timed
  // runs write only what this call writes anyway (up, out, and the caller's gate/up
  // scratch), which the caller's path then writes again.
  void decide(Shape& sh, const Key& key, const Tensor& x, const Tensor& w_gate, const Tensor& up,
              const Tensor& out, const std::function<void()>& up_product,
              const std::function<void()>& two_pass) {
    sh.decided = true;
    ++decisions_;
    const auto start = std::chrono::steady_clock::now();
    auto g = make_graph(key);
    if (!g) return;
    std::unordered_map<int64_t, void*> pack{{kX, x.data}, {kW, w_gate.data}, {kUp, up.data}, {kOut, out.data}};
    const float t_two = force_ ? 0 : time_ms(two_pass);
    float best = -1;
    std::string best_name;
    for (int64_t i = 0; i < std::min(kCandidates, g->get_execution_plan_count()); ++i) {
      std::string name;
      if (i > 0 && !preferred_.empty() && (g->get_plan_name_at_index(i, name).is_bad() || name != preferred_))
        continue;
      int64_t ws = 0;
      if (g->build_plan_at_index(i).is_bad() || g->get_workspace_size_plan_at_index(i, ws).is_bad() ||
          ws > kMaxWorkspace)
        continue;
      void* w = workspace(ws);
      if (g->execute_plan_at_index(handle_, pack, w, i).is_bad()) continue;
      const float t = force_ ? 0 : time_ms([&] {
        up_product();
        (void)g->execute_plan_at_index(handle_, pack, w, i);
      });
      if (best < 0 || t < best) {
        best = t;
        sh.plan = i;
        sh.workspace = ws;
        (void)g->get_plan_name_at_index(i, best_name);
      }
      if (force_) break;
    }
    // A margin against noise: the fused path must win by more than 1%.
    sh.use = best >= 0 && (force_ || best < 0.99f * t_two);
    if (sh.use) {
      sh.graph = std::move(g);
      if (preferred_.empty()) preferred_ = best_name;
    }
    if (verbose())
      std::fprintf(stderr, "[cudnn swiglu] %lld rows: two-pass %.1f us, fused best %.1f us (%s): %s; decided in %.0f ms\n",
                   (long long)std::get<0>(key), t_two * 1e3, best * 1e3, best_name.c_str(),
                   sh.use ? "fused" : "two-pass",
                   std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }

  void* workspace(int64_t n) {
    if (size_t(n) > workspace_bytes_) {
      SWIGLU_CUDA(cudaStreamSynchronize(stream_));
      if (workspace_) SWIGLU_CUDA(cudaFree(workspace_));
      workspace_ = nullptr;
      SWIGLU_CUDA(cudaMalloc(&workspace_, size_t(n)));
      workspace_bytes_ = size_t(n);
    }
    return workspace_;
  }

  void forget_undecided() {
    for (auto it = shapes_.begin(); it != shapes_.end();)
      it = it->second.decided ? std::next(it) : shapes_.erase(it);
  }

  cudnnHandle_t handle_;
  cudaStream_t stream_;
  const bool force_;
  std::map<Key, Shape> shapes_;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  cudaEvent_t t0_ = nullptr, t1_ = nullptr;
  int64_t fused_runs_ = 0;
  size_t decisions_ = 0;
  std::string preferred_;  // the plan that won the first decision
};

}  // namespace

std::unique_ptr<CudnnSwiglu> CudnnSwiglu::open(cudaStream_t stream, std::string& why) {
  const char* e = std::getenv("BATCHMAX_CUDA_CUDNN_SWIGLU");
  if (!e || (std::strcmp(e, "1") != 0 && std::strcmp(e, "force") != 0)) {
    why = "off (BATCHMAX_CUDA_CUDNN_SWIGLU=1 turns it on)";
    return nullptr;
  }
  if (load_cudnn(why) <= 0) return nullptr;
  cudnnHandle_t h = nullptr;
  if (fe::detail::create_handle(&h) != CUDNN_STATUS_SUCCESS) {
    why = "cudnnCreate failed";
    return nullptr;
  }
  return std::make_unique<CudnnSwigluImpl>(h, stream, e && std::strcmp(e, "force") == 0);
}

}  // namespace batchmax::cuda

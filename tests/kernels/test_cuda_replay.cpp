// Backend::run_replayable on the CUDA backend (CUDA graphs): a run is issued op by op the
// first time, captured and launched the second, replayed after that, and each time its
// outputs equal the same ops issued one by one (bit for bit: the same kernels) and the
// CPU's (within the bf16 bound). A replay is told apart by `ops` not being called.
#include <cstdlib>

#include "kernels/cuda_test_util.h"

namespace batchmax::cudatest {
namespace {

using CudaReplay = CudaFixture;

// A decode-like run: product, fused add + norm, product, swiglu, rope.
struct Block {
  int64_t rows, d = 256, ff = 512;
  int heads = 4, head_dim = 64;
  Tensor x, h, gu, act, out, w1, w2, norm;
  RopeParams rope;
  std::vector<int32_t> pos;
};

class ReplayRun {
 public:
  ReplayRun(Backend& b, Block& k) : b_(b), k_(k) {}
  void operator()() {
    ++calls;
    b_.matmul(k_.x, k_.w1, nullptr, k_.h);
    b_.add_rms_norm(k_.x, k_.h, k_.norm, 1e-5f, k_.h);
    b_.matmul(k_.h, k_.w2, nullptr, k_.gu);
    Tensor gate = k_.gu, up = k_.gu;
    gate.cols = up.cols = k_.ff;
    up.data = static_cast<char*>(k_.gu.data) + k_.ff * 2;
    b_.swiglu(gate, up, k_.act);
    Tensor qk = k_.act;
    qk.cols = int64_t(k_.heads) * k_.head_dim;
    b_.rope(qk, k_.heads, k_.pos, k_.rope);
  }
  int calls = 0;

 private:
  Backend& b_;
  Block& k_;
};

Block make_block(Backend& gpu, std::vector<Tensor>& owned, int64_t rows, std::mt19937& rng) {
  Block k;
  k.rows = rows;
  auto alloc = [&](int64_t r, int64_t c, GgmlType t = GgmlType::BF16) {
    Tensor x = gpu.alloc(t, r, c);
    owned.push_back(x);
    return x;
  };
  k.x = alloc(rows, k.d);
  k.h = alloc(rows, k.d);
  k.gu = alloc(rows, 2 * k.ff);
  k.act = alloc(rows, k.ff);
  k.w1 = alloc(k.d, k.d);
  k.w2 = alloc(2 * k.ff, k.d);
  k.norm = alloc(1, k.d, GgmlType::F32);
  gpu.fill_random(k.w1, rng(), 0.1f);
  gpu.fill_random(k.w2, rng(), 0.1f);
  gpu.fill_random(k.norm, rng(), 0.2f, 1.0f);
  k.rope.head_dim = k.rope.rotary_dim = k.head_dim;
  for (int i = 0; i < k.head_dim / 2; ++i)
    k.rope.inv_freq.push_back(float(std::pow(10000.0, -2.0 * i / k.head_dim)));
  for (int64_t r = 0; r < rows; ++r) k.pos.push_back(int32_t(100 + 7 * r));
  return k;
}

// Runs the block through run_replayable on fresh inputs `n` times; after each, the
// same ops one by one on the same inputs must give the same bits.
void check_runs(Backend& gpu, Block& k, ReplayRun& run, const ReplayKey& key, int n,
                std::mt19937& rng, const char* what) {
  std::vector<uint16_t> x0(size_t(k.rows * k.d)), got(size_t(k.rows * k.ff)),
      want(got.size()), x_got(x0.size()), x_want(x0.size());
  for (int i = 0; i < n; ++i) {
    gpu.fill_random(k.x, rng(), 2.0f);
    gpu.download(k.x, x0.data());
    gpu.run_replayable(key, [&] { run(); });
    gpu.download(k.act, got.data());
    gpu.download(k.x, x_got.data());
    gpu.upload(x0.data(), k.x);  // the residual add wrote x: start again from x0
    const int calls = run.calls;
    run();
    run.calls = calls;
    gpu.download(k.act, want.data());
    gpu.download(k.x, x_want.data());
    EXPECT_EQ(got, want) << what << ": run " << i << " differs from the same ops one by one";
    EXPECT_EQ(x_got, x_want) << what << ": run " << i << " residual differs";
  }
}

TEST_F(CudaReplay, RecordsOnTheSecondRunThenReplaysOnNewInputs) {
  Block k = make_block(*gpu, gpu_owned, 24, rng);
  ReplayRun run(*gpu, k);
  const ReplayKey key{this, 0, 3, k.rows};
  // The positions the replayed rope reads: set by an op-by-op rope first, as the model's
  // first layer does.
  { Tensor scratch = gpu->alloc(GgmlType::BF16, k.rows, int64_t(k.heads) * k.head_dim);
    gpu_owned.push_back(scratch);
    gpu->rope(scratch, k.heads, k.pos, k.rope); }
  check_runs(*gpu, k, run, key, 5, rng, "replayed");
  const ReplayCounts c = gpu->replay_counts();
  std::cout << "[ replay   ] calls=" << run.calls << " eager=" << c.eager << " recorded=" << c.recorded
            << " replayed=" << c.replayed << "\n";
  EXPECT_EQ(run.calls, 2) << "runs 3-5 should have replayed the graph without calling ops";
  EXPECT_EQ(c.eager, 1);
  EXPECT_EQ(c.recorded, 1);
  EXPECT_EQ(c.replayed, 3);

  // The replayed result is also right: against the CPU on the last inputs.
  Tensor xc = cpu->alloc(GgmlType::F32, k.rows, k.d);
  cpu_owned.push_back(xc);
  gpu->fill_random(k.x, rng(), 2.0f);
  const std::vector<float> xv = down_gpu(k.x);
  cpu->upload(xv.data(), xc);
  gpu->run_replayable(key, [&] { run(); });
  EXPECT_EQ(run.calls, 2) << "expected a replay";
  auto to_cpu = [&](const Tensor& g) {
    Tensor c = cpu->alloc(GgmlType::F32, g.rows, g.cols);
    cpu_owned.push_back(c);
    std::vector<float> v = down_gpu(g);
    cpu->upload(v.data(), c);
    return c;
  };
  Tensor w1 = to_cpu(k.w1), w2 = to_cpu(k.w2), norm = to_cpu(k.norm);
  Tensor h = cpu->alloc(GgmlType::F32, k.rows, k.d), gu = cpu->alloc(GgmlType::F32, k.rows, 2 * k.ff),
         act = cpu->alloc(GgmlType::F32, k.rows, k.ff);
  for (Tensor t : {h, gu, act}) cpu_owned.push_back(t);
  cpu->matmul(xc, w1, nullptr, h);
  cpu->add_rms_norm(xc, h, norm, 1e-5f, h);
  cpu->matmul(h, w2, nullptr, gu);
  Tensor gate = gu, up = gu;
  gate.cols = up.cols = k.ff;
  up.data = gu.row_f32(0) + k.ff;
  cpu->swiglu(gate, up, act);
  Tensor qk = act;
  qk.cols = int64_t(k.heads) * k.head_dim;
  cpu->rope(qk, k.heads, k.pos, k.rope);
  expect_close("replayed block vs cpu", down_gpu(k.act), down_cpu(act), 3 * kBf16OpBound);
}

TEST_F(CudaReplay, DropForgetsAnOwnersRecords) {
  Block k = make_block(*gpu, gpu_owned, 8, rng);
  ReplayRun run(*gpu, k);
  { Tensor s = gpu->alloc(GgmlType::BF16, k.rows, int64_t(k.heads) * k.head_dim);
    gpu_owned.push_back(s);
    gpu->rope(s, k.heads, k.pos, k.rope); }
  const ReplayKey key{this, 0, 0, k.rows};
  check_runs(*gpu, k, run, key, 3, rng, "before drop");
  EXPECT_EQ(run.calls, 2);
  gpu->drop_replays(this);
  check_runs(*gpu, k, run, key, 3, rng, "after drop");
  EXPECT_EQ(run.calls, 4) << "after drop_replays the key starts over: op by op, then captured";
  EXPECT_EQ(gpu->replay_counts().recorded, 2);
}

// A rope whose positions differ from the previous rope's would need a host copy inside
// the graph: the capture is refused and the key always runs op by op, still correct.
TEST_F(CudaReplay, RunReadingNewPositionsIsRefusedAndRunsOpByOp) {
  Block k = make_block(*gpu, gpu_owned, 8, rng);
  ReplayRun run(*gpu, k);
  const ReplayKey key{this, 1, 0, k.rows};
  for (int i = 0; i < 4; ++i) {
    for (int32_t& p : k.pos) p += 1;  // new positions every run, no op-by-op rope between
    gpu->fill_random(k.x, rng(), 2.0f);
    std::vector<uint16_t> x0(size_t(k.rows * k.d)), got(size_t(k.rows * k.ff)), want(got.size());
    gpu->download(k.x, x0.data());
    gpu->run_replayable(key, [&] { run(); });
    gpu->download(k.act, got.data());
    gpu->upload(x0.data(), k.x);
    run();
    gpu->download(k.act, want.data());
    EXPECT_EQ(got, want) << "run " << i;
  }
  // Run 1 op by op; run 2 tries a capture (ops called, refused at the rope) and goes op
  // by op; runs 3-4 op by op; plus one reference call per run.
  EXPECT_EQ(run.calls, 9);
  EXPECT_EQ(gpu->replay_counts().recorded, 0);
  EXPECT_EQ(gpu->replay_counts().replayed, 0);
}

TEST_F(CudaReplay, LargeStepsAndTheSwitchRunOpByOp) {
  Block big = make_block(*gpu, gpu_owned, 300, rng);  // above the 256-row limit
  ReplayRun run_big(*gpu, big);
  for (int i = 0; i < 3; ++i) gpu->run_replayable(ReplayKey{this, 0, 0, big.rows}, [&] { run_big(); });
  EXPECT_EQ(run_big.calls, 3);

  ::setenv("BATCHMAX_CUDA_GRAPHS", "0", 1);
  std::unique_ptr<Backend> off = new_gpu();
  ::unsetenv("BATCHMAX_CUDA_GRAPHS");
  ASSERT_TRUE(off);
  std::vector<Tensor> off_owned;
  Block k = make_block(*off, off_owned, 8, rng);
  ReplayRun run(*off, k);
  for (int i = 0; i < 3; ++i) off->run_replayable(ReplayKey{this, 0, 0, k.rows}, [&] { run(); });
  EXPECT_EQ(run.calls, 3) << "BATCHMAX_CUDA_GRAPHS=0 runs every key op by op";
  EXPECT_EQ(off->replay_counts().recorded, 0);
  for (Tensor& t : off_owned) off->free(t);
}

}  // namespace
}  // namespace batchmax::cudatest

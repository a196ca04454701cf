// The CUDA backend against the CPU reference kernels (force_scalar), op by op, on fresh
// random inputs; bounds and method in cuda_test_util.h. Attention and the KV pool ops
// are in test_cuda_attention.cpp.
#include <cstdlib>

#include "kernels/cuda_test_util.h"

namespace batchmax::cudatest {
namespace {

using CudaKernels = CudaFixture;

const GgmlType kWeightTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16,
                                 GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1,
                                 GgmlType::Q4_K, GgmlType::Q6_K};

TEST_F(CudaKernels, LoadWeightDequantisesEveryType) {
  for (GgmlType t : kWeightTypes) {
    const int64_t rows = 9, cols = 512;
    std::vector<uint8_t> raw = random_weight(t, rows, cols);
    Tensor w = gpu->load_weight(t, raw.data(), rows, cols);
    gpu_owned.push_back(w);
    EXPECT_EQ(w.type, GgmlType::BF16);
    std::vector<float> want(rows * cols);
    const size_t rb = row_bytes(t, cols);
    for (int64_t r = 0; r < rows; ++r)
      dequantize_row(t, raw.data() + r * rb, want.data() + r * cols, cols);
    expect_close("load_weight " + type_name(t), down_gpu(w), want, kDequantBound);
  }
  // 1-row vectors (norm weights, biases) stay F32: exact.
  std::vector<float> vec = randv(300);
  Tensor v = gpu->load_weight(GgmlType::F32, vec.data(), 1, 300);
  gpu_owned.push_back(v);
  EXPECT_EQ(v.type, GgmlType::F32);
  expect_close("load_weight F32 vector", down_gpu(v), vec, kExactBound);
}

TEST_F(CudaKernels, Embed) {
  for (GgmlType t : {GgmlType::Q6_K, GgmlType::Q4_K, GgmlType::BF16, GgmlType::F32}) {
    const int64_t vocab = 50, d = 512;
    std::vector<uint8_t> raw = random_weight(t, vocab, d);
    Tensor tc = cpu->load_weight(t, raw.data(), vocab, d);
    Tensor tg = gpu->load_weight(t, raw.data(), vocab, d);
    gpu_owned.push_back(tg);
    std::vector<int32_t> ids(13);
    for (int32_t& i : ids) i = randi(0, int(vocab - 1));
    ids[3] = ids[7];  // repeats
    Pair out = make_out(int64_t(ids.size()), d);
    cpu->embed(tc, ids, out.c);
    gpu->embed(tg, ids, out.g);
    expect_close("embed " + type_name(t), down_gpu(out.g), down_cpu(out.c), kDequantBound);
  }
}

TEST_F(CudaKernels, RmsNorm) {
  // (rows, cols): rows held in registers (<= 8192 columns, a multiple of 8, <= 256
  // rows), a wider row and more rows for the vectorised loop, and an odd width for the
  // scalar path.
  for (auto [rows, cols] :
       {std::pair<int64_t, int64_t>{7, 4096}, {5, 100}, {1, 576}, {3, 8192}, {2, 10240}, {300, 512}}) {
    for (GgmlType ot : {GgmlType::BF16, GgmlType::F32}) {
      Pair x = make(rows, cols, randv(rows * cols, -3, 3));
      std::vector<float> wv = randv(cols, 0.5f, 1.5f);
      Tensor wc = cpu->load_weight(GgmlType::F32, wv.data(), 1, cols);
      Tensor wg = gpu->load_weight(GgmlType::F32, wv.data(), 1, cols);
      gpu_owned.push_back(wg);
      Pair out = make_out(rows, cols, ot);
      cpu->rms_norm(x.c, wc, 1e-5f, out.c);
      gpu->rms_norm(x.g, wg, 1e-5f, out.g);
      expect_close("rms_norm " + std::to_string(rows) + "x" + std::to_string(cols) + " -> " +
                       type_name(ot),
                   down_gpu(out.g), down_cpu(out.c), kBf16OpBound);
    }
  }
}

TEST_F(CudaKernels, MatmulEveryWeightTypeAndShape) {
  struct Shape { int64_t n, k, m; };
  for (Shape s : {Shape{1, 256, 96}, Shape{7, 512, 160}, Shape{64, 768, 384}, Shape{33, 256, 1000}})
    for (GgmlType t : {GgmlType::F32, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
                       GgmlType::Q4_K, GgmlType::Q6_K}) {
      const Pair w = load_random_weight(t, s.m, s.k);
      const Tensor &wc = w.c, &wg = w.g;
      Pair x = make(s.n, s.k, randv(s.n * s.k));
      for (GgmlType ot : {GgmlType::BF16, GgmlType::F32}) {  // F32: the logits
        Pair out = make_out(s.n, s.m, ot);
        cpu->matmul(x.c, wc, nullptr, out.c);
        gpu->matmul(x.g, wg, nullptr, out.g);
        expect_close("matmul n=" + std::to_string(s.n) + " k=" + std::to_string(s.k) + " m=" +
                         std::to_string(s.m) + " w=" + type_name(t) + " out=" + type_name(ot),
                     down_gpu(out.g), down_cpu(out.c), kBf16OpBound);
      }
    }
}

TEST_F(CudaKernels, MatmulBiasAndRowSlices) {
  const int64_t k = 512, m = 192;
  const Pair w = load_random_weight(GgmlType::BF16, m, k);
  const Tensor &wc = w.c, &wg = w.g;
  std::vector<float> bv = randv(m);
  Tensor bc = cpu->load_weight(GgmlType::F32, bv.data(), 1, m);
  Tensor bg = gpu->load_weight(GgmlType::F32, bv.data(), 1, m);
  gpu_owned.push_back(bg);
  Pair x = make(11, k, randv(11 * k));
  Pair out = make_out(11, m);
  cpu->matmul(x.c, wc, &bc, out.c);
  gpu->matmul(x.g, wg, &bg, out.g);
  expect_close("matmul bias", down_gpu(out.g), down_cpu(out.c), kBf16OpBound);
  // Row slices start at addresses that are not 256-byte aligned.
  Tensor xs_c = x.c.slice_rows(3, 5), xs_g = x.g.slice_rows(3, 5);
  Pair out2 = make_out(9, m);
  Tensor os_c = out2.c.slice_rows(1, 5), os_g = out2.g.slice_rows(1, 5);
  cpu->matmul(xs_c, wc, nullptr, os_c);
  gpu->matmul(xs_g, wg, nullptr, os_g);
  expect_close("matmul row slices", down_gpu(os_g), down_cpu(os_c), kBf16OpBound);
}

TEST_F(CudaKernels, RopeBothStyles) {
  for (RopeStyle style : {RopeStyle::Interleaved, RopeStyle::Neox})
    // 16-byte paths (rot 64, 128, 32) and the scalar one (rot 20: 10 pairs).
    for (auto [hd, rot] : {std::pair<int, int>{64, 64}, {128, 128}, {128, 32}, {64, 20}}) {
      const int heads = 4;
      const int64_t rows = 6;
      RopeParams p;
      p.style = style;
      p.head_dim = hd;
      p.rotary_dim = rot;
      for (int i = 0; i < rot / 2; ++i)
        p.inv_freq.push_back(float(std::pow(500000.0, -2.0 * i / rot)));
      std::vector<int32_t> pos(rows);
      for (int32_t& x : pos) x = randi(0, 130000);
      pos[0] = 0;
      Pair x = make(rows, int64_t(heads) * hd, randv(rows * heads * hd));
      cpu->rope(x.c, heads, pos, p);
      gpu->rope(x.g, heads, pos, p);
      gpu->rope(x.g, heads, pos, p);  // twice on both: the cached inv_freq is reused
      cpu->rope(x.c, heads, pos, p);
      expect_close(std::string("rope ") + (style == RopeStyle::Neox ? "neox" : "interleaved") +
                       " hd=" + std::to_string(hd) + " rot=" + std::to_string(rot),
                   down_gpu(x.g), down_cpu(x.c), kBf16OpBound);
    }
}

TEST_F(CudaKernels, SwigluAddGather) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{9, 1536}, {4, 77}}) {
    const std::string shape = std::to_string(rows) + "x" + std::to_string(cols);
    Pair g = make(rows, cols, randv(rows * cols, -4, 4));
    Pair u = make(rows, cols, randv(rows * cols));
    Pair out = make_out(rows, cols);
    cpu->swiglu(g.c, u.c, out.c);
    gpu->swiglu(g.g, u.g, out.g);
    expect_close("swiglu " + shape, down_gpu(out.g), down_cpu(out.c), kBf16OpBound);

    Pair a = make(rows, cols, randv(rows * cols));
    cpu->add(a.c, u.c);
    gpu->add(a.g, u.g);
    expect_close("add " + shape, down_gpu(a.g), down_cpu(a.c), kBf16OpBound);

    std::vector<int32_t> idx = {int32_t(rows - 1), 0, 2, 2};
    Pair gout = make_out(int64_t(idx.size()), cols);
    cpu->gather_rows(g.c, idx, gout.c);
    gpu->gather_rows(g.g, idx, gout.g);
    expect_close("gather_rows " + shape, down_gpu(gout.g), down_cpu(gout.c), kExactBound);
  }
}

// The residual add fused with the next norm: equal to add() then rms_norm() on the GPU
// (bit for bit) and close to the CPU's; out may be the added tensor itself.
TEST_F(CudaKernels, AddRmsNormFusedEqualsAddThenNorm) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{9, 4096}, {3, 100}, {5, 576}, {2, 10240}, {300, 512}}) {
    const std::string shape = std::to_string(rows) + "x" + std::to_string(cols);
    std::vector<float> xv = randv(rows * cols, -3, 3), yv = randv(rows * cols, -3, 3);
    std::vector<float> wv = randv(cols, 0.5f, 1.5f);
    Tensor wc = cpu->load_weight(GgmlType::F32, wv.data(), 1, cols);
    Tensor wg = gpu->load_weight(GgmlType::F32, wv.data(), 1, cols);
    gpu_owned.push_back(wg);
    Pair x = make(rows, cols, xv), y = make(rows, cols, yv);
    Pair x2 = make(rows, cols, xv), y2 = make(rows, cols, yv);
    Pair out = make_out(rows, cols);
    cpu->add_rms_norm(x.c, y.c, wc, 1e-5f, out.c);
    gpu->add(x2.g, y2.g);  // separate ops on the GPU
    gpu->rms_norm(x2.g, wg, 1e-5f, out.g);
    gpu->add_rms_norm(x.g, y.g, wg, 1e-5f, y.g);  // fused, writing over y
    expect_close("add_rms_norm sum " + shape, down_gpu(x.g), down_gpu(x2.g), 0.0);
    expect_close("add_rms_norm fused vs separate " + shape, down_gpu(y.g), down_gpu(out.g), 0.0);
    expect_close("add_rms_norm vs cpu " + shape, down_gpu(y.g), down_cpu(out.c), kBf16OpBound);
  }
}

TEST_F(CudaKernels, MatmulAddRmsNormMatchesCpu) {
  // Below the threshold (1024 rows unless BATCHMAX_CUDA_RESIDUAL_GEMM_ROWS says otherwise)
  // the product, then add + norm; from it the product adds into the residual (beta = 1)
  // and a plain norm follows. Both the residual and the normed rows against the CPU.
  const int64_t k = 384, n = 640;
  const Pair w = load_random_weight(GgmlType::BF16, n, k);
  const Tensor &wc = w.c, &wg = w.g;
  Pair norm = make(1, n, randv(size_t(n)));
  for (int64_t rows : {3, 1023, 1024, 1500}) {
    const std::string shape = "rows=" + std::to_string(rows);
    // a as a row slice (the model's workspace view), 2 rows in.
    Pair aall = make(rows + 2, k, randv(size_t((rows + 2) * k)));
    Tensor ac = aall.c.slice_rows(2, rows), ag = aall.g.slice_rows(2, rows);
    Pair x = make(rows, n, randv(size_t(rows * n)));
    Pair out = make_out(rows, n);
    cpu->matmul_add_rms_norm(ac, wc, x.c, norm.c, 1e-5f, out.c);
    gpu->matmul_add_rms_norm(ag, wg, x.g, norm.g, 1e-5f, out.g);
    expect_close("matmul_add_rms_norm residual " + shape, down_gpu(x.g), down_cpu(x.c), kBf16OpBound);
    expect_close("matmul_add_rms_norm normed " + shape, down_gpu(out.g), down_cpu(out.c), kBf16OpBound);
  }
}

// The model stacks wq/wk/wv (and w_gate/w_up) on this backend
// (prefers_stacked_projections) and hands the ops strided column views of one product.
// gate_up_swiglu: the fused decode kernel (gate_up_swiglu.h) for <= 128 rows, the product
// and swiglu otherwise. Against the CPU's fp32 product and a host swiglu, and against the
// GPU's unfused ops (which round gate and up to bf16 first). Where the fused kernel runs,
// the gate/up scratch stays as it was (poisoned): the proof that it ran.
TEST_F(CudaKernels, GateUpSwigluFusedMatchesProductThenSwiglu) {
  // 256 features a row of each half: 4 CTAs of 64 for every SM of an H100 or H200, which
  // the kernel asks for (fewer and cuBLASLt takes the product).
  const int64_t k = 256, ff = 64 * 256;
  auto col_view = [](const Tensor& t, int64_t c0, int64_t n) {
    Tensor r = t;
    r.data = static_cast<char*>(t.data) + row_bytes(t.type, c0);
    r.cols = n;
    return r;
  };
  const Pair w = load_random_weight(GgmlType::BF16, 2 * ff, k);
  const Tensor &wc = w.c, &wg = w.g;
  const char* env = std::getenv("BATCHMAX_CUDA_FUSED_GATE_UP");
  const bool fused_on = !(env && *env == '0');
  for (int64_t rows : {1, 5, 64, 65, 100, 128, 130}) {
    const std::string shape = "rows=" + std::to_string(rows);
    // x as a row slice (the model's workspace view), 3 rows in.
    Pair xall = make(rows + 3, k, randv(size_t((rows + 3) * k)));
    Tensor xc = xall.c.slice_rows(3, rows), xg = xall.g.slice_rows(3, rows);
    Pair gu = make_out(rows, 2 * ff, GgmlType::F32);
    Pair gu_g = make_out(rows, 2 * ff);  // bf16 scratch on the GPU, poisoned
    Pair out = make_out(rows, ff);
    const std::vector<float> want = cpu_gate_up_swiglu(xc, wc, gu.c, rows, ff);
    gpu->gate_up_swiglu(xg, wg, gu_g.g, col_view(gu_g.g, 0, ff), col_view(gu_g.g, ff, ff), out.g);
    const std::vector<float> got = down_gpu(out.g);
    expect_close("gate_up_swiglu vs cpu " + shape, got, want, kBf16OpBound);
    const std::vector<float> scratch = down_gpu(gu_g.g);
    const bool untouched = std::all_of(scratch.begin(), scratch.end(), [](float v) { return std::isnan(v); });
    EXPECT_EQ(untouched, fused_on && rows <= 128) << shape << ": fused kernel taken?";
    // The unfused ops on the GPU.
    Pair out2 = make_out(rows, ff);
    gpu->matmul(xg, wg, nullptr, gu_g.g);
    gpu->swiglu(col_view(gu_g.g, 0, ff), col_view(gu_g.g, ff, ff), out2.g);
    expect_close("gate_up_swiglu vs unfused gpu " + shape, got, down_gpu(out2.g), kBf16OpBound);
  }
}

// From 1024 rows gate_up_swiglu may run as cuBLASLt's up product and cuDNN's gate product
// with the swiglu fused after it (cudnn_swiglu.h). A backend with it forced on (no timing
// against the two-pass path) against the CPU; the gate half of the scratch stays poisoned
// where it ran. Skips where the build or the machine has no cuDNN.
TEST_F(CudaKernels, GateUpSwigluThroughCudnnMatchesCpu) {
  setenv("BATCHMAX_CUDA_CUDNN_SWIGLU", "force", 1);
  std::unique_ptr<Backend> fused = new_gpu();
  unsetenv("BATCHMAX_CUDA_CUDNN_SWIGLU");
  if (!fused || fused->name().find("MLP gate: cuDNN fused") == std::string::npos)
    GTEST_SKIP() << "no cuDNN fused gate (no cuDNN in this build or on this machine)"
                 << (fused ? ": " + fused->name() : std::string());
  const int64_t k = 256, ff = 1024;
  const Pair w = load_random_weight(GgmlType::BF16, 2 * ff, k);
  for (int64_t rows : {1024, 1500}) {
    const std::string shape = "rows=" + std::to_string(rows);
    Pair xall = make(rows + 3, k, randv(size_t((rows + 3) * k)));
    Tensor xc = xall.c.slice_rows(3, rows), xg = xall.g.slice_rows(3, rows);
    Pair gu = make_out(rows, 2 * ff, GgmlType::F32);
    Pair gu_g = make_out(rows, 2 * ff);  // poisoned
    Pair out = make_out(rows, ff);
    const std::vector<float> want = cpu_gate_up_swiglu(xc, w.c, gu.c, rows, ff);
    gpu->synchronize();  // the uploads ran on the fixture's backend
    Tensor gate = gu_g.g, up = gu_g.g;
    gate.cols = up.cols = ff;
    up.data = static_cast<char*>(gu_g.g.data) + row_bytes(GgmlType::BF16, ff);
    fused->gate_up_swiglu(xg, w.g, gu_g.g, gate, up, out.g);
    fused->synchronize();
    expect_close("gate_up_swiglu (cuDNN) vs cpu " + shape, down_gpu(out.g), want, kBf16OpBound);
    const std::vector<float> scratch = down_gpu(gu_g.g);
    int64_t gate_nan = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t f = 0; f < ff; ++f) gate_nan += std::isnan(scratch[size_t(r * 2 * ff + f)]);
    EXPECT_EQ(gate_nan, rows * ff) << shape << ": the fused gate product did not run";
  }
}

TEST_F(CudaKernels, StackedProductsThroughColumnViews) {
  ASSERT_TRUE(gpu->prefers_stacked_projections());
  const int heads = 4, kv_heads = 2, hd = 64;
  const int64_t rows = 7, d = 256, nq = heads * hd, nkv = kv_heads * hd, ff = 320;
  auto col_view = [](const Tensor& t, int64_t c0, int64_t n) {
    Tensor r = t;
    r.data = static_cast<char*>(t.data) + row_bytes(t.type, c0);
    r.cols = n;
    return r;
  };
  // Weights loaded one by one on both; on the GPU copied into rows of one matrix. The
  // CPU backend uses the bytes in place: they live as long as the test.
  std::vector<std::vector<uint8_t>> raws;
  auto stacked = [&](std::vector<int64_t> parts_rows, std::vector<Tensor>& cpu_parts) {
    int64_t total = 0;
    for (int64_t r : parts_rows) total += r;
    Tensor all = gpu->alloc(GgmlType::BF16, total, d);
    gpu_owned.push_back(all);
    int64_t r0 = 0;
    for (int64_t r : parts_rows) {
      const std::vector<uint8_t>& raw = raws.emplace_back(random_weight(GgmlType::BF16, r, d));
      cpu_parts.push_back(cpu->load_weight(GgmlType::BF16, raw.data(), r, d));
      Tensor g = gpu->load_weight(GgmlType::BF16, raw.data(), r, d);
      Tensor dst = all.slice_rows(r0, r);
      gpu->copy_rows(g, dst);
      gpu->synchronize();
      gpu->free(g);
      r0 += r;
    }
    return all;
  };
  // Contiguous copy of a strided GPU view (copy_rows to a packed tensor).
  auto packed = [&](const Tensor& view) {
    Tensor t = gpu->alloc(view.type, view.rows, view.cols);
    gpu_owned.push_back(t);
    gpu->copy_rows(view, t);
    return down_gpu(t);
  };
  Pair x = make(rows, d, randv(rows * d));
  std::vector<int32_t> pos(rows);
  for (int32_t& p : pos) p = randi(0, 9000);
  RopeParams rp;
  rp.head_dim = rp.rotary_dim = hd;
  for (int i = 0; i < hd / 2; ++i) rp.inv_freq.push_back(float(std::pow(500000.0, -2.0 * i / hd)));

  std::vector<Tensor> wc;
  Tensor wqkv = stacked({nq, nkv, nkv}, wc);
  Pair q = make_out(rows, nq), k = make_out(rows, nkv), v = make_out(rows, nkv);
  cpu->matmul(x.c, wc[0], nullptr, q.c);
  cpu->matmul(x.c, wc[1], nullptr, k.c);
  cpu->matmul(x.c, wc[2], nullptr, v.c);
  cpu->rope(q.c, heads, pos, rp);
  cpu->rope(k.c, kv_heads, pos, rp);
  Tensor qkv = make_out(rows, nq + 2 * nkv).g;
  gpu->matmul(x.g, wqkv, nullptr, qkv);
  Tensor qk = col_view(qkv, 0, nq + nkv);
  gpu->rope(qk, heads + kv_heads, pos, rp);  // Q and K heads in one launch
  expect_close("stacked q (roped)", packed(col_view(qkv, 0, nq)), down_cpu(q.c), kBf16OpBound);
  expect_close("stacked k (roped)", packed(col_view(qkv, nq, nkv)), down_cpu(k.c), kBf16OpBound);
  expect_close("stacked v", packed(col_view(qkv, nq + nkv, nkv)), down_cpu(v.c), kBf16OpBound);

  std::vector<Tensor> wf;
  Tensor wgu = stacked({ff, ff}, wf);
  Pair gate = make_out(rows, ff), up = make_out(rows, ff), act = make_out(rows, ff);
  cpu->matmul(x.c, wf[0], nullptr, gate.c);
  cpu->matmul(x.c, wf[1], nullptr, up.c);
  cpu->swiglu(gate.c, up.c, act.c);
  Tensor gu = make_out(rows, 2 * ff).g;
  gpu->matmul(x.g, wgu, nullptr, gu);
  gpu->swiglu(col_view(gu, 0, ff), col_view(gu, ff, ff), act.g);
  expect_close("swiglu of stacked gate/up", down_gpu(act.g), down_cpu(act.c), kBf16OpBound);
}

}  // namespace
}  // namespace batchmax::cudatest

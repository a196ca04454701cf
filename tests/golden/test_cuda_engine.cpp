// End to end on the GPU: the CUDA engine against the CPU engine on one synthetic llama
// model the test writes itself (the real models are too big to reach the GPU machine).
// head_dim 64 and GQA group 2, so attention takes the tensor-core path; prompts of up to
// ~900 tokens in 256-token chunks, decoded 4 at a time (prefill chunks and decode rows
// share steps). Skips without a CUDA build or device.
//
// Checks: the prompt's last logits agree to a normalised error of 3e-2 (bf16 weights and
// activations against the CPU's fp32, two layers); greedy tokens agree until the first
// divergence, and there the GPU's token is in the CPU's top 5; the logits each token
// was picked from (while the contexts agree) stay within 5e-2.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

#include <unistd.h>

#include "batchmax/engine.h"
#include "unit/gguf_writer.h"
#ifdef BATCHMAX_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace batchmax {
namespace {

constexpr int kVocab = 300, kEmbd = 256, kHeads = 4, kKvHeads = 2, kHeadDim = 64, kLayers = 2,
              kFf = 512;

// GPT-2's byte-to-unicode table: the 256 byte tokens of a byte-level BPE vocabulary.
std::vector<std::string> byte_tokens() {
  std::vector<std::string> out(256);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    const uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + extra++);
    std::string s;
    if (cp < 0x80) s += char(cp);
    else s += char(0xC0 | (cp >> 6)), s += char(0x80 | (cp & 0x3F));
    out[b] = s;
  }
  return out;
}

std::string write_model(const std::string& path) {
  test::GgufWriter w;
  const std::string a = "llama.";
  w.add_string("general.architecture", "llama").add_string("general.name", "cuda-e2e-tiny");
  w.add_u32(a + "context_length", 4096).add_u32(a + "embedding_length", kEmbd);
  w.add_u32(a + "block_count", kLayers).add_u32(a + "feed_forward_length", kFf);
  w.add_u32(a + "attention.head_count", kHeads).add_u32(a + "attention.head_count_kv", kKvHeads);
  w.add_u32(a + "attention.key_length", kHeadDim).add_u32(a + "attention.value_length", kHeadDim);
  w.add_f32(a + "attention.layer_norm_rms_epsilon", 1e-5f).add_f32(a + "rope.freq_base", 10000.f);
  std::vector<std::string> tokens = byte_tokens();
  for (int i = 256; i < kVocab; ++i) tokens.push_back("<x" + std::to_string(i) + ">");
  w.add_string("tokenizer.ggml.model", "gpt2").add_strings("tokenizer.ggml.tokens", tokens);
  w.add_strings("tokenizer.ggml.merges", {});
  w.add_u32("tokenizer.ggml.bos_token_id", 256).add_u32("tokenizer.ggml.eos_token_id", 257);

  std::mt19937 rng(7);
  auto tensor = [&](const std::string& name, int64_t rows, int64_t cols, float scale, float mean = 0) {
    std::normal_distribution<float> d(mean, scale);
    std::vector<float> v(size_t(rows * cols));
    for (float& x : v) x = d(rng);
    if (rows == 1) w.add_f32_tensor(name, {cols}, v);
    else w.add_f32_tensor(name, {cols, rows}, v);  // GGUF dims: row length first
  };
  tensor("token_embd.weight", kVocab, kEmbd, 1.0f);
  tensor("output.weight", kVocab, kEmbd, 1.5f / std::sqrt(float(kEmbd)));
  tensor("output_norm.weight", 1, kEmbd, 0.1f, 1.0f);
  const int nq = kHeads * kHeadDim, nkv = kKvHeads * kHeadDim;
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    tensor(p + "attn_norm.weight", 1, kEmbd, 0.1f, 1.0f);
    // Larger q/k weights give peaked attention, so a wrong mask or key shows.
    tensor(p + "attn_q.weight", nq, kEmbd, 2.0f / std::sqrt(float(kEmbd)));
    tensor(p + "attn_k.weight", nkv, kEmbd, 2.0f / std::sqrt(float(kEmbd)));
    tensor(p + "attn_v.weight", nkv, kEmbd, 1.0f / std::sqrt(float(kEmbd)));
    tensor(p + "attn_output.weight", kEmbd, nq, 1.0f / std::sqrt(float(nq)));
    tensor(p + "ffn_norm.weight", 1, kEmbd, 0.1f, 1.0f);
    tensor(p + "ffn_gate.weight", kFf, kEmbd, 1.0f / std::sqrt(float(kEmbd)));
    tensor(p + "ffn_up.weight", kFf, kEmbd, 1.0f / std::sqrt(float(kEmbd)));
    tensor(p + "ffn_down.weight", kEmbd, kFf, 1.0f / std::sqrt(float(kFf)));
  }
  w.write_file(path);
  return path;
}

[[maybe_unused]] double norm_err(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = (i < got.size() ? double(got[i]) : 0.0) - want[i];
    num += d * d;
    den += double(want[i]) * want[i];
  }
  return got.size() == want.size() ? std::sqrt(num / std::max(den, 1e-30)) : INFINITY;
}

[[maybe_unused]] bool in_top_k(const std::vector<float>& logits, int32_t id, int k) {
  int above = 0;
  for (float x : logits) above += x > logits[size_t(id)];
  return above < k;
}

std::vector<Request> requests() {
  std::mt19937 rng(11);
  std::vector<Request> reqs;
  for (int len : {5, 130, 257, 600, 900, 40}) {
    Request r;
    r.id = "len" + std::to_string(len);
    r.prompt.push_back(256);
    for (int i = 1; i < len; ++i) r.prompt.push_back(int32_t(rng() % 256));
    r.sampling.max_tokens = 24;
    r.sampling.ignore_eos = true;
    reqs.push_back(r);
  }
  return reqs;
}

std::vector<Output> run_engine(const std::string& path, const std::string& backend,
                               Progress* last = nullptr) {
  EngineOptions o;
  o.model_path = path;
  o.backend = backend;
  o.max_batch = 4;
  o.step_tokens = 256;
  o.kv_mem_bytes = int64_t(256) << 20;
  o.keep_last_logits = true;
  o.keep_step_logits = true;
  return Engine::create(o)->generate(requests(), nullptr, [&](const Progress& p) {
    if (last) *last = p;
  });
}

std::string model_path() {
  return (std::filesystem::temp_directory_path() /
          ("batchmax_cuda_e2e_" + std::to_string(::getpid()) + ".gguf"))
      .string();
}

// The synthetic model itself (no GPU needed): it loads and generates on the CPU.
TEST(CudaEngine, SyntheticModelRunsOnCpu) {
  const std::string path = write_model(model_path());
  const std::vector<Output> out = run_engine(path, "cpu");
  std::filesystem::remove(path);
  ASSERT_EQ(out.size(), 6u);
  for (const Output& o : out) {
    EXPECT_EQ(o.finish_reason, "length") << o.id << ": " << o.error;
    EXPECT_EQ(o.tokens.size(), 24u);
    EXPECT_EQ(o.step_logits.size(), o.tokens.size());
  }
}

TEST(CudaEngine, MatchesCpuEngineOnSyntheticModel) {
#ifndef BATCHMAX_HAVE_CUDA
  GTEST_SKIP() << "built without BATCHMAX_CUDA";
#else
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  register_cuda_backend();  // idempotent with tests/golden/cuda_registration.cpp
  const std::string path = write_model(model_path());
  const std::vector<Output> cpu = run_engine(path, "cpu"), gpu = run_engine(path, "cuda");
  std::filesystem::remove(path);
  ASSERT_EQ(cpu.size(), gpu.size());
  int diverged = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const Output &c = cpu[i], &g = gpu[i];
    ASSERT_EQ(g.finish_reason, "length") << g.id << ": " << g.error;
    const double e_last = norm_err(g.last_logits, c.last_logits);
    std::cout << "[ e2e      ] " << c.id << " last-logits err=" << e_last;
    EXPECT_LE(e_last, 3e-2) << c.id;
    ASSERT_EQ(g.tokens.size(), c.tokens.size());
    ASSERT_EQ(g.step_logits.size(), c.step_logits.size());
    // step_logits[t] picked token t; the contexts agree up to the first differing token.
    size_t t = 0;
    double e_step = 0;
    for (; t < c.tokens.size(); ++t) {
      e_step = std::max(e_step, norm_err(g.step_logits[t], c.step_logits[t]));
      if (g.tokens[t] != c.tokens[t]) break;
    }
    std::cout << " agreed " << t << "/" << c.tokens.size() << " max step-logits err=" << e_step
              << "\n";
    EXPECT_LE(e_step, 5e-2) << c.id;
    if (t < c.tokens.size()) {
      ++diverged;
      EXPECT_TRUE(in_top_k(c.step_logits[t], g.tokens[t], 5))
          << c.id << ": GPU token " << g.tokens[t] << " at " << t << " is not in the CPU's top 5";
    }
  }
  std::cout << "[ e2e      ] " << diverged << " of " << cpu.size() << " requests diverged\n";
#endif
}

// Decode steps replay each layer's dense ops from CUDA graphs (Backend::run_replayable):
// the same tokens and the same logits, bit for bit, as every op launched on its own.
// GEMM tuning is off in both runs so both pick the same kernels.
TEST(CudaEngine, ReplayedStepsEqualOpByOpSteps) {
#ifndef BATCHMAX_HAVE_CUDA
  GTEST_SKIP() << "built without BATCHMAX_CUDA";
#else
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  register_cuda_backend();
  const std::string path = write_model(model_path());
  ::setenv("BATCHMAX_CUDA_GEMM_TUNE", "0", 1);
  ::setenv("BATCHMAX_CUDA_GRAPHS", "0", 1);
  Progress p_off, p_on;
  const std::vector<Output> off = run_engine(path, "cuda", &p_off);
  ::unsetenv("BATCHMAX_CUDA_GRAPHS");
  const std::vector<Output> on = run_engine(path, "cuda", &p_on);
  ::unsetenv("BATCHMAX_CUDA_GEMM_TUNE");
  std::filesystem::remove(path);
  std::cout << "[ replay   ] graphs made " << p_on.recorded_runs << ", launched "
            << p_on.replayed_runs << " (off: " << p_off.replayed_runs << ")\n";
  EXPECT_EQ(p_off.replayed_runs, 0);
  EXPECT_GT(p_on.recorded_runs, 0);
  EXPECT_GT(p_on.replayed_runs, p_on.recorded_runs) << "graphs should be reused across steps";
  ASSERT_EQ(on.size(), off.size());
  for (size_t i = 0; i < on.size(); ++i) {
    ASSERT_EQ(on[i].finish_reason, "length") << on[i].id << ": " << on[i].error;
    EXPECT_EQ(on[i].tokens, off[i].tokens) << on[i].id;
    ASSERT_EQ(on[i].step_logits.size(), off[i].step_logits.size());
    for (size_t t = 0; t < on[i].step_logits.size(); ++t)
      ASSERT_EQ(on[i].step_logits[t], off[i].step_logits[t]) << on[i].id << " token " << t;
  }
#endif
}

}  // namespace
}  // namespace batchmax

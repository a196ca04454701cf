// Benchmark workloads and result rows: the same seed gives the same workload, lengths
// stay inside their distributions, and every JSON row carries the fields results need.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "bench/bench_runner.h"
#include "bench/svg_plot.h"
#include "bench/workload.h"
#include "core/error.h"
#include "model/presets.h"

namespace batchmax::bench {
namespace {

TEST(LengthDist, ParsesTheThreeForms) {
  EXPECT_EQ(LengthDist::parse("2048").kind, LengthDist::Kind::Fixed);
  EXPECT_EQ(LengthDist::parse("fixed:7").a, 7);
  LengthDist u = LengthDist::parse("uniform:10:20");
  EXPECT_EQ(u.kind, LengthDist::Kind::Uniform);
  EXPECT_EQ(u.max(), 20);
  LengthDist n = LengthDist::parse("normal:100:10");
  EXPECT_EQ(n.kind, LengthDist::Kind::Normal);
  EXPECT_EQ(n.max(), 140);
  EXPECT_EQ(n.str(), "normal:100:10");
  for (const char* bad : {"", "x", "0", "uniform:5:2", "uniform:1", "normal:10:-1", "gamma:1:2", "12k"})
    EXPECT_THROW(LengthDist::parse(bad), Error) << bad;
}

TEST(Workload, SameSeedSameWorkload) {
  WorkloadSpec s;
  s.requests = 20;
  s.input = LengthDist::parse("uniform:5:50");
  s.output = LengthDist::parse("normal:16:4");
  s.seed = 42;
  Workload a = make_workload(s, 1000), b = make_workload(s, 1000);
  EXPECT_EQ(a.prompts, b.prompts);
  EXPECT_EQ(a.max_tokens, b.max_tokens);
  s.seed = 43;
  Workload c = make_workload(s, 1000);
  EXPECT_NE(a.prompts, c.prompts);
}

TEST(Workload, LengthsAndIdsWithinBounds) {
  WorkloadSpec s;
  s.requests = 500;
  s.input = LengthDist::parse("uniform:30:60");
  s.output = LengthDist::parse("normal:20:8");
  Workload w = make_workload(s, 77);
  ASSERT_EQ(w.prompts.size(), 500u);
  int64_t lo = INT64_MAX, hi = 0;
  for (const auto& p : w.prompts) {
    lo = std::min<int64_t>(lo, int64_t(p.size()));
    hi = std::max<int64_t>(hi, int64_t(p.size()));
    for (int32_t t : p) ASSERT_TRUE(t >= 0 && t < 77) << t;
  }
  EXPECT_GE(lo, 30);
  EXPECT_LE(hi, 60);
  EXPECT_LT(lo, 35);  // 500 draws cover the range
  EXPECT_GT(hi, 55);
  for (int64_t m : w.max_tokens) ASSERT_TRUE(m >= 1 && m <= 52) << m;
  const double mean = double(std::accumulate(w.max_tokens.begin(), w.max_tokens.end(), int64_t(0))) / 500;
  EXPECT_NEAR(mean, 20.0, 1.5);
  EXPECT_EQ(w.input_len, "uniform:30:60");
  EXPECT_EQ(w.output_tokens(), std::accumulate(w.max_tokens.begin(), w.max_tokens.end(), int64_t(0)));
}

TEST(Workload, TextPromptsAreWindowsOfTheText) {
  std::vector<int32_t> text = {10, 11, 12, 13, 14};
  WorkloadSpec s;
  s.requests = 4;
  s.prompts = "text";
  s.input = LengthDist::parse("12");
  Workload w = make_workload(s, 100, text, 1);
  for (const auto& p : w.prompts) {
    ASSERT_EQ(p.size(), 12u);
    EXPECT_EQ(p[0], 1);  // BOS
    for (size_t i = 2; i < p.size(); ++i)  // consecutive, wrapping around the text
      EXPECT_EQ(p[i], p[i - 1] == 14 ? 10 : p[i - 1] + 1);
  }
  EXPECT_THROW(make_workload(s, 100), Error);  // text prompts without text
}

TEST(BenchRow, JsonHasTheResultFields) {
  BenchRow r;
  r.backend = "cuda";
  r.mode = "batchmax";
  r.truncated = true;
  const auto j = to_json(r);
  for (const char* k :
       {"workload", "mode", "policy", "kv_budget", "chunk", "mem_budget_bytes", "input_tokens",
        "output_tokens", "requests", "max_batch", "planned_max_batch", "requests_per_s",
        "output_tok_s", "total_tok_s", "prefill_tok_s", "peak_kv_bytes", "peak_gpu_bytes",
        "peak_backend_bytes", "gemm_tflops_measured", "copy_gbps_measured", "prefill_tflops",
        "decode_gbps", "gpu", "commit", "command", "wall_s", "truncated"})
    EXPECT_TRUE(j.contains(k)) << k;
  r.backend = "cpu";
  EXPECT_FALSE(to_json(r).contains("peak_gpu_bytes"));
}

TEST(ModelCost, AttentionFlopsBoundedByBudget) {
  const ModelCost c = ModelCost::from(preset_hparams("llama3-8b"));
  EXPECT_EQ(c.matmul_params() + c.lm_head_params + c.embd_params, int64_t(8030261248) - 32 * 2 * 4096 - 4096);
  const double full = c.prefill_attention_flops(4096, 512, false, 0);
  const double bm = c.prefill_attention_flops(4096, 512, true, 256);
  // Causal attention over n tokens: about 2 n^2 head_dim heads layers.
  EXPECT_NEAR(full / (2.0 * 4096 * 4096 * 128 * 32 * 32), 1.0, 0.07);
  EXPECT_LT(bm, full / 3);
  EXPECT_EQ(c.prefill_attention_flops(4096, 512, true, 1 << 20), full);  // budget never reached
}

TEST(SvgPlot, OneSeriesPerMode) {
  std::vector<BenchRow> rows(3);
  rows[0].mode = "full";
  rows[1].mode = rows[2].mode = "batchmax";
  for (auto& r : rows) r.output_tok_s = 10, r.max_batch = 4;
  rows[2].kv_budget = 256;
  const std::string svg = throughput_svg(rows, "t <&>");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("t &lt;&amp;&gt;"), std::string::npos);
  size_t lines = 0;
  for (size_t at = 0; (at = svg.find("<polyline", at)) != std::string::npos; ++at) ++lines;
  EXPECT_EQ(lines, 4u);  // two modes, two panels
  EXPECT_NE(svg.find("b256"), std::string::npos);
}

}  // namespace
}  // namespace batchmax::bench

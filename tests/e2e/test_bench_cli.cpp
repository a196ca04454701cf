// `batchmax bench` as a user runs it: a tiny workload on the CPU, JSON rows with the
// result fields for every configuration, and the SVG plot.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../test_support.h"
#include "cli_fixture.h"

namespace {

namespace fs = std::filesystem;

using batchmax::test::slurp;

class BenchCli : public batchmax::test::CliTest {
 protected:
  void check_rows(const fs::path& json, size_t n_rows) {
    const auto rows = nlohmann::json::parse(slurp(json));
    ASSERT_TRUE(rows.is_array());
    ASSERT_EQ(rows.size(), n_rows);
    for (const auto& r : rows) {
      for (const char* k : {"workload", "mode", "policy", "kv_budget", "chunk", "mem_budget_bytes",
                            "input_tokens", "output_tokens", "requests", "max_batch",
                            "requests_per_s", "output_tok_s", "total_tok_s", "prefill_tok_s",
                            "peak_kv_bytes", "peak_backend_bytes", "gemm_tflops_measured",
                            "copy_gbps_measured", "gpu", "commit", "command"})
        EXPECT_TRUE(r.contains(k)) << k;
      EXPECT_EQ(r["failed"], 0) << r.dump();
      EXPECT_GT(r["output_tok_s"].get<double>(), 0);
      EXPECT_GE(r["max_batch"].get<int64_t>(), 1);
      EXPECT_LE(r["peak_backend_bytes"].get<int64_t>(), r["mem_budget_bytes"].get<int64_t>());
      EXPECT_EQ(r["gpu"], "cpu");
      EXPECT_EQ(r["commit"], "test");
      // Latencies from the run's start: first token before done, done within the run.
      const double first = r["first_token_s_mean"], done = r["request_s_mean"];
      EXPECT_GT(first, 0);
      EXPECT_GE(done, first);
      EXPECT_LE(done, r["wall_s"].get<double>());
      EXPECT_GE(r["request_s_p90"].get<double>(), first);
      EXPECT_GE(r["decode_only_s"].get<double>(), 0);
    }
  }
};

TEST_F(BenchCli, DummyWeightsRowsAndPlot) {
  const fs::path json = dir_ / "rows.json", svg = dir_ / "plot.svg";
  batchmax::test::CliResult r = run({"bench", "--dummy-weights", "tiny", "-t", "2", "-n", "6", "--input-len",
               "uniform:40:120", "--output-len", "4", "--kv-budgets", "48,64", "--chunk", "32",
               "--mem-budgets", "3MiB,4MiB", "--commit", "test", "--out", json.string(),
               "--plot", svg.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  check_rows(json, 2 * 5);  // per budget: full, post-prefill x 2, batchmax x 2
  EXPECT_NE(r.out.find("batchmax"), std::string::npos);
  EXPECT_EQ(slurp(svg).rfind("<svg", 0), 0u);
}

// --schedule reaches the engine and the rows; an unknown one is a usage error.
TEST_F(BenchCli, ScheduleIsRecorded) {
  const fs::path json = dir_ / "sched.json";
  batchmax::test::CliResult r = run({"bench", "--dummy-weights", "tiny", "-t", "2", "-n", "4", "--input-len",
               "60", "--output-len", "3", "--modes", "batchmax", "--kv-budgets", "48", "--chunk", "32",
               "--mem-budgets", "4MiB", "--schedule", "auto", "--commit", "test", "--out", json.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  check_rows(json, 1);
  EXPECT_EQ(nlohmann::json::parse(slurp(json))[0]["schedule"], "auto");
  EXPECT_NE(r.out.find("schedule auto"), std::string::npos) << r.out;
  const batchmax::test::CliResult bad = run({"bench", "--dummy-weights", "tiny", "--schedule", "fastest"});
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("schedule"), std::string::npos) << bad.err;
}

// BATCHMAX_PROFILE=host: the host's time in each part of a forward, per step kind.
TEST_F(BenchCli, HostProfileNamesTheForwardsParts) {
  setenv("BATCHMAX_PROFILE", "host", 1);
  const batchmax::test::CliResult r = run({"bench", "--dummy-weights", "tiny", "-t", "2", "-n", "4", "--input-len",
               "100", "--output-len", "4", "--modes", "batchmax", "--kv-budgets", "48", "--chunk", "32",
               "--mem-budgets", "4MiB", "--no-ceilings", "--commit", "test"});
  unsetenv("BATCHMAX_PROFILE");
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* part : {"profile decode steps", "profile prefill steps", "sum of host parts",
                           "kv store (+rope)", "attention views", "after attention (scores, evict)",
                           "layer products (replayed)", "logits and picks"})
    EXPECT_NE(r.err.find(part), std::string::npos) << part << "\n" << r.err;
}

TEST_F(BenchCli, SmolLM2TextPrompts) {
  BATCHMAX_REQUIRE_SMOLLM2();
  const fs::path json = dir_ / "rows.json";
  batchmax::test::CliResult r = run({"bench", "-m", batchmax::test::smollm2_path(), "-t", "2", "-n", "2",
               "--input-len", "96", "--output-len", "3", "--prompts", "text", "--text-dir",
               batchmax::test::source_dir() + "/scripts/reference/texts", "--modes",
               "full,batchmax", "--kv-budgets", "48", "--chunk", "32", "--mem-budget", "300MiB",
               "--commit", "test", "--out", json.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  check_rows(json, 2);
}

// decode_gbps_batch32 counts only decode-only steps of >= 32 sequences: a batch capped at
// 8 has none (0), 40 requests that all fit have some.
TEST_F(BenchCli, DecodeBandwidthAtLargeBatchesCountsOnlyThoseSteps) {
  for (const char* max_batch : {"8", "0"}) {
    const fs::path json = dir_ / (std::string("b") + max_batch + ".json");
    batchmax::test::CliResult r =
        run({"bench", "--dummy-weights", "tiny", "-t", "2", "-n", "40", "--input-len", "16",
             "--output-len", "6", "--modes", "full", "--max-batch", max_batch, "--kv-mem", "64MiB",
             "--commit", "test", "--out", json.string()});
    ASSERT_EQ(r.code, 0) << r.err;
    const auto rows = nlohmann::json::parse(slurp(json));
    ASSERT_EQ(rows.size(), 1u);
    const auto& row = rows[0];
    ASSERT_TRUE(row.contains("decode_gbps_batch32")) << row.dump();
    if (std::string(max_batch) == "8") {
      EXPECT_LE(row["max_batch"].get<int64_t>(), 8);
      EXPECT_EQ(row["decode_gbps_batch32"].get<double>(), 0.0);
    } else {
      EXPECT_GE(row["max_batch"].get<int64_t>(), 32) << row.dump();
      EXPECT_GT(row["decode_gbps_batch32"].get<double>(), 0.0) << row.dump();
      EXPECT_GT(row["decode_gbps"].get<double>(), 0.0);
    }
  }
}

TEST_F(BenchCli, ModeStepTokensGiveThatModeItsOwnStep) {
  // Each mode at its own step size, as W-limited's table runs them (batchmax at 1024,
  // the others at 512 on the H100): the rows say which step they ran.
  const fs::path json = dir_ / "rows.json";
  batchmax::test::CliResult r =
      run({"bench", "--dummy-weights", "tiny", "-t", "2", "-n", "4", "--input-len", "96",
           "--output-len", "4", "--modes", "full,batchmax", "--kv-budgets", "48", "--chunk", "32",
           "--step-tokens", "64", "--mode-step-tokens", "batchmax=160", "--mem-budgets", "4MiB",
           "--commit", "test", "--out", json.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  check_rows(json, 2);
  const auto rows = nlohmann::json::parse(slurp(json));
  EXPECT_EQ(rows[0]["mode"], "full");
  EXPECT_EQ(rows[0]["step_tokens"], 64);
  EXPECT_EQ(rows[1]["mode"], "batchmax");
  EXPECT_EQ(rows[1]["step_tokens"], 160);
  EXPECT_NE(r.out.find("steps full 64, batchmax 160 tokens"), std::string::npos) << r.out;
  for (const char* bad : {"batchmax", "lossy=64", "batchmax=0", "batchmax=12x"})
    EXPECT_EQ(run({"bench", "--dummy-weights", "tiny", "--mode-step-tokens", bad}).code, 2) << bad;
}

TEST_F(BenchCli, BadFlagsAreUsageErrors) {
  EXPECT_EQ(run({"bench", "--input-len", "4"}).code, 2);  // neither --model nor --dummy-weights
  EXPECT_EQ(run({"bench", "--dummy-weights", "tiny", "--modes", "lossy"}).code, 2);
  // budget below sinks + window: refused before anything runs
  EXPECT_EQ(run({"bench", "--dummy-weights", "tiny", "--kv-budgets", "8"}).code, 2);
  batchmax::test::CliResult r = run({"bench", "--dummy-weights", "nope"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("known: "), std::string::npos) << r.err;
}

}  // namespace

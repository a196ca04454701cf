// `batchmax eval` run as a user runs it: a tiny grid on SmolLM2 (skips without it),
// checking the JSON rows, the Markdown tables and that full cache solves a short passkey.
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

class EvalCli : public batchmax::test::CliTest {
 protected:
  // Exit status; stderr lands in err_.
  int run(const std::vector<std::string>& args) {
    batchmax::test::CliResult r = CliTest::run(args);
    err_ = r.err;
    return r.code;
  }
  std::string err_;
};

TEST_F(EvalCli, UsageErrors) {
  EXPECT_EQ(run({"eval", "--model", "m.gguf"}), 2) << "no --out";
  EXPECT_EQ(run({"eval", "--model", "m.gguf", "--out", "x.json", "--tasks", "bogus"}), 2) << err_;
  EXPECT_NE(err_.find("unknown eval task 'bogus'"), std::string::npos) << err_;
  EXPECT_EQ(run({"eval", "--model", "m.gguf", "--out", "x.json", "--modes", "sideways"}), 2);
}

TEST_F(EvalCli, TinyGridWritesJsonAndMarkdown) {
  BATCHMAX_REQUIRE_SMOLLM2();
  const fs::path out = dir_ / "res" / "tiny.json", md = dir_ / "res" / "tiny.md";
  const int code = run({"eval", "--model", batchmax::test::smollm2_path(), "--tasks", "passkey",
                        "--contexts", "512", "--modes", "full,post-prefill,batchmax",
                        "--policies", "window", "--budgets", "128", "--chunk", "128",
                        "--samples", "2", "--commit", "test123", "--out", out.string(),
                        "--markdown", md.string()});
  ASSERT_EQ(code, 0) << err_;
  EXPECT_NE(err_.find("eval: "), std::string::npos) << "progress on stderr";

  auto rows = nlohmann::json::parse(slurp(out));
  ASSERT_TRUE(rows.is_array());
  ASSERT_EQ(rows.size(), 3u);  // full, post-prefill/window/128, batchmax/window/128
  for (const auto& r : rows) {
    for (const char* k : {"model", "task", "context_tokens", "mode", "policy", "kv_budget",
                          "chunk", "score", "n_samples", "commit", "backend", "seconds"})
      EXPECT_TRUE(r.contains(k)) << k << " in " << r.dump();
    EXPECT_EQ(r["task"], "passkey");
    EXPECT_EQ(r["context_tokens"], 512);
    EXPECT_EQ(r["n_samples"], 2);
    EXPECT_EQ(r["commit"], "test123");
    EXPECT_EQ(r["backend"], "cpu");
    EXPECT_EQ(r["model"], fs::path(batchmax::test::smollm2_path()).filename().string());
  }
  EXPECT_EQ(rows[0]["mode"], "full");
  EXPECT_EQ(rows[0]["policy"], "-");
  EXPECT_EQ(rows[0]["kv_budget"], "-");
  EXPECT_GT(rows[0]["score"].get<double>(), 0) << "full cache finds a pass key at 512 tokens";
  EXPECT_EQ(rows[2]["mode"], "batchmax");
  EXPECT_EQ(rows[2]["kv_budget"], 128);

  const std::string m = slurp(md);
  EXPECT_NE(m.find("## passkey, 512 tokens"), std::string::npos) << m;
  EXPECT_NE(m.find("| batchmax | window |"), std::string::npos) << m;
  EXPECT_NE(m.find("| Δ | window |"), std::string::npos) << m;
}

}  // namespace

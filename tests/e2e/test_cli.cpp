// The batchmax program run as a user runs it: exit codes, stdout, stderr and files.
// Tests that need the real model skip (with the reason) when it has not been fetched.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../test_support.h"
#include "cli_fixture.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using Result = batchmax::test::CliResult;
using batchmax::test::slurp;

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

class Cli : public batchmax::test::CliTest {
 protected:
  static std::string model() { return batchmax::test::smollm2_path(); }
};

// A user-facing failure: the status, and one "batchmax: error: ..." line naming it.
void expect_failure(const Result& r, int code, const std::string& needle) {
  EXPECT_EQ(r.code, code) << "stdout: " << r.out << "\nstderr: " << r.err;
  EXPECT_EQ(r.err.rfind("batchmax: error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
}

// A minimal GGUF v3 file with string metadata only and no tensors.
std::string gguf_with_strings(const std::vector<std::pair<std::string, std::string>>& kv) {
  std::string b = "GGUF";
  auto put = [&b](auto v) { b.append(reinterpret_cast<const char*>(&v), sizeof v); };
  auto put_str = [&](const std::string& s) {
    put(uint64_t(s.size()));
    b += s;
  };
  put(uint32_t(3));          // version
  put(uint64_t(0));          // tensors
  put(uint64_t(kv.size()));  // metadata entries
  for (const auto& [k, v] : kv) {
    put_str(k);
    put(uint32_t(8));  // STRING
    put_str(v);
  }
  return b;
}

// ---- without the model ---------------------------------------------------------

TEST_F(Cli, NoSubcommandIsAUsageError) {
  Result r = run({});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("batchmax: error:"), std::string::npos) << r.err;
}

TEST_F(Cli, HelpListsSubcommands) {
  Result r = run({"--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* sub : {"generate", "run", "info", "tokenize"})
    EXPECT_NE(r.out.find(sub), std::string::npos) << sub;
}

TEST_F(Cli, UsageErrorsExitTwo) {
  EXPECT_EQ(run({"generate", "--prompt", "x"}).code, 2);  // no --model
  EXPECT_EQ(run({"generate", "--model", "m", "--prompt", "x", "--bogus"}).code, 2);
  EXPECT_EQ(run({"generate", "--model", "m", "--prompt", "x", "--system", "s"}).code, 2);
  EXPECT_EQ(run({"generate", "--model", "m", "--prompt", "x", "--max-tokens", "-1"}).code, 2);
  EXPECT_EQ(run({"tokenize", "--model", "m"}).code, 2);  // neither --text nor --file
  EXPECT_EQ(run({"tokenize", "--model", "m", "--text", "a", "--file", "/etc/hostname"}).code, 2);
  EXPECT_EQ(run({"run", "--model", "m", "--input", "/nonexistent.jsonl", "--output", "o"}).code, 2);
}

TEST_F(Cli, MissingModelFileExitsOne) {
  const std::string missing = (dir_ / "nope.gguf").string();
  expect_failure(run({"generate", "--model", missing, "--prompt", "hi"}), 1, "nope.gguf");
  expect_failure(run({"info", "--model", missing}), 1, "not found");
  expect_failure(run({"tokenize", "--model", missing, "--text", "hi"}), 1, "not found");
  fs::path in = write("in.jsonl", "{}\n");
  expect_failure(run({"run", "--model", missing, "--input", in.string(), "--output",
                      (dir_ / "out.jsonl").string()}),
                 1, "not found");
  expect_failure(run({"info", "--model", dir_.string()}), 1, "not a regular file");
}

TEST_F(Cli, UnwritableOutputExitsOne) {
  fs::path in = write("in.jsonl", "{}\n");
  fs::path model = write("m.gguf", "GGUF");  // never opened: the output is checked first
  expect_failure(run({"run", "--model", model.string(), "--input", in.string(), "--output",
                      (dir_ / "no_such_dir" / "out.jsonl").string()}),
                 1, "cannot write");
}

TEST_F(Cli, NotAGgufFileExitsOne) {
  fs::path p = write("garbage.gguf", std::string(4096, 'x'));
  for (const char* sub : {"info", "tokenize", "generate"}) {
    std::vector<std::string> args = {sub, "--model", p.string()};
    if (std::string(sub) == "tokenize") args.insert(args.end(), {"--text", "hi"});
    if (std::string(sub) == "generate") args.insert(args.end(), {"--prompt", "hi"});
    Result r = run(args);
    expect_failure(r, 1, "batchmax: error:");
  }
}

TEST_F(Cli, UnknownArchitectureExitsOne) {
  fs::path p = write("mamba.gguf", gguf_with_strings({{"general.architecture", "mamba9"},
                                                      {"general.name", "test"}}));
  for (const char* sub : {"info", "generate"}) {
    std::vector<std::string> args = {sub, "--model", p.string()};
    if (std::string(sub) == "generate") args.insert(args.end(), {"--prompt", "hi"});
    Result r = run(args);
    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_EQ(r.err.rfind("batchmax: error: ", 0), 0u) << r.err;
    EXPECT_TRUE(r.err.find("mamba9") != std::string::npos ||
                r.err.find("architecture") != std::string::npos)
        << r.err;
  }
}

// ---- with the model ------------------------------------------------------------

TEST_F(Cli, CorruptModelExitsOne) {
  BATCHMAX_REQUIRE_SMOLLM2();
  // The header and metadata survive, the tensor data is cut short.
  std::ifstream in(model(), std::ios::binary);
  std::string head(4 << 20, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(in.gcount()));
  fs::path p = write("truncated.gguf", head);
  expect_failure(run({"info", "--model", p.string()}), 1, "batchmax: error:");
  expect_failure(run({"generate", "--model", p.string(), "--prompt", "hi"}), 1,
                 "batchmax: error:");
}

// h2o's slot mass: 4 bytes more per KV entry where eviction runs on the backend (here the
// CPU with BATCHMAX_EVICTION=device), with --kv-slot-mass or --kv-policy h2o; none where
// eviction selects on the host.
TEST_F(Cli, PlanCountsSlotMassForH2o) {
  BATCHMAX_REQUIRE_SMOLLM2();
  auto block_bytes = [&](std::vector<std::string> extra) -> int64_t {
    std::vector<std::string> args = {"plan", "--model", model(), "--json", "--kv-mode", "batchmax"};
    args.insert(args.end(), extra.begin(), extra.end());
    const Result r = run(args);
    EXPECT_EQ(r.code, 0) << r.err;
    return r.code == 0 ? json::parse(r.out).value("kv_block_bytes", int64_t(0)) : -1;
  };
  ::setenv("BATCHMAX_EVICTION", "device", 1);
  const int64_t plain = block_bytes({}), flag = block_bytes({"--kv-slot-mass"}),
                h2o = block_bytes({"--kv-policy", "h2o"});
  ::unsetenv("BATCHMAX_EVICTION");
  const int64_t host = block_bytes({"--kv-slot-mass"});
  EXPECT_GT(plain, 0);
  EXPECT_EQ(flag, plain + 16 * 4) << "16 entries a block, a float each";
  EXPECT_EQ(h2o, flag);
  EXPECT_EQ(host, plain) << "host eviction keeps no slot mass";
}

// The plan reports the step size it measured its workspace for: the CPU backend's 512
// when --step-tokens is left out or 0, the user's otherwise; a smaller step needs a
// smaller workspace.
TEST_F(Cli, PlanReportsTheResolvedStepSize) {
  BATCHMAX_REQUIRE_SMOLLM2();
  auto plan = [&](std::vector<std::string> extra) -> json {
    std::vector<std::string> args = {"plan", "--model", model(), "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    const Result r = run(args);
    EXPECT_EQ(r.code, 0) << r.err;
    return r.code == 0 ? json::parse(r.out) : json::object();
  };
  const json by_default = plan({}), zero = plan({"--step-tokens", "0"}),
             small = plan({"--step-tokens", "128"});
  EXPECT_EQ(by_default.value("step_tokens", -1), 512);
  EXPECT_EQ(zero.value("step_tokens", -1), 512);
  EXPECT_EQ(small.value("step_tokens", -1), 128);
  EXPECT_LT(small.value("workspace_bytes", int64_t(0)), by_default.value("workspace_bytes", int64_t(0)));
  const Result bad = run({"plan", "--model", model(), "--step-tokens", "-5"});
  EXPECT_EQ(bad.code, 2) << "a negative step size is a usage error";
}

// batchmax reserves budget + slack per request; its prefill steps' extra (up to budget +
// chunk) comes from one shared headroom, which the plan reports and subtracts once.
TEST_F(Cli, PlanSharesTheBatchmaxPrefillHeadroom) {
  BATCHMAX_REQUIRE_SMOLLM2();
  const std::vector<std::string> args = {"plan", "--model", model(), "--modes", "full,batchmax",
                                         "--kv-budget", "256", "--chunk", "512", "--slack", "32",
                                         "--prompt-tokens", "4096", "--max-tokens", "256",
                                         "--kv-mem", "64MiB"};
  std::vector<std::string> as_json = args;
  as_json.push_back("--json");
  const Result r = run(as_json);
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  const int64_t pool = j.at("kv_blocks").get<int64_t>(), heads = j.at("kv_heads_total").get<int64_t>();
  const json& full = j.at("modes").at(0);
  const json& bm = j.at("modes").at(1);
  EXPECT_EQ(full.at("prefill_headroom_blocks").get<int64_t>(), 0);
  // 256 + 32 entries: 18 blocks a head; 256 + 512: 48, so 30 a head of headroom.
  EXPECT_EQ(bm.at("entries_per_head").get<int64_t>(), 288);
  EXPECT_EQ(bm.at("blocks_per_request").get<int64_t>(), 18 * heads);
  EXPECT_EQ(bm.at("prefill_headroom_blocks").get<int64_t>(), 30 * heads);
  EXPECT_EQ(bm.at("max_concurrent").get<int64_t>(), (pool - 30 * heads) / (18 * heads));
  const Result text = run(args);
  ASSERT_EQ(text.code, 0) << text.err;
  EXPECT_NE(text.out.find("come from a headroom the pool keeps once"), std::string::npos) << text.out;
}

TEST_F(Cli, InfoDescribesSmolLM2) {
  BATCHMAX_REQUIRE_SMOLLM2();
  Result r = run({"info", "--model", model()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("llama"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("30"), std::string::npos) << r.out;
  Result j = run({"info", "--model", model(), "--json"});
  ASSERT_EQ(j.code, 0) << j.err;
  json info = json::parse(j.out);
  EXPECT_EQ(info["architecture"], "llama");
  EXPECT_EQ(info["n_layer"], 30);
  EXPECT_EQ(info["n_embd"], 576);
  EXPECT_EQ(info["n_head"], 9);
  EXPECT_EQ(info["n_head_kv"], 3);
  EXPECT_EQ(info["chat_template"], "chatml");
  EXPECT_GT(info["weight_bytes"].get<int64_t>(), 50'000'000);
  EXPECT_TRUE(info["tensor_types"].contains("Q4_1") || info["tensor_types"].contains("q4_1"));
  // 2 (K, V) * 30 layers * 3 kv heads * 64 dims * 4 bytes
  EXPECT_EQ(info["kv_bytes_per_token"]["f32"], 2 * 30 * 3 * 64 * 4);
}

TEST_F(Cli, TokenizeCountsAndLists) {
  BATCHMAX_REQUIRE_SMOLLM2();
  Result count = run({"tokenize", "--model", model(), "--text", "Hello world, hello batchmax!"});
  ASSERT_EQ(count.code, 0) << count.err;
  int n = std::stoi(count.out);
  EXPECT_GT(n, 3);
  Result ids = run({"tokenize", "--model", model(), "--text", "Hello world, hello batchmax!",
                    "--ids"});
  ASSERT_EQ(ids.code, 0) << ids.err;
  std::istringstream in(ids.out);
  int id = 0, k = 0;
  while (in >> id) ++k;
  EXPECT_EQ(k, n);

  fs::path f = write("text.txt", "Hello world, hello batchmax!");
  Result from_file = run({"tokenize", "--model", model(), "--file", f.string()});
  EXPECT_EQ(from_file.out, count.out);

  // Special-token text is one token only with --special.
  Result special = run({"tokenize", "--model", model(), "--text", "<|im_start|>", "--special",
                        "--no-bos", "--ids"});
  ASSERT_EQ(special.code, 0) << special.err;
  EXPECT_EQ(lines_of(special.out).at(0).find(' '), std::string::npos) << special.out;
  Result plain = run({"tokenize", "--model", model(), "--text", "<|im_start|>", "--no-bos"});
  EXPECT_GT(std::stoi(plain.out), 1);
}

TEST_F(Cli, GenerateGreedyIsDeterministic) {
  BATCHMAX_REQUIRE_SMOLLM2();
  std::vector<std::string> args = {"generate", "--model", model(), "--prompt",
                                   "The capital of France is", "--max-tokens", "12",
                                   "--temperature", "0", "--threads", "2"};
  Result a = run(args);
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_FALSE(a.out.empty());
  Result b = run(args);
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(a.out, b.out);

  args.push_back("--json");
  Result j = run(args);
  ASSERT_EQ(j.code, 0) << j.err;
  json out = json::parse(j.out);
  EXPECT_EQ(out["text"], a.out);  // stdout is the text exactly (not a terminal: no newline)
  EXPECT_GT(out["prompt_tokens"].get<int>(), 0);
  EXPECT_EQ(out["completion_tokens"].get<size_t>(), out["token_ids"].size());
  EXPECT_LE(out["completion_tokens"].get<int>(), 12);
  EXPECT_TRUE(out["finish_reason"] == "stop" || out["finish_reason"] == "length");
  for (const char* k : {"prefill_s", "decode_s", "prefill_tok_s", "decode_tok_s"})
    EXPECT_TRUE(out["timings"].contains(k)) << k;
}

TEST_F(Cli, GenerateChat) {
  BATCHMAX_REQUIRE_SMOLLM2();
  Result r = run({"generate", "--model", model(), "--chat", "--system", "Answer briefly.",
                  "--prompt", "What is the capital of France?", "--max-tokens", "24",
                  "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  json out = json::parse(r.out);
  EXPECT_FALSE(out["text"].get<std::string>().empty());
  EXPECT_EQ(out["text"].get<std::string>().find("<|im_end|>"), std::string::npos);
}

TEST_F(Cli, RunWritesOneLinePerInputLineInOrder) {
  BATCHMAX_REQUIRE_SMOLLM2();
  std::string long_prompt;
  for (int i = 0; i < 200; ++i) long_prompt += "word ";
  const std::vector<std::string> input = {
      R"({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}})",
      R"({"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": {"prompt": "One, two, three,", "max_tokens": 6, "temperature": 0.7, "seed": 3, "stop": "\n"}})",
      R"({this is not json)",
      R"({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "dup"}})",
      R"({"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}})",
      R"({"custom_id": "neg", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "max_tokens": -1}})",
      R"({"method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}})",
      R"({"custom_id": "empty", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}})",
      R"({"custom_id": "long", "method": "POST", "url": "/v1/completions", "body": {"prompt": ")" +
          long_prompt + R"("}})",
      R"({"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": {"prompt": "The sky is", "max_tokens": 5}})",
  };
  std::string text;
  for (size_t i = 0; i < input.size(); ++i) text += input[i] + (i == 2 ? "\n\n" : "\n");  // a blank line too
  fs::path in = write("in.jsonl", text);
  fs::path out = dir_ / "out.jsonl";
  Result r = run({"run", "--model", model(), "--input", in.string(), "--output", out.string(),
                  "--ctx", "128", "--max-batch", "4"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("10 lines (3 ok, 7 failed)"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out.string() + ".partial"));

  std::vector<std::string> got = lines_of(slurp(out));
  ASSERT_EQ(got.size(), input.size());
  const std::vector<std::pair<json, std::string>> expected = {
      {"a", ""},
      {"b", ""},
      {nullptr, "invalid_json"},
      {"a", "duplicate_custom_id"},
      {"e", "invalid_url"},
      {"neg", "invalid_value"},
      {nullptr, "missing_required_parameter"},
      {"empty", "invalid_value"},
      {"long", "context_length_exceeded"},
      {"c", ""},
  };
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE("output line " + std::to_string(i + 1) + ": " + got[i]);
    json j = json::parse(got[i]);
    EXPECT_EQ(j["id"], "batch_req_" + std::to_string(i + 1));
    EXPECT_EQ(j["custom_id"], expected[i].first);
    if (expected[i].second.empty()) {
      EXPECT_TRUE(j["error"].is_null());
      const json& resp = j["response"];
      EXPECT_EQ(resp["status_code"], 200);
      const json& body = resp["body"];
      const json& usage = body["usage"];
      EXPECT_GT(usage["prompt_tokens"].get<int>(), 0);
      EXPECT_EQ(usage["total_tokens"].get<int>(),
                usage["prompt_tokens"].get<int>() + usage["completion_tokens"].get<int>());
      const json& choice = body["choices"][0];
      EXPECT_TRUE(choice["finish_reason"] == "stop" || choice["finish_reason"] == "length");
      if (body["object"] == "chat.completion")
        EXPECT_TRUE(choice["message"]["content"].is_string());
      else
        EXPECT_TRUE(choice["text"].is_string());
    } else {
      EXPECT_TRUE(j["response"].is_null());
      EXPECT_EQ(j["error"]["code"], expected[i].second);
      EXPECT_FALSE(j["error"]["message"].get<std::string>().empty());
    }
  }
  EXPECT_EQ(json::parse(got[0])["response"]["body"]["object"], "chat.completion");
  EXPECT_EQ(json::parse(got[1])["response"]["body"]["object"], "text_completion");
  EXPECT_LE(json::parse(got[9])["response"]["body"]["usage"]["completion_tokens"].get<int>(), 5);
}

// A line over --max-line-bytes gets its error line (naming its size) and the lines
// around it run; the reader never holds the long line (BatchFile.ReadLine*).
TEST_F(Cli, RunReportsALineOverTheSizeLimit) {
  BATCHMAX_REQUIRE_SMOLLM2();
  const std::string ok_a =
      R"({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "One, two,", "max_tokens": 3}})";
  const std::string huge = R"({"custom_id": "big", "method": "POST", "url": "/v1/completions", "body": {"prompt": ")" +
                           std::string(3'000'000, 'y') + R"("}})";
  const std::string ok_c =
      R"({"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": {"prompt": "The sky is", "max_tokens": 3}})";
  fs::path in = write("big.jsonl", ok_a + "\n" + huge + "\n" + ok_c + "\n");
  fs::path out = dir_ / "big.out.jsonl";
  Result r = run({"run", "--model", model(), "--input", in.string(), "--output", out.string(),
                  "--ctx", "128", "--max-line-bytes", "4096"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> got = lines_of(slurp(out));
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(json::parse(got[0])["custom_id"], "a");
  EXPECT_TRUE(json::parse(got[0])["error"].is_null());
  const json big = json::parse(got[1]);
  EXPECT_EQ(big["error"]["code"], "request_too_large");
  EXPECT_NE(big["error"]["message"].get<std::string>().find(std::to_string(huge.size()) + " bytes"),
            std::string::npos)
      << got[1];
  EXPECT_EQ(json::parse(got[2])["custom_id"], "c");
  EXPECT_TRUE(json::parse(got[2])["error"].is_null());
}

TEST_F(Cli, RunExampleFile) {
  BATCHMAX_REQUIRE_SMOLLM2();
  fs::path out = dir_ / "example.out.jsonl";
  Result r = run({"run", "--model", model(), "--input",
                  batchmax::test::source_dir() + "/examples/batch_example.jsonl", "--output",
                  out.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> got = lines_of(slurp(out));
  ASSERT_EQ(got.size(), 5u);
  EXPECT_EQ(json::parse(got[3])["error"]["code"], "invalid_value");
  EXPECT_EQ(json::parse(got[4])["custom_id"], "list");
}

}  // namespace

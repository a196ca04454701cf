// `batchmax serve` end to end: the real program on a loopback port, driven with curl
// (and raw sockets where curl would tidy the request up). Needs the SmolLM2 model;
// skips saying so when it is missing. Lengths stay tiny so the CPU run is quick.
#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <thread>

#include "e2e/server_fixture.h"

namespace batchmax::test {
namespace {

class ServerE2E : public ServerSuite {
 protected:
  static void SetUpTestSuite() { start("main", {"--max-body-bytes", "64KiB", "--max-batch", "8"}); }
  static void TearDownTestSuite() { stop(); }
};

TEST_F(ServerE2E, PortIsBoundBeforeTheModelLoads) {
  // The first health check after the "listening" line got an answer (503 while loading,
  // or 200 if loading was quicker than the check), never a refused connection.
  EXPECT_TRUE(srv().first_health_status() == 503 || srv().first_health_status() == 200)
      << srv().first_health_status();
  const std::string log = srv().log();
  EXPECT_LT(log.find("listening on"), log.find("ready:")) << log;
}

TEST_F(ServerE2E, HealthModelsAndMetrics) {
  HttpResult h = srv().get("/health");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.json()["status"], "ok");
  EXPECT_EQ(srv().get("/health?verbose=1").status, 200);
  HttpResult m = srv().get("/v1/models");
  ASSERT_EQ(m.status, 200) << m.body;
  EXPECT_EQ(m.json()["object"], "list");
  EXPECT_EQ(m.json()["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
  EXPECT_EQ(m.json()["data"][0]["max_model_len"], 512);
  EXPECT_EQ(srv().metric("batchmax_ready"), 1);
  EXPECT_GT(srv().metric("batchmax_kv_blocks_total"), 0) << srv().get("/metrics").body;
}

TEST_F(ServerE2E, CompletionNotStreamed) {
  HttpResult r = srv().post("/v1/completions", completion_body("The capital of France is", 8).dump());
  ASSERT_EQ(r.status, 200) << r.body;
  json j = r.json();
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "SmolLM2-135M-Instruct.Q4_1");
  EXPECT_TRUE(j["id"].get<std::string>().rfind("cmpl-", 0) == 0);
  ASSERT_EQ(j["choices"].size(), 1u);
  EXPECT_TRUE(j["choices"][0]["text"].is_string());
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  const std::string finish = j["choices"][0]["finish_reason"];
  EXPECT_TRUE(finish == "stop" || finish == "length") << finish;
  expect_usage(j["usage"], 8, finish);
  // The same prompt as token ids (BOS is the caller's business then) runs too.
  HttpResult ids = srv().post("/v1/completions", R"({"prompt": [504, 3575, 282], "max_tokens": 3})");
  ASSERT_EQ(ids.status, 200) << ids.body;
  EXPECT_EQ(ids.json()["usage"]["prompt_tokens"], 3);
}

TEST_F(ServerE2E, ChatNotStreamedIsDeterministicWhenGreedy) {
  HttpResult a = srv().post("/v1/chat/completions", chat_body("Say hello.", 12).dump());
  ASSERT_EQ(a.status, 200) << a.body;
  json j = a.json();
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_FALSE(j["choices"][0]["message"]["content"].get<std::string>().empty());
  expect_usage(j["usage"], 12, j["choices"][0]["finish_reason"]);
  HttpResult b = srv().post("/v1/chat/completions", chat_body("Say hello.", 12).dump());
  EXPECT_EQ(b.json()["choices"][0]["message"]["content"], j["choices"][0]["message"]["content"]);
}

TEST_F(ServerE2E, ChatStreamMatchesTheNonStreamedAnswer) {
  json body = chat_body("Name three colors.", 10);
  HttpResult whole = srv().post("/v1/chat/completions", body.dump());
  ASSERT_EQ(whole.status, 200) << whole.body;
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  HttpResult r = srv().post("/v1/chat/completions", body.dump(), {"-N"});
  ASSERT_EQ(r.status, 200) << r.body;
  SseBody s = parse_sse(r.body);
  ASSERT_TRUE(s.done) << r.body;
  ASSERT_GE(s.events.size(), 3u) << r.body;
  EXPECT_EQ(s.events.front()["choices"][0]["delta"]["role"], "assistant");
  std::string text, finish;
  int token_chunks = 0;
  for (size_t i = 1; i < s.events.size(); ++i) {
    const json& e = s.events[i];
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    EXPECT_EQ(e["id"], s.events.front()["id"]);
    if (e["choices"].empty()) continue;  // the usage chunk
    const json& c = e["choices"][0];
    if (!c["finish_reason"].is_null()) finish = c["finish_reason"];
    else ++token_chunks;
    if (c["delta"].contains("content")) text += c["delta"]["content"].get<std::string>();
  }
  EXPECT_EQ(text, whole.json()["choices"][0]["message"]["content"]);
  EXPECT_EQ(finish, whole.json()["choices"][0]["finish_reason"]);
  const json& usage = s.events.back()["usage"];
  EXPECT_TRUE(s.events.back()["choices"].empty());
  EXPECT_EQ(usage, whole.json()["usage"]);
  EXPECT_EQ(token_chunks, usage["completion_tokens"].get<int>());  // one chunk per token
}

TEST_F(ServerE2E, CompletionStreamWithLogprobs) {
  json body = completion_body("Once upon a time", 6);
  body["stream"] = true;
  body["logprobs"] = 2;
  HttpResult r = srv().post("/v1/completions", body.dump(), {"-N"});
  ASSERT_EQ(r.status, 200) << r.body;
  SseBody s = parse_sse(r.body);
  ASSERT_TRUE(s.done);
  int tokens = 0;
  for (const json& e : s.events) {
    EXPECT_EQ(e["object"], "text_completion");
    const json& c = e["choices"][0];
    if (!c["finish_reason"].is_null()) continue;
    ++tokens;
    ASSERT_EQ(c["logprobs"]["tokens"].size(), 1u) << e;
    EXPECT_LE(c["logprobs"]["token_logprobs"][0].get<double>(), 0.0);
    EXPECT_EQ(c["logprobs"]["top_logprobs"][0].size(), 2u) << e;
  }
  EXPECT_GE(tokens, 1);
  EXPECT_LE(tokens, 6);
}

TEST_F(ServerE2E, ChatLogprobsGreedyTokenIsTheMostLikely) {
  json body = chat_body("Count to five.", 5);
  body["logprobs"] = true;
  body["top_logprobs"] = 3;
  HttpResult r = srv().post("/v1/chat/completions", body.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  json j = r.json();
  const json& content = j["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), j["usage"]["completion_tokens"].get<size_t>()) << j;
  for (const json& t : content) {
    ASSERT_EQ(t["top_logprobs"].size(), 3u);
    EXPECT_EQ(t["token"], t["top_logprobs"][0]["token"]) << t;
    EXPECT_FLOAT_EQ(t["logprob"].get<float>(), t["top_logprobs"][0]["logprob"].get<float>());
    EXPECT_GE(t["top_logprobs"][0]["logprob"].get<double>(), t["top_logprobs"][1]["logprob"].get<double>());
  }
}

TEST_F(ServerE2E, StopStringCutsTheText) {
  HttpResult free_run = srv().post("/v1/completions", completion_body("One, two, three,", 16).dump());
  ASSERT_EQ(free_run.status, 200) << free_run.body;
  const std::string text = free_run.json()["choices"][0]["text"];
  // A stop string that first occurs somewhere inside the free-running text.
  size_t at = std::string::npos;
  std::string stop;
  for (size_t p = 2; p + 2 <= text.size(); ++p) {
    stop = text.substr(p, 2);
    if (text.find(stop) == p && stop.find_first_not_of(' ') != std::string::npos) {
      at = p;
      break;
    }
  }
  if (at == std::string::npos) GTEST_SKIP() << "no usable stop string in \"" << text << "\"";
  json body = completion_body("One, two, three,", 16);
  body["stop"] = json::array({"@@never@@", stop});
  HttpResult r = srv().post("/v1/completions", body.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["choices"][0]["text"], text.substr(0, at)) << "stop " << json(stop);
  EXPECT_EQ(r.json()["choices"][0]["finish_reason"], "stop");
  body["stream"] = true;
  HttpResult s = srv().post("/v1/completions", body.dump(), {"-N"});
  std::string streamed;
  for (const json& e : parse_sse(s.body).events) streamed += e["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(streamed, text.substr(0, at));
}

TEST_F(ServerE2E, SeveralChoicesWithSeeds) {
  json body = chat_body("Tell me a word.", 6);
  body["n"] = 3;
  body["temperature"] = 1.0;
  body["seed"] = 11;
  HttpResult a = srv().post("/v1/chat/completions", body.dump());
  ASSERT_EQ(a.status, 200) << a.body;
  json j = a.json();
  ASSERT_EQ(j["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(j["choices"][i]["index"], i);
  EXPECT_GE(j["usage"]["completion_tokens"].get<int>(), 3);
  EXPECT_LE(j["usage"]["completion_tokens"].get<int>(), 18);
  HttpResult b = srv().post("/v1/chat/completions", body.dump());
  EXPECT_EQ(b.json()["choices"], j["choices"]) << "same seed, same choices";
  // Streamed: every choice ends, each with its own index.
  body["stream"] = true;
  SseBody s = parse_sse(srv().post("/v1/chat/completions", body.dump(), {"-N"}).body);
  std::set<int> finished;
  for (const json& e : s.events)
    if (!e["choices"].empty() && !e["choices"][0]["finish_reason"].is_null())
      finished.insert(e["choices"][0]["index"].get<int>());
  EXPECT_EQ(finished, (std::set<int>{0, 1, 2}));
}

TEST_F(ServerE2E, PerRequestCompressionFields) {
  json body = completion_body("The quick brown fox", 4);
  body["kv_mode"] = "batchmax";
  body["kv_policy"] = "snapkv";
  body["kv_budget"] = 64;
  body["kv_chunk"] = 32;
  HttpResult r = srv().post("/v1/completions", body.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  expect_usage(r.json()["usage"], 4, r.json()["choices"][0]["finish_reason"]);
}

TEST_F(ServerE2E, WithoutMaxTokensTheAnswerStopsAtTheContext) {
  std::string prompt;
  for (int i = 0; i < 505; ++i) prompt += "word ";  // 506 tokens of the 512 (--ctx)
  HttpResult r = srv().post("/v1/completions", json{{"prompt", prompt}, {"temperature", 0}}.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  const json u = r.json()["usage"];
  EXPECT_EQ(u["prompt_tokens"], 506);
  EXPECT_LE(u["total_tokens"].get<int>(), 512) << u;
  // Given explicitly, the same length is refused with the numbers.
  HttpResult e = srv().post("/v1/completions", json{{"prompt", prompt}, {"max_tokens", 16}}.dump());
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(e.body.find("522 tokens (506 in the prompt, 16 for the completion)"), std::string::npos) << e.body;
}

struct BadCase {
  const char* name;
  std::string path, body;
  int status;
  std::string param;  // "" : not checked
  std::string code;   // "" : not checked
};

TEST_F(ServerE2E, BadInputGetsItsErrorAndTheServerKeepsServing) {
  const std::string long_prompt = [] {
    std::string s;
    for (int i = 0; i < 600; ++i) s += "word ";
    return s;
  }();
  const std::vector<BadCase> cases = {
      {"malformed json", "/v1/chat/completions", R"({"messages": [)", 400, "", "invalid_json"},
      {"not an object", "/v1/chat/completions", "[1, 2]", 400, "", "invalid_json"},
      {"empty body", "/v1/completions", "", 400, "", "invalid_json"},
      {"binary garbage", "/v1/completions", std::string("\x00\xff\xfe{", 4), 400, "", "invalid_json"},
      {"wrong type", "/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": "4"})", 400, "max_tokens", "invalid_type"},
      {"negative max_tokens", "/v1/completions", R"({"prompt": "x", "max_tokens": -1})", 400, "max_tokens", "invalid_value"},
      {"huge max_tokens", "/v1/completions", R"({"prompt": "x", "max_tokens": 99999999999})", 400, "max_tokens", "invalid_value"},
      {"max_tokens past the limit", "/v1/completions", R"({"prompt": "x", "max_tokens": 9000})", 400, "max_tokens", "invalid_value"},
      {"huge n", "/v1/completions", R"({"prompt": "x", "n": 1000})", 400, "n", "invalid_value"},
      {"zero n", "/v1/completions", R"({"prompt": "x", "n": 0})", 400, "n", "invalid_value"},
      {"top_logprobs too large", "/v1/chat/completions",
       R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 50})", 400, "top_logprobs", ""},
      {"temperature NaN-ish", "/v1/completions", R"({"prompt": "x", "temperature": 1e999})", 400, "", ""},
      {"empty messages", "/v1/chat/completions", R"({"messages": []})", 400, "messages", "invalid_value"},
      {"message without role", "/v1/chat/completions", R"({"messages": [{"content": "x"}]})", 400, "messages[0].role", ""},
      {"unknown model", "/v1/completions", R"({"model": "gpt-9", "prompt": "x"})", 404, "model", "model_not_found"},
      {"prompt too long", "/v1/completions", json{{"prompt", long_prompt}}.dump(), 400, "prompt", "context_length_exceeded"},
      {"prompt + max_tokens too long", "/v1/completions", json{{"prompt", "hi"}, {"max_tokens", 600}}.dump(), 400, "prompt", "context_length_exceeded"},
      {"token id past the vocabulary", "/v1/completions", R"({"prompt": [1, 999999]})", 400, "prompt[1]", ""},
      {"bad kv_mode", "/v1/completions", R"({"prompt": "x", "kv_mode": "zip"})", 400, "kv_mode", ""},
      {"kv_budget below sinks + window", "/v1/completions", R"({"prompt": "x", "kv_mode": "batchmax", "kv_budget": 8})", 400, "", ""},
      {"unsupported penalty", "/v1/completions", R"({"prompt": "x", "presence_penalty": 1})", 400, "presence_penalty", ""},
      {"unknown path", "/v1/embeddings", R"({"input": "x"})", 404, "", "not_found"},
      {"oversized body", "/v1/completions", json{{"prompt", std::string(70 * 1024, 'a')}}.dump(), 413, "", "request_too_large"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    HttpResult r = srv().post(c.path, c.body);
    EXPECT_EQ(r.status, c.status) << r.body;
    json j = r.json();
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r.body;
    const json& e = j["error"];
    EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << r.body;
    EXPECT_TRUE(e["type"].is_string()) << r.body;
    EXPECT_TRUE(e.contains("param") && e.contains("code")) << r.body;
    if (!c.param.empty()) {
      EXPECT_EQ(e["param"], c.param) << r.body;
    }
    if (!c.code.empty()) {
      EXPECT_EQ(e["code"], c.code) << r.body;
    }
    expect_healthy();
  }
  // The context error says the numbers.
  HttpResult ctx = srv().post("/v1/completions", json{{"prompt", "hi"}, {"max_tokens", 600}}.dump());
  EXPECT_NE(ctx.body.find("maximum context length is 512 tokens"), std::string::npos) << ctx.body;
  EXPECT_NE(ctx.body.find("for the completion"), std::string::npos) << ctx.body;
  // GET on a POST route, and a request line httplib cannot parse.
  EXPECT_EQ(srv().get("/v1/completions").status, 404);
  EXPECT_EQ(srv().raw("BREW /coffee HTTP/1.1\r\nHost: x\r\n\r\n").status / 100, 4);
  EXPECT_EQ(srv().raw("\r\n\r\n").status / 100, 4);
  expect_healthy();
  EXPECT_GE(srv().metric("batchmax_requests_total{outcome=\"invalid_request\"}"), 19);
}

// Reads the answer to `request` until `until` shows up in it, then hangs up.
TEST_F(ServerE2E, ClientThatHangsUpIsCancelledAndItsBlocksFreed) {
  const double before = srv().metric("batchmax_requests_total{outcome=\"client_disconnected\"}");
  json body = completion_body("A long story:", 400);
  body["stream"] = true;
  // Streamed: hang up after the first token.
  hang_up_after(srv(), post_request("/v1/completions", body.dump()), "\"text\"");
  EXPECT_EQ(wait_metric(srv(), "batchmax_requests_running", 0, 10), 0);
  EXPECT_EQ(wait_metric(srv(), "batchmax_requests_total{outcome=\"client_disconnected\"}", before + 1, 10), before + 1);
  EXPECT_EQ(srv().metric("batchmax_kv_blocks_used"), 0);
  // Not streamed: hang up once the answer has started (the heartbeat's first space).
  body.erase("stream");
  hang_up_after(srv(), post_request("/v1/completions", body.dump()), "\r\n\r\n");
  EXPECT_EQ(wait_metric(srv(), "batchmax_requests_total{outcome=\"client_disconnected\"}", before + 2, 10), before + 2);
  EXPECT_EQ(wait_metric(srv(), "batchmax_requests_running", 0, 10), 0);
  EXPECT_EQ(srv().metric("batchmax_kv_blocks_used"), 0);
  EXPECT_EQ(srv().metric("batchmax_requests_waiting"), 0);
  expect_healthy();
}

TEST_F(ServerE2E, MetricsCountTokensAndLatencies) {
  const double generated = srv().metric("batchmax_generated_tokens_total");
  const double ok = srv().metric("batchmax_requests_total{outcome=\"ok\"}");
  HttpResult r = srv().post("/v1/completions", completion_body("Hello", 5).dump());
  ASSERT_EQ(r.status, 200);
  const int n = r.json()["usage"]["completion_tokens"];
  EXPECT_EQ(srv().metric("batchmax_generated_tokens_total"), generated + n);
  EXPECT_EQ(srv().metric("batchmax_requests_total{outcome=\"ok\"}"), ok + 1);
  EXPECT_GT(srv().metric("batchmax_time_to_first_token_seconds_count"), 0);
  const std::string text = srv().get("/metrics").body;
  EXPECT_NE(text.find("# TYPE batchmax_time_per_output_token_seconds histogram"), std::string::npos);
  EXPECT_NE(text.find("batchmax_batch_size "), std::string::npos);
}

// Keys, path spellings, body limit, timeout and the wait queue.
}  // namespace
}  // namespace batchmax::test

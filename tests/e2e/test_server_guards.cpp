// `batchmax serve` end to end, the guards: API keys and path spellings, the body limit,
// the request timeout, the wait queue (429), and SIGTERM draining. Needs the SmolLM2
// model; skips saying so when it is missing.
#include <gtest/gtest.h>

#include <thread>

#include "e2e/server_fixture.h"

namespace batchmax::test {
namespace {

class ServerGuardsE2E : public ServerSuite {
 protected:
  static void SetUpTestSuite() {
    start("guards", {"--api-key", "sk-test-1", "--max-body-bytes", "16KiB", "--request-timeout",
                     "0.5", "--max-batch", "1", "--max-waiting", "1"});
    if (server()) server()->set_api_key("sk-test-1");
  }
  static void TearDownTestSuite() { stop(); }
  const std::vector<std::string> key = {"-H", "Authorization: Bearer sk-test-1"};
};

TEST_F(ServerGuardsE2E, KeyIsRequiredEverywhereButHealth) {
  const std::string body = completion_body("hi", 2).dump();
  for (const auto& path : {"/v1/completions", "/v1/chat/completions"}) {
    HttpResult r = srv().post(path, body);
    EXPECT_EQ(r.status, 401) << path;
    EXPECT_EQ(r.json()["error"]["type"], "authentication_error") << r.body;
    EXPECT_EQ(r.json()["error"]["code"], "invalid_api_key") << r.body;
  }
  EXPECT_EQ(srv().get("/v1/models").status, 401);
  EXPECT_EQ(srv().get("/metrics").status, 401);
  EXPECT_EQ(srv().post("/v1/completions", body, {"-H", "Authorization: Bearer sk-test-2"}).status, 401);
  EXPECT_EQ(srv().post("/v1/completions", body, {"-H", "Authorization: sk-test-1"}).status, 401);
  EXPECT_EQ(srv().post("/v1/completions", body, {"-H", "X-Api-Key: sk-test-1"}).status, 401);
  EXPECT_EQ(srv().post("/v1/completions", body, key).status, 200);
  EXPECT_EQ(srv().get("/v1/models", key).status, 200);
  EXPECT_EQ(srv().get("/health").status, 200);
}

TEST_F(ServerGuardsE2E, NoPathSpellingGetsPastTheKey) {
  const std::string body = completion_body("hi", 2).dump();
  const std::vector<std::string> variants = {
      "/v1//completions", "/V1/completions", "/v1/completions/", "//v1/completions",
      "/v1/./completions", "/v1/chat/../completions", "/health/../v1/completions",
      "/v1/%63ompletions", "/v1/completions%00", "/v1/completions?x=1", "/health/",
      "/HEALTH", "/v1/completions;.js", "/metrics/", "/v1/models/"};
  for (const auto& v : variants) {
    SCOPED_TRACE(v);
    // --path-as-is: curl would otherwise resolve the dot segments itself.
    HttpResult no_key = srv().post(v, body, {"--path-as-is"});
    EXPECT_EQ(no_key.status, 401) << no_key.body;
    EXPECT_EQ(no_key.json()["error"]["type"], "authentication_error");
    // With the key a variant reaches what it names, or nothing.
    HttpResult with_key = srv().post(v, body, {"--path-as-is", "-H", "Authorization: Bearer sk-test-1"});
    EXPECT_TRUE(with_key.status == 200 || with_key.status == 404) << with_key.status << " " << with_key.body;
  }
  // Raw request lines that curl cannot send.
  for (const std::string target : {"http://127.0.0.1/v1/completions", "*", "v1/completions"}) {
    HttpResult r = srv().raw("POST " + target + " HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                             std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body);
    EXPECT_TRUE(r.status == 401 || r.status == 400) << target << " -> " << r.status << " " << r.body;
  }
  EXPECT_EQ(srv().get("/health").status, 200);
}

TEST_F(ServerGuardsE2E, OversizedBodyIs413WithTheKeyAnd401Without) {
  const std::string big = json{{"prompt", std::string(20 * 1024, 'a')}}.dump();
  EXPECT_EQ(srv().post("/v1/completions", big).status, 401);
  HttpResult r = srv().post("/v1/completions", big, key);
  EXPECT_EQ(r.status, 413) << r.body;
  EXPECT_EQ(r.json()["error"]["code"], "request_too_large") << r.body;
  EXPECT_EQ(srv().get("/health").status, 200);
}

TEST_F(ServerGuardsE2E, RequestPastItsTimeoutEndsWithAnError) {
  json body = completion_body("Write a long essay about the sea.", 450);
  HttpResult r = srv().post("/v1/completions", body.dump(), key);
  EXPECT_EQ(r.status, 200);  // the answer had started (heartbeats) before the deadline
  EXPECT_EQ(r.json()["error"]["code"], "timeout") << r.body;
  body["stream"] = true;
  SseBody s = parse_sse(srv().post("/v1/completions", body.dump(), {"-N", "-H", "Authorization: Bearer sk-test-1"}).body);
  ASSERT_FALSE(s.events.empty());
  EXPECT_EQ(s.events.back()["error"]["code"], "timeout");
  EXPECT_TRUE(s.done);
  EXPECT_EQ(wait_metric(srv(), "batchmax_requests_running", 0, 10), 0);
  EXPECT_EQ(srv().metric("batchmax_kv_blocks_used"), 0);
  EXPECT_GE(srv().metric("batchmax_requests_total{outcome=\"timeout\"}"), 2);
}

TEST_F(ServerGuardsE2E, FullWaitQueueAnswers429) {
  // One running (--max-batch 1), one waiting (--max-waiting 1): the rest are refused.
  const std::string body = completion_body("Tell a story.", 300).dump();
  std::vector<std::thread> clients;
  std::vector<int> status(6, 0);
  for (int i = 0; i < 6; ++i) {
    clients.emplace_back([&, i] { status[i] = srv().post("/v1/completions", body, key).status; });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (auto& t : clients) t.join();
  const int refused = static_cast<int>(std::count(status.begin(), status.end(), 429));
  EXPECT_GE(refused, 1) << "statuses: " << json(status);
  for (int s : status) EXPECT_TRUE(s == 200 || s == 429) << s;
  EXPECT_GE(srv().metric("batchmax_requests_total{outcome=\"queue_full\"}"), refused);
  EXPECT_EQ(wait_metric(srv(), "batchmax_requests_running", 0, 10), 0);
}

TEST(ServerLifecycleE2E, SigtermDrainsRunningRequestsThenExitsZero) {
  std::string reason;
  auto binary = server_binary_or_skip_reason(reason);
  if (!binary) GTEST_SKIP() << reason;
  ServerProcess srv(*binary,
                    {"--model", smollm2_path(), "--threads", "2", "--ctx", "512", "--kv-mem",
                     "64MiB", "--drain-timeout", "60"},
                    scratch("drain"));
  ASSERT_TRUE(srv.is_up());
  json body = completion_body("Once upon a time", 40);
  body["stream"] = true;
  HttpResult running;
  std::thread client([&] { running = srv.post("/v1/completions", body.dump(), {"-N"}); });
  ASSERT_EQ(wait_metric(srv, "batchmax_requests_running", 1, 20), 1);
  kill(srv.pid(), SIGTERM);
  // New requests are refused while the running one finishes.
  HttpResult refused = srv.post("/v1/completions", completion_body("x", 2).dump());
  HttpResult health = srv.get("/health");
  client.join();
  EXPECT_EQ(refused.status, 503) << refused.body;
  EXPECT_EQ(refused.json()["error"]["code"], "unavailable") << refused.body;
  EXPECT_EQ(health.status, 503);
  SseBody s = parse_sse(running.body);
  EXPECT_TRUE(s.done) << running.body;
  ASSERT_GE(s.events.size(), 2u);
  EXPECT_EQ(s.events.back()["choices"][0]["finish_reason"].is_string(), true) << running.body;
  EXPECT_EQ(srv.terminate(60), 0) << srv.log();
  EXPECT_NE(srv.log().find("draining"), std::string::npos);
}


}  // namespace
}  // namespace batchmax::test

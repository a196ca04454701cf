// The server's Prometheus text (server/metrics), API keys (server/auth), SSE framing and
// the engine-to-connection queue (server/request_stream).
#include <gtest/gtest.h>

#include <thread>

#include "server/auth.h"
#include "server/metrics.h"
#include "server/request_stream.h"
#include "server/sse.h"

namespace batchmax::server {
namespace {

bool has_line(const std::string& text, const std::string& line) {
  return ("\n" + text).find("\n" + line + "\n") != std::string::npos;
}

TEST(ServerMetrics, HistogramIsCumulative) {
  Histogram h({0.5, 1});
  h.observe(0.25);
  h.observe(0.5);  // on the bound: counts in it (le)
  h.observe(0.75);
  h.observe(7);
  std::string out;
  h.render(out, "x_seconds", "help text");
  EXPECT_TRUE(has_line(out, "# TYPE x_seconds histogram")) << out;
  EXPECT_TRUE(has_line(out, "x_seconds_bucket{le=\"0.5\"} 2")) << out;
  EXPECT_TRUE(has_line(out, "x_seconds_bucket{le=\"1\"} 3")) << out;
  EXPECT_TRUE(has_line(out, "x_seconds_bucket{le=\"+Inf\"} 4")) << out;
  EXPECT_TRUE(has_line(out, "x_seconds_sum 8.5")) << out;
  EXPECT_TRUE(has_line(out, "x_seconds_count 4")) << out;
}

TEST(ServerMetrics, RenderCountersAndGauges) {
  ServerMetrics m;
  m.count_request(outcome::kOk);
  m.count_request(outcome::kOk);
  m.count_request(outcome::kQueueFull);
  Output out;
  out.prompt_tokens = 10;
  out.tokens = {1, 2, 3, 4, 5};
  m.observe_finished(out, 0.2, 1.0);  // TPOT (1.0 - 0.2) / 4
  Output none;
  none.prompt_tokens = 3;
  m.observe_finished(none, -1, 0.5);  // no token: no TTFT
  EngineLoopStats s;
  s.batch.running = 3;
  s.batch.waiting = 2;
  s.batch.kv_blocks_used = 40;
  s.batch.kv_blocks_free = 60;
  s.batch.kv_blocks_total = 100;
  s.batch.last_step_seqs = 3;
  const std::string text = m.render(&s, true, false);
  EXPECT_TRUE(has_line(text, "batchmax_requests_total{outcome=\"ok\"} 2")) << text;
  EXPECT_TRUE(has_line(text, "batchmax_requests_total{outcome=\"queue_full\"} 1")) << text;
  EXPECT_TRUE(has_line(text, "batchmax_requests_total{outcome=\"timeout\"} 0")) << text;
  EXPECT_TRUE(has_line(text, "batchmax_prompt_tokens_total 13")) << text;
  EXPECT_TRUE(has_line(text, "batchmax_generated_tokens_total 5")) << text;
  EXPECT_TRUE(has_line(text, "batchmax_time_to_first_token_seconds_count 1")) << text;
  EXPECT_TRUE(has_line(text, "batchmax_time_per_output_token_seconds_sum 0.2")) << text;
  EXPECT_TRUE(has_line(text, "batchmax_request_duration_seconds_count 2")) << text;
  EXPECT_TRUE(has_line(text, "batchmax_requests_running 3")) << text;
  EXPECT_TRUE(has_line(text, "batchmax_requests_waiting 2")) << text;
  EXPECT_TRUE(has_line(text, "batchmax_kv_blocks_used 40")) << text;
  EXPECT_TRUE(has_line(text, "batchmax_kv_blocks_free 60")) << text;
  EXPECT_TRUE(has_line(text, "batchmax_batch_size 3")) << text;
  EXPECT_TRUE(has_line(text, "batchmax_ready 1")) << text;
  EXPECT_TRUE(has_line(text, "# TYPE batchmax_requests_running gauge")) << text;
  // Every line is a comment or "name[{labels}] value".
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    ASSERT_NE(end, std::string::npos) << "text must end with a newline";
    const std::string line = text.substr(start, end - start);
    if (line[0] != '#') {
      EXPECT_EQ(std::count(line.begin(), line.end(), ' '), 1) << line;
    }
    start = end + 1;
  }
}

TEST(ServerMetrics, WhileLoadingGaugesAreZero) {
  ServerMetrics m;
  const std::string text = m.render(nullptr, false, false);
  EXPECT_TRUE(has_line(text, "batchmax_ready 0")) << text;
  EXPECT_TRUE(has_line(text, "batchmax_requests_running 0")) << text;
}

TEST(ApiKeys, BearerHeader) {
  ApiKeys none;
  EXPECT_TRUE(none.authorized(""));
  ApiKeys keys({"sk-one", " sk-two "});
  EXPECT_TRUE(keys.enabled());
  EXPECT_TRUE(keys.authorized("Bearer sk-one"));
  EXPECT_TRUE(keys.authorized("bearer sk-two"));
  EXPECT_TRUE(keys.authorized("BEARER  sk-two "));
  EXPECT_FALSE(keys.authorized(""));
  EXPECT_FALSE(keys.authorized("sk-one"));
  EXPECT_FALSE(keys.authorized("Bearer"));
  EXPECT_FALSE(keys.authorized("Bearer "));
  EXPECT_FALSE(keys.authorized("Bearer sk-on"));
  EXPECT_FALSE(keys.authorized("Bearer sk-one2"));
  EXPECT_FALSE(keys.authorized("Basic sk-one"));
  EXPECT_THROW(ApiKeys({""}), std::exception);
}

TEST(ApiKeys, OnlyTheExactHealthPathIsOpen) {
  EXPECT_TRUE(ApiKeys::is_open_path("/health"));
  for (const char* p : {"/health/", "//health", "/HEALTH", "/health/../v1/completions", "/healthz",
                        "/v1/completions", "/metrics", "/", ""})
    EXPECT_FALSE(ApiKeys::is_open_path(p)) << p;
}

TEST(Sse, Framing) {
  EXPECT_EQ(sse::event("{\"a\":1}"), "data: {\"a\":1}\n\n");
  EXPECT_EQ(sse::done(), "data: [DONE]\n\n");
  EXPECT_EQ(sse::keepalive(), ": keepalive\n\n");
}

TEST(RequestStream, HandsEventsAcrossThreadsInOrder) {
  int observed = 0;
  double first = -2;
  auto stream = RequestStream::create(2, [&](const Output&, double f, double) {
    ++observed;
    first = f;
  });
  auto cb0 = RequestStream::callbacks(stream, 0);
  auto cb1 = RequestStream::callbacks(stream, 1);
  std::thread engine([&] {
    for (int i = 0; i < 100; ++i) cb0.on_token(TokenInfo{i, "t", 0, {}});
    Output o;
    o.finish_reason = "length";
    cb0.on_finish(o);
    cb1.on_finish(o);
  });
  std::vector<StreamEvent> all;
  while (stream->finished() < 2 || !all.empty()) {
    auto got = stream->wait(std::chrono::milliseconds(50));
    if (got.empty() && stream->finished() == 2) break;
    for (auto& e : got) all.push_back(std::move(e));
  }
  engine.join();
  for (auto& e : stream->wait(std::chrono::milliseconds(1))) all.push_back(std::move(e));
  ASSERT_EQ(all.size(), 102u);
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(all[i].token.has_value());
    EXPECT_EQ(all[i].token->token, i);
  }
  EXPECT_TRUE(all[100].finished && all[100].choice == 0);
  EXPECT_TRUE(all[101].finished && all[101].choice == 1);
  EXPECT_EQ(observed, 2);
  EXPECT_EQ(first, -1);  // choice 1 had no token
}

TEST(RequestStream, WaitTimesOutEmpty) {
  auto stream = RequestStream::create(1);
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(stream->wait(std::chrono::milliseconds(30)).empty());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(25));
}

}  // namespace
}  // namespace batchmax::server

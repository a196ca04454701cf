// The server's request parser and response builders (server/openai_protocol).
#include <gtest/gtest.h>

#include <climits>

#include "server/openai_protocol.h"

namespace batchmax::server {
namespace {

CompletionRequest ok(const std::string& body, Endpoint ep = Endpoint::ChatCompletions,
                     const ProtocolLimits& limits = {}) {
  ParseResult r = parse_completion_request(body, ep, limits);
  if (auto* e = std::get_if<ApiError>(&r)) {
    ADD_FAILURE() << body << " -> " << e->message;
    return {};
  }
  return std::get<CompletionRequest>(r);
}

ApiError err(const std::string& body, Endpoint ep = Endpoint::ChatCompletions,
             const ProtocolLimits& limits = {}) {
  ParseResult r = parse_completion_request(body, ep, limits);
  if (!std::holds_alternative<ApiError>(r)) {
    ADD_FAILURE() << body << " was accepted";
    return {};
  }
  return std::get<ApiError>(r);
}

// A chat body with extra fields appended.
std::string chat(const std::string& extra = "") {
  return R"({"model": "m", "messages": [{"role": "user", "content": "hi"}])" + extra + "}";
}
std::string completion(const std::string& extra = "") {
  return R"({"model": "m", "prompt": "Once")" + extra + "}";
}

void expect_400(const std::string& body, const std::string& param, const std::string& in_message,
                Endpoint ep = Endpoint::ChatCompletions, const ProtocolLimits& limits = {}) {
  ApiError e = err(body, ep, limits);
  EXPECT_EQ(e.status, 400) << body;
  EXPECT_EQ(e.type, "invalid_request_error") << body;
  EXPECT_EQ(e.param, param) << body << " -> " << e.message;
  EXPECT_NE(e.message.find(in_message), std::string::npos) << body << " -> " << e.message;
}

TEST(OpenAIProtocol, ChatDefaults) {
  ProtocolLimits limits;
  limits.default_max_tokens = 77;
  CompletionRequest r = ok(chat(), Endpoint::ChatCompletions, limits);
  EXPECT_EQ(r.endpoint, Endpoint::ChatCompletions);
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].role, "user");
  EXPECT_EQ(r.messages[0].content, "hi");
  EXPECT_EQ(r.sampling.max_tokens, 77);
  EXPECT_EQ(r.sampling.temperature, 0.0f);  // the engine's default: greedy
  EXPECT_EQ(r.n, 1);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
  EXPECT_EQ(r.logprobs, -1);
  EXPECT_FALSE(r.seed_given);
  EXPECT_FALSE(r.max_tokens_given);
  EXPECT_FALSE(r.kv.mode || r.kv.policy || r.kv.budget || r.kv.chunk);
}

TEST(OpenAIProtocol, EveryField) {
  CompletionRequest r = ok(chat(R"(, "max_completion_tokens": 9, "temperature": 0.7, "top_p": 0.9,
      "top_k": 40, "seed": 42, "stop": ["\n", "END"], "n": 3, "stream": true,
      "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 4,
      "kv_mode": "batchmax", "kv_policy": "tova", "kv_budget": 128, "kv_chunk": 64,
      "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "user": "u1",
      "response_format": {"type": "text"}, "tools": [])"));
  EXPECT_EQ(r.sampling.max_tokens, 9);
  EXPECT_TRUE(r.max_tokens_given);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.7f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 40);
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_TRUE(r.seed_given);
  EXPECT_EQ(r.sampling.stop, (std::vector<std::string>{"\n", "END"}));
  EXPECT_EQ(r.n, 3);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.logprobs, 4);
  KVSettings defaults;
  defaults.slack = 9;
  KVSettings kv = r.kv.apply(defaults);
  EXPECT_EQ(kv.mode, "batchmax");
  EXPECT_EQ(kv.policy, "tova");
  EXPECT_EQ(kv.budget, 128);
  EXPECT_EQ(kv.chunk, 64);
  EXPECT_EQ(kv.slack, 9);
}

TEST(OpenAIProtocol, MaxTokensWinsOverMaxCompletionTokens) {
  EXPECT_EQ(ok(chat(R"(, "max_tokens": 5, "max_completion_tokens": 9)")).sampling.max_tokens, 5);
}

TEST(OpenAIProtocol, NullMeansUnset) {
  CompletionRequest r = ok(chat(R"(, "max_tokens": null, "stop": null, "seed": null, "n": null,
      "logprobs": null, "stream": null, "kv_mode": null)"));
  EXPECT_EQ(r.sampling.max_tokens, ProtocolLimits{}.default_max_tokens);
  EXPECT_TRUE(r.sampling.stop.empty());
  EXPECT_FALSE(r.seed_given);
  EXPECT_EQ(r.n, 1);
  EXPECT_EQ(r.logprobs, -1);
}

TEST(OpenAIProtocol, ChatMessages) {
  CompletionRequest r = ok(R"({"messages": [{"role": "developer", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
      {"role": "assistant", "content": ""}]})");
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "ab");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.model, "");  // model is optional
}

TEST(OpenAIProtocol, CompletionPrompts) {
  EXPECT_EQ(ok(completion(), Endpoint::Completions).prompt.text, "Once");
  CompletionRequest one = ok(R"({"prompt": ["only"]})", Endpoint::Completions);
  EXPECT_EQ(one.prompt.text, "only");
  EXPECT_FALSE(one.prompt.is_ids);
  CompletionRequest ids = ok(R"({"prompt": [1, 2, 3]})", Endpoint::Completions);
  EXPECT_TRUE(ids.prompt.is_ids);
  EXPECT_EQ(ids.prompt.ids, (std::vector<int32_t>{1, 2, 3}));
  // Completions count logprobs as the number of alternatives.
  EXPECT_EQ(ok(completion(R"(, "logprobs": 0)"), Endpoint::Completions).logprobs, 0);
  EXPECT_EQ(ok(completion(R"(, "logprobs": 5)"), Endpoint::Completions).logprobs, 5);
  EXPECT_EQ(ok(completion(R"(, "stop": "x")"), Endpoint::Completions).sampling.stop,
            (std::vector<std::string>{"x"}));
  EXPECT_EQ(ok(completion(R"(, "echo": false, "best_of": 1, "suffix": "")"), Endpoint::Completions).n, 1);
}

TEST(OpenAIProtocol, MalformedBodies) {
  for (const char* body : {"", "{", "{\"messages\": [}", "nul", "{\"a\": 1} trailing", "\xff\xfe"}) {
    ApiError e = err(body);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.code, "invalid_json") << body;
    EXPECT_NE(e.message.find("not valid JSON"), std::string::npos) << e.message;
  }
  for (const char* body : {"[]", "3", "\"text\"", "null", "true"}) {
    ApiError e = err(body);
    EXPECT_EQ(e.code, "invalid_json") << body;
    EXPECT_NE(e.message.find("must be a JSON object"), std::string::npos) << e.message;
  }
}

TEST(OpenAIProtocol, MissingParameters) {
  expect_400(R"({"model": "m"})", "messages", "is required");
  expect_400(R"({"model": "m"})", "prompt", "is required", Endpoint::Completions);
  expect_400(R"({"messages": [{"content": "x"}]})", "messages[0].role", "is required");
  expect_400(R"({"messages": [{"role": "user"}]})", "messages[0].content", "is required");
  EXPECT_EQ(err(R"({"model": "m"})").code, "missing_required_parameter");
}

TEST(OpenAIProtocol, WrongTypes) {
  expect_400(chat(R"(, "max_tokens": "10")"), "max_tokens", "must be an integer, got string");
  expect_400(chat(R"(, "max_tokens": 1.5)"), "max_tokens", "must be an integer, got number");
  expect_400(chat(R"(, "temperature": "hot")"), "temperature", "must be a number");
  expect_400(chat(R"(, "top_p": [1])"), "top_p", "must be a number");
  expect_400(chat(R"(, "stop": 3)"), "stop", "a string or an array of strings");
  expect_400(chat(R"(, "stop": ["a", 1])"), "stop[1]", "must be a string");
  expect_400(chat(R"(, "n": true)"), "n", "must be an integer");
  expect_400(chat(R"(, "seed": "1")"), "seed", "must be an integer");
  expect_400(chat(R"(, "stream": "yes")"), "stream", "must be a boolean");
  expect_400(chat(R"(, "stream": true, "stream_options": true)"), "stream_options", "must be an object");
  expect_400(chat(R"(, "stream": true, "stream_options": {"include_usage": 1})"),
             "stream_options.include_usage", "must be a boolean");
  expect_400(chat(R"(, "logprobs": 1)"), "logprobs", "must be a boolean");
  expect_400(completion(R"(, "logprobs": true)"), "logprobs", "must be an integer", Endpoint::Completions);
  expect_400(chat(R"(, "model": 1)"), "model", "must be a string");
  expect_400(R"({"messages": "hi"})", "messages", "must be an array");
  expect_400(R"({"messages": ["hi"]})", "messages[0]", "must be an object");
  expect_400(R"({"messages": [{"role": 1, "content": "x"}]})", "messages[0].role", "must be a string");
  expect_400(R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content",
             "a string or an array of text parts");
  expect_400(R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
             "messages[0].content[0].type", "only text");
  expect_400(R"({"prompt": {"a": 1}})", "prompt", "a string or an array of token ids", Endpoint::Completions);
  expect_400(R"({"prompt": [1, "a"]})", "prompt", "several prompts", Endpoint::Completions);
  expect_400(R"({"prompt": [1, 2.5]})", "prompt[1]", "must be an integer", Endpoint::Completions);
  expect_400(chat(R"(, "kv_mode": 3)"), "kv_mode", "must be a string");
  expect_400(chat(R"(, "kv_budget": "9")"), "kv_budget", "must be an integer");
  EXPECT_EQ(err(chat(R"(, "n": true)")).code, "invalid_type");
}

TEST(OpenAIProtocol, OutOfRangeNumbers) {
  ProtocolLimits limits;
  limits.max_tokens = 100;
  limits.max_n = 4;
  limits.max_top_logprobs = 5;
  auto bad = [&](const std::string& extra, const std::string& param, Endpoint ep = Endpoint::ChatCompletions) {
    const std::string body = ep == Endpoint::ChatCompletions ? chat(extra) : completion(extra);
    ApiError e = err(body, ep, limits);
    EXPECT_EQ(e.status, 400) << extra;
    EXPECT_EQ(e.param, param) << extra << " -> " << e.message;
    EXPECT_EQ(e.code, "invalid_value") << extra << " -> " << e.message;
  };
  bad(R"(, "max_tokens": 0)", "max_tokens");
  bad(R"(, "max_tokens": -5)", "max_tokens");
  bad(R"(, "max_tokens": 101)", "max_tokens");
  bad(R"(, "max_completion_tokens": 101)", "max_completion_tokens");
  bad(R"(, "max_tokens": 18446744073709551615)", "max_tokens");
  bad(R"(, "max_tokens": -9223372036854775808)", "max_tokens");
  bad(R"(, "n": 0)", "n");
  bad(R"(, "n": 5)", "n");
  // Past 64 bits JSON numbers become doubles: refused as "not an integer".
  EXPECT_EQ(err(chat(R"(, "n": 99999999999999999999)"), Endpoint::ChatCompletions, limits).param, "n");
  bad(R"(, "temperature": -0.1)", "temperature");
  bad(R"(, "temperature": 2.01)", "temperature");
  bad(R"(, "temperature": 1e308)", "temperature");
  bad(R"(, "top_p": 0)", "top_p");
  bad(R"(, "top_p": 1.5)", "top_p");
  bad(R"(, "top_k": -1)", "top_k");
  bad(R"(, "logprobs": true, "top_logprobs": 6)", "top_logprobs");
  bad(R"(, "logprobs": true, "top_logprobs": -1)", "top_logprobs");
  bad(R"(, "top_logprobs": 2)", "top_logprobs");  // without logprobs: true
  bad(R"(, "logprobs": 6)", "logprobs", Endpoint::Completions);
  bad(R"(, "logprobs": -1)", "logprobs", Endpoint::Completions);
  bad(R"(, "stop": [""])", "stop");
  bad(R"(, "stop": ["1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16","17"])", "stop");
  bad(R"(, "kv_mode": "sometimes")", "kv_mode");
  bad(R"(, "kv_policy": "lru")", "kv_policy");
  bad(R"(, "kv_budget": 0)", "kv_budget");
  bad(R"(, "kv_chunk": -4)", "kv_chunk");
  bad(R"(, "stream_options": {"include_usage": true})", "stream_options");  // needs stream
  bad(R"(, "prompt": [-1])", "prompt[0]", Endpoint::Completions);
  ApiError empty = err(R"({"messages": []})");
  EXPECT_EQ(empty.param, "messages");
  EXPECT_NE(empty.message.find("must not be empty"), std::string::npos);
  ApiError role = err(R"({"messages": [{"role": "tool", "content": "x"}]})");
  EXPECT_EQ(role.param, "messages[0].role");
}

TEST(OpenAIProtocol, UnsupportedFeaturesAreRefusedNotIgnored) {
  auto refused = [](const std::string& body, const std::string& param, Endpoint ep) {
    ApiError e = err(body, ep);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, param) << body;
    EXPECT_NE(e.message.find("not supported"), std::string::npos) << e.message;
  };
  const auto C = Endpoint::ChatCompletions, P = Endpoint::Completions;
  refused(chat(R"(, "presence_penalty": 0.5)"), "presence_penalty", C);
  refused(chat(R"(, "frequency_penalty": -1)"), "frequency_penalty", C);
  refused(chat(R"(, "logit_bias": {"5": 10})"), "logit_bias", C);
  refused(chat(R"(, "tools": [{"type": "function"}])"), "tools", C);
  refused(chat(R"(, "response_format": {"type": "json_object"})"), "response_format", C);
  refused(completion(R"(, "echo": true)"), "echo", P);
  refused(completion(R"(, "suffix": "end")"), "suffix", P);
  refused(completion(R"(, "best_of": 3)"), "best_of", P);
}

TEST(OpenAIProtocol, ErrorObjectHasTheOpenAIShape) {
  ApiError e = invalid_request("bad thing", "stop", "invalid_value");
  ojson j = error_object(e);
  EXPECT_EQ(j["error"]["message"], "bad thing");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "stop");
  EXPECT_EQ(j["error"]["code"], "invalid_value");
  ojson u = error_object(unauthorized());
  EXPECT_TRUE(u["error"]["param"].is_null());
  EXPECT_EQ(u["error"]["type"], "authentication_error");
  EXPECT_EQ(unauthorized().status, 401);
  EXPECT_EQ(server_busy("x").status, 429);
  EXPECT_EQ(unavailable("x").status, 503);
}

Output output(std::string text, std::vector<int32_t> tokens, std::string finish, int64_t prompt) {
  Output o;
  o.text = std::move(text);
  o.tokens = std::move(tokens);
  o.finish_reason = std::move(finish);
  o.prompt_tokens = prompt;
  return o;
}

std::string piece(int32_t id) { return "<" + std::to_string(id) + ">"; }

TEST(OpenAIProtocol, ChatResponse) {
  ResponseMeta meta{Endpoint::ChatCompletions, "chatcmpl-1", 123, "smol", false};
  ojson j = completion_response(meta, {output("Hi!", {7, 8}, "stop", 5), output("Yo", {9, 10, 11}, "length", 5)}, piece);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["id"], "chatcmpl-1");
  EXPECT_EQ(j["model"], "smol");
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "Hi!");
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["choices"][1]["finish_reason"], "length");
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  // The prompt counts once, the completions add up.
  EXPECT_EQ(j["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(j["usage"]["completion_tokens"], 5);
  EXPECT_EQ(j["usage"]["total_tokens"], 10);
}

TEST(OpenAIProtocol, LogprobsInResponses) {
  Output o = output("ab", {1, 2}, "length", 3);
  TokenInfo t1{1, "a", -0.5f, {{1, -0.5f}, {4, -1.5f}}};
  TokenInfo t2{2, "b", -0.25f, {{2, -0.25f}, {5, -2.0f}}};
  o.token_info = {t1, t2};
  ResponseMeta chat_meta{Endpoint::ChatCompletions, "c", 1, "m", true};
  ojson c = completion_response(chat_meta, {o}, piece);
  const ojson& content = c["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["token"], "<1>");
  EXPECT_FLOAT_EQ(content[0]["logprob"].get<float>(), -0.5f);
  EXPECT_EQ(content[0]["bytes"], ojson::array({'<', '1', '>'}));
  ASSERT_EQ(content[1]["top_logprobs"].size(), 2u);
  EXPECT_EQ(content[1]["top_logprobs"][1]["token"], "<5>");

  ResponseMeta cmpl_meta{Endpoint::Completions, "p", 1, "m", true};
  ojson p = completion_response(cmpl_meta, {o}, piece);
  const ojson& lp = p["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], ojson::array({"<1>", "<2>"}));
  EXPECT_EQ(lp["text_offset"], ojson::array({0, 3}));
  EXPECT_FLOAT_EQ(lp["top_logprobs"][1]["<5>"].get<float>(), -2.0f);
  EXPECT_EQ(p["choices"][0]["text"], "ab");
  EXPECT_EQ(p["object"], "text_completion");
}

TEST(OpenAIProtocol, StreamChunks) {
  ResponseMeta chat_meta{Endpoint::ChatCompletions, "c", 1, "m", false};
  ojson role = chunk_role(chat_meta, 0, true);
  EXPECT_EQ(role["object"], "chat.completion.chunk");
  EXPECT_EQ(role["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(role.contains("usage") && role["usage"].is_null());
  ojson tok = chunk_token(chat_meta, 2, TokenInfo{5, "x", 0, {}}, false, 0, piece, false);
  EXPECT_EQ(tok["choices"][0]["index"], 2);
  EXPECT_EQ(tok["choices"][0]["delta"]["content"], "x");
  EXPECT_TRUE(tok["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(tok.contains("usage"));
  ojson fin = chunk_finish(chat_meta, 0, "", "stop", false);
  EXPECT_EQ(fin["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(fin["choices"][0]["delta"].empty());
  ojson usage = chunk_usage(chat_meta, Usage{4, 6});
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 10);

  ResponseMeta cmpl_meta{Endpoint::Completions, "p", 1, "m", true};
  ojson t = chunk_token(cmpl_meta, 0, TokenInfo{5, "x", -1, {}}, true, 7, piece, false);
  EXPECT_EQ(t["object"], "text_completion");
  EXPECT_EQ(t["choices"][0]["text"], "x");
  EXPECT_EQ(t["choices"][0]["logprobs"]["text_offset"][0], 7);
  ojson f = chunk_finish(cmpl_meta, 0, "rest", "length", false);
  EXPECT_EQ(f["choices"][0]["text"], "rest");
}

TEST(OpenAIProtocol, DumpReplacesInvalidUtf8) {
  ojson j{{"text", std::string("caf\xC3")}};
  EXPECT_EQ(dump(j), "{\"text\":\"caf\xEF\xBF\xBD\"}");
}

}  // namespace
}  // namespace batchmax::server

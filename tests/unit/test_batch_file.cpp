// The Batch API line parser and output formatter: every error class, and the exact
// shape of the output lines.
#include <gtest/gtest.h>

#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/batch_file.h"

namespace batchmax::batch {
namespace {

using nlohmann::json;

BatchLine parse(const std::string& s) { return parse_line(s, 7); }

std::string chat_line(const std::string& body_extra = "", const std::string& id = "r1") {
  return R"({"custom_id": ")" + id +
         R"(", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", )"
         R"("messages": [{"role": "user", "content": "hi"}])" +
         body_extra + "}}";
}

void expect_error(const BatchLine& l, const std::string& code, const std::string& in_message) {
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.error->code, code) << l.error->message;
  EXPECT_NE(l.error->message.find(in_message), std::string::npos) << l.error->message;
}

TEST(BatchFile, ParsesChatRequest) {
  auto l = parse(chat_line(R"(, "max_tokens": 12, "temperature": 0.5, "top_p": 0.9,)"
                           R"( "top_k": 40, "seed": 42, "stop": ["\n", "END"])"));
  ASSERT_TRUE(l.ok()) << l.error->message;
  EXPECT_EQ(l.line_no, 7);
  EXPECT_EQ(l.custom_id, "r1");
  EXPECT_EQ(l.endpoint, Endpoint::ChatCompletions);
  EXPECT_EQ(l.model, "m");
  ASSERT_EQ(l.messages.size(), 1u);
  EXPECT_EQ(l.messages[0].role, "user");
  EXPECT_EQ(l.messages[0].content, "hi");
  EXPECT_EQ(l.sampling.max_tokens, 12);
  EXPECT_FLOAT_EQ(l.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(l.sampling.top_p, 0.9f);
  EXPECT_EQ(l.sampling.top_k, 40);
  EXPECT_EQ(l.sampling.seed, 42u);
  EXPECT_EQ(l.sampling.stop, (std::vector<std::string>{"\n", "END"}));
}

TEST(BatchFile, DefaultsAndNullsMeanUnset) {
  ParseOptions opts;
  opts.default_max_tokens = 33;
  auto l = parse_line(chat_line(R"(, "temperature": null, "stop": null, "n": 1)"), 1, opts);
  ASSERT_TRUE(l.ok()) << l.error->message;
  EXPECT_EQ(l.sampling.max_tokens, 33);
  EXPECT_EQ(l.sampling.temperature, 0.0f);
  EXPECT_TRUE(l.sampling.stop.empty());
}

TEST(BatchFile, ChatContentPartsAndRoles) {
  auto l = parse(R"({"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": [)"
                 R"({"role": "developer", "content": "be brief"},)"
                 R"({"role": "user", "content": [{"type": "text", "text": "a"},)"
                 R"({"type": "text", "text": "b"}]}], "max_completion_tokens": 5, "stop": "x"}})");
  ASSERT_TRUE(l.ok()) << l.error->message;
  ASSERT_EQ(l.messages.size(), 2u);
  EXPECT_EQ(l.messages[0].role, "system");
  EXPECT_EQ(l.messages[1].content, "ab");
  EXPECT_EQ(l.sampling.max_tokens, 5);
  EXPECT_EQ(l.sampling.stop, std::vector<std::string>{"x"});
  EXPECT_TRUE(l.model.empty());
}

TEST(BatchFile, ParsesCompletionPrompts) {
  auto text = parse(R"({"custom_id": "c", "method": "POST", "url": "/v1/completions",)"
                    R"( "body": {"prompt": "Once upon"}})");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(text.endpoint, Endpoint::Completions);
  EXPECT_EQ(text.prompt, "Once upon");
  EXPECT_FALSE(text.prompt_is_ids);

  auto one = parse(R"({"custom_id": "c", "url": "/v1/completions", "body": {"prompt": ["x"]}})");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one.prompt, "x");

  auto ids = parse(R"({"custom_id": "c", "url": "/v1/completions", "body": {"prompt": [1, 2, 3]}})");
  ASSERT_TRUE(ids.ok());
  EXPECT_TRUE(ids.prompt_is_ids);
  EXPECT_EQ(ids.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
}

TEST(BatchFile, InvalidJson) {
  expect_error(parse("{not json"), code::kInvalidJson, "not valid JSON");
  expect_error(parse(R"(["custom_id"])"), code::kInvalidJson, "JSON object");
  expect_error(parse("\"\xff\""), code::kInvalidJson, "not valid JSON");
  EXPECT_FALSE(parse("{not json").custom_id.has_value());
}

TEST(BatchFile, MissingParameters) {
  expect_error(parse(R"({"url": "/v1/completions", "body": {"prompt": "x"}})"),
               code::kMissingParameter, "custom_id");
  expect_error(parse(R"({"custom_id": "a", "body": {"prompt": "x"}})"), code::kMissingParameter,
               "'url'");
  expect_error(parse(R"({"custom_id": "a", "url": "/v1/completions"})"), code::kMissingParameter,
               "'body'");
  expect_error(parse(R"({"custom_id": "a", "url": "/v1/completions", "body": {}})"),
               code::kMissingParameter, "body.prompt");
  expect_error(parse(R"({"custom_id": "a", "url": "/v1/chat/completions", "body": {"prompt": "x"}})"),
               code::kMissingParameter, "body.messages");
  expect_error(parse(R"({"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": [)"
                     R"({"content": "x"}]}})"),
               code::kMissingParameter, "role");
}

TEST(BatchFile, WrongTypes) {
  expect_error(parse(R"({"custom_id": 5, "url": "/v1/completions", "body": {"prompt": "x"}})"),
               code::kInvalidType, "'custom_id' must be a string, got integer");
  expect_error(parse(R"({"custom_id": "a", "url": "/v1/completions", "body": "x"})"),
               code::kInvalidType, "'body' must be an object");
  expect_error(parse(chat_line(R"(, "max_tokens": "10")")), code::kInvalidType,
               "body.max_tokens");
  expect_error(parse(chat_line(R"(, "max_tokens": 1.5)")), code::kInvalidType, "integer");
  expect_error(parse(chat_line(R"(, "temperature": "hot")")), code::kInvalidType,
               "body.temperature");
  expect_error(parse(chat_line(R"(, "stop": 3)")), code::kInvalidType, "body.stop");
  expect_error(parse(chat_line(R"(, "stop": ["a", 1])")), code::kInvalidType, "body.stop[1]");
  expect_error(parse(chat_line(R"(, "model": 1)")), code::kInvalidType, "body.model");
  expect_error(parse(R"({"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": "hi"}})"),
               code::kInvalidType, "body.messages");
  expect_error(parse(R"({"custom_id": "a", "url": "/v1/completions", "body": {"prompt": {"a": 1}}})"),
               code::kInvalidType, "body.prompt");
}

TEST(BatchFile, InvalidValues) {
  expect_error(parse(chat_line(R"(, "max_tokens": -1)")), code::kInvalidValue, "body.max_tokens");
  expect_error(parse(chat_line(R"(, "max_tokens": 0)")), code::kInvalidValue, "body.max_tokens");
  expect_error(parse(chat_line(R"(, "max_tokens": 18446744073709551615)")), code::kInvalidValue,
               "body.max_tokens");
  expect_error(parse(chat_line(R"(, "temperature": 2.5)")), code::kInvalidValue, "temperature");
  expect_error(parse(chat_line(R"(, "top_p": 0)")), code::kInvalidValue, "top_p");
  expect_error(parse(chat_line(R"(, "top_k": -3)")), code::kInvalidValue, "top_k");
  expect_error(parse(chat_line(R"(, "stop": [""])")), code::kInvalidValue, "empty");
  expect_error(parse(chat_line(R"(, "n": 2)")), code::kInvalidValue, "body.n");
  expect_error(parse(chat_line(R"(, "stream": true)")), code::kInvalidValue, "stream");
  expect_error(parse(R"({"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": []}})"),
               code::kInvalidValue, "must not be empty");
  expect_error(parse(R"({"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": [)"
                     R"({"role": "tool", "content": "x"}]}})"),
               code::kInvalidValue, "role");
  expect_error(parse(R"({"custom_id": "", "url": "/v1/completions", "body": {"prompt": "x"}})"),
               code::kInvalidValue, "custom_id");
  expect_error(parse(R"({"custom_id": "a", "method": "GET", "url": "/v1/completions", "body": {"prompt": "x"}})"),
               code::kInvalidValue, "POST");
  expect_error(parse(R"({"custom_id": "a", "url": "/v1/completions", "body": {"prompt": ["x", "y"]}})"),
               code::kInvalidValue, "several prompts");
}

TEST(BatchFile, UnknownUrl) {
  auto l = parse(R"({"custom_id": "emb", "url": "/v1/embeddings", "body": {"input": "x"}})");
  expect_error(l, code::kInvalidUrl, "/v1/embeddings");
  EXPECT_EQ(l.custom_id, "emb");  // known ids survive later errors
}

TEST(BatchFile, DuplicateCustomIdFailsTheLaterLine) {
  std::vector<BatchLine> lines = {parse(chat_line("", "a")), parse(chat_line("", "b")),
                                  parse(chat_line("", "a")),
                                  parse(chat_line(R"(, "max_tokens": -1)", "b"))};
  mark_duplicate_ids(lines);
  EXPECT_TRUE(lines[0].ok());
  EXPECT_TRUE(lines[1].ok());
  expect_error(lines[2], code::kDuplicateCustomId, "\"a\"");
  // An already failing line keeps its own error.
  expect_error(lines[3], code::kInvalidValue, "max_tokens");
}

TEST(BatchFile, CrlfLineEndingsParse) {
  auto l = parse(chat_line() + "\r");
  EXPECT_TRUE(l.ok()) << l.error->message;
}

TEST(BatchFile, BlankLines) {
  EXPECT_TRUE(is_blank(""));
  EXPECT_TRUE(is_blank(" \t\r"));
  EXPECT_FALSE(is_blank(" {}"));
}

TEST(BatchFile, ChatSuccessLine) {
  auto l = parse(chat_line());
  Completion c{"Hello!", "stop", 10, 3};
  json j = json::parse(to_jsonl(success_line(l, 4, c, 1700000000, "default")));
  EXPECT_EQ(j["id"], "batch_req_4");
  EXPECT_EQ(j["custom_id"], "r1");
  EXPECT_TRUE(j["error"].is_null());
  EXPECT_EQ(j["response"]["status_code"], 200);
  EXPECT_EQ(j["response"]["request_id"], "req_4");
  const json& body = j["response"]["body"];
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["id"], "chatcmpl-4");
  EXPECT_EQ(body["created"], 1700000000);
  EXPECT_EQ(body["model"], "m");
  EXPECT_EQ(body["choices"][0]["index"], 0);
  EXPECT_EQ(body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(body["choices"][0]["message"]["content"], "Hello!");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["usage"]["prompt_tokens"], 10);
  EXPECT_EQ(body["usage"]["completion_tokens"], 3);
  EXPECT_EQ(body["usage"]["total_tokens"], 13);
}

TEST(BatchFile, CompletionSuccessLineUsesDefaultModel) {
  auto l = parse(R"({"custom_id": "c", "url": "/v1/completions", "body": {"prompt": "x"}})");
  json j = json::parse(to_jsonl(success_line(l, 1, {" there", "length", 1, 2}, 0, "smol")));
  const json& body = j["response"]["body"];
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["model"], "smol");
  EXPECT_EQ(body["choices"][0]["text"], " there");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
}

TEST(BatchFile, ErrorLine) {
  auto bad = parse("{oops");
  std::string s = to_jsonl(error_line(bad, 2, *bad.error));
  ASSERT_EQ(s.back(), '\n');
  EXPECT_EQ(s.find('\n'), s.size() - 1);  // exactly one line
  json j = json::parse(s);
  EXPECT_EQ(j["id"], "batch_req_2");
  EXPECT_TRUE(j["custom_id"].is_null());
  EXPECT_TRUE(j["response"].is_null());
  EXPECT_EQ(j["error"]["code"], "invalid_json");

  auto named = parse(chat_line(R"(, "max_tokens": -5)", "x"));
  json k = json::parse(to_jsonl(error_line(named, 3, *named.error)));
  EXPECT_EQ(k["custom_id"], "x");
  EXPECT_EQ(k["error"]["code"], "invalid_value");
}

TEST(BatchFile, InvalidUtf8InGeneratedTextIsReplaced) {
  auto l = parse(chat_line());
  std::string s = to_jsonl(success_line(l, 1, {"caf\xc3", "length", 1, 1}, 0, "m"));
  json j = json::parse(s);
  EXPECT_EQ(j["response"]["body"]["choices"][0]["message"]["content"], "caf\xEF\xBF\xBD");
}

// Compression extension fields: per-request overrides of the command line's settings,
// and a bad value fails its own line only.
TEST(BatchFile, KvExtensionFieldsOverrideDefaults) {
  auto l = parse(chat_line(R"(, "kv_mode": "batchmax", "kv_policy": "tova", "kv_budget": 256, "kv_chunk": 128)"));
  ASSERT_TRUE(l.ok()) << l.error->message;
  KVSettings defaults;
  defaults.mode = "full";
  defaults.policy = "snapkv";
  defaults.budget = 512;
  defaults.chunk = 512;
  defaults.slack = 7;
  KVSettings k = l.kv_settings(defaults);
  EXPECT_EQ(k.mode, "batchmax");
  EXPECT_EQ(k.policy, "tova");
  EXPECT_EQ(k.budget, 256);
  EXPECT_EQ(k.chunk, 128);
  EXPECT_EQ(k.slack, 7);  // not overridable per line: the default stays
  auto plain = parse(chat_line());
  ASSERT_TRUE(plain.ok());
  KVSettings d = plain.kv_settings(defaults);
  EXPECT_EQ(d.mode, "full");
  EXPECT_EQ(d.budget, 512);
}

TEST(BatchFile, BadKvFieldsAreInvalidValues) {
  struct Case { const char* extra; const char* needle; };
  for (const Case& c : {Case{R"(, "kv_mode": "sometimes")", "kv_mode"},
                        Case{R"(, "kv_policy": "lru")", "kv_policy"},
                        Case{R"(, "kv_budget": 0)", "kv_budget"},
                        Case{R"(, "kv_budget": -3)", "kv_budget"},
                        Case{R"(, "kv_chunk": 1e12)", "kv_chunk"},
                        Case{R"(, "kv_mode": 3)", "kv_mode"}}) {
    auto l = parse(chat_line(c.extra));
    ASSERT_FALSE(l.ok()) << c.extra;
    EXPECT_NE(l.error->message.find(c.needle), std::string::npos) << l.error->message;
    EXPECT_EQ(l.custom_id.value_or(""), "r1");
  }
}

// Hostile sizes: a prompt of many megabytes is refused before it is parsed, with the
// limit named; token counts and ids past int32 are refused where they are read.
TEST(BatchFile, LinesOverTheSizeLimitAreRejected) {
  const std::string prompt(9u << 20, 'a');  // 9 MiB, over the 8 MiB default
  const std::string big = R"({"custom_id": "big", "url": "/v1/completions", "body": {"prompt": ")" +
                          prompt + R"("}})";
  BatchLine l = parse(big);
  expect_error(l, code::kRequestTooLarge, "over the limit of 8388608 bytes");
  EXPECT_NE(l.error->message.find("--max-line-bytes"), std::string::npos);
  // The limit is configurable; a line of exactly the limit parses.
  const std::string small = R"({"custom_id": "s", "url": "/v1/completions", "body": {"prompt": "x"}})";
  ParseOptions opts;
  opts.max_line_bytes = small.size();
  EXPECT_TRUE(parse_line(small, 1, opts).ok());
  opts.max_line_bytes = small.size() - 1;
  expect_error(parse_line(small, 1, opts), code::kRequestTooLarge,
               "line is " + std::to_string(small.size()) + " bytes");
}

TEST(BatchFile, CountsAndIdsPastInt32AreRejected) {
  expect_error(parse(chat_line(R"(, "max_tokens": 2147483648)")), code::kInvalidValue,
               "'body.max_tokens' must be between 1 and 2147483647");
  EXPECT_EQ(parse(chat_line(R"(, "max_tokens": 2147483647)")).sampling.max_tokens, 2147483647);
  expect_error(parse(R"({"custom_id": "a", "url": "/v1/completions", "body": {"prompt": [1, 2147483648]}})"),
               code::kInvalidValue, "'body.prompt[1]' must be between 0 and 2147483647");
  expect_error(parse(R"({"custom_id": "a", "url": "/v1/completions", "body": {"prompt": [-1]}})"),
               code::kInvalidValue, "'body.prompt[0]'");
  expect_error(parse(chat_line(R"(, "kv_budget": 2147483648)")), code::kInvalidValue, "body.kv_budget");
  expect_error(parse(chat_line(R"(, "top_k": 4294967296)")), code::kInvalidValue, "body.top_k");
}

TEST(BatchFile, DeeplyNestedJsonDoesNotExhaustTheStack) {
  // 256k levels inside an ignored field (under the line limit): the JSON parser and the
  // document's destructor must not recurse per level (that would overflow an 8 MB stack).
  const size_t depth = 1u << 18;
  std::string line = R"({"custom_id": "d", "url": "/v1/completions", "body": {"prompt": "x", "extra": )";
  line += std::string(depth, '[') + std::string(depth, ']') + "}}";
  EXPECT_TRUE(parse(line).ok());
  line.resize(line.size() - 2 - depth / 2);  // unbalanced: an invalid_json error, no crash
  expect_error(parse(line), code::kInvalidJson, "not valid JSON");
}

// read_line: like std::getline, but a line over the limit is skipped to its end while
// only limit + 1 of its bytes are kept; the next line is read as usual.
TEST(BatchFile, ReadLineKeepsAtMostTheLimitOfALongLine) {
  const size_t limit = 64;
  const std::string big(5'000'000, 'x');
  std::istringstream in("first\n" + big + "\n\nlast-without-newline");
  std::string text;
  size_t bytes = 0;
  ASSERT_TRUE(read_line(in, text, limit, bytes));
  EXPECT_EQ(text, "first");
  EXPECT_EQ(bytes, 5u);
  ASSERT_TRUE(read_line(in, text, limit, bytes));
  EXPECT_EQ(bytes, big.size());
  EXPECT_EQ(text.size(), limit + 1);
  EXPECT_LE(text.capacity(), size_t(4096));  // never grew toward the line's size
  ParseOptions opts;
  opts.max_line_bytes = limit;
  BatchLine over = oversize_line(2, bytes, opts);
  ASSERT_TRUE(over.error);
  EXPECT_EQ(over.error->code, code::kRequestTooLarge);
  EXPECT_NE(over.error->message.find("5000000 bytes"), std::string::npos);
  ASSERT_TRUE(read_line(in, text, limit, bytes));  // the blank line
  EXPECT_EQ(bytes, 0u);
  EXPECT_TRUE(text.empty());
  ASSERT_TRUE(read_line(in, text, limit, bytes));
  EXPECT_EQ(text, "last-without-newline");
  EXPECT_FALSE(read_line(in, text, limit, bytes));
  EXPECT_FALSE(read_line(in, text, limit, bytes));
}

}  // namespace
}  // namespace batchmax::batch

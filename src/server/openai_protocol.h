#pragma once
// The OpenAI HTTP API as data: a request body parsed and validated into what the engine
// runs (or an ApiError with the HTTP status and the OpenAI error object), and the
// response bodies and stream chunks built from engine outputs. No I/O, no engine, no
// tokenizer: parse_completion_request is a pure function (unit tests and fuzzing call it).
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "batchmax/engine.h"
#include "engine/openai_fields.h"
#include "tokenizer/chat_template.h"

namespace batchmax::server {

using ojson = nlohmann::ordered_json;

enum class Endpoint { Completions, ChatCompletions };

// An error as OpenAI reports it: HTTP status and {"error": {message, type, param, code}}.
struct ApiError {
  int status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // empty: null
  std::string code;   // empty: null
};
ojson error_object(const ApiError& e);  // {"error": {...}}
// Common errors, so every place says them the same way.
ApiError invalid_request(std::string message, std::string param = "", std::string code = "");
ApiError not_found(std::string message);
ApiError unauthorized();
ApiError server_busy(std::string message);         // 429
ApiError unavailable(std::string message);         // 503
ApiError server_error(std::string message);        // 500

// Bounds a request must stay within (400 past them). The defaults are the server's.
struct ProtocolLimits {
  int default_max_tokens = 256;  // when the body gives none
  int max_tokens = 8192;         // upper bound of max_tokens / max_completion_tokens
  int max_n = 16;
  int max_top_logprobs = kMaxTopLogprobs;  // the engine's bound is the largest allowed
  int max_stop = 16;             // openai_fields enforces this one
};

struct CompletionRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::string model;                   // as given ("" when absent)
  std::vector<ChatMessage> messages;   // chat
  openai::PromptInput prompt;          // completions
  SamplingParams sampling;
  bool max_tokens_given = false;       // max_tokens or max_completion_tokens
  bool seed_given = false;             // without one the server picks a random seed
  int n = 1;
  bool stream = false;
  bool include_usage = false;          // stream_options.include_usage
  int logprobs = -1;                   // Request::logprobs: -1 none, k >= 0 top-k alternatives
  openai::KVOverrides kv;
};

using ParseResult = std::variant<CompletionRequest, ApiError>;

// Parses and validates one request body for `endpoint`. Never throws (an allocation
// failure aside); every problem is an ApiError naming the parameter.
ParseResult parse_completion_request(std::string_view body, Endpoint endpoint,
                                     const ProtocolLimits& limits = {});

// What the response builders need besides the engine outputs.
struct ResponseMeta {
  Endpoint endpoint = Endpoint::Completions;
  std::string id;        // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;   // Unix seconds
  std::string model;
  bool logprobs = false;  // the request asked for them
};
// The bytes a token id stands for (logprobs name tokens by their text).
using TokenText = std::function<std::string(int32_t)>;

// OpenAI finish_reason for an engine one: "stop", "length"; anything else is an error.
bool is_success(const Output& out);

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
};
ojson usage_object(const Usage& u);
// n choices of one prompt: the prompt counts once, completions add up.
Usage usage_of(const std::vector<Output>& outputs);

// The whole non-streaming response (text_completion or chat.completion).
ojson completion_response(const ResponseMeta& meta, const std::vector<Output>& outputs,
                          const TokenText& token_text);

// Stream chunks (text_completion or chat.completion.chunk objects). `with_usage` adds
// "usage": null, as OpenAI does on every chunk when stream_options.include_usage is set.
ojson chunk_role(const ResponseMeta& meta, int index, bool with_usage);  // chat's first
ojson chunk_token(const ResponseMeta& meta, int index, const TokenInfo& t, bool logprobs,
                  int64_t text_offset, const TokenText& token_text, bool with_usage);
// The last chunk of a choice: text the tokens did not carry yet, and the finish reason.
ojson chunk_finish(const ResponseMeta& meta, int index, const std::string& rest_text,
                   const std::string& finish_reason, bool with_usage);
ojson chunk_usage(const ResponseMeta& meta, const Usage& u);  // choices: []

// JSON text; invalid UTF-8 (a token cut inside a character) becomes U+FFFD.
std::string dump(const ojson& j);

}  // namespace batchmax::server

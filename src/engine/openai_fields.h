#pragma once
// Readers for the fields of an OpenAI request body (chat/completions and completions),
// shared by the batch-file parser (engine/batch_file) and the HTTP server
// (server/openai_protocol) so that both accept exactly the same values with the same
// messages. Every reader throws FieldError naming the offending parameter; `prefix` is
// prepended to parameter names in messages ("body." in batch files, "" in the server).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "batchmax/engine.h"
#include "tokenizer/chat_template.h"

namespace batchmax::openai {

// Machine-readable error codes (the "code" of batch output lines and server errors).
namespace code {
inline constexpr const char* kInvalidJson = "invalid_json";
inline constexpr const char* kMissingParameter = "missing_required_parameter";
inline constexpr const char* kInvalidType = "invalid_type";
inline constexpr const char* kInvalidValue = "invalid_value";
}  // namespace code

// Thrown by the readers below.
struct FieldError {
  std::string code;
  std::string message;
  std::string param;  // the parameter, prefix included ("body.stop[1]"); empty when none
};

[[noreturn]] void reject(const char* code, std::string param, std::string message);
// "integer", "number", "string", "array", "object", "boolean", "null".
const char* json_type_name(const nlohmann::json& v);
[[noreturn]] void wrong_type(const std::string& param, const char* expected,
                             const nlohmann::json& v);

// Present and not null: OpenAI clients often send explicit nulls for "unset".
const nlohmann::json* field(const nlohmann::json& obj, const char* key);
// An integer in [lo, hi]; the JSON may hold any integer (signed or unsigned 64-bit).
int64_t get_int(const nlohmann::json& v, const std::string& param, int64_t lo, int64_t hi);
double get_number(const nlohmann::json& v, const std::string& param);
bool get_bool(const nlohmann::json& v, const std::string& param);
const std::string& get_string(const nlohmann::json& v, const std::string& param);

// A whole JSON text that must be an object; `what` names it in messages ("line",
// "request body"). Throws FieldError with code kInvalidJson.
nlohmann::json parse_object(std::string_view text, const char* what);

// "messages": a non-empty array of {role, content}; content a string or an array of
// text parts. "developer" is taken as "system".
std::vector<ChatMessage> parse_messages(const nlohmann::json& body, const std::string& prefix);

// "prompt": a string, a one-element array of strings, or an array of token ids.
struct PromptInput {
  std::string text;
  std::vector<int32_t> ids;
  bool is_ids = false;
};
PromptInput parse_prompt(const nlohmann::json& body, const std::string& prefix);

// max_tokens (max_completion_tokens, the newer chat name; max_tokens wins when both are
// given), temperature, top_p, top_k (extension), seed, stop. n, stream and logprobs are
// the caller's: batch files and the server accept different values.
void parse_sampling(const nlohmann::json& body, const std::string& prefix,
                    int default_max_tokens, SamplingParams& s);

// Per-request compression (extension fields kv_mode, kv_policy, kv_budget, kv_chunk).
struct KVOverrides {
  std::optional<std::string> mode, policy;
  std::optional<int64_t> budget, chunk;
  // The defaults (the command line's) with these overrides applied.
  KVSettings apply(const KVSettings& defaults) const;
};
KVOverrides parse_kv(const nlohmann::json& body, const std::string& prefix);

}  // namespace batchmax::openai

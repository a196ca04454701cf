#include "engine/batch_file.h"

#include "engine/openai_fields.h"

#include <algorithm>
#include <climits>
#include <unordered_set>

namespace batchmax::batch {
namespace {

using json = nlohmann::json;
using openai::field;
using openai::get_int;
using openai::get_string;
using openai::wrong_type;

// Thrown inside parse_line only; turned into BatchLine::error there.
struct Reject {
  LineError err;
};

[[noreturn]] void reject(const char* code, std::string message) {
  throw Reject{LineError{code, std::move(message)}};
}

// n and stream: a batch line is one non-streamed choice.
void parse_batch_only_fields(const json& body) {
  if (const json* v = field(body, "n"))
    if (get_int(*v, "body.n", 1, INT_MAX) != 1)
      reject(code::kInvalidValue, "'body.n' must be 1 (one choice per request)");
  if (const json* v = field(body, "stream"))
    if (openai::get_bool(*v, "body.stream"))
      reject(code::kInvalidValue, "'body.stream' is not supported in a batch");
}

}  // namespace

KVSettings BatchLine::kv_settings(const KVSettings& defaults) const {
  openai::KVOverrides o;
  o.mode = kv_mode;
  o.policy = kv_policy;
  o.budget = kv_budget;
  o.chunk = kv_chunk;
  return o.apply(defaults);
}

namespace {

LineError oversize_error(size_t bytes, const ParseOptions& opts) {
  return {code::kRequestTooLarge,
          "line is " + std::to_string(bytes) + " bytes, over the limit of " +
              std::to_string(opts.max_line_bytes) + " bytes per request (max_line_bytes, "
              "batchmax run --max-line-bytes)"};
}

void parse_into(std::string_view text, const ParseOptions& opts, BatchLine& line) {
  if (text.size() > opts.max_line_bytes) throw Reject{oversize_error(text.size(), opts)};
  const json j = openai::parse_object(text, "line");
  // custom_id first, so that every later error can still name the request.
  const json* id = field(j, "custom_id");
  if (!id) reject(code::kMissingParameter, "'custom_id' is required");
  line.custom_id = get_string(*id, "custom_id");
  if (line.custom_id->empty()) {
    line.custom_id.reset();
    reject(code::kInvalidValue, "'custom_id' must not be empty");
  }

  if (const json* m = field(j, "method"))
    if (get_string(*m, "method") != "POST")
      reject(code::kInvalidValue, "'method' must be \"POST\", got " + m->dump());
  const json* url = field(j, "url");
  if (!url) reject(code::kMissingParameter, "'url' is required");
  const std::string& u = get_string(*url, "url");
  if (u == "/v1/chat/completions") {
    line.endpoint = Endpoint::ChatCompletions;
  } else if (u == "/v1/completions") {
    line.endpoint = Endpoint::Completions;
  } else {
    reject(code::kInvalidUrl, "'url' must be /v1/chat/completions or /v1/completions, got \"" +
                                  u + "\"");
  }

  const json* body = field(j, "body");
  if (!body) reject(code::kMissingParameter, "'body' is required");
  if (!body->is_object()) wrong_type("body", "an object", *body);
  if (const json* m = field(*body, "model")) line.model = get_string(*m, "body.model");
  if (line.endpoint == Endpoint::ChatCompletions) {
    line.messages = openai::parse_messages(*body, "body.");
  } else {
    openai::PromptInput p = openai::parse_prompt(*body, "body.");
    line.prompt = std::move(p.text);
    line.prompt_ids = std::move(p.ids);
    line.prompt_is_ids = p.is_ids;
  }
  openai::parse_sampling(*body, "body.", opts.default_max_tokens, line.sampling);
  parse_batch_only_fields(*body);
  openai::KVOverrides kv = openai::parse_kv(*body, "body.");
  line.kv_mode = kv.mode;
  line.kv_policy = kv.policy;
  line.kv_budget = kv.budget;
  line.kv_chunk = kv.chunk;
}

}  // namespace

bool is_blank(std::string_view text) {
  return text.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

BatchLine parse_line(std::string_view text, int64_t line_no, const ParseOptions& opts) {
  BatchLine line;
  line.line_no = line_no;
  try {
    parse_into(text, opts, line);
  } catch (const Reject& r) {
    line.error = r.err;
  } catch (const openai::FieldError& e) {
    line.error = LineError{e.code, e.message};
  } catch (const std::exception& e) {  // json type errors we did not foresee, bad_alloc
    line.error = LineError{code::kInvalidValue, e.what()};
  }
  return line;
}

bool read_line(std::istream& in, std::string& text, size_t max_line_bytes, size_t& bytes) {
  text.clear();
  bytes = 0;
  std::streambuf* sb = in.rdbuf();
  if (!sb || !in.good()) return false;
  const size_t keep = max_line_bytes + 1;  // enough to know it is too long
  for (;;) {
    const int c = sb->sbumpc();
    if (c == std::char_traits<char>::eof()) {
      in.setstate(bytes == 0 ? std::ios::eofbit | std::ios::failbit : std::ios::eofbit);
      return bytes > 0;
    }
    if (c == '\n') return true;
    if (bytes < keep) text.push_back(char(c));
    ++bytes;
  }
}

BatchLine oversize_line(int64_t line_no, size_t bytes, const ParseOptions& opts) {
  BatchLine line;
  line.line_no = line_no;
  line.error = oversize_error(bytes, opts);
  return line;
}

void mark_duplicate_ids(std::vector<BatchLine>& lines) {
  std::unordered_set<std::string> seen;
  for (auto& line : lines) {
    if (!line.custom_id) continue;
    // A line that already failed keeps its own, more specific error.
    if (!seen.insert(*line.custom_id).second && line.ok())
      line.error = LineError{code::kDuplicateCustomId,
                             "custom_id \"" + *line.custom_id +
                                 "\" was already used by an earlier line"};
  }
}

nlohmann::ordered_json success_line(const BatchLine& line, int64_t index, const Completion& c,
                                    int64_t created, const std::string& default_model) {
  using ojson = nlohmann::ordered_json;
  const std::string n = std::to_string(index);
  const bool chat = line.endpoint == Endpoint::ChatCompletions;
  ojson choice;
  choice["index"] = 0;
  if (chat)
    choice["message"] = {{"role", "assistant"}, {"content", c.text}};
  else
    choice["text"] = c.text;
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = c.finish_reason;

  ojson body;
  body["id"] = (chat ? "chatcmpl-" : "cmpl-") + n;
  body["object"] = chat ? "chat.completion" : "text_completion";
  body["created"] = created;
  body["model"] = line.model.empty() ? default_model : line.model;
  body["choices"] = ojson::array({choice});
  body["usage"] = {{"prompt_tokens", c.prompt_tokens},
                   {"completion_tokens", c.completion_tokens},
                   {"total_tokens", c.prompt_tokens + c.completion_tokens}};

  ojson out;
  out["id"] = "batch_req_" + n;
  out["custom_id"] = line.custom_id ? ojson(*line.custom_id) : ojson(nullptr);
  out["response"] = {{"status_code", 200}, {"request_id", "req_" + n}, {"body", std::move(body)}};
  out["error"] = nullptr;
  return out;
}

nlohmann::ordered_json error_line(const BatchLine& line, int64_t index, const LineError& err) {
  using ojson = nlohmann::ordered_json;
  ojson out;
  out["id"] = "batch_req_" + std::to_string(index);
  out["custom_id"] = line.custom_id ? ojson(*line.custom_id) : ojson(nullptr);
  out["response"] = nullptr;
  out["error"] = {{"code", err.code}, {"message", err.message}};
  return out;
}

std::string to_jsonl(const nlohmann::ordered_json& j) {
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

}  // namespace batchmax::batch

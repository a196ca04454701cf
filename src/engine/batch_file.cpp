#include "engine/batch_file.h"

#include "kv/eviction_policy.h"

#include <algorithm>
#include <climits>
#include <unordered_set>

namespace batchmax::batch {
namespace {

using json = nlohmann::json;

// Thrown inside parse_line only; turned into BatchLine::error there.
struct Reject {
  LineError err;
};

[[noreturn]] void reject(const char* code, std::string message) {
  throw Reject{LineError{code, std::move(message)}};
}

const char* json_type_name(const json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number()) return "number";
  return v.type_name();  // "object", "array", "string", "boolean", "null"
}

[[noreturn]] void wrong_type(const std::string& param, const char* expected, const json& v) {
  reject(code::kInvalidType,
         "'" + param + "' must be " + expected + ", got " + json_type_name(v));
}

// An integer in [lo, hi]; the JSON may hold any integer (signed or unsigned 64-bit).
int64_t get_int(const json& v, const std::string& param, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) wrong_type(param, "an integer", v);
  bool too_big = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi);
  int64_t x = too_big ? hi : v.get<int64_t>();
  if (too_big || x < lo || x > hi)
    reject(code::kInvalidValue, "'" + param + "' must be between " + std::to_string(lo) +
                                    " and " + std::to_string(hi) + ", got " + v.dump());
  return x;
}

double get_number(const json& v, const std::string& param) {
  if (!v.is_number()) wrong_type(param, "a number", v);
  return v.get<double>();
}

const std::string& get_string(const json& v, const std::string& param) {
  if (!v.is_string()) wrong_type(param, "a string", v);
  return v.get_ref<const std::string&>();
}

// Present and not null: OpenAI clients often send explicit nulls for "unset".
const json* field(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// content is a string or an array of {"type": "text", "text": ...} parts.
std::string message_content(const json& c, const std::string& param) {
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) wrong_type(param, "a string or an array of text parts", c);
  std::string out;
  for (size_t i = 0; i < c.size(); ++i) {
    const json& part = c[i];
    std::string p = param + "[" + std::to_string(i) + "]";
    if (!part.is_object()) wrong_type(p, "an object", part);
    const json* type = field(part, "type");
    if (!type || get_string(*type, p + ".type") != "text")
      reject(code::kInvalidValue, "'" + p + ".type' must be \"text\" (only text is supported)");
    const json* text = field(part, "text");
    if (!text) reject(code::kMissingParameter, "'" + p + ".text' is required");
    out += get_string(*text, p + ".text");
  }
  return out;
}

std::vector<ChatMessage> parse_messages(const json& body) {
  const json* m = field(body, "messages");
  if (!m) reject(code::kMissingParameter, "'body.messages' is required for /v1/chat/completions");
  if (!m->is_array()) wrong_type("body.messages", "an array", *m);
  if (m->empty()) reject(code::kInvalidValue, "'body.messages' must not be empty");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < m->size(); ++i) {
    const json& msg = (*m)[i];
    std::string p = "body.messages[" + std::to_string(i) + "]";
    if (!msg.is_object()) wrong_type(p, "an object", msg);
    const json* role = field(msg, "role");
    if (!role) reject(code::kMissingParameter, "'" + p + ".role' is required");
    std::string r = get_string(*role, p + ".role");
    if (r == "developer") r = "system";  // newer OpenAI name for the system role
    if (r != "system" && r != "user" && r != "assistant")
      reject(code::kInvalidValue, "'" + p + ".role' must be system, user or assistant, got \"" +
                                      r + "\"");
    const json* content = field(msg, "content");
    if (!content) reject(code::kMissingParameter, "'" + p + ".content' is required");
    out.push_back({r, message_content(*content, p + ".content")});
  }
  return out;
}

// "prompt": a string, a one-element array of strings, or an array of token ids.
void parse_prompt(const json& body, BatchLine& line) {
  const json* p = field(body, "prompt");
  if (!p) reject(code::kMissingParameter, "'body.prompt' is required for /v1/completions");
  if (p->is_string()) {
    line.prompt = p->get<std::string>();
    return;
  }
  if (!p->is_array()) wrong_type("body.prompt", "a string or an array of token ids", *p);
  if (p->size() == 1 && (*p)[0].is_string()) {
    line.prompt = (*p)[0].get<std::string>();
    return;
  }
  if (p->empty()) reject(code::kInvalidValue, "'body.prompt' must not be empty");
  for (size_t i = 0; i < p->size(); ++i) {
    const json& t = (*p)[i];
    std::string param = "body.prompt[" + std::to_string(i) + "]";
    if (t.is_string() || t.is_array())
      reject(code::kInvalidValue, "'body.prompt' holds several prompts; send one per line");
    line.prompt_ids.push_back(static_cast<int32_t>(get_int(t, param, 0, INT32_MAX)));
  }
  line.prompt_is_ids = true;
}

void parse_sampling(const json& body, const ParseOptions& opts, SamplingParams& s) {
  s.max_tokens = opts.default_max_tokens;
  // max_completion_tokens is the newer chat name; max_tokens wins when both are given.
  for (const char* key : {"max_completion_tokens", "max_tokens"})
    if (const json* v = field(body, key))
      s.max_tokens = static_cast<int>(get_int(*v, std::string("body.") + key, 1, INT_MAX));
  if (const json* v = field(body, "temperature")) {
    double t = get_number(*v, "body.temperature");
    if (t < 0 || t > 2)
      reject(code::kInvalidValue, "'body.temperature' must be between 0 and 2, got " + v->dump());
    s.temperature = static_cast<float>(t);
  }
  if (const json* v = field(body, "top_p")) {
    double p = get_number(*v, "body.top_p");
    if (!(p > 0 && p <= 1))
      reject(code::kInvalidValue, "'body.top_p' must be in (0, 1], got " + v->dump());
    s.top_p = static_cast<float>(p);
  }
  if (const json* v = field(body, "top_k"))
    s.top_k = static_cast<int>(get_int(*v, "body.top_k", 0, INT_MAX));
  if (const json* v = field(body, "seed"))
    s.seed = static_cast<uint64_t>(get_int(*v, "body.seed", INT64_MIN, INT64_MAX));
  if (const json* v = field(body, "stop")) {
    std::vector<std::string> stops;
    if (v->is_string()) {
      stops.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (size_t i = 0; i < v->size(); ++i)
        stops.push_back(get_string((*v)[i], "body.stop[" + std::to_string(i) + "]"));
    } else {
      wrong_type("body.stop", "a string or an array of strings", *v);
    }
    if (stops.size() > 16) reject(code::kInvalidValue, "'body.stop' has more than 16 entries");
    for (const auto& st : stops)
      if (st.empty()) reject(code::kInvalidValue, "'body.stop' must not contain empty strings");
    s.stop = std::move(stops);
  }
  if (const json* v = field(body, "n"))
    if (get_int(*v, "body.n", 1, INT_MAX) != 1)
      reject(code::kInvalidValue, "'body.n' must be 1 (one choice per request)");
  if (const json* v = field(body, "stream")) {
    if (!v->is_boolean()) wrong_type("body.stream", "a boolean", *v);
    if (v->get<bool>()) reject(code::kInvalidValue, "'body.stream' is not supported in a batch");
  }
}

// Compression extension fields, checked here so a bad value fails its own line only.
void parse_kv(const json& body, BatchLine& line) {
  if (const json* v = field(body, "kv_mode")) {
    std::string m = get_string(*v, "body.kv_mode");
    if (m != "full" && m != "post-prefill" && m != "batchmax")
      reject(code::kInvalidValue, "'body.kv_mode' must be full, post-prefill or batchmax, got " + v->dump());
    line.kv_mode = m;
  }
  if (const json* v = field(body, "kv_policy")) {
    std::string p = get_string(*v, "body.kv_policy");
    const auto& names = policy_names();
    if (std::find(names.begin(), names.end(), p) == names.end()) {
      std::string known;
      for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
      reject(code::kInvalidValue, "'body.kv_policy' must be one of " + known + ", got " + v->dump());
    }
    line.kv_policy = p;
  }
  if (const json* v = field(body, "kv_budget")) line.kv_budget = get_int(*v, "body.kv_budget", 1, INT32_MAX);
  if (const json* v = field(body, "kv_chunk")) line.kv_chunk = get_int(*v, "body.kv_chunk", 1, INT32_MAX);
}

}  // namespace

KVSettings BatchLine::kv_settings(const KVSettings& defaults) const {
  KVSettings k = defaults;
  if (kv_mode) k.mode = *kv_mode;
  if (kv_policy) k.policy = *kv_policy;
  if (kv_budget) k.budget = *kv_budget;
  if (kv_chunk) k.chunk = *kv_chunk;
  return k;
}

namespace {

void parse_into(std::string_view text, const ParseOptions& opts, BatchLine& line) {
  if (text.size() > opts.max_line_bytes)
    reject(code::kRequestTooLarge,
           "line is " + std::to_string(text.size()) + " bytes, over the limit of " +
               std::to_string(opts.max_line_bytes) + " bytes per request (max_line_bytes, "
               "batchmax run --max-line-bytes)");
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Parse again with exceptions for the position and reason in the message.
    try {
      json again = json::parse(text.begin(), text.end());
      (void)again;
    } catch (const json::exception& e) {
      reject(code::kInvalidJson, std::string("line is not valid JSON: ") + e.what());
    }
    reject(code::kInvalidJson, "line is not valid JSON");
  }
  if (!j.is_object()) reject(code::kInvalidJson, std::string("line must be a JSON object, got ") +
                                                     json_type_name(j));
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
  if (line.endpoint == Endpoint::ChatCompletions)
    line.messages = parse_messages(*body);
  else
    parse_prompt(*body, line);
  parse_sampling(*body, opts, line.sampling);
  parse_kv(*body, line);
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
  } catch (const std::exception& e) {  // json type errors we did not foresee, bad_alloc
    line.error = LineError{code::kInvalidValue, e.what()};
  }
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

#include "engine/openai_fields.h"

#include <algorithm>
#include <climits>

#include "kv/eviction_policy.h"

namespace batchmax::openai {

using json = nlohmann::json;

void reject(const char* code, std::string param, std::string message) {
  throw FieldError{code, std::move(message), std::move(param)};
}

const char* json_type_name(const json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number()) return "number";
  return v.type_name();  // "object", "array", "string", "boolean", "null"
}

void wrong_type(const std::string& param, const char* expected, const json& v) {
  reject(code::kInvalidType, param,
         "'" + param + "' must be " + expected + ", got " + json_type_name(v));
}

const json* field(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

int64_t get_int(const json& v, const std::string& param, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) wrong_type(param, "an integer", v);
  bool too_big = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi);
  int64_t x = too_big ? hi : v.get<int64_t>();
  if (too_big || x < lo || x > hi)
    reject(code::kInvalidValue, param,
           "'" + param + "' must be between " + std::to_string(lo) + " and " +
               std::to_string(hi) + ", got " + v.dump());
  return x;
}

double get_number(const json& v, const std::string& param) {
  if (!v.is_number()) wrong_type(param, "a number", v);
  return v.get<double>();
}

bool get_bool(const json& v, const std::string& param) {
  if (!v.is_boolean()) wrong_type(param, "a boolean", v);
  return v.get<bool>();
}

const std::string& get_string(const json& v, const std::string& param) {
  if (!v.is_string()) wrong_type(param, "a string", v);
  return v.get_ref<const std::string&>();
}

json parse_object(std::string_view text, const char* what) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Parse again with exceptions for the position and reason in the message.
    try {
      json again = json::parse(text.begin(), text.end());
      (void)again;
    } catch (const json::exception& e) {
      reject(code::kInvalidJson, "", std::string(what) + " is not valid JSON: " + e.what());
    }
    reject(code::kInvalidJson, "", std::string(what) + " is not valid JSON");
  }
  if (!j.is_object())
    reject(code::kInvalidJson, "",
           std::string(what) + " must be a JSON object, got " + json_type_name(j));
  return j;
}

namespace {

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
      reject(code::kInvalidValue, p + ".type",
             "'" + p + ".type' must be \"text\" (only text is supported)");
    const json* text = field(part, "text");
    if (!text) reject(code::kMissingParameter, p + ".text", "'" + p + ".text' is required");
    out += get_string(*text, p + ".text");
  }
  return out;
}

}  // namespace

std::vector<ChatMessage> parse_messages(const json& body, const std::string& prefix) {
  const std::string param = prefix + "messages";
  const json* m = field(body, "messages");
  if (!m)
    reject(code::kMissingParameter, param, "'" + param + "' is required for /v1/chat/completions");
  if (!m->is_array()) wrong_type(param, "an array", *m);
  if (m->empty()) reject(code::kInvalidValue, param, "'" + param + "' must not be empty");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < m->size(); ++i) {
    const json& msg = (*m)[i];
    std::string p = param + "[" + std::to_string(i) + "]";
    if (!msg.is_object()) wrong_type(p, "an object", msg);
    const json* role = field(msg, "role");
    if (!role) reject(code::kMissingParameter, p + ".role", "'" + p + ".role' is required");
    std::string r = get_string(*role, p + ".role");
    if (r == "developer") r = "system";  // newer OpenAI name for the system role
    if (r != "system" && r != "user" && r != "assistant")
      reject(code::kInvalidValue, p + ".role",
             "'" + p + ".role' must be system, user or assistant, got \"" + r + "\"");
    const json* content = field(msg, "content");
    if (!content)
      reject(code::kMissingParameter, p + ".content", "'" + p + ".content' is required");
    out.push_back({r, message_content(*content, p + ".content")});
  }
  return out;
}

PromptInput parse_prompt(const json& body, const std::string& prefix) {
  const std::string param = prefix + "prompt";
  PromptInput in;
  const json* p = field(body, "prompt");
  if (!p) reject(code::kMissingParameter, param, "'" + param + "' is required for /v1/completions");
  if (p->is_string()) {
    in.text = p->get<std::string>();
    return in;
  }
  if (!p->is_array()) wrong_type(param, "a string or an array of token ids", *p);
  if (p->size() == 1 && (*p)[0].is_string()) {
    in.text = (*p)[0].get<std::string>();
    return in;
  }
  if (p->empty()) reject(code::kInvalidValue, param, "'" + param + "' must not be empty");
  for (size_t i = 0; i < p->size(); ++i) {
    const json& t = (*p)[i];
    if (t.is_string() || t.is_array())
      reject(code::kInvalidValue, param,
             "'" + param + "' holds several prompts; send one per line (or request)");
    in.ids.push_back(
        static_cast<int32_t>(get_int(t, param + "[" + std::to_string(i) + "]", 0, INT32_MAX)));
  }
  in.is_ids = true;
  return in;
}

void parse_sampling(const json& body, const std::string& prefix, int default_max_tokens,
                    SamplingParams& s) {
  s.max_tokens = default_max_tokens;
  for (const char* key : {"max_completion_tokens", "max_tokens"})
    if (const json* v = field(body, key))
      s.max_tokens = static_cast<int>(get_int(*v, prefix + key, 1, INT_MAX));
  if (const json* v = field(body, "temperature")) {
    const std::string param = prefix + "temperature";
    double t = get_number(*v, param);
    if (t < 0 || t > 2)
      reject(code::kInvalidValue, param, "'" + param + "' must be between 0 and 2, got " + v->dump());
    s.temperature = static_cast<float>(t);
  }
  if (const json* v = field(body, "top_p")) {
    const std::string param = prefix + "top_p";
    double p = get_number(*v, param);
    if (!(p > 0 && p <= 1))
      reject(code::kInvalidValue, param, "'" + param + "' must be in (0, 1], got " + v->dump());
    s.top_p = static_cast<float>(p);
  }
  if (const json* v = field(body, "top_k"))
    s.top_k = static_cast<int>(get_int(*v, prefix + "top_k", 0, INT_MAX));
  if (const json* v = field(body, "seed"))
    s.seed = static_cast<uint64_t>(get_int(*v, prefix + "seed", INT64_MIN, INT64_MAX));
  if (const json* v = field(body, "stop")) {
    const std::string param = prefix + "stop";
    std::vector<std::string> stops;
    if (v->is_string()) {
      stops.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (size_t i = 0; i < v->size(); ++i)
        stops.push_back(get_string((*v)[i], param + "[" + std::to_string(i) + "]"));
    } else {
      wrong_type(param, "a string or an array of strings", *v);
    }
    if (stops.size() > 16) reject(code::kInvalidValue, param, "'" + param + "' has more than 16 entries");
    for (const auto& st : stops)
      if (st.empty()) reject(code::kInvalidValue, param, "'" + param + "' must not contain empty strings");
    s.stop = std::move(stops);
  }
}

KVSettings KVOverrides::apply(const KVSettings& defaults) const {
  KVSettings k = defaults;
  if (mode) k.mode = *mode;
  if (policy) k.policy = *policy;
  if (budget) k.budget = *budget;
  if (chunk) k.chunk = *chunk;
  return k;
}

KVOverrides parse_kv(const json& body, const std::string& prefix) {
  KVOverrides kv;
  if (const json* v = field(body, "kv_mode")) {
    const std::string param = prefix + "kv_mode";
    std::string m = get_string(*v, param);
    if (m != "full" && m != "post-prefill" && m != "batchmax")
      reject(code::kInvalidValue, param,
             "'" + param + "' must be full, post-prefill or batchmax, got " + v->dump());
    kv.mode = m;
  }
  if (const json* v = field(body, "kv_policy")) {
    const std::string param = prefix + "kv_policy";
    std::string p = get_string(*v, param);
    const auto& names = policy_names();
    if (std::find(names.begin(), names.end(), p) == names.end()) {
      std::string known;
      for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
      reject(code::kInvalidValue, param, "'" + param + "' must be one of " + known + ", got " + v->dump());
    }
    kv.policy = p;
  }
  if (const json* v = field(body, "kv_budget")) kv.budget = get_int(*v, prefix + "kv_budget", 1, INT32_MAX);
  if (const json* v = field(body, "kv_chunk")) kv.chunk = get_int(*v, prefix + "kv_chunk", 1, INT32_MAX);
  return kv;
}

}  // namespace batchmax::openai

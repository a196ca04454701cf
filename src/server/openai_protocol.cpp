#include "server/openai_protocol.h"

#include <climits>

namespace batchmax::server {

using json = nlohmann::json;
using openai::field;
using openai::FieldError;

ojson error_object(const ApiError& e) {
  ojson err;
  err["message"] = e.message;
  err["type"] = e.type;
  err["param"] = e.param.empty() ? ojson(nullptr) : ojson(e.param);
  err["code"] = e.code.empty() ? ojson(nullptr) : ojson(e.code);
  return ojson{{"error", std::move(err)}};
}

ApiError invalid_request(std::string message, std::string param, std::string code) {
  return ApiError{400, "invalid_request_error", std::move(message), std::move(param),
                  std::move(code)};
}
ApiError not_found(std::string message) {
  return ApiError{404, "invalid_request_error", std::move(message), "", "not_found"};
}
ApiError unauthorized() {
  return ApiError{401, "authentication_error",
                  "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.", "",
                  "invalid_api_key"};
}
ApiError server_busy(std::string message) {
  return ApiError{429, "rate_limit_error", std::move(message), "", "queue_full"};
}
ApiError unavailable(std::string message) {
  return ApiError{503, "server_error", std::move(message), "", "unavailable"};
}
ApiError server_error(std::string message) {
  return ApiError{500, "server_error", std::move(message), "", "internal_error"};
}

namespace {

[[noreturn]] void unsupported(const std::string& param, const std::string& what) {
  openai::reject(openai::code::kInvalidValue, param,
                 "'" + param + "' " + what + " is not supported by this server");
}

// Parameters a client may send with their neutral value; anything else would change
// the result in a way the engine cannot honour, so it is refused rather than ignored.
void check_unsupported(const json& body, Endpoint ep, int n) {
  for (const char* key : {"presence_penalty", "frequency_penalty"})
    if (const json* v = field(body, key))
      if (openai::get_number(*v, key) != 0) unsupported(key, "other than 0");
  if (const json* v = field(body, "logit_bias"))
    if (!v->is_object() || !v->empty()) unsupported("logit_bias", "(non-empty)");
  for (const char* key : {"tools", "functions"})
    if (const json* v = field(body, key))
      if (!v->is_array() || !v->empty()) unsupported(key, "(tool calling)");
  if (const json* v = field(body, "response_format")) {
    const json* type = v->is_object() ? field(*v, "type") : nullptr;
    if (!type || !type->is_string() || type->get<std::string>() != "text")
      unsupported("response_format", "other than {\"type\": \"text\"}");
  }
  if (ep == Endpoint::Completions) {
    if (const json* v = field(body, "echo"))
      if (openai::get_bool(*v, "echo")) unsupported("echo", "true");
    if (const json* v = field(body, "suffix"))
      if (!openai::get_string(*v, "suffix").empty()) unsupported("suffix", "(insertion)");
    if (const json* v = field(body, "best_of"))
      if (openai::get_int(*v, "best_of", 1, INT_MAX) != n) unsupported("best_of", "other than n");
  }
}

void check_max_tokens(const json& body, const ProtocolLimits& limits) {
  for (const char* key : {"max_completion_tokens", "max_tokens"})
    if (const json* v = field(body, key))
      openai::get_int(*v, key, 1, limits.max_tokens);
}

void parse_logprobs(const json& body, Endpoint ep, const ProtocolLimits& limits,
                    CompletionRequest& r) {
  if (ep == Endpoint::Completions) {
    // Legacy completions: logprobs is the number of alternatives (0: the chosen token's).
    if (const json* v = field(body, "logprobs"))
      r.logprobs = static_cast<int>(openai::get_int(*v, "logprobs", 0, limits.max_top_logprobs));
    return;
  }
  bool want = false;
  if (const json* v = field(body, "logprobs")) want = openai::get_bool(*v, "logprobs");
  int top = 0;
  if (const json* v = field(body, "top_logprobs")) {
    top = static_cast<int>(openai::get_int(*v, "top_logprobs", 0, limits.max_top_logprobs));
    if (!want)
      openai::reject(openai::code::kInvalidValue, "top_logprobs",
                     "'top_logprobs' needs 'logprobs': true");
  }
  r.logprobs = want ? top : -1;
}

void parse_into(std::string_view text, Endpoint ep, const ProtocolLimits& limits,
                CompletionRequest& r) {
  const json body = openai::parse_object(text, "the request body");
  r.endpoint = ep;
  if (const json* m = field(body, "model")) r.model = openai::get_string(*m, "model");
  if (ep == Endpoint::ChatCompletions)
    r.messages = openai::parse_messages(body, "");
  else
    r.prompt = openai::parse_prompt(body, "");
  check_max_tokens(body, limits);
  openai::parse_sampling(body, "", limits.default_max_tokens, r.sampling);
  r.seed_given = field(body, "seed") != nullptr;
  r.max_tokens_given = field(body, "max_tokens") || field(body, "max_completion_tokens");
  if (const json* v = field(body, "n"))
    r.n = static_cast<int>(openai::get_int(*v, "n", 1, limits.max_n));
  if (const json* v = field(body, "stream")) r.stream = openai::get_bool(*v, "stream");
  if (const json* v = field(body, "stream_options")) {
    if (!v->is_object()) openai::wrong_type("stream_options", "an object", *v);
    if (!r.stream)
      openai::reject(openai::code::kInvalidValue, "stream_options",
                     "'stream_options' is only allowed with 'stream': true");
    if (const json* u = field(*v, "include_usage"))
      r.include_usage = openai::get_bool(*u, "stream_options.include_usage");
  }
  parse_logprobs(body, ep, limits, r);
  check_unsupported(body, ep, r.n);
  r.kv = openai::parse_kv(body, "");
}

}  // namespace

ParseResult parse_completion_request(std::string_view body, Endpoint endpoint,
                                     const ProtocolLimits& limits) {
  CompletionRequest r;
  try {
    parse_into(body, endpoint, limits, r);
  } catch (const FieldError& e) {
    return invalid_request(e.message, e.param, e.code);
  } catch (const json::exception& e) {  // a type error the readers did not foresee
    return invalid_request(std::string("invalid request body: ") + e.what());
  }
  return r;
}

bool is_success(const Output& out) {
  return out.finish_reason == "stop" || out.finish_reason == "length";
}

ojson usage_object(const Usage& u) {
  return ojson{{"prompt_tokens", u.prompt_tokens},
               {"completion_tokens", u.completion_tokens},
               {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

Usage usage_of(const std::vector<Output>& outputs) {
  Usage u;
  for (const Output& o : outputs) {
    u.prompt_tokens = o.prompt_tokens;
    u.completion_tokens += static_cast<int64_t>(o.tokens.size());
  }
  return u;
}

namespace {

ojson byte_list(const std::string& s) {
  ojson b = ojson::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

// Chat: {"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}.
ojson chat_logprob_entry(const TokenInfo& t, const TokenText& token_text) {
  const std::string piece = token_text(t.token);
  ojson e{{"token", piece}, {"logprob", t.logprob}, {"bytes", byte_list(piece)}};
  ojson top = ojson::array();
  for (const TokenLogprob& alt : t.top) {
    const std::string p = token_text(alt.token);
    top.push_back(ojson{{"token", p}, {"logprob", alt.logprob}, {"bytes", byte_list(p)}});
  }
  e["top_logprobs"] = std::move(top);
  return e;
}

// Completions: parallel arrays tokens, token_logprobs, top_logprobs, text_offset.
ojson completion_logprobs(const std::vector<TokenInfo>& tokens, int64_t first_offset,
                          const TokenText& token_text) {
  ojson toks = ojson::array(), lps = ojson::array(), tops = ojson::array(),
        offs = ojson::array();
  int64_t offset = first_offset;
  for (const TokenInfo& t : tokens) {
    const std::string piece = token_text(t.token);
    toks.push_back(piece);
    lps.push_back(t.logprob);
    ojson top = ojson::object();
    for (const TokenLogprob& alt : t.top) top[token_text(alt.token)] = alt.logprob;
    tops.push_back(std::move(top));
    offs.push_back(offset);
    offset += static_cast<int64_t>(piece.size());
  }
  return ojson{{"tokens", std::move(toks)},
               {"token_logprobs", std::move(lps)},
               {"top_logprobs", std::move(tops)},
               {"text_offset", std::move(offs)}};
}

ojson envelope(const ResponseMeta& meta, bool chunk) {
  const bool chat = meta.endpoint == Endpoint::ChatCompletions;
  ojson j;
  j["id"] = meta.id;
  j["object"] = chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
  j["created"] = meta.created;
  j["model"] = meta.model;
  return j;
}

}  // namespace

ojson completion_response(const ResponseMeta& meta, const std::vector<Output>& outputs,
                          const TokenText& token_text) {
  const bool chat = meta.endpoint == Endpoint::ChatCompletions;
  ojson j = envelope(meta, false);
  ojson choices = ojson::array();
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Output& o = outputs[i];
    ojson c;
    c["index"] = static_cast<int>(i);
    if (chat)
      c["message"] = ojson{{"role", "assistant"}, {"content", o.text}};
    else
      c["text"] = o.text;
    if (!meta.logprobs) {
      c["logprobs"] = nullptr;
    } else if (chat) {
      ojson content = ojson::array();
      for (const TokenInfo& t : o.token_info) content.push_back(chat_logprob_entry(t, token_text));
      c["logprobs"] = ojson{{"content", std::move(content)}, {"refusal", nullptr}};
    } else {
      c["logprobs"] = completion_logprobs(o.token_info, 0, token_text);
    }
    c["finish_reason"] = o.finish_reason;
    choices.push_back(std::move(c));
  }
  j["choices"] = std::move(choices);
  j["usage"] = usage_object(usage_of(outputs));
  return j;
}

ojson chunk_role(const ResponseMeta& meta, int index, bool with_usage) {
  ojson j = envelope(meta, true);
  j["choices"] = ojson::array({ojson{{"index", index},
                                     {"delta", ojson{{"role", "assistant"}, {"content", ""}}},
                                     {"logprobs", nullptr},
                                     {"finish_reason", nullptr}}});
  if (with_usage) j["usage"] = nullptr;
  return j;
}

ojson chunk_token(const ResponseMeta& meta, int index, const TokenInfo& t, bool logprobs,
                  int64_t text_offset, const TokenText& token_text, bool with_usage) {
  const bool chat = meta.endpoint == Endpoint::ChatCompletions;
  ojson j = envelope(meta, true);
  ojson c;
  if (chat) {
    c["index"] = index;
    c["delta"] = ojson{{"content", t.text}};
    c["logprobs"] = logprobs ? ojson{{"content", ojson::array({chat_logprob_entry(t, token_text)})},
                                     {"refusal", nullptr}}
                             : ojson(nullptr);
  } else {
    c["text"] = t.text;
    c["index"] = index;
    c["logprobs"] = logprobs ? completion_logprobs({t}, text_offset, token_text) : ojson(nullptr);
  }
  c["finish_reason"] = nullptr;
  j["choices"] = ojson::array({std::move(c)});
  if (with_usage) j["usage"] = nullptr;
  return j;
}

ojson chunk_finish(const ResponseMeta& meta, int index, const std::string& rest_text,
                   const std::string& finish_reason, bool with_usage) {
  const bool chat = meta.endpoint == Endpoint::ChatCompletions;
  ojson j = envelope(meta, true);
  ojson c;
  if (chat) {
    c["index"] = index;
    c["delta"] = rest_text.empty() ? ojson::object() : ojson{{"content", rest_text}};
  } else {
    c["text"] = rest_text;
    c["index"] = index;
  }
  c["logprobs"] = nullptr;
  c["finish_reason"] = finish_reason;
  j["choices"] = ojson::array({std::move(c)});
  if (with_usage) j["usage"] = nullptr;
  return j;
}

ojson chunk_usage(const ResponseMeta& meta, const Usage& u) {
  ojson j = envelope(meta, true);
  j["choices"] = ojson::array();
  j["usage"] = usage_object(u);
  return j;
}

std::string dump(const ojson& j) {
  return j.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

}  // namespace batchmax::server

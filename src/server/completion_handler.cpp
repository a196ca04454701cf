#include "server/completion_handler.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>
#include <random>
#include <variant>

#include "server/request_stream.h"
#include "server/sse.h"
#include "tokenizer/prompt_tokens.h"

namespace batchmax::server {

namespace {

using Clock = std::chrono::steady_clock;

// Not the bare "application/json": httplib 0.11 gzips exactly that type when the client
// accepts gzip, and the compressor would hold the heartbeat spaces back (no write, so no
// disconnect noticed).
constexpr const char* kJsonType = "application/json; charset=utf-8";
constexpr const char* kEventStreamType = "text/event-stream";

struct Prepared {
  std::vector<Request> requests;
  ResponseMeta meta;
  bool stream = false;
  bool include_usage = false;
};

struct Rejection {
  ApiError error;
  const char* outcome;
};

std::string new_request_id(ServerState& st, Endpoint ep) {
  static const uint32_t process_tag = std::random_device{}();
  char buf[48];
  std::snprintf(buf, sizeof buf, "%s%08x%08llx", ep == Endpoint::ChatCompletions ? "chatcmpl-" : "cmpl-",
                process_tag, static_cast<unsigned long long>(st.next_id.fetch_add(1)));
  return buf;
}

// Prompt ids of a parsed request, or the reason there are none.
std::variant<std::vector<int32_t>, ApiError> prompt_ids(const CompletionRequest& r, Engine& engine,
                                                        bool has_tokenizer) {
  if (!has_tokenizer) {
    if (r.endpoint == Endpoint::ChatCompletions || !r.prompt.is_ids)
      return invalid_request(
          "this model has no tokenizer (dummy weights): send the prompt as token ids to "
          "/v1/completions",
          r.endpoint == Endpoint::ChatCompletions ? "messages" : "prompt");
    return r.prompt.ids;
  }
  const Tokenizer& tok = engine.tokenizer();
  if (r.endpoint == Endpoint::ChatCompletions) {
    const ChatTemplate* tmpl = engine.chat_template();
    if (!tmpl)
      return invalid_request("this model has no chat template; use /v1/completions", "messages");
    return tokenize_chat(tok, *tmpl, r.messages);
  }
  if (!r.prompt.is_ids) return tokenize_text(tok, r.prompt.text);
  for (size_t i = 0; i < r.prompt.ids.size(); ++i)
    if (r.prompt.ids[i] >= tok.n_vocab())
      return invalid_request("'prompt[" + std::to_string(i) + "]' is " +
                                 std::to_string(r.prompt.ids[i]) + ", past the vocabulary (" +
                                 std::to_string(tok.n_vocab()) + " tokens)",
                             "prompt[" + std::to_string(i) + "]");
  return r.prompt.ids;
}

std::variant<Prepared, Rejection> prepare(const std::string& body, Endpoint ep, ServerState& st) {
  Engine* engine = st.engine.load();
  EngineLoop* loop = st.loop.load();
  if (!engine || !loop)
    return Rejection{unavailable("the model is still loading; retry when GET /health answers 200"),
                     outcome::kUnavailable};
  if (st.draining.load())
    return Rejection{unavailable("the server is shutting down"), outcome::kUnavailable};

  ParseResult parsed = parse_completion_request(body, ep, st.opts.limits);
  if (auto* e = std::get_if<ApiError>(&parsed)) return Rejection{*e, outcome::kInvalid};
  CompletionRequest& r = std::get<CompletionRequest>(parsed);
  if (!r.model.empty() && r.model != st.opts.model_name) {
    ApiError e = not_found("The model '" + r.model + "' does not exist; this server serves '" +
                           st.opts.model_name + "' (GET /v1/models)");
    e.param = "model";
    e.code = "model_not_found";
    return Rejection{e, outcome::kInvalid};
  }

  auto ids_or_error = prompt_ids(r, *engine, st.has_tokenizer);
  if (auto* e = std::get_if<ApiError>(&ids_or_error)) return Rejection{*e, outcome::kInvalid};
  std::vector<int32_t> ids = std::move(std::get<std::vector<int32_t>>(ids_or_error));
  if (ids.empty())
    return Rejection{invalid_request("the prompt is empty (no tokens)", "prompt"), outcome::kInvalid};

  const auto n_prompt = static_cast<int64_t>(ids.size());
  const int64_t ctx = engine->context_length();
  // Without max_tokens the answer may run to the end of the context (the default caps it).
  if (!r.max_tokens_given && ctx > n_prompt)
    r.sampling.max_tokens = static_cast<int>(std::min<int64_t>(r.sampling.max_tokens, ctx - n_prompt));
  const int64_t max_tokens = r.sampling.max_tokens;
  if (ctx > 0 && n_prompt + max_tokens > ctx) {
    std::string msg = "This model's maximum context length is " + std::to_string(ctx) +
                      " tokens. However, you requested " + std::to_string(n_prompt + max_tokens) +
                      " tokens (" + std::to_string(n_prompt) + " in the prompt, " +
                      std::to_string(max_tokens) + " for the completion). ";
    msg += n_prompt < ctx ? "Lower max_tokens to at most " + std::to_string(ctx - n_prompt) + "."
                          : "Shorten the prompt.";
    return Rejection{invalid_request(msg, ep == Endpoint::ChatCompletions ? "messages" : "prompt",
                                     "context_length_exceeded"),
                     outcome::kInvalid};
  }

  const KVSettings kv = r.kv.apply(st.opts.kv_defaults);
  try {
    // Its life's reservation plus the headroom its own prefill steps borrow.
    const int64_t need = engine->blocks_per_request(kv, n_prompt, max_tokens) +
                         engine->prefill_headroom_blocks(kv, n_prompt, max_tokens);
    const int64_t pool = engine->memory_plan().kv_blocks;
    if (need > pool)
      return Rejection{invalid_request("the request needs " + std::to_string(need) +
                                           " KV blocks (" + std::to_string(n_prompt) +
                                           " prompt tokens, max_tokens " +
                                           std::to_string(max_tokens) + ", kv_mode " + kv.mode +
                                           "); the pool holds " + std::to_string(pool) +
                                           ". Lower max_tokens, or use kv_mode batchmax with a "
                                           "smaller kv_budget.",
                                       "max_tokens", "kv_pool_exceeded"),
                       outcome::kInvalid};
  } catch (const std::exception& e) {
    return Rejection{invalid_request(std::string("invalid KV settings: ") + e.what(), "kv_mode"),
                     outcome::kInvalid};
  }

  Prepared p;
  p.meta.endpoint = ep;
  p.meta.id = new_request_id(st, ep);
  p.meta.created = static_cast<int64_t>(std::time(nullptr));
  p.meta.model = st.opts.model_name;
  p.meta.logprobs = r.logprobs >= 0;
  p.stream = r.stream;
  p.include_usage = r.include_usage;
  const uint64_t seed = r.seed_given ? r.sampling.seed : std::random_device{}();
  for (int i = 0; i < r.n; ++i) {
    Request q;
    q.id = p.meta.id + "-" + std::to_string(i);
    q.prompt = ids;
    q.sampling = r.sampling;
    q.sampling.seed = seed + static_cast<uint64_t>(i);
    q.kv = kv;
    q.logprobs = r.logprobs;
    p.requests.push_back(std::move(q));
  }
  return p;
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

// One answer in progress: called by httplib's chunked content provider on the
// connection's thread until the answer is complete or the client is gone.
class Responder {
 public:
  Responder(ServerState& st, EngineLoop& loop, Prepared p, std::shared_ptr<RequestStream> stream,
            std::vector<EngineLoop::Handle> handles, TokenText token_text)
      : st_(st),
        loop_(loop),
        meta_(std::move(p.meta)),
        streaming_(p.stream),
        include_usage_(p.include_usage),
        stream_(std::move(stream)),
        handles_(std::move(handles)),
        done_(handles_.size(), false),
        outputs_(handles_.size()),
        streamed_bytes_(handles_.size(), 0),
        token_text_(std::move(token_text)),
        deadline_(Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(st.opts.request_timeout_s))) {}

  // One provider call: false ends the connection (the client is gone).
  bool step(httplib::DataSink& sink) {
    if (finished_) return false;
    if (!started_) {
      started_ = true;
      if (streaming_ && meta_.endpoint == Endpoint::ChatCompletions)
        for (size_t i = 0; i < handles_.size(); ++i)
          if (!write(sink, sse::event(dump(chunk_role(meta_, static_cast<int>(i), include_usage_)))))
            return disconnected();
    }
    const auto heartbeat = std::chrono::milliseconds(
        std::max<int64_t>(1, static_cast<int64_t>(st_.opts.heartbeat_s * 1000)));
    std::vector<StreamEvent> events = stream_->wait(heartbeat);
    for (StreamEvent& e : events) {
      const int c = e.choice;
      if (e.token) {
        if (streaming_) {
          const bool lp = meta_.logprobs;
          if (!write(sink, sse::event(dump(chunk_token(meta_, c, *e.token, lp, streamed_bytes_[c],
                                                       token_text_, include_usage_)))))
            return disconnected();
        }
        streamed_bytes_[c] += static_cast<int64_t>(e.token->text.size());
        continue;
      }
      done_[c] = true;
      outputs_[c] = std::move(*e.finished);
      const Output& out = outputs_[c];
      if (!is_success(out)) {
        const bool cancelled = out.finish_reason == "cancelled";
        return fail(sink, cancelled ? unavailable("the request was cancelled (server shutting down)")
                                    : server_error(out.error.empty() ? "generation failed" : out.error),
                    cancelled ? outcome::kUnavailable : outcome::kError);
      }
      if (streaming_) {
        const auto sent = static_cast<size_t>(streamed_bytes_[c]);
        const std::string rest = out.text.size() > sent ? out.text.substr(sent) : std::string();
        if (!write(sink, sse::event(dump(chunk_finish(meta_, c, rest, out.finish_reason, include_usage_)))))
          return disconnected();
      }
    }
    if (std::all_of(done_.begin(), done_.end(), [](bool d) { return d; })) return complete(sink);
    if (st_.aborting.load())
      return fail(sink, unavailable("the server is shutting down; the request did not finish in time"),
                  outcome::kUnavailable);
    if (Clock::now() > deadline_)
      return fail(sink, ApiError{504, "timeout", "the request did not finish within " +
                                                     seconds_text(st_.opts.request_timeout_s) +
                                                     " seconds (--request-timeout)", "", "timeout"},
                  outcome::kTimeout);
    // A heartbeat when nothing was written for a while: non-streamed answers write
    // nothing while tokens come, and a stream may wait long for its first token.
    if (Clock::now() - last_write_ >= heartbeat &&
        !write(sink, streaming_ ? sse::keepalive() : std::string(" ")))
      return disconnected();
    return true;
  }

  // httplib is done with the response (success: it was written completely).
  void release(bool success) {
    if (released_) return;
    released_ = true;
    if (!finished_) {  // never got to the end: the connection broke
      cancel_unfinished();
      finish(outcome::kDisconnected);
    }
    st_.active.fetch_sub(1);
  }

 private:
  bool write(httplib::DataSink& sink, const std::string& s) {
    last_write_ = Clock::now();
    return sink.write(s.data(), s.size());
  }

  bool complete(httplib::DataSink& sink) {
    std::string tail;
    if (streaming_) {
      if (include_usage_) tail += sse::event(dump(chunk_usage(meta_, usage_of(outputs_))));
      tail += sse::done();
    } else {
      tail = dump(completion_response(meta_, outputs_, token_text_)) + "\n";
    }
    if (!write(sink, tail)) return disconnected();
    sink.done();
    finish(outcome::kOk);
    return true;
  }

  // Ends the answer with an error. The status line is already sent (200), so the error
  // goes in the body: an error event in a stream, the error object otherwise.
  bool fail(httplib::DataSink& sink, const ApiError& e, const char* outcome_name) {
    cancel_unfinished();
    const std::string body = dump(error_object(e));
    const std::string tail = streaming_ ? sse::event(body) + sse::done() : body + "\n";
    finish(outcome_name);
    if (!write(sink, tail)) return false;
    sink.done();
    return true;
  }

  bool disconnected() {
    cancel_unfinished();
    finish(outcome::kDisconnected);
    return false;
  }

  void cancel_unfinished() {
    for (size_t i = 0; i < handles_.size(); ++i)
      if (!done_[i]) loop_.cancel(handles_[i]);
  }

  void finish(const char* outcome_name) {
    if (finished_) return;
    finished_ = true;
    st_.metrics.count_request(outcome_name);
  }

  ServerState& st_;
  EngineLoop& loop_;
  ResponseMeta meta_;
  bool streaming_, include_usage_;
  std::shared_ptr<RequestStream> stream_;
  std::vector<EngineLoop::Handle> handles_;
  std::vector<bool> done_;
  std::vector<Output> outputs_;
  std::vector<int64_t> streamed_bytes_;  // per choice: text bytes the token events carried
  TokenText token_text_;
  Clock::time_point deadline_;
  Clock::time_point last_write_ = Clock::now();  // the status line went out about now
  bool started_ = false, finished_ = false, released_ = false;
};

}  // namespace

void respond_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(dump(error_object(e)) + "\n", kJsonType);
}

ApiError body_too_large() {
  ApiError e = invalid_request("the request body is larger than the server accepts (--max-body-bytes)");
  e.status = 413;
  e.code = "request_too_large";
  return e;
}

void handle_completion(const httplib::Request&, httplib::Response& res,
                       const httplib::ContentReader& reader, Endpoint ep, ServerState& st) {
  try {
    std::string body;
    bool too_large = false;
    const bool read = reader([&](const char* data, size_t n) {
      if (body.size() + n > st.opts.max_body_bytes) {
        too_large = true;
        return false;
      }
      body.append(data, n);
      return true;
    });
    if (!read || too_large) {
      // The rest of the body is still on the connection: close it after answering.
      st.metrics.count_request(outcome::kInvalid);
      res.set_header("Connection", "close");
      if (too_large || res.status == 413) return respond_error(res, body_too_large());
      return respond_error(res, invalid_request("the request body could not be read"));
    }
    auto prepared = prepare(body, ep, st);
    if (auto* rej = std::get_if<Rejection>(&prepared)) {
      st.metrics.count_request(rej->outcome);
      respond_error(res, rej->error);
      return;
    }
    Prepared p = std::move(std::get<Prepared>(prepared));
    Engine& engine = *st.engine.load();
    EngineLoop& loop = *st.loop.load();
    ServerMetrics& metrics = st.metrics;
    auto stream = RequestStream::create(
        static_cast<int>(p.requests.size()),
        [&metrics](const Output& out, double first_s, double total_s) {
          metrics.observe_finished(out, first_s, total_s);
        });
    std::vector<EngineLoop::Handle> handles;
    for (size_t i = 0; i < p.requests.size(); ++i) {
      stream->mark_submitted(static_cast<int>(i));
      auto h = loop.submit(std::move(p.requests[i]), RequestStream::callbacks(stream, static_cast<int>(i)));
      if (!h) {
        for (auto done : handles) loop.cancel(done);
        const bool draining = st.draining.load() || loop.stats().draining;
        st.metrics.count_request(draining ? outcome::kUnavailable : outcome::kQueueFull);
        respond_error(res, draining ? unavailable("the server is shutting down")
                                    : server_busy("too many requests are waiting (--max-waiting); retry later"));
        return;
      }
      handles.push_back(*h);
    }
    TokenText token_text = [&engine, tok = st.has_tokenizer](int32_t id) {
      // Without a tokenizer (dummy weights) a token is named by its id, as vLLM does.
      return tok ? engine.tokenizer().token_to_piece(id) : "token_id:" + std::to_string(id);
    };
    const bool streaming = p.stream;
    st.active.fetch_add(1);
    auto responder = std::make_shared<Responder>(st, loop, std::move(p), std::move(stream),
                                                 std::move(handles), std::move(token_text));
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        streaming ? kEventStreamType : kJsonType,
        [responder](size_t, httplib::DataSink& sink) { return responder->step(sink); },
        [responder](bool success) { responder->release(success); });
  } catch (const std::exception& e) {
    st.metrics.count_request(outcome::kError);
    respond_error(res, server_error(std::string("internal error: ") + e.what()));
  }
}

}  // namespace batchmax::server

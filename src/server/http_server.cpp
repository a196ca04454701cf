#include "server/http_server.h"

#include <sys/socket.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <cstdlib>
#include <ctime>

#include "core/error.h"
#include "server/completion_handler.h"

namespace batchmax::server {

namespace {

void respond_json(httplib::Response& res, int status, const ojson& body) {
  res.status = status;
  res.set_content(dump(body) + "\n", "application/json; charset=utf-8");
}

// The error httplib itself decided on (no route, body too large, bad request line).
ApiError library_error(const httplib::Request& req, int status) {
  switch (status) {
    case 404:
      return not_found("Unknown path: " + req.method + " " + req.path);
    case 413:
      return body_too_large();
    case 414:
      return ApiError{414, "invalid_request_error", "the request URI is too long", "", ""};
    default:
      if (status >= 500) return ApiError{status, "server_error", "internal server error", "", ""};
      return ApiError{status, "invalid_request_error", "bad request", "", ""};
  }
}

}  // namespace

HttpServer::HttpServer(ServerOptions opts) : state_(std::make_unique<ServerState>(std::move(opts))) {
  // A client that went away must show up as a failed write, not kill the process.
  std::signal(SIGPIPE, SIG_IGN);
  const size_t threads = static_cast<size_t>(std::max(8, state_->opts.http_threads));
  svr_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  svr_.set_payload_max_length(state_->opts.max_body_bytes);
  svr_.set_tcp_nodelay(true);
  install_routes();
}

HttpServer::~HttpServer() { stop(); }

void HttpServer::install_routes() {
  ServerState& st = *state_;

  // Authentication before routing and before the body is read: every path but the open
  // ones needs the key, so no spelling of a path can reach a handler without it.
  svr_.set_pre_routing_handler([&st](const httplib::Request& req, httplib::Response& res) {
    const bool completion_route =
        req.method == "POST" && (req.path == "/v1/completions" || req.path == "/v1/chat/completions");
    if (!st.opts.api_keys.enabled() || ApiKeys::is_open_path(req.path) ||
        st.opts.api_keys.authorized(req.get_header_value("Authorization"))) {
      // httplib would read the body of any other request whole, without a bound when it
      // is chunked; only the completion routes take a body (and bound it themselves).
      const bool has_body = req.has_header("Transfer-Encoding") ||
                            std::strtoull(req.get_header_value("Content-Length").c_str(), nullptr, 10) > 0;
      if (!has_body || completion_route) return httplib::Server::HandlerResponse::Unhandled;
      respond_error(res, not_found("Unknown path: " + req.method + " " + req.path +
                                   " (no body is accepted here)"));
      res.set_header("Connection", "close");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (completion_route) st.metrics.count_request(outcome::kUnauthorized);
    respond_error(res, unauthorized());
    res.set_header("WWW-Authenticate", "Bearer");
    // The body (if any) was not read; it must not be taken for the next request.
    res.set_header("Connection", "close");
    return httplib::Server::HandlerResponse::Handled;
  });

  svr_.set_error_handler(httplib::Server::HandlerWithResponse(
      [](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // ours already
    if (res.status == 413) res.set_header("Connection", "close");
    respond_error(res, library_error(req, res.status));
    return httplib::Server::HandlerResponse::Handled;
  }));

  svr_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    respond_error(res, server_error("internal error: " + what));
  });

  svr_.Get("/health", [&st](const httplib::Request&, httplib::Response& res) {
    if (!st.engine.load()) return respond_json(res, 503, ojson{{"status", "loading"}});
    if (st.draining.load()) return respond_json(res, 503, ojson{{"status", "draining"}});
    respond_json(res, 200, ojson{{"status", "ok"}});
  });

  svr_.Get("/v1/models", [&st](const httplib::Request&, httplib::Response& res) {
    Engine* engine = st.engine.load();
    ojson model{{"id", st.opts.model_name},
                {"object", "model"},
                {"created", static_cast<int64_t>(std::time(nullptr))},
                {"owned_by", "batchmax"}};
    if (engine) model["max_model_len"] = engine->context_length();
    respond_json(res, 200, ojson{{"object", "list"}, {"data", ojson::array({model})}});
  });

  svr_.Get("/metrics", [&st](const httplib::Request&, httplib::Response& res) {
    EngineLoop* loop = st.loop.load();
    EngineLoopStats stats;
    if (loop) stats = loop->stats();
    res.set_content(st.metrics.render(loop ? &stats : nullptr, st.engine.load() != nullptr,
                                      st.draining.load()),
                    "text/plain; version=0.0.4; charset=utf-8");
  });

  // Content-reader handlers: the body is read (and bounded) by handle_completion.
  svr_.Post("/v1/completions", [&st](const httplib::Request& req, httplib::Response& res,
                                     const httplib::ContentReader& reader) {
    handle_completion(req, res, reader, Endpoint::Completions, st);
  });
  svr_.Post("/v1/chat/completions", [&st](const httplib::Request& req, httplib::Response& res,
                                          const httplib::ContentReader& reader) {
    handle_completion(req, res, reader, Endpoint::ChatCompletions, st);
  });
}

void HttpServer::bind() {
  const auto& o = state_->opts;
  if (o.port == 0) {
    port_ = svr_.bind_to_any_port(o.host);
    if (port_ < 0) throw Error("cannot listen on " + o.host + " (any port)");
  } else {
    if (!svr_.bind_to_port(o.host, o.port))
      throw Error("cannot listen on " + o.host + ":" + std::to_string(o.port) +
                  " (in use, or not an address of this machine?)");
    port_ = o.port;
  }
  // Linux takes a second listen() on a listening socket as a new backlog.
  if (::listen(svr_.listening_socket(), SOMAXCONN) != 0)
    throw Error("cannot raise the listen backlog: " + std::string(std::strerror(errno)));
}

void HttpServer::start() {
  thread_ = std::thread([this] { svr_.listen_after_bind(); });
}

void HttpServer::set_ready(Engine& engine, EngineLoop& loop) {
  state_->has_tokenizer = false;
  try {
    (void)engine.tokenizer();
    state_->has_tokenizer = true;
  } catch (const std::exception&) {  // dummy weights: token ids only
  }
  state_->loop.store(&loop);
  state_->engine.store(&engine);
}

void HttpServer::begin_drain() { state_->draining.store(true); }

bool HttpServer::wait_answers(double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(timeout_s));
  while (state_->active.load() > 0) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

void HttpServer::abort_answers() { state_->aborting.store(true); }

void HttpServer::stop() {
  if (stopped_) return;
  stopped_ = true;
  svr_.stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace batchmax::server

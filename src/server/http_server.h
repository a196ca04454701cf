#pragma once
// The HTTP side of `batchmax serve` (cpp-httplib): routes, API-key check, body limit,
// OpenAI-style errors for everything httplib answers itself (404, 413, ...), and the
// lifecycle the command drives: bind before the model loads (GET /health answers 503
// meanwhile), serve, become ready, drain on SIGTERM, stop.
#include <memory>
#include <thread>

#include <httplib.h>

#include "server/server_state.h"

namespace batchmax::server {

class HttpServer {
 public:
  explicit HttpServer(ServerOptions opts);
  ~HttpServer();  // stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the listening socket; throws batchmax::Error naming host:port when it cannot.
  void bind();
  int port() const { return port_; }
  // Accepts connections on a background thread.
  void start();

  // The model is loaded: the completion endpoints serve from now on. `engine` and `loop`
  // must outlive stop().
  void set_ready(Engine& engine, EngineLoop& loop);
  // SIGTERM: new completion requests get 503 (GET /health too); answers in progress go on.
  void begin_drain();
  // Waits until every completion answer in progress is written; false on timeout.
  bool wait_answers(double timeout_s);
  // Ends every answer in progress with an error and cancels its engine requests.
  void abort_answers();
  // Stops accepting and waits for the connection threads.
  void stop();

  ServerState& state() { return *state_; }

 private:
  void install_routes();

  // httplib::Server with its listening socket in reach: httplib 0.11 listens with a
  // backlog of 5, which drops connections when hundreds arrive at once.
  class Listener : public httplib::Server {
   public:
    int listening_socket() const { return svr_sock_; }
  };

  std::unique_ptr<ServerState> state_;
  Listener svr_;
  std::thread thread_;
  int port_ = -1;
  bool stopped_ = false;
};

}  // namespace batchmax::server

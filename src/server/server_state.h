#pragma once
// What the HTTP handlers share: the server's options, the engine and its loop once the
// model is loaded, the lifecycle flags and the metrics.
#include <atomic>
#include <cstdint>
#include <string>

#include "batchmax/engine.h"
#include "batchmax/engine_loop.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/openai_protocol.h"

namespace batchmax::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                    // 0: any free port (HttpServer::port() tells which)
  std::string model_name;             // the id /v1/models lists and requests may name
  ApiKeys api_keys;
  size_t max_body_bytes = 4u << 20;   // larger bodies get 413
  ProtocolLimits limits;
  KVSettings kv_defaults;             // for requests without kv_* fields
  double request_timeout_s = 600;     // then the request is cancelled with an error
  double heartbeat_s = 0.25;          // idle connections get a heartbeat this often
  int http_threads = 1024;            // connections served at once
};

struct ServerState {
  explicit ServerState(ServerOptions o) : opts(std::move(o)) {}
  const ServerOptions opts;
  ServerMetrics metrics;
  // Set once the model is loaded (the pointees outlive the HTTP server).
  std::atomic<Engine*> engine{nullptr};
  std::atomic<EngineLoop*> loop{nullptr};
  bool has_tokenizer = false;         // written before `engine` is published
  std::atomic<bool> draining{false};  // SIGTERM: new completion requests get 503
  std::atomic<bool> aborting{false};  // drain timed out: in-flight requests end with an error
  std::atomic<int64_t> active{0};     // completion requests not answered completely yet
  std::atomic<uint64_t> next_id{1};
};

}  // namespace batchmax::server

// batchmax serve: an OpenAI-compatible HTTP server over one engine (continuous batching,
// per-request KV compression). The port is bound before the model loads, so GET /health
// answers 503 until it is ready. SIGTERM or SIGINT: stop admitting (503), let running
// requests finish for up to --drain-timeout seconds, end the rest with an error, exit 0.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <thread>

#include "batchmax/engine_loop.h"
#include "cli_common.h"
#include "core/error.h"
#include "core/format.h"
#include "model/presets.h"
#include "server/http_server.h"

namespace batchmax::cli {
namespace {

struct ServeArgs {
  EngineFlags engine;
  std::string dummy;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string model_name;
  std::vector<std::string> api_keys;
  std::string api_key_file;
  std::string max_body = "4MiB";
  int max_waiting = 256;
  double request_timeout_s = 600;
  double drain_timeout_s = 30;
  double heartbeat_s = 0.25;
  int http_threads = 1024;
  server::ProtocolLimits limits;
};

// Loads the model on a thread of its own while the main thread waits for signals.
struct Loader {
  std::unique_ptr<Engine> engine;
  std::exception_ptr error;
  std::atomic<bool> done{false};
  std::thread thread;
};

std::string served_name(const ServeArgs& a) {
  if (!a.model_name.empty()) return a.model_name;
  if (!a.dummy.empty()) return "dummy-" + a.dummy;
  return std::filesystem::path(a.engine.model).stem().string();
}

int run_serve(ServeArgs& a) {
  if (a.engine.model.empty() == a.dummy.empty())
    throw UsageError("give exactly one of --model PATH and --dummy-weights PRESET");
  if (!a.engine.model.empty()) check_model_path(a.engine.model);

  server::ServerOptions opts;
  opts.host = a.host;
  opts.port = a.port;
  opts.model_name = served_name(a);
  std::vector<std::string> keys = a.api_keys;
  if (!a.api_key_file.empty())
    for (auto& k : server::ApiKeys::read_file(a.api_key_file)) keys.push_back(std::move(k));
  opts.api_keys = server::ApiKeys(keys);
  opts.max_body_bytes = static_cast<size_t>(parse_bytes(a.max_body));
  opts.limits = a.limits;
  opts.kv_defaults = a.engine.kv;
  opts.request_timeout_s = a.request_timeout_s;
  opts.heartbeat_s = a.heartbeat_s;
  opts.http_threads = a.http_threads;
  if (a.limits.max_top_logprobs > kMaxTopLogprobs)
    throw UsageError("--max-top-logprobs is at most " + std::to_string(kMaxTopLogprobs) +
                     " (what the engine computes)");
  if (a.limits.default_max_tokens > a.limits.max_tokens)
    throw UsageError("--default-max-tokens is larger than --max-tokens-limit");

  // Signals are taken by sigtimedwait below; every thread started from here on
  // inherits the mask, so none of them is interrupted by SIGTERM.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  server::HttpServer http(opts);
  http.bind();
  http.start();
  std::fprintf(stderr, "batchmax serve: listening on http://%s:%d (model '%s' loading)\n",
               a.host.c_str(), http.port(), opts.model_name.c_str());

  Loader loader;
  loader.thread = std::thread([&] {
    try {
      if (a.dummy.empty()) {
        loader.engine = load_engine(a.engine);
      } else {
        EngineOptions eo = engine_options(a.engine);
        eo.model_path.clear();
        eo.dummy_weights = a.dummy;
        loader.engine = Engine::create(eo);
      }
    } catch (...) {
      loader.error = std::current_exception();
    }
    loader.done.store(true);
  });

  std::unique_ptr<EngineLoop> loop;
  int signal_number = 0;
  const timespec tick{0, 100 * 1000 * 1000};
  while (signal_number <= 0) {
    signal_number = sigtimedwait(&signals, nullptr, &tick);
    if (loader.done.load() && loader.thread.joinable()) {
      loader.thread.join();
      if (loader.error) {
        http.stop();
        std::rethrow_exception(loader.error);
      }
      EngineLoopOptions lo;
      lo.max_waiting = a.max_waiting;
      loop = std::make_unique<EngineLoop>(*loader.engine, lo);
      http.set_ready(*loader.engine, *loop);
      const MemoryPlan& plan = loader.engine->memory_plan();
      std::fprintf(stderr,
                   "batchmax serve: ready: context %lld tokens, KV pool %lld blocks (%s), "
                   "kv_mode %s\n",
                   static_cast<long long>(loader.engine->context_length()),
                   static_cast<long long>(plan.kv_blocks), human_bytes(plan.kv_pool_bytes).c_str(),
                   a.engine.kv.mode.c_str());
    }
  }

  std::fprintf(stderr, "batchmax serve: %s: draining (up to %.0fs)\n",
               signal_number == SIGINT ? "SIGINT" : "SIGTERM", a.drain_timeout_s);
  http.begin_drain();
  if (loader.thread.joinable()) loader.thread.join();  // a load cannot be interrupted
  bool drained = true;
  if (loop) {
    loop->stop_admitting();
    drained = loop->wait_idle(a.drain_timeout_s);
    // The engine is idle; give the connections a moment to write their last bytes.
    if (drained) drained = http.wait_answers(5);
  }
  if (!drained) {
    std::fprintf(stderr, "batchmax serve: drain timed out; ending the requests left with an error\n");
    http.abort_answers();
    http.wait_answers(5 + 2 * a.heartbeat_s);
  }
  http.stop();
  loop.reset();  // cancels whatever is left
  std::fprintf(stderr, "batchmax serve: stopped\n");
  return 0;
}

}  // namespace

Command add_serve(CLI::App& root) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* cmd = root.add_subcommand(
      "serve", "OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)");
  // Interactive: each request's tokens keep streaming while new prompts arrive.
  a->engine.schedule = "decode-first";
  add_engine_flags(*cmd, a->engine);
  cmd->get_option("--model")->required(false);
  cmd->add_option("--dummy-weights", a->dummy,
                  "instead of --model: a model shape with generated weights, token-id prompts "
                  "only (" + [] {
                    std::string s;
                    for (const auto& n : preset_names()) s += (s.empty() ? "" : ", ") + n;
                    return s;
                  }() + ")");
  cmd->add_option("--host", a->host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", a->port, "port (0: any free port; the log line says which)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--served-model-name", a->model_name,
                  "model id for /v1/models and the 'model' field (default: the file name)");
  cmd->add_option("--api-key", a->api_keys, "require 'Authorization: Bearer KEY' (repeatable)");
  cmd->add_option("--api-key-file", a->api_key_file, "file with API keys, one per line");
  cmd->add_option("--max-body-bytes", a->max_body, "larger request bodies get 413")
      ->capture_default_str();
  cmd->add_option("--max-waiting", a->max_waiting,
                  "requests queued for admission at most; past it 429")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--request-timeout", a->request_timeout_s,
                  "seconds a request may take; then it is cancelled with an error")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--drain-timeout", a->drain_timeout_s,
                  "after SIGTERM: seconds running requests get to finish")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--heartbeat", a->heartbeat_s,
                  "seconds between heartbeats to a waiting client (how fast a disconnect is seen)")
      ->check(CLI::Range(0.01, 60.0))
      ->capture_default_str();
  cmd->add_option("--http-threads", a->http_threads, "connections served at once")
      ->check(CLI::Range(8, 16384))
      ->capture_default_str();
  cmd->add_option("--default-max-tokens", a->limits.default_max_tokens,
                  "max_tokens of requests that give none")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-tokens-limit", a->limits.max_tokens, "largest max_tokens accepted")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-n", a->limits.max_n, "largest n accepted")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-top-logprobs", a->limits.max_top_logprobs,
                  "largest logprobs / top_logprobs accepted")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  return {cmd, [a] { return run_serve(*a); }};
}

}  // namespace batchmax::cli

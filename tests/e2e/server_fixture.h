#pragma once
// A real `batchmax serve` process for the end-to-end tests: started on a free loopback
// port (--port 0; the port is read from its log line), waited for until GET /health
// answers 200, stopped with SIGTERM (and its exit status checked) at the end. Requests
// go through curl, as a user would send them, or a raw socket where curl would tidy
// the request up (path variants, malformed framing).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "e2e/cli_fixture.h"
#include "test_support.h"

namespace batchmax::test {

struct HttpResult {
  int status = 0;
  std::string body;
  nlohmann::json json() const {
    return nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  }
};

class ServerProcess {
 public:
  // Starts the server; the test fails (and is_up() is false) when it does not come up.
  ServerProcess(const std::string& binary, std::vector<std::string> args,
                const std::filesystem::path& dir)
      : dir_(dir) {
    std::filesystem::create_directories(dir_);
    log_ = dir_ / "server.log";
    args.insert(args.begin(), {binary, "serve", "--host", "127.0.0.1", "--port", "0"});
    pid_ = fork();
    if (pid_ == 0) {
      FILE* f = std::freopen(log_.c_str(), "w", stderr);
      (void)f;
      std::freopen("/dev/null", "w", stdout);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
    const std::regex listening("listening on http://127\\.0\\.0\\.1:([0-9]+)");
    while (std::chrono::steady_clock::now() < deadline) {
      if (port_ == 0) {
        std::smatch m;
        const std::string text = log();
        if (std::regex_search(text, m, listening)) port_ = std::stoi(m[1]);
      }
      if (port_ != 0) {
        const int status = get("/health").status;
        if (first_health_status_ == 0) first_health_status_ = status;
        if (status == 200) return;
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        ADD_FAILURE() << "batchmax serve exited early:\n" << log();
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "batchmax serve did not become ready:\n" << log();
  }

  ~ServerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  bool is_up() const { return pid_ > 0 && port_ > 0; }
  // What GET /health said first, as soon as the log named the port (503: still loading).
  int first_health_status() const { return first_health_status_; }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  std::string log() const { return slurp(log_); }

  // SIGTERM, then the exit status (-1 when it did not exit within `timeout_s`).
  int terminate(double timeout_s = 60) {
    if (pid_ <= 0) return -1;
    kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(static_cast<int>(timeout_s * 1000));
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

  // curl: -X method, the body from a file, extra arguments (headers, --path-as-is).
  HttpResult curl(const std::string& method, const std::string& path, const std::string& body = "",
                  const std::vector<std::string>& extra = {}) const {
    const auto tag = std::to_string(counter_++);
    const auto body_file = dir_ / ("body" + tag);
    const auto out_file = dir_ / ("out" + tag);
    std::string cmd = "curl -s -S --max-time 120 -o " + shell_quote(out_file.string()) +
                      " -w '%{http_code}' -X " + method;
    if (!body.empty() || method == "POST") {
      std::ofstream(body_file, std::ios::binary) << body;
      cmd += " -H 'Content-Type: application/json' --data-binary @" + shell_quote(body_file.string());
    }
    for (const auto& e : extra) cmd += " " + shell_quote(e);
    cmd += " " + shell_quote(url(path));
    HttpResult r;
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) return r;
    char buf[16] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, p);
    pclose(p);
    r.status = std::atoi(std::string(buf, n).c_str());
    r.body = slurp(out_file);
    return r;
  }
  HttpResult get(const std::string& path, const std::vector<std::string>& extra = {}) const {
    return curl("GET", path, "", extra);
  }
  HttpResult post(const std::string& path, const std::string& body,
                  const std::vector<std::string>& extra = {}) const {
    return curl("POST", path, body, extra);
  }

  // The exact bytes of a request over a socket; returns the status and body of the answer
  // (body still chunk-encoded when the server chunked it).
  HttpResult raw(const std::string& request) const {
    HttpResult r;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    timeval tv{30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      close(fd);
      return r;
    }
    (void)!write(fd, request.data(), request.size());
    std::string response;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) response.append(buf, static_cast<size_t>(n));
    close(fd);
    std::smatch m;
    if (std::regex_search(response, m, std::regex("^HTTP/1\\.[01] ([0-9]{3})")))
      r.status = std::stoi(m[1]);
    auto sep = response.find("\r\n\r\n");
    if (sep != std::string::npos) r.body = response.substr(sep + 4);
    return r;
  }

  // For a server with --api-key: metric() sends it.
  void set_api_key(const std::string& key) {
    metrics_headers_ = {"-H", "Authorization: Bearer " + key};
  }

  // The value of an unlabelled metric (or a labelled one, name{labels}), -1 when absent.
  double metric(const std::string& name) const {
    const std::string text = get("/metrics", metrics_headers_).body;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line))
      if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
    return -1;
  }

 private:
  std::filesystem::path dir_, log_;
  std::vector<std::string> metrics_headers_;
  pid_t pid_ = -1;
  int port_ = 0;
  int first_health_status_ = 0;
  mutable int counter_ = 0;
};

// The binary and the model, or a skip that says which is missing.
inline std::optional<std::string> server_binary_or_skip_reason(std::string& reason) {
#ifndef BATCHMAX_BINARY
  reason = "the batchmax program is not part of this build";
  return std::nullopt;
#else
  if (!have_smollm2()) {
    reason = "model not found at " + smollm2_path() + " (run scripts/fetch_model.sh)";
    return std::nullopt;
  }
  return std::string(BATCHMAX_BINARY);
#endif
}

// The data lines of an SSE body: the JSON objects, and whether "[DONE]" ended it.
struct SseBody {
  std::vector<nlohmann::json> events;
  bool done = false;
  int comments = 0;
};
inline SseBody parse_sse(const std::string& body) {
  SseBody s;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("data: ", 0) == 0) {
      const std::string data = line.substr(6);
      if (data == "[DONE]") {
        s.done = true;
      } else {
        s.events.push_back(nlohmann::json::parse(data, nullptr, false));
      }
    } else if (line.rfind(":", 0) == 0) {
      ++s.comments;
    }
  }
  return s;
}


// Shared by the server's end-to-end suites (test_server.cpp, test_server_guards.cpp).
using json = nlohmann::json;

inline std::filesystem::path scratch(const std::string& name) {
  return std::filesystem::temp_directory_path() /
         ("batchmax_server_" + name + "_" + std::to_string(getpid()));
}

// One server for a whole suite (loading the model per test would dominate the time).
class ServerSuite : public ::testing::Test {
 protected:
  static std::unique_ptr<ServerProcess>& server() {
    static std::unique_ptr<ServerProcess> s;
    return s;
  }
  static void start(const std::string& name, std::vector<std::string> extra) {
    std::string reason;
    auto binary = server_binary_or_skip_reason(reason);
    if (!binary) return;
    std::vector<std::string> args = {"--model", smollm2_path(), "--threads", "2", "--ctx", "512",
                                     "--kv-mem", "64MiB", "--default-max-tokens", "16"};
    args.insert(args.end(), extra.begin(), extra.end());
    server() = std::make_unique<ServerProcess>(*binary, args, scratch(name));
  }
  static void stop() {
    if (server() && server()->is_up()) {
      EXPECT_EQ(server()->terminate(), 0) << server()->log();
    }
    server().reset();
  }
  void SetUp() override {
    std::string reason;
    if (!server_binary_or_skip_reason(reason)) GTEST_SKIP() << reason;
    ASSERT_TRUE(server() && server()->is_up()) << "the server did not start";
  }
  ServerProcess& srv() { return *server(); }

  void expect_healthy() { EXPECT_EQ(srv().get("/health").status, 200) << srv().log(); }
};

inline json chat_body(const std::string& content, int max_tokens) {
  return json{{"model", "SmolLM2-135M-Instruct.Q4_1"},
              {"messages", json::array({json{{"role", "user"}, {"content", content}}})},
              {"max_tokens", max_tokens},
              {"temperature", 0}};
}

inline json completion_body(const std::string& prompt, int max_tokens) {
  return json{{"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}};
}

inline void expect_usage(const json& usage, int max_tokens, const std::string& finish_reason) {
  ASSERT_TRUE(usage.is_object()) << usage;
  EXPECT_GT(usage["prompt_tokens"].get<int>(), 0);
  EXPECT_EQ(usage["total_tokens"].get<int>(),
            usage["prompt_tokens"].get<int>() + usage["completion_tokens"].get<int>());
  if (finish_reason == "length") EXPECT_EQ(usage["completion_tokens"].get<int>(), max_tokens);
  else EXPECT_LE(usage["completion_tokens"].get<int>(), max_tokens);
}

inline void hang_up_after(const ServerProcess& s, const std::string& request, const std::string& until) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(s.port()));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  std::string got;
  char buf[512];
  ssize_t n;
  while (got.find(until) == std::string::npos && (n = read(fd, buf, sizeof buf)) > 0)
    got.append(buf, static_cast<size_t>(n));
  close(fd);
  EXPECT_NE(got.find(until), std::string::npos) << got;
}

inline std::string post_request(const std::string& path, const std::string& body) {
  return "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

// Polls /metrics until `name` has `value` (or `timeout_s` passes); returns the last value.
inline double wait_metric(const ServerProcess& s, const std::string& name, double value, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int>(timeout_s * 1000));
  double v = s.metric(name);
  while (v != value && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    v = s.metric(name);
  }
  return v;
}

}  // namespace batchmax::test

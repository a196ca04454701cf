#pragma once
// The hand-off between the engine thread and one HTTP connection. The engine's
// callbacks (on_token, on_finish) only append to a queue under a mutex and notify; the
// connection thread waits on it with a timeout (so it can send heartbeats, notice a
// disconnect or a deadline) and takes everything queued at once. One stream serves all
// n choices of a request; events carry the choice index.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "batchmax/engine.h"

namespace batchmax::server {

struct StreamEvent {
  int choice = 0;
  std::optional<TokenInfo> token;  // a generated token, or
  std::optional<Output> finished;  // the choice's end (exactly one per choice)
};

class RequestStream {
 public:
  using Clock = std::chrono::steady_clock;
  // Called on the engine thread when a choice finishes, with the seconds from
  // submission to its first token (negative: none) and to its end. Must be quick.
  using FinishObserver = std::function<void(const Output&, double first_token_s, double total_s)>;

  static std::shared_ptr<RequestStream> create(int n_choices, FinishObserver observer = nullptr);

  // Callbacks for choice `choice`; they keep the stream alive, so the engine may call
  // them after the connection has gone.
  static Engine::Batch::Callbacks callbacks(const std::shared_ptr<RequestStream>& self, int choice);

  // Marks the submission time of a choice (TTFT and time per output token count from it).
  void mark_submitted(int choice);

  // Waits until something is queued or `timeout` passes; returns what is queued (empty on
  // timeout).
  std::vector<StreamEvent> wait(std::chrono::milliseconds timeout);
  // Choices whose on_finish has run (queued or taken).
  int finished() const;
  int choices() const { return n_choices_; }

 private:
  RequestStream(int n_choices, FinishObserver observer);
  void push(StreamEvent e);

  const int n_choices_;
  FinishObserver observer_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StreamEvent> queue_;
  std::vector<Clock::time_point> submitted_, first_token_;
  std::vector<bool> has_first_token_;
  int finished_ = 0;
};

}  // namespace batchmax::server

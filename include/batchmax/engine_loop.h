#pragma once
// A thread that drives one Engine::Batch: other threads (the server's connections)
// submit and cancel requests; the loop admits them between steps and runs steps while
// there is work. Callbacks run on the loop thread and must be quick (hand the data to
// the waiting connection and return).
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "batchmax/engine.h"

namespace batchmax {

struct EngineLoopOptions {
  int64_t max_waiting = 256;  // requests submitted but not yet admitted; past it submit refuses
};

struct EngineLoopStats {
  BatchState batch;             // as of the last step
  int64_t submitted = 0, finished = 0, cancelled = 0, errors = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;
  int64_t steps = 0;
  bool draining = false;
};

class EngineLoop {
 public:
  using Handle = Engine::Batch::Handle;
  EngineLoop(Engine& engine, EngineLoopOptions opts = {});
  ~EngineLoop();  // cancels what is left (on_finish "cancelled") and joins the thread
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // Queues a request; nullopt when the wait queue is full or the loop is draining (the
  // callbacks are then never called). Otherwise on_finish is called exactly once.
  std::optional<Handle> submit(Request r, Engine::Batch::Callbacks cb);
  // Cancels a queued or running request before the next step; its blocks are free when
  // that step starts. Unknown or finished handles are ignored.
  void cancel(Handle h);
  // SIGTERM: refuse new requests from now on; running and queued ones go on.
  void stop_admitting();
  // Waits until nothing is queued or running; false on timeout.
  bool wait_idle(double timeout_s);
  EngineLoopStats stats() const;

 private:
  void run();

  Engine& engine_;
  EngineLoopOptions opts_;
  std::unique_ptr<Engine::Batch> batch_;
  mutable std::mutex mu_;
  std::condition_variable wake_, idle_;
  struct Pending {
    Handle handle;
    Request request;
    Engine::Batch::Callbacks callbacks;
  };
  std::deque<Pending> inbox_;
  std::vector<Handle> cancels_;
  // Loop handle -> the batch's handle once added.
  std::unordered_map<Handle, Handle> live_;
  Handle next_handle_ = 1;
  int64_t in_transit_ = 0;  // taken from inbox_, being added to the batch
  bool stop_ = false, draining_ = false, busy_ = false;
  EngineLoopStats stats_;
  std::thread thread_;
};

}  // namespace batchmax

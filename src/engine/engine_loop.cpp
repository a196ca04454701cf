// The server's engine thread: takes submitted requests and cancellations between steps
// and steps the batch while it has work, sleeping otherwise.
#include "batchmax/engine_loop.h"

#include <chrono>
#include <cstdio>
#include <exception>

namespace batchmax {

EngineLoop::EngineLoop(Engine& engine, EngineLoopOptions opts)
    : engine_(engine), opts_(opts), batch_(engine.open_batch()) {
  stats_.batch = batch_->state();
  thread_ = std::thread([this] { run(); });
}

EngineLoop::~EngineLoop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

std::optional<EngineLoop::Handle> EngineLoop::submit(Request r, Engine::Batch::Callbacks cb) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_ || draining_) return std::nullopt;
  if (int64_t(inbox_.size()) + in_transit_ + stats_.batch.waiting >= opts_.max_waiting)
    return std::nullopt;
  const Handle h = next_handle_++;
  inbox_.push_back({h, std::move(r), std::move(cb)});
  ++stats_.submitted;
  busy_ = true;
  wake_.notify_all();
  return h;
}

void EngineLoop::cancel(Handle h) {
  std::lock_guard<std::mutex> lock(mu_);
  cancels_.push_back(h);
  wake_.notify_all();
}

void EngineLoop::stop_admitting() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
  stats_.draining = true;
}

bool EngineLoop::wait_idle(double timeout_s) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_.wait_for(lock, std::chrono::duration<double>(timeout_s),
                        [this] { return !busy_ && inbox_.empty(); });
}

EngineLoopStats EngineLoop::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  EngineLoopStats s = stats_;
  s.batch.waiting += int64_t(inbox_.size()) + in_transit_;  // not yet handed to the batch
  return s;
}

void EngineLoop::run() {
  for (;;) {
    std::deque<Pending> inbox;
    std::vector<Handle> cancels;
    bool stopping = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [this] {
        return stop_ || !inbox_.empty() || !cancels_.empty() || !batch_->idle();
      });
      inbox.swap(inbox_);
      in_transit_ = int64_t(inbox.size());  // still waiting: counted until the batch has them
      cancels.swap(cancels_);
      stopping = stop_;
    }
    // Into the batch; the loop handle maps to the batch's once added (add may finish a
    // bad request at once, and its on_finish erases the mapping before it exists: the
    // finished set below keeps that straight).
    for (Pending& p : inbox) {
      const Handle loop_handle = p.handle;
      Engine::Batch::Callbacks cb;
      cb.on_token = std::move(p.callbacks.on_token);
      cb.on_finish = [this, loop_handle, user = std::move(p.callbacks.on_finish)](Output o) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          live_.erase(loop_handle);
          ++stats_.finished;
          if (o.finish_reason == "cancelled") ++stats_.cancelled;
          if (o.finish_reason == "error") ++stats_.errors;
          stats_.generated_tokens += int64_t(o.tokens.size());
          stats_.prompt_tokens += o.prompt_tokens;
        }
        if (user) user(std::move(o));
      };
      {
        std::lock_guard<std::mutex> lock(mu_);
        live_[loop_handle] = 0;  // known, not in the batch yet
      }
      const Handle batch_handle = batch_->add(std::move(p.request), std::move(cb));
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(loop_handle);
      if (it != live_.end()) it->second = batch_handle;
    }
    if (!inbox.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.batch.waiting = batch_->state().waiting;  // keeps submit's bound exact
      in_transit_ = 0;
    }
    for (Handle h : cancels) {
      Handle batch_handle = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = live_.find(h);
        if (it == live_.end()) continue;
        batch_handle = it->second;
      }
      batch_->cancel(batch_handle);
    }
    if (stopping) {
      std::vector<Handle> left;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (const auto& [loop_handle, batch_handle] : live_) left.push_back(batch_handle);
      }
      for (Handle h : left) batch_->cancel(h);
      std::lock_guard<std::mutex> lock(mu_);
      stats_.batch = batch_->state();
      busy_ = false;
      idle_.notify_all();
      return;
    }
    if (!batch_->idle()) {
      try {
        const Progress p = batch_->step();
        std::lock_guard<std::mutex> lock(mu_);
        stats_.steps = p.steps;
      } catch (const std::exception& e) {
        // The batch failed the step's requests; the loop goes on with the others.
        std::fprintf(stderr, "batchmax: %s\n", e.what());
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    stats_.batch = batch_->state();
    if (batch_->idle() && inbox_.empty()) {
      busy_ = false;
      idle_.notify_all();
    }
  }
}

}  // namespace batchmax

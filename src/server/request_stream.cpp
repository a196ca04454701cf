#include "server/request_stream.h"

namespace batchmax::server {

RequestStream::RequestStream(int n_choices, FinishObserver observer)
    : n_choices_(n_choices),
      observer_(std::move(observer)),
      submitted_(n_choices, Clock::now()),
      first_token_(n_choices),
      has_first_token_(n_choices, false) {}

std::shared_ptr<RequestStream> RequestStream::create(int n_choices, FinishObserver observer) {
  return std::shared_ptr<RequestStream>(new RequestStream(n_choices, std::move(observer)));
}

Engine::Batch::Callbacks RequestStream::callbacks(const std::shared_ptr<RequestStream>& self,
                                                  int choice) {
  Engine::Batch::Callbacks cb;
  cb.on_token = [self, choice](const TokenInfo& t) {
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      if (!self->has_first_token_[choice]) {
        self->has_first_token_[choice] = true;
        self->first_token_[choice] = Clock::now();
      }
    }
    self->push(StreamEvent{choice, t, std::nullopt});
  };
  cb.on_finish = [self, choice](Output out) {
    double first_s = -1, total_s = 0;
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      const auto now = Clock::now();
      const auto t0 = self->submitted_[choice];
      total_s = std::chrono::duration<double>(now - t0).count();
      if (self->has_first_token_[choice])
        first_s = std::chrono::duration<double>(self->first_token_[choice] - t0).count();
    }
    if (self->observer_) self->observer_(out, first_s, total_s);
    self->push(StreamEvent{choice, std::nullopt, std::move(out)});
  };
  return cb;
}

void RequestStream::mark_submitted(int choice) {
  std::lock_guard<std::mutex> lock(mu_);
  submitted_[choice] = Clock::now();
}

void RequestStream::push(StreamEvent e) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (e.finished) ++finished_;
    queue_.push_back(std::move(e));
  }
  cv_.notify_one();
}

std::vector<StreamEvent> RequestStream::wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !queue_.empty(); });
  std::vector<StreamEvent> out(std::make_move_iterator(queue_.begin()),
                               std::make_move_iterator(queue_.end()));
  queue_.clear();
  return out;
}

int RequestStream::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_;
}

}  // namespace batchmax::server

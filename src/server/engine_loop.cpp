#include "server/engine_loop.h"

#include "core/error.h"
#include "core/logging.h"
#include "engine/engine.h"

namespace cascade {

using Clock = std::chrono::steady_clock;

void Channel::push(ChoiceEvent event) {
  {
    std::lock_guard lock(mu_);
    events_.push_back(std::move(event));
  }
  cv_.notify_all();
}

std::vector<ChoiceEvent> Channel::wait_take(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [this] { return !events_.empty(); });
  std::vector<ChoiceEvent> out(std::make_move_iterator(events_.begin()),
                               std::make_move_iterator(events_.end()));
  events_.clear();
  return out;
}

EngineLoop::EngineLoop(const Config& config, int capacity, ServerMetrics* metrics)
    : engine_(std::make_unique<Engine>(config)), capacity_(capacity), metrics_(metrics) {
  tokenizer_ = engine_->tokenizer();
  max_model_len_ = engine_->max_model_len();
  vocab_size_ = engine_->model_config().vocab_size;
  snapshot_.stats = engine_->stats();
}

EngineLoop::~EngineLoop() { stop(); }

void EngineLoop::start() { thread_ = std::thread([this] { run(); }); }

void EngineLoop::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool EngineLoop::try_reserve(int n) {
  int cur = outstanding_.load();
  do {
    if (cur + n > capacity_) return false;
  } while (!outstanding_.compare_exchange_weak(cur, cur + n));
  return true;
}

void EngineLoop::release(int n) { outstanding_.fetch_sub(n); }

void EngineLoop::post(std::function<void()> task) {
  {
    std::lock_guard lock(mu_);
    if (stopping_) throw_error(ErrorCode::kResourceExhausted, "the server is shutting down");
    tasks_.push_back(std::move(task));
  }
  cv_.notify_one();
}

std::vector<std::uint64_t> EngineLoop::submit(std::vector<Request> requests,
                                              std::shared_ptr<Channel> channel) {
  const int n = static_cast<int>(requests.size());
  const auto arrival = Clock::now();
  auto ran = std::make_shared<std::atomic<bool>>(false);
  inbox_requests_.fetch_add(n);
  try {
    return call([this, n, arrival, ran, requests = std::move(requests), channel](Engine& engine) {
      ran->store(true);
      inbox_requests_.fetch_sub(n);
      std::vector<std::uint64_t> ids;
      try {
        for (const Request& r : requests) ids.push_back(engine.add_request(r));
      } catch (...) {
        for (std::uint64_t id : ids) {
          engine.abort_request(id);
          (void)engine.take_output(id);
        }
        release(n);
        throw;
      }
      for (int i = 0; i < n; ++i) {
        Active a;
        a.channel = channel;
        a.index = i;
        a.arrival = arrival;
        active_.emplace(ids[static_cast<std::size_t>(i)], std::move(a));
      }
      return ids;
    });
  } catch (...) {
    if (!ran->load()) {  // post() refused (stopping): the task never ran
      inbox_requests_.fetch_sub(n);
      release(n);
    }
    throw;
  }
}

void EngineLoop::cancel(const std::vector<std::uint64_t>& ids) {
  try {
    post([this, ids] {
      for (std::uint64_t id : ids) {
        auto it = active_.find(id);
        if (it == active_.end()) continue;  // finished meanwhile
        engine_->abort_request(id);
        (void)engine_->take_output(id);
        active_.erase(it);
        release(1);
        if (metrics_) metrics_->count_cancelled();
        CASCADE_LOG_INFO("server: req={} cancelled by the client", id);
      }
    });
  } catch (const Error&) {
    // Stopping: stop() fails and frees everything anyway.
  }
}

EngineSnapshot EngineLoop::snapshot() const {
  std::lock_guard lock(mu_);
  return snapshot_;
}

void EngineLoop::publish() {
  EngineSnapshot s;
  s.stats = engine_->stats();
  s.inbox = inbox_requests_.load();
  std::lock_guard lock(mu_);
  snapshot_ = s;
}

void EngineLoop::finish_active(std::uint64_t id, ChoiceEvent event) {
  auto it = active_.find(id);
  if (it == active_.end()) return;
  event.index = it->second.index;
  if (auto out = engine_->take_output(id)) {
    event.prompt_tokens = static_cast<int>(out->prompt_ids.size());
    event.cached_tokens = out->num_cached_tokens;
    event.completion_tokens = static_cast<int>(out->token_ids.size());
    if (metrics_) metrics_->add_prompt_tokens(event.prompt_tokens);
  }
  std::shared_ptr<Channel> channel = std::move(it->second.channel);
  active_.erase(it);
  release(1);  // before the answer: its client may come straight back
  finals_.emplace_back(std::move(channel), std::move(event));
}

void EngineLoop::flush_finals() {
  for (auto& [channel, event] : finals_) channel->push(std::move(event));
  finals_.clear();
}

void EngineLoop::dispatch(const std::vector<StepUpdate>& updates) {
  const auto now = Clock::now();
  for (const StepUpdate& u : updates) {
    auto it = active_.find(u.request_id);
    if (it == active_.end()) continue;
    Active& a = it->second;
    if (!u.new_token_ids.empty()) {
      const auto n = static_cast<double>(u.new_token_ids.size());
      if (metrics_) {
        metrics_->add_generation_tokens(static_cast<std::int64_t>(u.new_token_ids.size()));
        if (!a.got_first) {
          metrics_->observe_ttft(std::chrono::duration<double>(now - a.arrival).count());
        } else {
          metrics_->observe_token_latency(std::chrono::duration<double>(now - a.last_token).count() / n);
        }
      }
      a.got_first = true;
      a.last_token = now;
    }
    ChoiceEvent ev;
    ev.index = a.index;
    ev.text = u.new_text;
    ev.token_ids = u.new_token_ids;
    ev.finish_reason = u.finish_reason;
    if (u.finished) {
      ev.finished = true;
      ev.error = u.error;
      finish_active(u.request_id, std::move(ev));
    } else if (!ev.text.empty() || !ev.token_ids.empty()) {
      a.channel->push(std::move(ev));
    }
  }
}

void EngineLoop::fail_all(const std::string& message) {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, a] : active_) ids.push_back(id);
  for (std::uint64_t id : ids) {
    try {
      engine_->abort_request(id);
    } catch (const std::exception&) {
    }
    ChoiceEvent ev;
    ev.finished = true;
    ev.finish_reason = FinishReason::kAbort;
    ev.error = message;
    finish_active(id, std::move(ev));
  }
}

void EngineLoop::run() {
  for (;;) {
    std::deque<std::function<void()>> tasks;
    {
      std::unique_lock lock(mu_);
      if (!stopping_ && tasks_.empty() && !engine_->has_unfinished()) {
        cv_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
      }
      if (stopping_) break;
      tasks.swap(tasks_);
    }
    for (auto& task : tasks) task();  // packaged tasks keep their own exceptions
    if (engine_->has_unfinished()) {
      try {
        dispatch(engine_->step());
      } catch (const std::exception& e) {
        // A failed step leaves no trustworthy state for the batch: fail its requests, keep serving.
        CASCADE_LOG_ERROR("server: engine step failed: {}", e.what());
        fail_all(fmt::format("internal error in the engine step: {}", e.what()));
      }
    }
    publish();
    flush_finals();
  }
  // Stopping: closures still queued would wait forever on their futures; run them so they finish.
  std::deque<std::function<void()>> rest;
  {
    std::lock_guard lock(mu_);
    rest.swap(tasks_);
  }
  for (auto& task : rest) task();
  fail_all("the server is shutting down");
  publish();
  flush_finals();
}

}  // namespace cascade

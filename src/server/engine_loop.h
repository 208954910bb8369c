// The engine thread: the only thread that touches the Engine. HTTP threads hand it requests and
// closures through a locked inbox; it runs step() while there is work and sleeps on a condition
// variable otherwise, and pushes each request's progress to that request's Channel.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cascade/config.h"
#include "cascade/request.h"
#include "server/metrics.h"

namespace cascade {

class Engine;
class Tokenizer;
struct StepUpdate;

// Progress of one generated choice: new text/tokens, and on the last event the totals.
struct ChoiceEvent {
  int index = 0;  // which of the HTTP request's choices (n > 1)
  std::string text;
  std::vector<std::int32_t> token_ids;
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  std::string error;  // set when the engine failed the request
  int prompt_tokens = 0;
  int cached_tokens = 0;
  int completion_tokens = 0;
};

// Events of one HTTP request, produced by the engine thread, consumed by the HTTP thread.
class Channel {
 public:
  void push(ChoiceEvent event);
  // Waits up to `timeout` for events and takes all that are queued (possibly none).
  std::vector<ChoiceEvent> wait_take(std::chrono::milliseconds timeout);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<ChoiceEvent> events_;
};

class EngineLoop {
 public:
  // Builds the Engine (loads the model; throws cascade::Error). `capacity`: most requests accepted
  // and unfinished at once (running plus queued).
  EngineLoop(const Config& config, int capacity, ServerMetrics* metrics);
  ~EngineLoop();
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  void start();
  // Fails every unfinished request ("server shutting down") and joins the thread. Idempotent.
  void stop();

  // Immutable after construction, so safe from any thread.
  const Tokenizer* tokenizer() const { return tokenizer_; }
  int max_model_len() const { return max_model_len_; }
  int vocab_size() const { return vocab_size_; }

  // Reserves room for `n` requests; false (nothing reserved) when that would pass the capacity.
  bool try_reserve(int n);

  // Adds reserved requests (choice i = requests[i]) whose events go to `channel`. Returns their engine
  // ids. Throws cascade::Error when the engine refuses one (then none of them runs and the
  // reservation is returned).
  std::vector<std::uint64_t> submit(std::vector<Request> requests, std::shared_ptr<Channel> channel);
  // Aborts requests (a client went away): their pages return at once. Does not wait.
  void cancel(const std::vector<std::uint64_t>& ids);

  // Runs `fn` on the engine thread between steps and returns its result; exceptions propagate.
  // The stats are published before the result is handed over, so whatever `fn` changed (pages freed
  // by DELETE /v1/chunks) is in every snapshot taken after call() returns.
  template <typename F>
  auto call(F fn) -> decltype(fn(std::declval<Engine&>())) {
    using R = decltype(fn(std::declval<Engine&>()));
    auto task = std::make_shared<std::packaged_task<R()>>([this, fn = std::move(fn)]() mutable {
      struct PublishOnExit {  // runs after the result is made, before packaged_task stores it
        EngineLoop* loop;
        ~PublishOnExit() { loop->publish(); }
      } publish_on_exit{this};
      return fn(*engine_);
    });
    std::future<R> result = task->get_future();
    post([task] { (*task)(); });
    return result.get();
  }

  // The latest stats, published by the engine thread after every loop turn.
  EngineSnapshot snapshot() const;

 private:
  struct Active {
    std::shared_ptr<Channel> channel;
    int index = 0;
    std::chrono::steady_clock::time_point arrival;
    std::chrono::steady_clock::time_point last_token;
    bool got_first = false;
  };

  // Queues a closure for the engine thread; throws kResourceExhausted once stopping.
  void post(std::function<void()> task);
  void run();
  void dispatch(const std::vector<StepUpdate>& updates);
  void finish_active(std::uint64_t id, ChoiceEvent event);
  void fail_all(const std::string& message);
  void publish();
  void release(int n);

  std::unique_ptr<Engine> engine_;
  const Tokenizer* tokenizer_ = nullptr;
  int max_model_len_ = 0;
  int vocab_size_ = 0;
  int capacity_ = 0;
  ServerMetrics* metrics_;

  std::atomic<int> outstanding_{0};  // reserved, unfinished requests
  std::atomic<int> inbox_requests_{0};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  EngineSnapshot snapshot_;
  std::thread thread_;

  // Engine-thread only.
  std::unordered_map<std::uint64_t, Active> active_;
  // Final events of this loop turn, pushed after publish() so that a client holding its answer
  // never sees a snapshot from before the step that finished it.
  std::vector<std::pair<std::shared_ptr<Channel>, ChoiceEvent>> finals_;
  void flush_finals();
};

}  // namespace cascade

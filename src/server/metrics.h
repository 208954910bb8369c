// Server counters and latency histograms, rendered in the Prometheus text format (version 0.0.4).
// Thread-safe: HTTP threads count responses, the engine thread records token timings.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "cascade/llm.h"

namespace cascade {

// A cumulative histogram with fixed upper bounds (seconds), as Prometheus expects.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  // `name_bucket{le=...}`, `name_sum`, `name_count` lines (no HELP/TYPE).
  void render(const std::string& name, std::string& out) const;
  std::uint64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<std::uint64_t> buckets_;  // per bound, not cumulative; cumulated when rendered
  double sum_ = 0.0;
  std::uint64_t count_ = 0;
};

// What the engine thread publishes after every loop turn, for /metrics and /health.
struct EngineSnapshot {
  EngineStats stats;
  int inbox = 0;  // requests handed to the engine thread but not yet added to the engine
};

class ServerMetrics {
 public:
  ServerMetrics();

  // One HTTP response of an API endpoint, by status code.
  void count_response(int status);
  void add_prompt_tokens(std::int64_t n);
  void add_generation_tokens(std::int64_t n);
  void observe_ttft(double seconds);
  void observe_token_latency(double seconds);
  void count_cancelled();

  // The whole exposition: server counters plus the engine's gauges and chunk counters.
  std::string render(const EngineSnapshot& engine, const std::string& model_name) const;

  std::uint64_t responses(int status) const;

 private:
  mutable std::mutex mu_;
  std::map<int, std::uint64_t> responses_;
  std::int64_t prompt_tokens_ = 0;
  std::int64_t generation_tokens_ = 0;
  std::uint64_t cancelled_ = 0;
  Histogram ttft_;
  Histogram token_latency_;
};

}  // namespace cascade

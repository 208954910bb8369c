#include "server/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace cascade {

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), buckets_(bounds_.size(), 0) {}

void Histogram::observe(double value) {
  // Values above the last bound land only in +Inf (count).
  auto it = std::lower_bound(bounds_.begin(), bounds_.end(), value);
  if (it != bounds_.end()) ++buckets_[static_cast<std::size_t>(it - bounds_.begin())];
  sum_ += value;
  ++count_;
}

void Histogram::render(const std::string& name, std::string& out) const {
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += buckets_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, count_);
  out += fmt::format("{}_sum {}\n", name, sum_);
  out += fmt::format("{}_count {}\n", name, count_);
}

ServerMetrics::ServerMetrics()
    : ttft_({0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      token_latency_({0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}) {}

void ServerMetrics::count_response(int status) {
  std::lock_guard lock(mu_);
  ++responses_[status];
}
void ServerMetrics::add_prompt_tokens(std::int64_t n) {
  std::lock_guard lock(mu_);
  prompt_tokens_ += n;
}
void ServerMetrics::add_generation_tokens(std::int64_t n) {
  std::lock_guard lock(mu_);
  generation_tokens_ += n;
}
void ServerMetrics::observe_ttft(double seconds) {
  std::lock_guard lock(mu_);
  ttft_.observe(seconds);
}
void ServerMetrics::observe_token_latency(double seconds) {
  std::lock_guard lock(mu_);
  token_latency_.observe(seconds);
}
void ServerMetrics::count_cancelled() {
  std::lock_guard lock(mu_);
  ++cancelled_;
}
std::uint64_t ServerMetrics::responses(int status) const {
  std::lock_guard lock(mu_);
  auto it = responses_.find(status);
  return it == responses_.end() ? 0 : it->second;
}

namespace {
std::string escape_label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

void metric(std::string& out, const char* name, const char* type, const char* help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}
}  // namespace

std::string ServerMetrics::render(const EngineSnapshot& e, const std::string& model_name) const {
  std::lock_guard lock(mu_);
  std::string out;
  out.reserve(4096);
  metric(out, "cascade_requests_total", "counter", "HTTP responses of /v1 endpoints, by status code.");
  for (const auto& [status, n] : responses_) {
    out += fmt::format("cascade_requests_total{{status=\"{}\"}} {}\n", status, n);
  }
  metric(out, "cascade_requests_cancelled_total", "counter", "Requests aborted because the client went away.");
  out += fmt::format("cascade_requests_cancelled_total {}\n", cancelled_);
  metric(out, "cascade_prompt_tokens_total", "counter", "Prompt tokens of finished requests.");
  out += fmt::format("cascade_prompt_tokens_total {}\n", prompt_tokens_);
  metric(out, "cascade_generation_tokens_total", "counter", "Tokens generated.");
  out += fmt::format("cascade_generation_tokens_total {}\n", generation_tokens_);
  metric(out, "cascade_queue_depth", "gauge", "Requests accepted but not yet running.");
  out += fmt::format("cascade_queue_depth {}\n", e.stats.waiting + e.inbox);
  metric(out, "cascade_running_sequences", "gauge", "Sequences in the running batch.");
  out += fmt::format("cascade_running_sequences {}\n", e.stats.running);
  metric(out, "cascade_kv_pages_used", "gauge", "KV pages allocated (sequences and cached chunks).");
  out += fmt::format("cascade_kv_pages_used {}\n", e.stats.pages_used);
  metric(out, "cascade_kv_pages_free", "gauge", "KV pages free.");
  out += fmt::format("cascade_kv_pages_free {}\n", e.stats.pages_total - e.stats.pages_used);
  metric(out, "cascade_kv_pages_peak", "gauge", "Most KV pages used at once.");
  out += fmt::format("cascade_kv_pages_peak {}\n", e.stats.peak_pages_used);
  metric(out, "cascade_chunk_hits_total", "counter", "Chunk lookups served from the cache.");
  out += fmt::format("cascade_chunk_hits_total {}\n", e.stats.chunk_hits);
  metric(out, "cascade_chunk_misses_total", "counter", "Chunk lookups that had to compute KV.");
  out += fmt::format("cascade_chunk_misses_total {}\n", e.stats.chunk_misses);
  metric(out, "cascade_chunk_evictions_total", "counter", "Cached chunks evicted.");
  out += fmt::format("cascade_chunk_evictions_total {}\n", e.stats.chunk_evictions);
  metric(out, "cascade_preemptions_total", "counter", "Sequences preempted for lack of KV pages.");
  out += fmt::format("cascade_preemptions_total {}\n", e.stats.preemptions);
  metric(out, "cascade_time_to_first_token_seconds", "histogram",
         "From request arrival to its first generated token.");
  ttft_.render("cascade_time_to_first_token_seconds", out);
  metric(out, "cascade_time_per_output_token_seconds", "histogram",
         "Time between successive generated tokens of a request.");
  token_latency_.render("cascade_time_per_output_token_seconds", out);
  metric(out, "cascade_model_info", "gauge", "The served model.");
  out += fmt::format("cascade_model_info{{model=\"{}\"}} 1\n", escape_label(model_name));
  return out;
}

}  // namespace cascade

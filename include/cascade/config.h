// Engine configuration. Key names follow the seed design (enable_cascade_attention, chunk_page_ratio,
// max_cascade_levels, chunk_registry_size): they are the users' vocabulary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cascade {

enum class Device { kAuto, kCpu, kCuda };
// on: use shared levels whenever sharing exists; off: flat attention; auto: a cost heuristic per step.
enum class CascadeMode { kAuto, kOn, kOff };

struct Config {
  std::string model_dir;  // empty: the embedded default (a small random Qwen3 + byte-level tokenizer)
  Device device = Device::kAuto;

  // KV cache.
  int page_size = 16;                            // tokens per page
  std::size_t kv_cache_bytes = 256ull << 20;     // memory budget for the page pool
  double chunk_page_ratio = 0.5;                 // persistent (chunk) share of the pool
  int chunk_registry_size = 1000;                // most chunks kept in the ChunkRegistry
  bool enable_prefix_cache = true;               // false: no sharing at all (--no-cache)

  // Cascade attention.
  bool enable_cascade_attention = true;
  CascadeMode cascade_mode = CascadeMode::kAuto;
  int max_cascade_levels = 3;

  // Scheduler.
  int max_num_seqs = 256;
  int max_num_batched_tokens = 4096;
  int max_model_len = 0;  // 0: the model's max_position_embeddings
  // Decode steps are enqueued before the previous step's tokens reach the host (the device takes
  // them from the previous lm_head: on the GPU where every row is greedy), so the host's work
  // between steps overlaps the device's. Not for requests with logprobs. Same tokens either way;
  // a sequence that stops at a step has computed one row more.
  bool overlap_scheduling = true;

  // CPU threads (0: OpenMP default).
  int num_threads = 0;
  // Seed for the embedded default model's random weights.
  std::uint64_t default_model_seed = 1234;
};

}  // namespace cascade

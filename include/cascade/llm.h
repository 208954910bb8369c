// The public entry point: an LLM over a Hugging Face Qwen3 folder (or the embedded default model),
// with the compositional chunk cache.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cascade/config.h"
#include "cascade/request.h"

namespace cascade {

class Engine;
class Tokenizer;

// A registered chunk as seen by API users.
struct ChunkInfo {
  std::string id;  // hex SHA-256
  ChunkKind kind = ChunkKind::kContext;
  int num_tokens = 0;
  int num_computed = 0;  // tokens whose KV is cached
  int ref_count = 0;     // running sequences using it
  std::map<std::string, std::string> metadata;
};

struct ChunkStats {
  std::uint64_t hits = 0, misses = 0, evictions = 0;
  std::uint64_t tokens_saved = 0, bytes_saved = 0;
  int num_chunks = 0;
};

// What running a composition would cost, computed without running it.
struct CompositionPreview {
  std::vector<std::int32_t> prompt_ids;
  std::vector<std::string> chunk_ids;  // the chain's chunk ids, in order
  std::vector<bool> chunk_cached;      // whether each chunk's KV is cached now
  int num_cached_tokens = 0;
  int num_new_tokens = 0;
  int cascade_levels = 0;  // levels a batch of this request alone would use (1 = flat)
  std::int64_t kv_bytes_new = 0;     // KV bytes this request would add
  std::int64_t kv_bytes_logical = 0; // KV bytes of the whole prompt without sharing
};

// Run-wide counters (the `stats` line of `cascade generate`).
struct EngineStats {
  std::int64_t kv_tokens_logical = 0;  // KV tokens all sequences held, without sharing
  std::int64_t kv_tokens_stored = 0;   // KV tokens actually written to pages
  std::int64_t kv_token_bytes = 0;     // K and V bytes of one token over all layers (the pool's dtype)
  std::uint64_t chunk_hits = 0, chunk_misses = 0, chunk_evictions = 0;
  int peak_pages_used = 0;
  int pages_used = 0, pages_total = 0;
  std::int64_t cascade_steps = 0;  // steps that used a shared level
  int max_levels_used = 0;
  std::int64_t steps = 0, prefill_tokens = 0, decode_tokens = 0, preemptions = 0;
  std::int64_t overlapped_steps = 0;  // steps enqueued before the previous step's tokens were known
  int running = 0, waiting = 0;
};

class LLM {
 public:
  // Loads the model named by config.model_dir (empty: the embedded default). Throws cascade::Error.
  explicit LLM(const Config& config);
  ~LLM();
  LLM(const LLM&) = delete;
  LLM& operator=(const LLM&) = delete;

  // Runs all requests to completion; outputs in input order. A request that fails (e.g. too long)
  // gets its `error` set; the others still run. `progress(done, total)` is called as requests finish.
  std::vector<RequestOutput> generate(const std::vector<Request>& requests,
                                      const std::function<void(int, int)>& progress = nullptr);

  // Chunk API. register_chunk returns the chunk's id (a root chunk: no parent).
  std::string register_chunk(ChunkKind kind, const std::vector<std::int32_t>& ids,
                             const std::map<std::string, std::string>& metadata = {});
  std::string register_chunk_text(ChunkKind kind, const std::string& text,
                                   const std::map<std::string, std::string>& metadata = {});
  std::vector<ChunkInfo> list_chunks() const;
  ChunkInfo get_chunk(const std::string& id) const;       // kNotFound / kEvicted
  void delete_chunk(const std::string& id);               // kFailedPrecondition while in use
  int clear_chunks(std::optional<ChunkKind> kind);        // returns how many were removed
  ChunkStats chunk_stats() const;
  CompositionPreview preview(const Request& request) const;

  EngineStats stats() const;
  const Tokenizer* tokenizer() const;  // nullptr when the model has no tokenizer.json
  Engine& engine();

 private:
  std::unique_ptr<Engine> engine_;
};

}  // namespace cascade

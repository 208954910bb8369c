// ChunkRegistry: the content-addressed cache of context chunks. Maps a chunk id (SHA-256 of parent
// id + kind + tokens) to its ContextChunk, counts holders, and evicts unreferenced chunks in LRU
// order when full. It owns chunk metadata only: KV pages come from the CascadePageManager, and every
// call that drops chunks returns their pages so the caller can free them there.
//
// Thread-safe: one mutex guards everything (the engine thread acquires and releases; API threads
// list, look up and delete). Handles (ContextChunk*) are valid while their holder keeps a reference.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cache/context_chunk.h"
#include "cache/page_pool.h"
#include "cascade/request.h"

namespace cascade {

using ChunkIdFn = std::function<ChunkId(const ChunkId*, ChunkKind, std::span<const std::int32_t>)>;

struct ChunkRegistryOptions {
  int capacity = 1000;               // most cached chunks (Config::chunk_registry_size); >= 1
  std::int64_t bytes_per_token = 0;  // KV bytes of one token (KvLayout::token_bytes), for bytes_saved
  int page_size = 16;                // checks assign_pages() page counts
  int evicted_ids_remembered = 4096; // evicted ids kept so lookups can say kEvicted, not kNotFound
  // Tick source for last_used (LRU order). Default: a counter. Called under the registry mutex: it
  // must not call back into the registry.
  std::function<std::uint64_t()> clock;
  // Id function; default compute_chunk_id. Tests inject a colliding one.
  ChunkIdFn id_fn;
};

struct AcquireResult {
  ContextChunk* chunk = nullptr;  // never null; held (ref_count incremented) until release()
  bool hit = false;               // an existing chunk with identical content was found
  bool token_mismatch = false;    // the id matched a chunk with other content: handed out detached
  // Pages of chunks evicted to make room: the caller must free them with free_persistent().
  std::vector<PageId> freed_pages;
};

// A copy of one chunk's state, without its tokens (see lookup() for those).
struct ChunkSummary {
  ChunkId id{};
  std::optional<ChunkId> parent;
  ChunkKind kind = ChunkKind::kContext;
  std::int32_t num_tokens = 0;
  std::int32_t num_computed = 0;
  std::int32_t start_pos = 0;
  std::int32_t num_pages = 0;
  int ref_count = 0;
  std::uint64_t last_used = 0;
  bool pinned = false;
  int num_children = 0;  // cached chunks whose parent is this one
  std::map<std::string, std::string> metadata;
};

struct EvictedChunk {
  ChunkId id{};
  std::vector<PageId> pages;  // to free with free_persistent()
};

struct ClearResult {
  int removed = 0;
  int skipped_in_use = 0;     // chunks of the kind still referenced: kept
  std::vector<PageId> freed_pages;
};

struct ChunkRegistryStats {
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;           // includes token mismatches
  std::uint64_t token_mismatches = 0; // id hits whose content differed (a collision; never expected)
  std::uint64_t evictions = 0;        // dropped by policy (capacity, evict_one); not erase/clear
  std::uint64_t erased = 0;           // dropped by erase/clear
  std::uint64_t tokens_saved = 0;     // prompt tokens acquirers did not have to compute
  std::uint64_t bytes_saved = 0;      // tokens_saved * bytes_per_token
  int num_chunks = 0;                 // cached (findable) chunks; may exceed capacity, see acquire()
  int num_referenced = 0;             // cached chunks with ref_count > 0
  int num_detached = 0;               // live detached chunks
  int evictable_chunks = 0;           // unreferenced, unpinned
  std::int64_t evictable_pages = 0;   // persistent pages evict_one() could free, in total
  std::int64_t cached_tokens = 0;     // tokens of all cached chunks
  int capacity = 0;
};

enum class ChunkState { kCached, kEvicted, kUnknown };

class ChunkRegistry {
 public:
  explicit ChunkRegistry(ChunkRegistryOptions options = {});
  ~ChunkRegistry();
  ChunkRegistry(const ChunkRegistry&) = delete;
  ChunkRegistry& operator=(const ChunkRegistry&) = delete;

  // Finds or creates the chunk `tokens` of `kind` following `parent` (nullptr: a root chunk at
  // position 0; else a chunk the caller holds), and takes a reference to it. A hit requires equal
  // tokens, kind, parent and start position, not just an equal id; an id hit with other content is
  // counted and served as a miss with a detached chunk (uncached, destroyed on release). Children of
  // a detached parent are detached too, so they can never pick up another prefix's KV.
  // Inserting at capacity evicts LRU unreferenced chunks; if all are referenced or pinned, the
  // registry overflows temporarily (trimmed on later releases/inserts) rather than fail requests.
  // Throws kInvalidArgument for an empty token list.
  AcquireResult acquire(const ContextChunk* parent, ChunkKind kind,
                        std::span<const std::int32_t> tokens,
                        const std::map<std::string, std::string>& metadata = {});
  // Drops one reference taken by acquire(). The handle must not be used afterwards. Returns pages to
  // free: a detached chunk's pages, and those of chunks evicted to end an overflow.
  [[nodiscard]] std::vector<PageId> release(ContextChunk* chunk);

  // Gives a held chunk without pages its persistent pages: exactly ceil(len / page_size).
  void assign_pages(ContextChunk* chunk, std::vector<PageId> pages);
  // Records that a held chunk's first `num_computed` tokens have KV (never decreases).
  void set_num_computed(ContextChunk* chunk, std::int32_t num_computed);

  // A copy of a cached chunk. Throws kNotFound (never seen or deleted) or kEvicted.
  ContextChunk lookup(const ChunkId& id) const;
  // A copy of a cached chunk, or nullopt.
  std::optional<ContextChunk> find(const ChunkId& id) const;
  // Whether `id` is cached, was evicted (and is still remembered), or is unknown.
  ChunkState state(const ChunkId& id) const;
  // Summaries of all cached chunks, least recently used first.
  std::vector<ChunkSummary> list() const;

  // Deletes an unreferenced chunk (pinned or not) and returns its pages. Throws kFailedPrecondition
  // while it is referenced, kNotFound / kEvicted when it is not cached.
  [[nodiscard]] std::vector<PageId> erase(const ChunkId& id);
  // Deletes every unreferenced chunk of `kind` (all kinds for nullopt); referenced ones are kept.
  [[nodiscard]] ClearResult clear(std::optional<ChunkKind> kind);
  // Evicts one unreferenced, unpinned chunk: the least recently used leaf (no cached children) if
  // any, else the least recently used one. nullopt when nothing is evictable.
  [[nodiscard]] std::optional<EvictedChunk> evict_one();
  // Pins (never evicted by policy) or unpins a cached chunk. Throws kNotFound / kEvicted. Returns
  // the pages of chunks evicted because unpinning ended an overflow.
  [[nodiscard]] std::vector<PageId> set_pinned(const ChunkId& id, bool pinned);

  ChunkRegistryStats stats() const;
  int size() const;
  int capacity() const { return options_.capacity; }

 private:
  struct Entry {
    std::unique_ptr<ContextChunk> chunk;
    std::uint64_t touch_seq = 0;  // breaks last_used ties (an injected clock may repeat ticks)
  };

  void touch_locked(Entry& entry);
  ContextChunk* pick_victim_locked();
  // Removes a cached chunk; `evicted` says whether to remember its id and count an eviction.
  std::vector<PageId> remove_locked(const ChunkId& id, bool evicted);
  void trim_locked(int target, std::vector<PageId>& freed);
  [[noreturn]] void throw_missing_locked(const ChunkId& id) const;

  ChunkRegistryOptions options_;
  mutable std::mutex mutex_;
  std::unordered_map<ChunkId, Entry, ChunkIdHash> chunks_;
  std::unordered_map<ChunkId, int, ChunkIdHash> num_children_;  // keyed by parent id
  std::unordered_map<ContextChunk*, std::unique_ptr<ContextChunk>> detached_;
  // Remembered evicted ids: id -> generation, with a FIFO to bound it (stale entries are skipped).
  std::unordered_map<ChunkId, std::uint64_t, ChunkIdHash> evicted_;
  std::deque<std::pair<ChunkId, std::uint64_t>> evicted_fifo_;
  std::uint64_t evicted_gen_ = 0;
  std::uint64_t touch_seq_ = 0;
  std::uint64_t ticks_ = 0;  // the default clock
  ChunkRegistryStats stats_;
};

}  // namespace cascade

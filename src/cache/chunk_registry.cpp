#include "cache/chunk_registry.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "core/error.h"

namespace cascade {

ChunkRegistry::ChunkRegistry(ChunkRegistryOptions options) : options_(std::move(options)) {
  if (options_.capacity < 1) {
    throw_error(ErrorCode::kInvalidArgument, "chunk_registry_size must be at least 1, got {}",
                options_.capacity);
  }
  if (options_.page_size < 1) {
    throw_error(ErrorCode::kInvalidArgument, "page_size must be at least 1, got {}", options_.page_size);
  }
  if (options_.bytes_per_token < 0 || options_.evicted_ids_remembered < 0) {
    throw_error(ErrorCode::kInvalidArgument,
                "chunk registry: bytes_per_token ({}) and evicted_ids_remembered ({}) must be >= 0",
                options_.bytes_per_token, options_.evicted_ids_remembered);
  }
  if (!options_.clock) options_.clock = [this] { return ++ticks_; };  // runs under mutex_
  if (!options_.id_fn) options_.id_fn = compute_chunk_id;
}

ChunkRegistry::~ChunkRegistry() = default;

void ChunkRegistry::touch_locked(Entry& entry) {
  entry.chunk->last_used = options_.clock();
  entry.touch_seq = ++touch_seq_;
}

AcquireResult ChunkRegistry::acquire(const ContextChunk* parent, ChunkKind kind,
                                     std::span<const std::int32_t> tokens,
                                     const std::map<std::string, std::string>& metadata) {
  if (tokens.empty()) {
    throw_error(ErrorCode::kInvalidArgument, "a {}chunk needs at least one token",
                parent ? "" : "root ");
  }
  // id, detached and end_pos of a held parent never change, so hashing needs no lock.
  const ChunkId id = options_.id_fn(parent ? &parent->id : nullptr, kind, tokens);
  const std::optional<ChunkId> parent_id =
      parent ? std::optional<ChunkId>(parent->id) : std::nullopt;
  const std::int32_t start_pos = parent ? parent->end_pos() : 0;

  std::lock_guard<std::mutex> lock(mutex_);
  if (parent) {
    CASCADE_CHECK(parent->ref_count > 0, "parent chunk {} of a new chunk is not held",
                  chunk_id_to_hex(parent->id));
  }
  AcquireResult result;
  const bool parent_detached = parent && parent->detached;
  if (!parent_detached) {
    if (auto it = chunks_.find(id); it != chunks_.end()) {
      ContextChunk& c = *it->second.chunk;
      if (c.kind == kind && c.parent == parent_id && c.start_pos == start_pos &&
          std::ranges::equal(c.tokens, tokens)) {
        // With another holder the KV is (being) computed once for all; else only what is done.
        const std::uint64_t saved = c.ref_count > 0 ? tokens.size() : c.num_computed;
        stats_.hits++;
        stats_.tokens_saved += saved;
        stats_.bytes_saved += saved * static_cast<std::uint64_t>(options_.bytes_per_token);
        c.ref_count++;
        for (const auto& [k, v] : metadata) c.metadata[k] = v;
        touch_locked(it->second);
        result.chunk = &c;
        result.hit = true;
        return result;
      }
      result.token_mismatch = true;
      stats_.token_mismatches++;
    }
  }
  stats_.misses++;

  auto chunk = std::make_unique<ContextChunk>();
  chunk->id = id;
  chunk->parent = parent_id;
  chunk->kind = kind;
  chunk->tokens.assign(tokens.begin(), tokens.end());
  chunk->metadata = metadata;
  chunk->start_pos = start_pos;
  chunk->ref_count = 1;
  result.chunk = chunk.get();

  if (parent_detached || result.token_mismatch) {
    chunk->detached = true;
    chunk->last_used = options_.clock();
    detached_.emplace(chunk.get(), std::move(chunk));
    return result;
  }
  trim_locked(options_.capacity - 1, result.freed_pages);
  evicted_.erase(id);  // its FIFO entry goes stale and is skipped when trimmed
  if (parent_id) num_children_[*parent_id]++;
  Entry& entry = chunks_[id];
  entry.chunk = std::move(chunk);
  touch_locked(entry);
  return result;
}

std::vector<PageId> ChunkRegistry::release(ContextChunk* chunk) {
  std::lock_guard<std::mutex> lock(mutex_);
  CASCADE_CHECK(chunk != nullptr, "release of a null chunk");
  std::vector<PageId> freed;
  if (chunk->detached) {
    auto it = detached_.find(chunk);
    CASCADE_CHECK(it != detached_.end(), "detached chunk {} released after it was destroyed",
                  chunk_id_to_hex(chunk->id));
    CASCADE_CHECK(chunk->ref_count > 0, "chunk {} released more often than acquired",
                  chunk_id_to_hex(chunk->id));
    if (--chunk->ref_count == 0) {
      freed = std::move(chunk->pages);
      detached_.erase(it);
    }
    return freed;
  }
  auto it = chunks_.find(chunk->id);
  CASCADE_CHECK(it != chunks_.end() && it->second.chunk.get() == chunk,
                "released chunk {} is not cached here", chunk_id_to_hex(chunk->id));
  CASCADE_CHECK(chunk->ref_count > 0, "chunk {} released more often than acquired",
                chunk_id_to_hex(chunk->id));
  chunk->ref_count--;
  touch_locked(it->second);
  if (static_cast<int>(chunks_.size()) > options_.capacity) trim_locked(options_.capacity, freed);
  return freed;
}

void ChunkRegistry::assign_pages(ContextChunk* chunk, std::vector<PageId> pages) {
  std::lock_guard<std::mutex> lock(mutex_);
  CASCADE_CHECK(chunk->ref_count > 0, "pages assigned to chunk {} that is not held",
                chunk_id_to_hex(chunk->id));
  CASCADE_CHECK(chunk->pages.empty(), "chunk {} already has {} pages", chunk_id_to_hex(chunk->id),
                chunk->pages.size());
  const std::int32_t needed = pages_for_tokens(chunk->num_tokens(), options_.page_size);
  CASCADE_CHECK(static_cast<std::int32_t>(pages.size()) == needed,
                "chunk {} of {} tokens needs {} pages of {}, got {}", chunk_id_to_hex(chunk->id),
                chunk->num_tokens(), needed, options_.page_size, pages.size());
  chunk->pages = std::move(pages);
}

void ChunkRegistry::set_num_computed(ContextChunk* chunk, std::int32_t num_computed) {
  std::lock_guard<std::mutex> lock(mutex_);
  CASCADE_CHECK(chunk->ref_count > 0, "chunk {} updated while not held", chunk_id_to_hex(chunk->id));
  CASCADE_CHECK(num_computed >= chunk->num_computed && num_computed <= chunk->num_tokens(),
                "chunk {}: num_computed {} -> {} (of {} tokens)", chunk_id_to_hex(chunk->id),
                chunk->num_computed, num_computed, chunk->num_tokens());
  CASCADE_CHECK(num_computed == 0 || !chunk->pages.empty(), "chunk {} computed without pages",
                chunk_id_to_hex(chunk->id));
  chunk->num_computed = num_computed;
}

void ChunkRegistry::throw_missing_locked(const ChunkId& id) const {
  if (evicted_.contains(id)) {
    throw_error(ErrorCode::kEvicted,
                "chunk {} was evicted from the chunk cache (it holds at most {} chunks, and KV "
                "memory is reclaimed from unused chunks); register it again",
                chunk_id_to_hex(id), options_.capacity);
  }
  throw_error(ErrorCode::kNotFound, "chunk {} is not registered", chunk_id_to_hex(id));
}

ContextChunk ChunkRegistry::lookup(const ChunkId& id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = chunks_.find(id);
  if (it == chunks_.end()) throw_missing_locked(id);
  return *it->second.chunk;
}

std::optional<ContextChunk> ChunkRegistry::find(const ChunkId& id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = chunks_.find(id);
  if (it == chunks_.end()) return std::nullopt;
  return *it->second.chunk;
}

ChunkState ChunkRegistry::state(const ChunkId& id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (chunks_.contains(id)) return ChunkState::kCached;
  return evicted_.contains(id) ? ChunkState::kEvicted : ChunkState::kUnknown;
}

std::vector<ChunkSummary> ChunkRegistry::list() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<const Entry*> entries;
  entries.reserve(chunks_.size());
  for (const auto& [id, entry] : chunks_) entries.push_back(&entry);
  std::ranges::sort(entries, [](const Entry* a, const Entry* b) {
    return std::tie(a->chunk->last_used, a->touch_seq) < std::tie(b->chunk->last_used, b->touch_seq);
  });
  std::vector<ChunkSummary> out;
  out.reserve(entries.size());
  for (const Entry* e : entries) {
    const ContextChunk& c = *e->chunk;
    ChunkSummary s;
    s.id = c.id;
    s.parent = c.parent;
    s.kind = c.kind;
    s.num_tokens = c.num_tokens();
    s.num_computed = c.num_computed;
    s.start_pos = c.start_pos;
    s.num_pages = static_cast<std::int32_t>(c.pages.size());
    s.ref_count = c.ref_count;
    s.last_used = c.last_used;
    s.pinned = c.pinned;
    auto nc = num_children_.find(c.id);
    s.num_children = nc == num_children_.end() ? 0 : nc->second;
    s.metadata = c.metadata;
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<PageId> ChunkRegistry::remove_locked(const ChunkId& id, bool evicted) {
  auto node = chunks_.extract(id);
  CASCADE_CHECK(!node.empty(), "removing chunk {} that is not cached", chunk_id_to_hex(id));
  ContextChunk& c = *node.mapped().chunk;
  CASCADE_CHECK(c.ref_count == 0, "removing chunk {} with {} holders", chunk_id_to_hex(id),
                c.ref_count);
  if (c.parent) {
    auto it = num_children_.find(*c.parent);
    CASCADE_CHECK(it != num_children_.end() && it->second > 0, "child count of {} is broken",
                  chunk_id_to_hex(*c.parent));
    if (--it->second == 0) num_children_.erase(it);
  }
  if (evicted) {
    stats_.evictions++;
    if (options_.evicted_ids_remembered > 0) {
      const std::uint64_t gen = ++evicted_gen_;
      evicted_[id] = gen;
      evicted_fifo_.emplace_back(id, gen);
      while (evicted_fifo_.size() > static_cast<std::size_t>(options_.evicted_ids_remembered)) {
        const auto& [old_id, old_gen] = evicted_fifo_.front();
        if (auto it = evicted_.find(old_id); it != evicted_.end() && it->second == old_gen)
          evicted_.erase(it);
        evicted_fifo_.pop_front();
      }
    }
  } else {
    stats_.erased++;
  }
  return std::move(c.pages);
}

ContextChunk* ChunkRegistry::pick_victim_locked() {
  // Leaves first: a parent is worth more than its child (every child's user needs it, and so do
  // other children), and a child without its parent cannot be used until the parent is recomputed.
  const Entry* best = nullptr;
  std::tuple<bool, std::uint64_t, std::uint64_t> best_key{};
  for (const auto& [id, entry] : chunks_) {
    const ContextChunk& c = *entry.chunk;
    if (c.ref_count > 0 || c.pinned) continue;
    std::tuple<bool, std::uint64_t, std::uint64_t> key{num_children_.contains(id), c.last_used,
                                                       entry.touch_seq};
    if (!best || key < best_key) {
      best = &entry;
      best_key = key;
    }
  }
  return best ? best->chunk.get() : nullptr;
}

void ChunkRegistry::trim_locked(int target, std::vector<PageId>& freed) {
  while (static_cast<int>(chunks_.size()) > target) {
    ContextChunk* victim = pick_victim_locked();
    if (!victim) return;  // everything is held or pinned: overflow until releases allow a trim
    const ChunkId id = victim->id;
    std::vector<PageId> pages = remove_locked(id, /*evicted=*/true);
    freed.insert(freed.end(), pages.begin(), pages.end());
  }
}

std::vector<PageId> ChunkRegistry::erase(const ChunkId& id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = chunks_.find(id);
  if (it == chunks_.end()) throw_missing_locked(id);
  const int refs = it->second.chunk->ref_count;
  if (refs > 0) {
    throw_error(ErrorCode::kFailedPrecondition,
                "chunk {} is in use by {} running sequence(s); delete it after they finish",
                chunk_id_to_hex(id), refs);
  }
  return remove_locked(id, /*evicted=*/false);
}

ClearResult ChunkRegistry::clear(std::optional<ChunkKind> kind) {
  std::lock_guard<std::mutex> lock(mutex_);
  ClearResult result;
  std::vector<ChunkId> doomed;
  for (const auto& [id, entry] : chunks_) {
    if (kind && entry.chunk->kind != *kind) continue;
    if (entry.chunk->ref_count > 0) {
      result.skipped_in_use++;
    } else {
      doomed.push_back(id);
    }
  }
  for (const ChunkId& id : doomed) {
    std::vector<PageId> pages = remove_locked(id, /*evicted=*/false);
    result.freed_pages.insert(result.freed_pages.end(), pages.begin(), pages.end());
    result.removed++;
  }
  return result;
}

std::optional<EvictedChunk> ChunkRegistry::evict_one() {
  std::lock_guard<std::mutex> lock(mutex_);
  ContextChunk* victim = pick_victim_locked();
  if (!victim) return std::nullopt;
  EvictedChunk out;
  out.id = victim->id;
  out.pages = remove_locked(out.id, /*evicted=*/true);
  return out;
}

std::vector<PageId> ChunkRegistry::set_pinned(const ChunkId& id, bool pinned) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = chunks_.find(id);
  if (it == chunks_.end()) throw_missing_locked(id);
  it->second.chunk->pinned = pinned;
  std::vector<PageId> freed;
  if (static_cast<int>(chunks_.size()) > options_.capacity) trim_locked(options_.capacity, freed);
  return freed;
}

ChunkRegistryStats ChunkRegistry::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  ChunkRegistryStats s = stats_;
  s.num_chunks = static_cast<int>(chunks_.size());
  s.num_detached = static_cast<int>(detached_.size());
  s.capacity = options_.capacity;
  for (const auto& [id, entry] : chunks_) {
    const ContextChunk& c = *entry.chunk;
    s.cached_tokens += c.num_tokens();
    if (c.ref_count > 0) {
      s.num_referenced++;
    } else if (!c.pinned) {
      s.evictable_chunks++;
      s.evictable_pages += static_cast<std::int64_t>(c.pages.size());
    }
  }
  return s;
}

int ChunkRegistry::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(chunks_.size());
}

}  // namespace cascade

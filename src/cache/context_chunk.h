// Chunk identity and per-chunk KV bookkeeping. A chunk is a run of prompt tokens (a system prompt, a
// document, a query, or an automatic page-aligned cut of a plain prompt) whose KV is computed once
// and shared. Its id is content-addressed and chained: the same tokens after a different prefix are
// a different chunk, because KV depends on everything before it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "cache/kv_layout.h"
#include "cache/page_pool.h"
#include "cascade/request.h"

namespace cascade {

// SHA-256 digest identifying a chunk (and, through its parent, its whole prefix).
using ChunkId = std::array<std::uint8_t, 32>;

// Lower-case hex, 64 characters.
std::string chunk_id_to_hex(const ChunkId& id);
// Parses 64 hex digits (either case); nullopt for anything else.
std::optional<ChunkId> chunk_id_from_hex(std::string_view hex);
// Like chunk_id_from_hex, but throws ErrorCode::kInvalidArgument naming the bad string.
ChunkId parse_chunk_id(std::string_view hex);

// Hash functor for unordered containers. The id is already a uniform digest: its first bytes suffice.
struct ChunkIdHash {
  std::size_t operator()(const ChunkId& id) const noexcept {
    std::size_t h;
    std::memcpy(&h, id.data(), sizeof(h));
    return h;
  }
};

// SHA-256 over the byte string
//   parent id (32 bytes; 32 zero bytes for a root chunk)
//   || kind (1 byte: static_cast<uint8_t>(ChunkKind), kSystem=0 kContext=1 kQuery=2 kAuto=3)
//   || token count (uint64, little-endian)
//   || tokens (each int32, little-endian).
// The count makes the encoding unambiguous. Throws ErrorCode::kInternal if OpenSSL fails.
ChunkId compute_chunk_id(const ChunkId* parent, ChunkKind kind, std::span<const std::int32_t> tokens);

// One chunk's bookkeeping. Owned by a ChunkRegistry; the engine holds pointers to chunks it has
// acquired (ref_count > 0), which stay valid until it releases them.
//
// Thread-safety: id, parent, kind, tokens and start_pos never change after creation. pages and
// num_computed change only through ChunkRegistry::assign_pages / set_num_computed, called by the
// holder; so the holder's thread may read them directly, other threads see them via snapshots
// (ChunkRegistry::lookup / list). metadata, ref_count, last_used and pinned are guarded by the
// registry's mutex: read them only from snapshots.
struct ContextChunk {
  ChunkId id{};
  std::optional<ChunkId> parent;  // nullopt for a root chunk
  ChunkKind kind = ChunkKind::kContext;
  std::vector<std::int32_t> tokens;
  std::map<std::string, std::string> metadata;
  // Position of the first token: the parent's start_pos + the parent's length (0 for a root).
  std::int32_t start_pos = 0;
  // Persistent pages, empty until assigned, then exactly ceil(len / page_size) of them; token j lives
  // in pages[j / page_size], slot j % page_size (a chunk starts on a fresh page).
  std::vector<PageId> pages;
  std::int32_t num_computed = 0;  // tokens [0, num_computed) have their KV written
  int ref_count = 0;              // holders (sequences) using it; never evicted while > 0
  std::uint64_t last_used = 0;    // registry clock tick of the last acquire/release
  bool pinned = false;            // pinned chunks are never evicted (but may be erased)
  // A chunk whose id collided with a different registered chunk: handed out as an uncached miss,
  // never findable by id, destroyed when released (its pages come back from release()).
  bool detached = false;

  std::int32_t num_tokens() const { return static_cast<std::int32_t>(tokens.size()); }
  // Position just after the last token: the next chunk of the chain starts here.
  std::int32_t end_pos() const { return start_pos + num_tokens(); }
  bool is_complete() const { return num_computed == num_tokens(); }
  // The computed prefix's pages with their valid lengths (what attention reads).
  KvPageList computed_page_list(int page_size) const;
};

// Pages needed to hold `num_tokens` tokens starting on a fresh page.
constexpr std::int32_t pages_for_tokens(std::int32_t num_tokens, std::int32_t page_size) {
  return (num_tokens + page_size - 1) / page_size;
}

}  // namespace cascade

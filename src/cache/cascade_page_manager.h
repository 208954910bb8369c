// CascadePageManager: splits the KV page ids into a persistent region (pages of cached chunks,
// shared across requests) and a dynamic region (pages each sequence owns for its own tokens), and
// allocates from them with exact accounting. Not thread-safe: the engine thread owns it.
//
// Split: persistent region = pages [0, P), dynamic region = [P, num_pages), where
// P = round-half-up(num_pages * chunk_page_ratio), then clamped to [1, num_pages - 1] when
// 0 < ratio < 1 and num_pages >= 2 so that both sides get a page. Ratio 0 gives no persistent
// region, ratio 1 no dynamic region (useful only with borrowing on).
//
// Borrowing (default on): a side whose region is full takes free pages of the other region; a page
// keeps the role (persistent/dynamic) it was allocated with until freed, and returns to the region it
// belongs to. With borrowing off the regions are hard limits.
//
// Eviction: when pages are short, allocation calls the eviction hook (the engine evicts one
// unreferenced chunk from the ChunkRegistry and frees its persistent pages) and retries, until the
// request fits or the hook returns false. The hook is not called when evicting cannot help: a
// request larger than can_ever_fit allows, or a dynamic request without borrowing (evictions free
// only persistent pages).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "cache/page_pool.h"

namespace cascade {

struct PageManagerStats {
  std::int32_t total = 0;
  std::int32_t persistent_region = 0;  // pages in [0, P)
  std::int32_t dynamic_region = 0;     // pages in [P, total)
  std::int32_t persistent_used = 0;    // pages held with the persistent role, wherever they lie
  std::int32_t dynamic_used = 0;       // pages held with the dynamic role
  std::int32_t free = 0;               // total - persistent_used - dynamic_used
  std::int32_t persistent_borrowed = 0;  // persistent pages lying in the dynamic region
  std::int32_t dynamic_borrowed = 0;     // dynamic pages lying in the persistent region
  std::int32_t peak_used = 0, peak_persistent_used = 0, peak_dynamic_used = 0;
  std::uint64_t evictions_requested = 0;  // hook calls that evicted something
};

class CascadePageManager {
 public:
  // Throws kInvalidArgument for num_pages < 1 or a ratio outside [0, 1].
  CascadePageManager(int num_pages, double chunk_page_ratio, bool allow_borrowing = true);

  // The hook evicts one unreferenced chunk and frees its pages via free_persistent(); it returns
  // false when nothing could be evicted. It may be empty (no eviction).
  void set_eviction_hook(std::function<bool()> hook) { eviction_hook_ = std::move(hook); }

  // `n` pages for a chunk, or nullopt (nothing allocated) when they cannot be found even after
  // evictions.
  std::optional<std::vector<PageId>> allocate_persistent(std::int32_t n);
  // `n` pages for a sequence's own tokens, or nullopt (nothing allocated): the caller may preempt.
  std::optional<std::vector<PageId>> allocate_dynamic(std::int32_t n);
  // Frees pages allocated with the same role. A page of the other role, or not allocated, is a bug.
  void free_persistent(std::span<const PageId> pages);
  void free_dynamic(std::span<const PageId> pages);

  // Whether requests of this size could be served with every other page free (else a request can
  // never run: ErrorCode::kOutOfMemory).
  bool can_ever_fit(std::int32_t persistent_needed, std::int32_t dynamic_needed) const;

  std::int32_t num_total_pages() const { return total_; }
  std::int32_t num_free_pages() const { return persistent_pool_.num_free_pages() + dynamic_pool_.num_free_pages(); }
  std::int32_t num_used_pages() const { return persistent_used_ + dynamic_used_; }
  std::int32_t persistent_used() const { return persistent_used_; }
  std::int32_t dynamic_used() const { return dynamic_used_; }
  // Free pages in each region (with borrowing, either side may take from both).
  std::int32_t persistent_region_free() const { return persistent_pool_.num_free_pages(); }
  std::int32_t dynamic_region_free() const { return dynamic_pool_.num_free_pages(); }
  std::int32_t persistent_region_size() const { return persistent_pool_.num_total_pages(); }
  std::int32_t dynamic_region_size() const { return dynamic_pool_.num_total_pages(); }
  bool allow_borrowing() const { return allow_borrowing_; }
  PageManagerStats stats() const;

 private:
  enum class Role : std::uint8_t { kFree, kPersistent, kDynamic };

  std::optional<std::vector<PageId>> allocate(std::int32_t n, Role role);
  std::optional<std::vector<PageId>> try_allocate(std::int32_t n, Role role);
  void release(std::span<const PageId> pages, Role role);

  std::int32_t total_;
  bool allow_borrowing_;
  PagePool persistent_pool_;
  PagePool dynamic_pool_;
  std::vector<Role> roles_;  // by page id
  std::int32_t persistent_used_ = 0, dynamic_used_ = 0;
  std::int32_t peak_used_ = 0, peak_persistent_used_ = 0, peak_dynamic_used_ = 0;
  std::uint64_t evictions_requested_ = 0;
  std::function<bool()> eviction_hook_;
};

}  // namespace cascade

// A pool of KV page ids [first, first + count): pure bookkeeping, no memory. Allocation is all or
// nothing; freeing a page twice or a page the pool does not own is an internal bug (CASCADE_CHECK).
// Not thread-safe: the engine thread owns it.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace cascade {

// A page index into the layer pools of KvLayout. Typed so it cannot be mixed up with token counts.
enum class PageId : std::int32_t {};

// The raw page index, for page tables handed to the backends (KvPageList, slot mappings).
constexpr std::int32_t page_index(PageId page) { return static_cast<std::int32_t>(page); }

class PagePool {
 public:
  // A pool owning page ids [first, first + count). count may be 0.
  PagePool(std::int32_t first, std::int32_t count);

  // `n` pages, or nullopt (and no change) when fewer than `n` are free. n == 0 gives an empty list.
  std::optional<std::vector<PageId>> allocate(std::int32_t n);
  // Returns pages to the pool. All are checked before any is freed, so a failed check (double free,
  // duplicate in the list, foreign page) leaves the pool unchanged.
  void free(std::span<const PageId> pages);

  // Whether `page` lies in this pool's id range.
  bool owns(PageId page) const;
  // Whether `page` is owned and currently allocated.
  bool is_used(PageId page) const;

  std::int32_t num_free_pages() const { return static_cast<std::int32_t>(free_pages_.size()); }
  std::int32_t num_used_pages() const { return count_ - num_free_pages(); }
  std::int32_t num_total_pages() const { return count_; }
  std::int32_t first_page() const { return first_; }

 private:
  std::int32_t first_;
  std::int32_t count_;
  std::vector<PageId> free_pages_;  // a stack; the lowest ids are handed out first on a fresh pool
  std::vector<std::uint8_t> used_;  // used_[page - first_]
};

}  // namespace cascade

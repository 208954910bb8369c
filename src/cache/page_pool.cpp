#include "cache/page_pool.h"

#include <algorithm>

#include "core/error.h"

namespace cascade {

PagePool::PagePool(std::int32_t first, std::int32_t count)
    : first_(first), count_(count), used_(static_cast<std::size_t>(count < 0 ? 0 : count), 0) {
  CASCADE_CHECK(count >= 0 && first >= 0, "page pool [{}, {}+{}) is invalid", first, first, count);
  free_pages_.reserve(static_cast<std::size_t>(count));
  for (std::int32_t i = count - 1; i >= 0; --i) free_pages_.push_back(PageId{first + i});
}

std::optional<std::vector<PageId>> PagePool::allocate(std::int32_t n) {
  CASCADE_CHECK(n >= 0, "allocate of {} pages", n);
  if (n > num_free_pages()) return std::nullopt;
  std::vector<PageId> out(free_pages_.end() - n, free_pages_.end());
  free_pages_.resize(free_pages_.size() - static_cast<std::size_t>(n));
  // Hand out in ascending order of the stack top, so a fresh pool gives first, first+1, ...
  std::reverse(out.begin(), out.end());
  for (PageId p : out) used_[static_cast<std::size_t>(page_index(p) - first_)] = 1;
  return out;
}

void PagePool::free(std::span<const PageId> pages) {
  // Mark as we validate and roll back on failure, so duplicates within `pages` are caught too.
  std::size_t marked = 0;
  auto rollback = [&] {
    for (std::size_t i = 0; i < marked; ++i)
      used_[static_cast<std::size_t>(page_index(pages[i]) - first_)] = 1;
  };
  for (; marked < pages.size(); ++marked) {
    PageId p = pages[marked];
    if (!owns(p)) {
      rollback();
      CASCADE_CHECK(false, "page {} is not in pool [{}, {})", page_index(p), first_, first_ + count_);
    }
    auto& flag = used_[static_cast<std::size_t>(page_index(p) - first_)];
    if (!flag) {
      rollback();
      CASCADE_CHECK(false, "page {} freed twice", page_index(p));
    }
    flag = 0;
  }
  free_pages_.insert(free_pages_.end(), pages.rbegin(), pages.rend());
}

bool PagePool::owns(PageId page) const {
  std::int32_t i = page_index(page);
  return i >= first_ && i - first_ < count_;
}

bool PagePool::is_used(PageId page) const {
  return owns(page) && used_[static_cast<std::size_t>(page_index(page) - first_)] != 0;
}

}  // namespace cascade

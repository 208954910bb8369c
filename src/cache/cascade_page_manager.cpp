#include "cache/cascade_page_manager.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace cascade {

namespace {

std::int32_t persistent_region_pages(int num_pages, double ratio) {
  if (num_pages < 1) {
    throw_error(ErrorCode::kInvalidArgument,
                "the KV cache holds {} pages; it needs at least 1 (raise kv_cache_bytes)", num_pages);
  }
  if (!(ratio >= 0.0 && ratio <= 1.0)) {
    throw_error(ErrorCode::kInvalidArgument, "chunk_page_ratio must be in [0, 1], got {}", ratio);
  }
  auto p = static_cast<std::int32_t>(std::floor(num_pages * ratio + 0.5));
  if (ratio > 0.0 && ratio < 1.0 && num_pages >= 2) p = std::clamp(p, 1, num_pages - 1);
  return std::clamp(p, 0, num_pages);
}

}  // namespace

CascadePageManager::CascadePageManager(int num_pages, double chunk_page_ratio, bool allow_borrowing)
    : total_(num_pages),
      allow_borrowing_(allow_borrowing),
      persistent_pool_(0, persistent_region_pages(num_pages, chunk_page_ratio)),
      dynamic_pool_(persistent_pool_.num_total_pages(), num_pages - persistent_pool_.num_total_pages()),
      roles_(static_cast<std::size_t>(num_pages), Role::kFree) {}

std::optional<std::vector<PageId>> CascadePageManager::try_allocate(std::int32_t n, Role role) {
  PagePool& own = role == Role::kPersistent ? persistent_pool_ : dynamic_pool_;
  PagePool& other = role == Role::kPersistent ? dynamic_pool_ : persistent_pool_;
  std::optional<std::vector<PageId>> pages;
  if (own.num_free_pages() >= n) {
    pages = own.allocate(n);
  } else if (allow_borrowing_ && own.num_free_pages() + other.num_free_pages() >= n) {
    const std::int32_t from_own = own.num_free_pages();
    pages = own.allocate(from_own);
    auto borrowed = other.allocate(n - from_own);
    CASCADE_CHECK(pages && borrowed, "page pools lost track of their free pages");
    pages->insert(pages->end(), borrowed->begin(), borrowed->end());
  }
  return pages;
}

std::optional<std::vector<PageId>> CascadePageManager::allocate(std::int32_t n, Role role) {
  CASCADE_CHECK(n >= 0, "allocation of {} pages", n);
  const bool persistent = role == Role::kPersistent;
  std::optional<std::vector<PageId>> pages = try_allocate(n, role);
  // Evictions free persistent pages only; they cannot help a dynamic side that may not borrow.
  const bool eviction_helps = persistent || allow_borrowing_;
  const bool possible = persistent ? can_ever_fit(n, 0) : can_ever_fit(0, n);
  while (!pages && eviction_helps && possible && eviction_hook_ && eviction_hook_()) {
    evictions_requested_++;
    pages = try_allocate(n, role);
  }
  if (!pages) return std::nullopt;
  for (PageId p : *pages) {
    Role& r = roles_[static_cast<std::size_t>(page_index(p))];
    CASCADE_CHECK(r == Role::kFree, "page {} handed out twice", page_index(p));
    r = role;
  }
  (persistent ? persistent_used_ : dynamic_used_) += n;
  peak_used_ = std::max(peak_used_, num_used_pages());
  peak_persistent_used_ = std::max(peak_persistent_used_, persistent_used_);
  peak_dynamic_used_ = std::max(peak_dynamic_used_, dynamic_used_);
  return pages;
}

std::optional<std::vector<PageId>> CascadePageManager::allocate_persistent(std::int32_t n) {
  return allocate(n, Role::kPersistent);
}

std::optional<std::vector<PageId>> CascadePageManager::allocate_dynamic(std::int32_t n) {
  return allocate(n, Role::kDynamic);
}

void CascadePageManager::release(std::span<const PageId> pages, Role role) {
  const char* name = role == Role::kPersistent ? "persistent" : "dynamic";
  // Validate and mark free together, rolling back on failure, so that a failed check (foreign page,
  // wrong role, double free, a page listed twice) changes nothing.
  std::size_t marked = 0;
  auto rollback = [&] {
    for (std::size_t k = 0; k < marked; ++k) roles_[static_cast<std::size_t>(page_index(pages[k]))] = role;
  };
  for (; marked < pages.size(); ++marked) {
    const std::int32_t i = page_index(pages[marked]);
    if (i < 0 || i >= total_) {
      rollback();
      CASCADE_CHECK(false, "page {} is outside the KV pool of {} pages", i, total_);
    }
    Role& r = roles_[static_cast<std::size_t>(i)];
    if (r != role) {
      const bool is_free = r == Role::kFree;
      rollback();
      CASCADE_CHECK(false, "page {} freed as {} but it is {}", i, name,
                    is_free ? "free (double free)" : "of the other role");
    }
    r = Role::kFree;
  }
  std::vector<PageId> to_persistent, to_dynamic;
  for (PageId p : pages) (persistent_pool_.owns(p) ? to_persistent : to_dynamic).push_back(p);
  persistent_pool_.free(to_persistent);
  dynamic_pool_.free(to_dynamic);
  (role == Role::kPersistent ? persistent_used_ : dynamic_used_) -= static_cast<std::int32_t>(pages.size());
}

void CascadePageManager::free_persistent(std::span<const PageId> pages) {
  release(pages, Role::kPersistent);
}

void CascadePageManager::free_dynamic(std::span<const PageId> pages) {
  release(pages, Role::kDynamic);
}

bool CascadePageManager::can_ever_fit(std::int32_t persistent_needed, std::int32_t dynamic_needed) const {
  if (persistent_needed < 0 || dynamic_needed < 0) return false;
  if (allow_borrowing_) {
    return static_cast<std::int64_t>(persistent_needed) + dynamic_needed <= total_;
  }
  return persistent_needed <= persistent_pool_.num_total_pages() &&
         dynamic_needed <= dynamic_pool_.num_total_pages();
}

PageManagerStats CascadePageManager::stats() const {
  PageManagerStats s;
  s.total = total_;
  s.persistent_region = persistent_pool_.num_total_pages();
  s.dynamic_region = dynamic_pool_.num_total_pages();
  s.persistent_used = persistent_used_;
  s.dynamic_used = dynamic_used_;
  s.free = num_free_pages();
  for (std::int32_t i = 0; i < total_; ++i) {
    const Role r = roles_[static_cast<std::size_t>(i)];
    const bool in_persistent_region = i < s.persistent_region;
    if (r == Role::kPersistent && !in_persistent_region) s.persistent_borrowed++;
    if (r == Role::kDynamic && in_persistent_region) s.dynamic_borrowed++;
  }
  s.peak_used = peak_used_;
  s.peak_persistent_used = peak_persistent_used_;
  s.peak_dynamic_used = peak_dynamic_used_;
  s.evictions_requested = evictions_requested_;
  return s;
}

}  // namespace cascade

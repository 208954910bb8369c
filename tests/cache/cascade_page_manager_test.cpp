#include "cache/cascade_page_manager.h"

#include <gtest/gtest.h>

#include <cmath>
#include <deque>
#include <functional>
#include <limits>
#include <set>

#include "core/error.h"

namespace cascade {
namespace {

ErrorCode code_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.code();
  }
  ADD_FAILURE() << "no cascade::Error thrown";
  return ErrorCode::kInternal;
}

void expect_accounting(const CascadePageManager& pm) {
  PageManagerStats s = pm.stats();
  EXPECT_EQ(s.persistent_used + s.dynamic_used + s.free, s.total);
  EXPECT_EQ(s.persistent_region + s.dynamic_region, s.total);
  EXPECT_EQ(pm.persistent_region_free() + pm.dynamic_region_free(), s.free);
}

TEST(CascadePageManager, SplitRounding) {
  struct Case {
    int pages;
    double ratio;
    int persistent;
  };
  // Round half up, then both sides at least one page for 0 < ratio < 1.
  for (Case c : {Case{10, 0.5, 5}, Case{5, 0.5, 3}, Case{10, 0.01, 1}, Case{10, 0.99, 9},
                 Case{2, 0.5, 1}, Case{2, 0.1, 1}, Case{1, 0.5, 1}, Case{1, 0.4, 0},
                 Case{10, 0.0, 0}, Case{10, 1.0, 10}, Case{1000, 0.3, 300}, Case{7, 0.25, 2}}) {
    CascadePageManager pm(c.pages, c.ratio);
    EXPECT_EQ(pm.persistent_region_size(), c.persistent) << c.pages << " " << c.ratio;
    EXPECT_EQ(pm.dynamic_region_size(), c.pages - c.persistent);
    expect_accounting(pm);
  }
  EXPECT_EQ(code_of([] { CascadePageManager(0, 0.5); }), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code_of([] { CascadePageManager(10, -0.1); }), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code_of([] { CascadePageManager(10, 1.5); }), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code_of([] { CascadePageManager(10, std::nan("")); }), ErrorCode::kInvalidArgument);
}

TEST(CascadePageManager, WithoutBorrowingRegionsAreHardLimits) {
  CascadePageManager pm(10, 0.3, /*allow_borrowing=*/false);
  int hook_calls = 0;
  pm.set_eviction_hook([&] { ++hook_calls; return false; });
  auto p = pm.allocate_persistent(3);
  ASSERT_TRUE(p);
  for (PageId id : *p) EXPECT_LT(page_index(id), 3);
  EXPECT_FALSE(pm.allocate_persistent(1));  // 7 dynamic pages free, but not lendable
  EXPECT_EQ(hook_calls, 1);
  auto d = pm.allocate_dynamic(7);
  ASSERT_TRUE(d);
  for (PageId id : *d) EXPECT_GE(page_index(id), 3);
  pm.free_persistent(*p);
  // Evicting chunks frees persistent pages only, so a dynamic shortfall must not call the hook.
  EXPECT_FALSE(pm.allocate_dynamic(1));
  EXPECT_EQ(hook_calls, 1);
  EXPECT_TRUE(pm.can_ever_fit(3, 7));
  EXPECT_FALSE(pm.can_ever_fit(4, 0));
  EXPECT_FALSE(pm.can_ever_fit(0, 8));
  expect_accounting(pm);
}

TEST(CascadePageManager, BorrowingUsesTheOtherRegionAndReturnsPagesHome) {
  CascadePageManager pm(10, 0.3);  // 3 persistent, 7 dynamic
  auto p = pm.allocate_persistent(5);
  ASSERT_TRUE(p);
  PageManagerStats s = pm.stats();
  EXPECT_EQ(s.persistent_used, 5);
  EXPECT_EQ(s.persistent_borrowed, 2);
  EXPECT_EQ(pm.dynamic_region_free(), 5);
  auto d = pm.allocate_dynamic(5);
  ASSERT_TRUE(d);
  EXPECT_FALSE(pm.allocate_dynamic(1));
  std::set<PageId> all(p->begin(), p->end());
  all.insert(d->begin(), d->end());
  EXPECT_EQ(all.size(), 10u);
  // Freeing the persistent pages gives each region its own pages back.
  pm.free_persistent(*p);
  EXPECT_EQ(pm.persistent_region_free(), 3);
  EXPECT_EQ(pm.dynamic_region_free(), 2);
  auto d2 = pm.allocate_dynamic(5);  // 2 own + 3 borrowed
  ASSERT_TRUE(d2);
  s = pm.stats();
  EXPECT_EQ(s.dynamic_used, 10);
  EXPECT_EQ(s.dynamic_borrowed, 3);
  EXPECT_EQ(s.peak_used, 10);
  EXPECT_TRUE(pm.can_ever_fit(4, 6));
  EXPECT_FALSE(pm.can_ever_fit(4, 7));
  expect_accounting(pm);
  pm.free_dynamic(*d);
  pm.free_dynamic(*d2);
  EXPECT_EQ(pm.num_used_pages(), 0);
  EXPECT_EQ(pm.stats().peak_used, 10);
}

TEST(CascadePageManager, RatioOneNeedsBorrowingForDynamicPages) {
  CascadePageManager strict(4, 1.0, false);
  EXPECT_FALSE(strict.allocate_dynamic(1));
  CascadePageManager lending(4, 1.0, true);
  auto d = lending.allocate_dynamic(4);
  ASSERT_TRUE(d);
  EXPECT_EQ(lending.stats().dynamic_borrowed, 4);
}

// The hook stands in for the engine: each call evicts the oldest cached "chunk".
TEST(CascadePageManager, EvictionHookFreesPersistentPagesUntilTheRequestFits) {
  for (bool borrow : {false, true}) {
    CascadePageManager pm(8, 0.5, borrow);
    std::deque<std::vector<PageId>> chunks;
    int hook_calls = 0;
    pm.set_eviction_hook([&] {
      ++hook_calls;
      if (chunks.empty()) return false;
      pm.free_persistent(chunks.front());
      chunks.pop_front();
      return true;
    });
    for (int i = 0; i < 4; ++i) chunks.push_back(*pm.allocate_persistent(1));
    if (borrow) {
      chunks.push_back(*pm.allocate_persistent(2));  // borrowed from the dynamic region
      EXPECT_EQ(hook_calls, 0);
    }
    auto p = pm.allocate_persistent(3);  // needs evictions
    ASSERT_TRUE(p);
    // Without borrowing it needs 3 own pages; with borrowing 2 dynamic pages are still free.
    const int expected_calls = borrow ? 1 : 3;
    EXPECT_EQ(hook_calls, expected_calls) << borrow;
    EXPECT_EQ(pm.stats().evictions_requested, static_cast<std::uint64_t>(expected_calls));
    chunks.push_back(*p);
    // A request no memory could ever hold evicts nothing.
    const std::size_t before = chunks.size();
    EXPECT_FALSE(pm.allocate_persistent(borrow ? 9 : 5));
    EXPECT_EQ(chunks.size(), before);
    EXPECT_EQ(hook_calls, expected_calls);
    if (borrow) {
      // Dynamic requests may also reclaim chunk pages when they can borrow.
      auto d = pm.allocate_dynamic(6);
      ASSERT_TRUE(d);
      EXPECT_GT(hook_calls, expected_calls);
      pm.free_dynamic(*d);
    }
    // Hook exhausted: nullopt, and nothing half-allocated.
    while (!chunks.empty()) {
      pm.free_persistent(chunks.front());
      chunks.pop_front();
    }
    auto all = pm.allocate_persistent(borrow ? 8 : 4);
    ASSERT_TRUE(all);
    const int used = pm.num_used_pages();
    EXPECT_FALSE(pm.allocate_persistent(1));
    EXPECT_EQ(pm.num_used_pages(), used);
    expect_accounting(pm);
  }
}

TEST(CascadePageManager, WrongRoleOrDoubleFreeIsRejectedWithoutChange) {
  CascadePageManager pm(6, 0.5);
  auto p = *pm.allocate_persistent(2);
  auto d = *pm.allocate_dynamic(2);
  EXPECT_EQ(code_of([&] { pm.free_dynamic(p); }), ErrorCode::kInternal);
  EXPECT_EQ(code_of([&] { pm.free_persistent(std::vector<PageId>{p[0], d[0]}); }), ErrorCode::kInternal);
  EXPECT_EQ(code_of([&] { pm.free_persistent(std::vector<PageId>{p[0], p[0]}); }), ErrorCode::kInternal);
  EXPECT_EQ(code_of([&] { pm.free_dynamic(std::vector<PageId>{PageId{6}}); }), ErrorCode::kInternal);
  EXPECT_EQ(pm.persistent_used(), 2);
  EXPECT_EQ(pm.dynamic_used(), 2);
  pm.free_persistent(p);
  EXPECT_EQ(code_of([&] { pm.free_persistent(p); }), ErrorCode::kInternal);
  pm.free_dynamic(d);
  EXPECT_EQ(pm.num_free_pages(), 6);
  expect_accounting(pm);
}

}  // namespace
}  // namespace cascade

#include "cache/page_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
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

TEST(PagePool, AllocatesDistinctOwnedPagesAllOrNothing) {
  PagePool pool(10, 8);
  auto a = pool.allocate(5);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->size(), 5u);
  EXPECT_EQ(pool.num_used_pages(), 5);
  EXPECT_EQ(pool.num_free_pages(), 3);
  // More than is free: nothing is taken.
  EXPECT_FALSE(pool.allocate(4));
  EXPECT_EQ(pool.num_free_pages(), 3);
  auto b = pool.allocate(3);
  ASSERT_TRUE(b);
  std::set<std::int32_t> seen;
  for (auto p : *a) seen.insert(page_index(p));
  for (auto p : *b) seen.insert(page_index(p));
  EXPECT_EQ(seen.size(), 8u);
  EXPECT_EQ(*seen.begin(), 10);
  EXPECT_EQ(*seen.rbegin(), 17);
  for (int i : seen) EXPECT_TRUE(pool.is_used(PageId{i}));
  EXPECT_EQ(pool.num_free_pages(), 0);
  auto empty = pool.allocate(0);
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());
  pool.free(*a);
  EXPECT_EQ(pool.num_free_pages(), 5);
  EXPECT_EQ(pool.num_used_pages() + pool.num_free_pages(), pool.num_total_pages());
}

TEST(PagePool, DoubleFreeForeignAndDuplicateAreRejectedWithoutChange) {
  PagePool pool(0, 4);
  auto a = pool.allocate(2);
  ASSERT_TRUE(a);
  pool.free(std::vector<PageId>{(*a)[0]});
  EXPECT_EQ(code_of([&] { pool.free(std::vector<PageId>{(*a)[0]}); }), ErrorCode::kInternal);
  EXPECT_EQ(code_of([&] { pool.free(std::vector<PageId>{PageId{4}}); }), ErrorCode::kInternal);
  EXPECT_EQ(code_of([&] { pool.free(std::vector<PageId>{PageId{-1}}); }), ErrorCode::kInternal);
  // A page listed twice: the first copy must not be freed either.
  EXPECT_EQ(code_of([&] { pool.free(std::vector<PageId>{(*a)[1], (*a)[1]}); }), ErrorCode::kInternal);
  EXPECT_TRUE(pool.is_used((*a)[1]));
  EXPECT_EQ(pool.num_used_pages(), 1);
  pool.free(std::vector<PageId>{(*a)[1]});
  EXPECT_EQ(pool.num_free_pages(), 4);
  // A fully free pool hands out all of its pages again, each once.
  auto all = pool.allocate(4);
  ASSERT_TRUE(all);
  std::set<PageId> unique(all->begin(), all->end());
  EXPECT_EQ(unique.size(), 4u);
}

TEST(PagePool, EmptyPool) {
  PagePool pool(3, 0);
  EXPECT_EQ(pool.num_total_pages(), 0);
  EXPECT_FALSE(pool.allocate(1));
  EXPECT_TRUE(pool.allocate(0));
  EXPECT_FALSE(pool.owns(PageId{3}));
}

}  // namespace
}  // namespace cascade

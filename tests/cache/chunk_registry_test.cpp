#include "cache/chunk_registry.h"

#include <gtest/gtest.h>

#include <functional>

#include "core/error.h"

namespace cascade {
namespace {

using Tokens = std::vector<std::int32_t>;

ErrorCode code_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.code();
  }
  ADD_FAILURE() << "no cascade::Error thrown";
  return ErrorCode::kInternal;
}

// A registry whose clock is a variable the test sets.
struct ClockedRegistry {
  std::uint64_t now = 0;
  ChunkRegistry reg;
  explicit ClockedRegistry(ChunkRegistryOptions opts) : reg(with_clock(std::move(opts))) {}
  ChunkRegistryOptions with_clock(ChunkRegistryOptions opts) {
    opts.clock = [this] { return now; };
    return opts;
  }
  // Acquires and releases a root chunk at time t; returns its id.
  ChunkId touch(const Tokens& tokens, std::uint64_t t) {
    now = t;
    auto r = reg.acquire(nullptr, ChunkKind::kContext, tokens);
    EXPECT_TRUE(r.freed_pages.empty());
    ChunkId id = r.chunk->id;
    EXPECT_TRUE(reg.release(r.chunk).empty());
    return id;
  }
};

ChunkRegistryOptions opts(int capacity) {
  ChunkRegistryOptions o;
  o.capacity = capacity;
  o.page_size = 4;
  return o;
}

TEST(ChunkRegistry, EvictsLeastRecentlyUsedByInjectedClock) {
  ClockedRegistry c(opts(3));
  ChunkId a = c.touch({1}, 10);
  ChunkId b = c.touch({2}, 20);
  ChunkId d = c.touch({3}, 30);
  EXPECT_EQ(c.touch({1}, 40), a);  // a hit refreshes a
  c.now = 50;
  auto r = c.reg.acquire(nullptr, ChunkKind::kContext, Tokens{4});  // full: evicts b
  EXPECT_FALSE(r.hit);
  EXPECT_EQ(c.reg.state(b), ChunkState::kEvicted);
  EXPECT_EQ(code_of([&] { c.reg.lookup(b); }), ErrorCode::kEvicted);
  EXPECT_EQ(c.reg.state(a), ChunkState::kCached);
  auto list = c.reg.list();  // least recently used first
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].id, d);
  EXPECT_EQ(list[1].id, a);
  EXPECT_EQ(list[2].id, r.chunk->id);
  EXPECT_EQ(list[2].ref_count, 1);
  EXPECT_EQ(list[1].last_used, 40u);
  // The clock decides, not call order: make a the oldest.
  c.touch({1}, 5);
  auto e = c.reg.evict_one();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->id, a);
  EXPECT_EQ(c.reg.stats().evictions, 2u);
  EXPECT_TRUE(c.reg.release(r.chunk).empty());
}

TEST(ChunkRegistry, EqualTicksFallBackToTouchOrder) {
  ClockedRegistry c(opts(10));
  ChunkId x = c.touch({1}, 7);
  c.touch({2}, 7);
  auto e = c.reg.evict_one();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->id, x);
}

TEST(ChunkRegistry, ChunksInUseAreNeverEvictedOrErased) {
  ChunkRegistry reg(opts(10));
  auto held = reg.acquire(nullptr, ChunkKind::kSystem, Tokens{1, 2, 3, 4, 5});
  reg.assign_pages(held.chunk, {PageId{0}, PageId{1}});
  const ChunkId id = held.chunk->id;
  EXPECT_EQ(code_of([&] { (void)reg.erase(id); }), ErrorCode::kFailedPrecondition);
  EXPECT_FALSE(reg.evict_one());
  auto cleared = reg.clear(std::nullopt);
  EXPECT_EQ(cleared.removed, 0);
  EXPECT_EQ(cleared.skipped_in_use, 1);
  EXPECT_EQ(reg.lookup(id).pages.size(), 2u);
  EXPECT_TRUE(reg.release(held.chunk).empty());
  auto pages = reg.erase(id);
  EXPECT_EQ(pages, (std::vector<PageId>{PageId{0}, PageId{1}}));
  EXPECT_EQ(code_of([&] { (void)reg.erase(id); }), ErrorCode::kNotFound);  // deleted, not evicted
  EXPECT_EQ(code_of([&] { reg.lookup(id); }), ErrorCode::kNotFound);
  EXPECT_EQ(reg.stats().erased, 1u);
  EXPECT_EQ(reg.stats().evictions, 0u);
}

TEST(ChunkRegistry, PinnedChunksSurviveEvictionButNotErase) {
  ChunkRegistry reg(opts(10));
  auto r = reg.acquire(nullptr, ChunkKind::kContext, Tokens{9});
  const ChunkId id = r.chunk->id;
  EXPECT_TRUE(reg.release(r.chunk).empty());
  EXPECT_TRUE(reg.set_pinned(id, true).empty());
  EXPECT_FALSE(reg.evict_one());
  EXPECT_EQ(reg.stats().evictable_chunks, 0);
  EXPECT_TRUE(reg.erase(id).empty());
  EXPECT_EQ(code_of([&] { (void)reg.set_pinned(id, false); }), ErrorCode::kNotFound);
}

TEST(ChunkRegistry, CountsHitsMissesAndTokensSaved) {
  ChunkRegistryOptions o = opts(10);
  o.bytes_per_token = 1000;
  ChunkRegistry reg(o);
  std::uint64_t expected_saved = 0;

  // Cached and complete: a hit saves every token.
  auto a = reg.acquire(nullptr, ChunkKind::kContext, Tokens{1, 2, 3, 4, 5, 6});
  EXPECT_FALSE(a.hit);
  reg.assign_pages(a.chunk, {PageId{0}, PageId{1}});
  reg.set_num_computed(a.chunk, 6);
  EXPECT_TRUE(reg.release(a.chunk).empty());
  auto a2 = reg.acquire(nullptr, ChunkKind::kContext, Tokens{1, 2, 3, 4, 5, 6});
  EXPECT_TRUE(a2.hit);
  EXPECT_EQ(a2.chunk, a.chunk);
  expected_saved += 6;

  // Held by another sequence that is computing it: computed once for both, all tokens saved.
  auto b = reg.acquire(nullptr, ChunkKind::kQuery, Tokens{7, 8, 9});
  auto b2 = reg.acquire(nullptr, ChunkKind::kQuery, Tokens{7, 8, 9});
  EXPECT_TRUE(b2.hit);
  expected_saved += 3;

  // Unreferenced and half done: only the computed part is saved.
  auto c = reg.acquire(nullptr, ChunkKind::kAuto, Tokens{1, 1, 1, 1, 1});
  reg.assign_pages(c.chunk, {PageId{2}, PageId{3}});
  reg.set_num_computed(c.chunk, 2);
  EXPECT_TRUE(reg.release(c.chunk).empty());
  auto c2 = reg.acquire(nullptr, ChunkKind::kAuto, Tokens{1, 1, 1, 1, 1});
  EXPECT_TRUE(c2.hit);
  EXPECT_EQ(c2.chunk->num_computed, 2);
  expected_saved += 2;

  // Same tokens, other kind: a different chunk.
  auto d = reg.acquire(nullptr, ChunkKind::kSystem, Tokens{7, 8, 9});
  EXPECT_FALSE(d.hit);

  ChunkRegistryStats s = reg.stats();
  EXPECT_EQ(s.hits, 3u);
  EXPECT_EQ(s.misses, 4u);
  EXPECT_EQ(s.token_mismatches, 0u);
  EXPECT_EQ(s.tokens_saved, expected_saved);
  EXPECT_EQ(s.bytes_saved, expected_saved * 1000);
  EXPECT_EQ(s.num_chunks, 4);
  EXPECT_EQ(s.num_referenced, 4);
  EXPECT_EQ(s.cached_tokens, 6 + 3 + 5 + 3);
  for (auto* h : {a2.chunk, b.chunk, b2.chunk, c2.chunk, d.chunk}) EXPECT_TRUE(reg.release(h).empty());
  s = reg.stats();
  EXPECT_EQ(s.num_referenced, 0);
  EXPECT_EQ(s.evictable_chunks, 4);
  EXPECT_EQ(s.evictable_pages, 4);
}

TEST(ChunkRegistry, ChainsSetStartPositionsAndParentMatters) {
  ChunkRegistry reg(opts(10));
  auto sys = reg.acquire(nullptr, ChunkKind::kSystem, Tokens{1, 2, 3});
  auto doc = reg.acquire(sys.chunk, ChunkKind::kContext, Tokens{4, 5});
  EXPECT_EQ(doc.chunk->start_pos, 3);
  EXPECT_EQ(doc.chunk->parent, sys.chunk->id);
  auto q = reg.acquire(doc.chunk, ChunkKind::kQuery, Tokens{6});
  EXPECT_EQ(q.chunk->start_pos, 5);
  // The same document as a root chunk is a different chunk.
  auto doc_root = reg.acquire(nullptr, ChunkKind::kContext, Tokens{4, 5});
  EXPECT_FALSE(doc_root.hit);
  EXPECT_NE(doc_root.chunk, doc.chunk);
  EXPECT_EQ(doc_root.chunk->start_pos, 0);
  auto list = reg.list();
  int children_of_sys = -1;
  for (const auto& s : list)
    if (s.id == sys.chunk->id) children_of_sys = s.num_children;
  EXPECT_EQ(children_of_sys, 1);
  for (auto* h : {q.chunk, doc.chunk, sys.chunk, doc_root.chunk}) EXPECT_TRUE(reg.release(h).empty());
}

TEST(ChunkRegistry, EvictsLeavesBeforeTheirParents) {
  ClockedRegistry c(opts(10));
  c.now = 1;
  auto root = c.reg.acquire(nullptr, ChunkKind::kSystem, Tokens{1});
  auto child = c.reg.acquire(root.chunk, ChunkKind::kContext, Tokens{2});
  const ChunkId root_id = root.chunk->id, child_id = child.chunk->id;
  c.now = 10;
  EXPECT_TRUE(c.reg.release(root.chunk).empty());  // the root is older...
  c.now = 20;
  EXPECT_TRUE(c.reg.release(child.chunk).empty());
  // ...but the child goes first: a parent serves all its children, a child needs its parent.
  auto e = c.reg.evict_one();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->id, child_id);
  e = c.reg.evict_one();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->id, root_id);
}

TEST(ChunkRegistry, ChildOutlivesItsEvictedParent) {
  ClockedRegistry c(opts(10));
  c.now = 1;
  auto root = c.reg.acquire(nullptr, ChunkKind::kSystem, Tokens{1});
  auto child = c.reg.acquire(root.chunk, ChunkKind::kContext, Tokens{2});
  c.reg.assign_pages(child.chunk, {PageId{7}});
  c.reg.set_num_computed(child.chunk, 1);
  const ChunkId root_id = root.chunk->id, child_id = child.chunk->id;
  EXPECT_TRUE(c.reg.release(root.chunk).empty());
  EXPECT_TRUE(c.reg.release(child.chunk).empty());
  EXPECT_TRUE(c.reg.set_pinned(child_id, true).empty());
  auto e = c.reg.evict_one();  // with the child pinned, only the root is a candidate
  ASSERT_TRUE(e);
  EXPECT_EQ(e->id, root_id);
  // The child outlives its parent and stays valid: its id encodes the parent's content, so a
  // recomputed parent leads back to the same child with the same pages.
  auto root2 = c.reg.acquire(nullptr, ChunkKind::kSystem, Tokens{1});
  EXPECT_FALSE(root2.hit);
  EXPECT_EQ(root2.chunk->num_computed, 0);
  auto child2 = c.reg.acquire(root2.chunk, ChunkKind::kContext, Tokens{2});
  EXPECT_TRUE(child2.hit);
  EXPECT_EQ(child2.chunk->pages, std::vector<PageId>{PageId{7}});
  EXPECT_TRUE(c.reg.release(child2.chunk).empty());
  EXPECT_TRUE(c.reg.release(root2.chunk).empty());
  EXPECT_TRUE(c.reg.set_pinned(child_id, false).empty());
  e = c.reg.evict_one();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->id, child_id);
  EXPECT_EQ(e->pages, std::vector<PageId>{PageId{7}});
}

TEST(ChunkRegistry, OverflowsWhenEverythingIsHeldAndTrimsOnRelease) {
  ChunkRegistry reg(opts(2));
  auto a = reg.acquire(nullptr, ChunkKind::kContext, Tokens{1});
  reg.assign_pages(a.chunk, {PageId{0}});
  auto b = reg.acquire(nullptr, ChunkKind::kContext, Tokens{2});
  auto c = reg.acquire(nullptr, ChunkKind::kContext, Tokens{3});
  EXPECT_TRUE(c.freed_pages.empty());
  EXPECT_EQ(reg.size(), 3);  // over capacity: requests are not failed
  const ChunkId a_id = a.chunk->id;
  auto freed = reg.release(a.chunk);  // back to capacity: the only unreferenced chunk goes
  EXPECT_EQ(freed, std::vector<PageId>{PageId{0}});
  EXPECT_EQ(reg.size(), 2);
  EXPECT_EQ(reg.state(a_id), ChunkState::kEvicted);
  EXPECT_TRUE(reg.release(b.chunk).empty());
  // At capacity with b unreferenced: inserting evicts b and hands back its (zero) pages.
  auto d = reg.acquire(nullptr, ChunkKind::kContext, Tokens{4});
  EXPECT_EQ(reg.size(), 2);
  EXPECT_EQ(reg.stats().evictions, 2u);
  EXPECT_TRUE(reg.release(c.chunk).empty());
  EXPECT_TRUE(reg.release(d.chunk).empty());
}

TEST(ChunkRegistry, InsertEvictionReturnsEvictedPages) {
  ChunkRegistry reg(opts(1));
  auto a = reg.acquire(nullptr, ChunkKind::kContext, Tokens{1, 2, 3, 4, 5});
  reg.assign_pages(a.chunk, {PageId{3}, PageId{8}});
  EXPECT_TRUE(reg.release(a.chunk).empty());
  auto b = reg.acquire(nullptr, ChunkKind::kContext, Tokens{6});
  EXPECT_EQ(b.freed_pages, (std::vector<PageId>{PageId{3}, PageId{8}}));
  EXPECT_TRUE(reg.release(b.chunk).empty());
}

// An id function where only the first token matters and the parent is ignored, so collisions of
// every kind are easy to make.
ChunkId weak_id(const ChunkId*, ChunkKind, std::span<const std::int32_t> tokens) {
  return compute_chunk_id(nullptr, ChunkKind::kAuto, tokens.first(1));
}

TEST(ChunkRegistry, IdCollisionsNeverReturnTheWrongChunk) {
  ChunkRegistryOptions o = opts(10);
  o.id_fn = weak_id;
  ChunkRegistry reg(o);
  auto a = reg.acquire(nullptr, ChunkKind::kContext, Tokens{1, 5});
  auto b = reg.acquire(nullptr, ChunkKind::kContext, Tokens{1, 6});  // same id, other tokens
  EXPECT_FALSE(b.hit);
  EXPECT_TRUE(b.token_mismatch);
  EXPECT_NE(b.chunk, a.chunk);
  EXPECT_TRUE(b.chunk->detached);
  EXPECT_EQ(b.chunk->tokens, (Tokens{1, 6}));
  // The child of a detached parent must not hit the registered parent's child, although its id,
  // tokens and start position all match: its prefix is different.
  auto a_child = reg.acquire(a.chunk, ChunkKind::kQuery, Tokens{9});
  auto b_child = reg.acquire(b.chunk, ChunkKind::kQuery, Tokens{9});
  EXPECT_FALSE(b_child.hit);
  EXPECT_TRUE(b_child.chunk->detached);
  EXPECT_NE(b_child.chunk, a_child.chunk);
  // Same id through a different (registered) parent: the stored parent differs, so no hit.
  auto r2 = reg.acquire(nullptr, ChunkKind::kContext, Tokens{2, 5});
  auto r2_child = reg.acquire(r2.chunk, ChunkKind::kQuery, Tokens{9});
  EXPECT_FALSE(r2_child.hit);
  EXPECT_TRUE(r2_child.token_mismatch);
  EXPECT_NE(r2_child.chunk, a_child.chunk);
  // Other kind, same id: no hit either.
  auto k = reg.acquire(nullptr, ChunkKind::kSystem, Tokens{1, 5});
  EXPECT_TRUE(k.token_mismatch);

  ChunkRegistryStats s = reg.stats();
  EXPECT_EQ(s.token_mismatches, 3u);
  EXPECT_EQ(s.hits, 0u);
  EXPECT_EQ(s.misses, 7u);
  EXPECT_EQ(s.num_detached, 4);
  EXPECT_EQ(s.num_chunks, 3);  // a, a_child, r2
  EXPECT_EQ(reg.lookup(a.chunk->id).tokens, (Tokens{1, 5}));
  // A detached chunk is destroyed on its last release and hands back its pages.
  reg.assign_pages(b.chunk, {PageId{11}});
  EXPECT_EQ(reg.release(b.chunk), std::vector<PageId>{PageId{11}});
  for (auto* h : {b_child.chunk, r2_child.chunk, k.chunk, a_child.chunk, a.chunk, r2.chunk})
    EXPECT_TRUE(reg.release(h).empty());
  EXPECT_EQ(reg.stats().num_detached, 0);
}

TEST(ChunkRegistry, ClearByKind) {
  ChunkRegistry reg(opts(10));
  auto s1 = reg.acquire(nullptr, ChunkKind::kSystem, Tokens{1});
  reg.assign_pages(s1.chunk, {PageId{1}});
  auto c1 = reg.acquire(nullptr, ChunkKind::kContext, Tokens{2});
  reg.assign_pages(c1.chunk, {PageId{2}});
  auto c2 = reg.acquire(nullptr, ChunkKind::kContext, Tokens{3});
  const ChunkId c1_id = c1.chunk->id;
  for (auto* h : {s1.chunk, c1.chunk}) EXPECT_TRUE(reg.release(h).empty());
  ClearResult r = reg.clear(ChunkKind::kContext);
  EXPECT_EQ(r.removed, 1);
  EXPECT_EQ(r.skipped_in_use, 1);
  EXPECT_EQ(r.freed_pages, std::vector<PageId>{PageId{2}});
  EXPECT_EQ(reg.state(c1_id), ChunkState::kUnknown);
  EXPECT_EQ(reg.size(), 2);
  EXPECT_TRUE(reg.release(c2.chunk).empty());
  r = reg.clear(std::nullopt);
  EXPECT_EQ(r.removed, 2);
  EXPECT_EQ(r.freed_pages, std::vector<PageId>{PageId{1}});
  EXPECT_EQ(reg.size(), 0);
}

TEST(ChunkRegistry, RemembersABoundedNumberOfEvictedIds) {
  ChunkRegistryOptions o = opts(10);
  o.evicted_ids_remembered = 2;
  ChunkRegistry reg(o);
  std::vector<ChunkId> ids;
  for (int t = 0; t < 3; ++t) {
    auto r = reg.acquire(nullptr, ChunkKind::kContext, Tokens{t});
    ids.push_back(r.chunk->id);
    EXPECT_TRUE(reg.release(r.chunk).empty());
  }
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(reg.evict_one());
  EXPECT_EQ(reg.state(ids[0]), ChunkState::kUnknown);
  EXPECT_EQ(reg.state(ids[1]), ChunkState::kEvicted);
  EXPECT_EQ(reg.state(ids[2]), ChunkState::kEvicted);
  auto again = reg.acquire(nullptr, ChunkKind::kContext, Tokens{1});  // re-registered
  EXPECT_EQ(reg.state(ids[1]), ChunkState::kCached);
  EXPECT_TRUE(reg.release(again.chunk).empty());
}

TEST(ChunkRegistry, MetadataMergesOnHit) {
  ChunkRegistry reg(opts(10));
  auto a = reg.acquire(nullptr, ChunkKind::kContext, Tokens{1}, {{"title", "a"}, {"src", "x"}});
  auto b = reg.acquire(nullptr, ChunkKind::kContext, Tokens{1}, {{"title", "b"}});
  EXPECT_TRUE(b.hit);
  auto m = reg.lookup(a.chunk->id).metadata;
  EXPECT_EQ(m.at("title"), "b");
  EXPECT_EQ(m.at("src"), "x");
  EXPECT_TRUE(reg.release(a.chunk).empty());
  EXPECT_TRUE(reg.release(b.chunk).empty());
}

TEST(ChunkRegistry, RejectsBadInputAndBrokenInvariants) {
  EXPECT_EQ(code_of([] { ChunkRegistry r(opts(0)); }), ErrorCode::kInvalidArgument);
  ChunkRegistry reg(opts(10));
  EXPECT_EQ(code_of([&] { reg.acquire(nullptr, ChunkKind::kContext, Tokens{}); }),
            ErrorCode::kInvalidArgument);
  auto a = reg.acquire(nullptr, ChunkKind::kContext, Tokens{1, 2, 3, 4, 5});  // page_size 4: 2 pages
  EXPECT_EQ(code_of([&] { reg.set_num_computed(a.chunk, 1); }), ErrorCode::kInternal);  // no pages
  EXPECT_EQ(code_of([&] { reg.assign_pages(a.chunk, {PageId{0}}); }), ErrorCode::kInternal);
  reg.assign_pages(a.chunk, {PageId{0}, PageId{1}});
  EXPECT_EQ(code_of([&] { reg.assign_pages(a.chunk, {PageId{2}, PageId{3}}); }), ErrorCode::kInternal);
  reg.set_num_computed(a.chunk, 3);
  EXPECT_EQ(code_of([&] { reg.set_num_computed(a.chunk, 2); }), ErrorCode::kInternal);
  EXPECT_EQ(code_of([&] { reg.set_num_computed(a.chunk, 6); }), ErrorCode::kInternal);
  EXPECT_TRUE(reg.release(a.chunk).empty());
  EXPECT_EQ(code_of([&] { (void)reg.release(a.chunk); }), ErrorCode::kInternal);  // over-release
  EXPECT_EQ(code_of([&] { reg.lookup(ChunkId{}); }), ErrorCode::kNotFound);
}

}  // namespace
}  // namespace cascade

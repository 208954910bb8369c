// Several threads acquire, release, list, look up, erase and evict at once. Run under TSAN by
// scripts/tsan_cache.sh. Afterwards every page ever assigned must be accounted for exactly once.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <set>
#include <thread>

#include "cache/chunk_registry.h"
#include "core/error.h"

namespace cascade {
namespace {

constexpr int kPageSize = 4;

TEST(ChunkRegistryStress, ConcurrentUseKeepsRefcountsAndPagesExact) {
  ChunkRegistryOptions o;
  o.capacity = 12;
  o.page_size = kPageSize;
  ChunkRegistry reg(o);
  std::atomic<std::int32_t> next_page{0};
  std::atomic<int> workers_left{0};
  std::atomic<std::uint64_t> acquires{0};
  constexpr int kWorkers = 4, kIters = 1500;

  auto tokens_for = [](int doc) {
    std::vector<std::int32_t> t(static_cast<std::size_t>(1 + doc % 7));
    for (std::size_t j = 0; j < t.size(); ++j) t[j] = doc * 31 + static_cast<int>(j);
    return t;
  };
  auto give_pages = [&](ContextChunk* c) {
    // Only the thread whose acquire created the chunk assigns its pages, while holding it.
    std::vector<PageId> pages;
    for (int i = 0; i < pages_for_tokens(c->num_tokens(), kPageSize); ++i) pages.push_back(PageId{next_page++});
    reg.assign_pages(c, std::move(pages));
    reg.set_num_computed(c, c->num_tokens());
  };

  std::vector<std::vector<PageId>> freed(kWorkers + 2);
  std::vector<std::thread> threads;
  workers_left = kWorkers;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937 rng(static_cast<unsigned>(w + 1));
      auto& out = freed[static_cast<std::size_t>(w)];
      for (int i = 0; i < kIters; ++i) {
        std::vector<AcquireResult> chain;
        const int depth = 1 + static_cast<int>(rng() % 3);
        for (int d = 0; d < depth; ++d) {
          auto r = reg.acquire(chain.empty() ? nullptr : chain.back().chunk, ChunkKind::kContext,
                               tokens_for(static_cast<int>(rng() % 6)));
          acquires++;
          out.insert(out.end(), r.freed_pages.begin(), r.freed_pages.end());
          if (!r.hit) give_pages(r.chunk);
          chain.push_back(std::move(r));
        }
        for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
          auto pages = reg.release(it->chunk);
          out.insert(out.end(), pages.begin(), pages.end());
        }
      }
      workers_left--;
    });
  }
  // A reader: list, stats, lookups.
  threads.emplace_back([&] {
    std::uint64_t seen = 0;
    while (workers_left > 0) {
      for (const ChunkSummary& s : reg.list()) {
        EXPECT_GE(s.ref_count, 0);
        if (auto c = reg.find(s.id)) seen += c->tokens.size();
        (void)reg.state(s.id);
      }
      auto st = reg.stats();
      EXPECT_GE(st.num_chunks, 0);
    }
    EXPECT_GT(seen, 0u);
  });
  // A deleter: erase, evict, clear.
  threads.emplace_back([&] {
    std::mt19937 rng(99);
    auto& out = freed[kWorkers + 1];
    while (workers_left > 0) {
      auto list = reg.list();
      if (!list.empty()) {
        try {
          auto pages = reg.erase(list[rng() % list.size()].id);
          out.insert(out.end(), pages.begin(), pages.end());
        } catch (const Error& e) {
          // In use, or already evicted / erased by someone else meanwhile.
          EXPECT_TRUE(e.code() == ErrorCode::kFailedPrecondition || e.code() == ErrorCode::kNotFound ||
                      e.code() == ErrorCode::kEvicted)
              << e.what();
        }
      }
      if (auto e = reg.evict_one()) out.insert(out.end(), e->pages.begin(), e->pages.end());
      if (rng() % 50 == 0) {
        auto r = reg.clear(std::nullopt);
        out.insert(out.end(), r.freed_pages.begin(), r.freed_pages.end());
      }
    }
  });
  for (auto& t : threads) t.join();

  // Every page handed out is either freed exactly once or still held by a cached chunk.
  std::multiset<PageId> all;
  for (const auto& v : freed) all.insert(v.begin(), v.end());
  for (const ChunkSummary& s : reg.list()) {
    EXPECT_EQ(s.ref_count, 0);
    auto c = reg.find(s.id);
    ASSERT_TRUE(c);
    all.insert(c->pages.begin(), c->pages.end());
  }
  const std::int32_t assigned = next_page.load();
  ASSERT_EQ(static_cast<std::int64_t>(all.size()), assigned);
  std::int32_t expect = 0;
  for (PageId p : all) EXPECT_EQ(page_index(p), expect++);
  auto st = reg.stats();
  EXPECT_EQ(st.hits + st.misses, acquires.load());
  EXPECT_GT(st.hits, 0u);
  EXPECT_EQ(st.num_referenced, 0);
  EXPECT_EQ(st.num_detached, 0);
  EXPECT_LE(st.num_chunks, o.capacity);
}

}  // namespace
}  // namespace cascade

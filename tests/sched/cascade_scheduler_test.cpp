// CascadeScheduler: the level plan of known sharing patterns (CSR arrays checked exactly), the cost
// heuristic, input validation, and on seeded random sharing trees: cascade attention equal to flat
// attention (fp32, 1e-5 relative) and to a float64 reference from unpaged K/V.
#include "sched/cascade_scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "backend/cpu/attention.h"
#include "backend/paged_kv_fixture.h"
#include "core/error.h"

namespace cascade::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct HeadLayout {
  int q_heads, kv_heads, head_dim;
};

// A batch plus the unpaged truth of every sequence's keys (positions from 0) and its queries.
struct Batch {
  std::vector<SeqAttnInput> seqs;
  std::vector<KvTruth> truth;
  std::vector<float> q;
  int rows = 0;
};

// A shared chunk (or a sequence's own run) written once into the pool.
struct KvRun {
  std::string key;
  KvTruth truth;
  KvPageList pages;
};

class Builder {
 public:
  Builder(PagedKvPool& pool, const HeadLayout& hl, std::uint64_t seed)
      : pool_(pool), hl_(hl), rng_(seed) {}

  // A run of `len` random tokens at start_pos, written to fresh pages.
  KvRun make_run(const std::string& key, int start_pos, int len) {
    KvRun r;
    r.key = key;
    const int slot = hl_.kv_heads * hl_.head_dim;
    r.truth.start_pos = start_pos;
    r.truth.k = random_values(rng_, static_cast<std::size_t>(len) * slot, 1.0f);
    r.truth.v = random_values(rng_, static_cast<std::size_t>(len) * slot, 1.0f);
    r.pages = pool_.write(r.truth);
    return r;
  }

  // Adds a sequence made of `chain` (shared runs then its own runs, contiguous from position 0)
  // with num_rows rows ending at its last position.
  void add_seq(Batch& b, const std::vector<const KvRun*>& chain, int num_rows) {
    SeqAttnInput in;
    KvTruth t;
    for (const KvRun* r : chain) {
      in.blocks.push_back(KvBlock{r->key, r->pages});
      t.k.insert(t.k.end(), r->truth.k.begin(), r->truth.k.end());
      t.v.insert(t.v.end(), r->truth.v.begin(), r->truth.v.end());
    }
    const int end = t.num_tokens(hl_.kv_heads * hl_.head_dim);
    in.num_rows = num_rows;
    in.first_row_pos = end - num_rows;
    b.seqs.push_back(std::move(in));
    b.truth.push_back(std::move(t));
    b.rows += num_rows;
  }

  void make_queries(Batch& b) {
    b.q = random_values(rng_, static_cast<std::size_t>(b.rows) * hl_.q_heads * hl_.head_dim, 1.0f);
  }

  std::mt19937_64& rng() { return rng_; }

 private:
  PagedKvPool& pool_;
  HeadLayout hl_;
  std::mt19937_64 rng_;
};

// Random sharing trie: each sequence copies a random prefix of an earlier sequence's chunk chain
// (with probability share_prob), adds 0-2 fresh chunks, then 0-30 own tokens. Chunk lengths are
// random, so many pages are partial. Rows: 1 (decode) or up to 30 at the end (prefill, reaching
// into shared chunks when the own run is short: those chunks are being computed this step).
Batch random_tree(Builder& bld, std::vector<std::unique_ptr<KvRun>>& runs, int num_seqs, bool decode,
                  double share_prob) {
  Batch b;
  std::vector<std::vector<const KvRun*>> chains;
  std::mt19937_64& rng = bld.rng();
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int s = 0; s < num_seqs; ++s) {
    std::vector<const KvRun*> chain;
    if (!chains.empty() && u(rng) < share_prob) {
      const auto& other = chains[rng() % chains.size()];
      // Often the whole chain, so sharing nests deeply (several levels).
      const std::size_t take = rng() % 2 == 0 ? other.size() : rng() % (other.size() + 1);
      chain.assign(other.begin(), other.begin() + static_cast<long>(take));
    }
    auto end_of = [&]() {
      int end = 0;
      for (const KvRun* r : chain) end = r->pages.start_pos + r->pages.num_tokens();
      return end;
    };
    const int fresh = static_cast<int>(rng() % 3);
    for (int i = 0; i < fresh; ++i) {
      runs.push_back(std::make_unique<KvRun>(bld.make_run(
          fmt::format("{:016x}", runs.size() * 0x9e3779b97f4a7c15ull), end_of(),
          1 + static_cast<int>(rng() % 40))));
      chain.push_back(runs.back().get());
    }
    chains.push_back(chain);
    int own = rng() % 4 == 0 ? 0 : 1 + static_cast<int>(rng() % 30);
    if (end_of() + own == 0) own = 1;
    if (own > 0) {
      runs.push_back(std::make_unique<KvRun>(bld.make_run("", end_of(), own)));
      chain.push_back(runs.back().get());
    }
    const int total = end_of();
    const int rows = decode ? 1 : 1 + static_cast<int>(rng() % std::min(total, 30));
    bld.add_seq(b, chain, rows);
  }
  bld.make_queries(b);
  return b;
}

// Structural checks any valid plan must pass: rows are a permutation, and the keys a row attends
// to over all levels are exactly its sequence's pages (each once).
void check_plan_structure(const CascadePlan& plan, const Batch& b, int max_levels) {
  ASSERT_EQ(plan.num_rows, b.rows);
  ASSERT_LE(static_cast<int>(plan.levels.size()), max_levels);
  std::vector<std::int32_t> sorted = plan.row_order;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < b.rows; ++i) ASSERT_EQ(sorted[i], i);
  std::vector<std::multiset<std::pair<int, int>>> seen(b.rows);
  for (const CascadeLevel& lv : plan.levels) {
    for (int g = 0; g < lv.num_groups(); ++g) {
      for (int i = lv.q_indptr[g]; i < lv.q_indptr[g + 1]; ++i) {
        for (int p = lv.page_indptr[g]; p < lv.page_indptr[g + 1]; ++p) {
          seen[plan.row_order[i]].insert({lv.page_ids[p], lv.page_lens[p]});
        }
      }
    }
  }
  int row = 0;
  for (const SeqAttnInput& seq : b.seqs) {
    std::multiset<std::pair<int, int>> expected;
    for (const KvBlock& blk : seq.blocks) {
      for (std::size_t i = 0; i < blk.kv.pages.size(); ++i) expected.insert({blk.kv.pages[i], blk.kv.lens[i]});
    }
    for (int i = 0; i < seq.num_rows; ++i, ++row) {
      ASSERT_EQ(seen[row], expected) << "row " << row;
      ASSERT_EQ(plan.q_pos[row], seq.first_row_pos + i);
    }
  }
}

struct Outputs {
  std::vector<float> o, lse;
};

Outputs attend(const CascadePlan& plan, const Batch& b, const PagedKvPool& pool, const HeadLayout& hl,
               float scale) {
  Outputs out;
  out.o.assign(static_cast<std::size_t>(b.rows) * hl.q_heads * hl.head_dim, kNaN);
  out.lse.assign(static_cast<std::size_t>(b.rows) * hl.q_heads, kNaN);
  cpu::cascade_attention(b.q.data(), plan, pool.view(), hl.q_heads, scale, out.o.data(), out.lse.data());
  return out;
}

// Cascade vs flat (1e-5 relative, fp32) and vs the float64 reference from unpaged K/V.
void check_against_flat_and_reference(const CascadePlan& plan, const Batch& b,
                                      const PagedKvPool& pool, const HeadLayout& hl) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(hl.head_dim));
  const Outputs cas = attend(plan, b, pool, hl, scale);
  const Outputs flat = attend(make_flat_plan(b.seqs), b, pool, hl, scale);
  const int D = hl.head_dim, HD = hl.q_heads * D;
  std::vector<double> ref_o(HD), ref_lse(hl.q_heads);
  int row = 0;
  for (std::size_t s = 0; s < b.seqs.size(); ++s) {
    for (int i = 0; i < b.seqs[s].num_rows; ++i, ++row) {
      reference_attention(b.q.data() + row * HD, hl.q_heads, hl.kv_heads, D, b.truth[s],
                          b.seqs[s].first_row_pos + i, scale, ref_o.data(), ref_lse.data());
      for (int h = 0; h < hl.q_heads; ++h) {
        const std::size_t at = static_cast<std::size_t>(row) * HD + h * D;
        const float lc = cas.lse[row * hl.q_heads + h], lf = flat.lse[row * hl.q_heads + h];
        if (std::isinf(ref_lse[h])) {  // no visible key: exactly the empty state in both
          ASSERT_TRUE(std::isinf(lc) && lc < 0 && std::isinf(lf) && lf < 0) << "row " << row;
          for (int d = 0; d < D; ++d) ASSERT_TRUE(cas.o[at + d] == 0.0f && flat.o[at + d] == 0.0f);
          continue;
        }
        ASSERT_LT(rel_error(cas.o.data() + at, flat.o.data() + at, D), 1e-5)
            << "seq " << s << " row " << row << " head " << h;
        ASSERT_NEAR(lc, lf, 1e-5 * std::max(1.0f, std::abs(lf)));
        ASSERT_LT(rel_error(cas.o.data() + at, ref_o.data() + h * D, D), 1e-5);
        ASSERT_NEAR(lc, ref_lse[h], 1e-5 * std::max(1.0, std::abs(ref_lse[h])));
      }
    }
  }
}

// ---- random sharing trees -----------------------------------------------------------------------

struct TreeCase {
  HeadLayout heads;
  int page_size;
  int max_levels;
  bool decode;
};

class RandomTreeTest : public ::testing::TestWithParam<TreeCase> {};

TEST_P(RandomTreeTest, CascadeEqualsFlatAndFloat64Reference) {
  const TreeCase c = GetParam();
  int shared_plans = 0;
  for (std::uint64_t seed = 0; seed < 6; ++seed) {
    PagedKvPool pool(c.page_size, c.heads.kv_heads, c.heads.head_dim, 2600 / c.page_size + 300, seed);
    Builder bld(pool, c.heads, 1000 * seed + c.max_levels);
    std::vector<std::unique_ptr<KvRun>> runs;
    const int num_seqs = seed == 0 ? 1 : 4 + static_cast<int>(seed * 5 % 9);
    const Batch b = random_tree(bld, runs, num_seqs, c.decode, 0.8);
    for (CascadeMode mode : {CascadeMode::kOn, CascadeMode::kAuto}) {
      CascadeScheduler sched({mode, c.max_levels, /*min_saved_kv_tokens=*/24});
      const CascadePlan plan = sched.plan(b.seqs);
      SCOPED_TRACE(::testing::Message() << "seed " << seed << " mode " << static_cast<int>(mode));
      check_plan_structure(plan, b, c.max_levels);
      check_against_flat_and_reference(plan, b, pool, c.heads);
      EXPECT_EQ(sched.last_stats().uses_shared_levels, plan.uses_shared_levels);
      EXPECT_EQ(plan.uses_shared_levels, plan.levels.size() > 1);
      shared_plans += plan.uses_shared_levels;
      if (mode == CascadeMode::kOn) {
        // kOn must use a shared level whenever two sequences share a non-empty chunk.
        std::map<std::string, int> users;
        for (const SeqAttnInput& s : b.seqs) {
          for (const KvBlock& blk : s.blocks) {
            if (!blk.key.empty()) ++users[blk.key];
          }
        }
        const bool sharing = std::any_of(users.begin(), users.end(), [](auto& kv) { return kv.second >= 2; });
        EXPECT_EQ(plan.uses_shared_levels, sharing);
      }
    }
  }
  EXPECT_GT(shared_plans, 0);  // the workload does exercise shared levels
}

INSTANTIATE_TEST_SUITE_P(
    HeadsPagesLevels, RandomTreeTest,
    ::testing::Values(TreeCase{{4, 4, 32}, 16, 3, true}, TreeCase{{4, 4, 32}, 1, 3, false},
                      TreeCase{{8, 2, 64}, 16, 2, false}, TreeCase{{8, 2, 64}, 1, 4, true},
                      TreeCase{{4, 1, 64}, 16, 4, false}, TreeCase{{4, 1, 64}, 1, 2, true},
                      TreeCase{{8, 2, 20}, 16, 3, false}, TreeCase{{4, 1, 128}, 16, 3, true}));

// ---- the system + documents + queries plan, exactly ---------------------------------------------

class KnownPlanTest : public ::testing::Test {
 protected:
  KnownPlanTest() : pool_(16, hl_.kv_heads, hl_.head_dim, 200, 5), bld_(pool_, hl_, 5) {}

  // system (20 tokens: pages of 16 + 4), doc1 (40: 16+16+8), doc2 (25: 16+9), and queries:
  // q0 = sys+doc1+7 own (decode), q1 = sys+doc2+12 own (prefill of 12 rows),
  // q2 = sys+doc1+5 own (prefill of 5), q3 = sys+doc2+3 own (decode).
  void build(int doc1_len = 40) {
    sys_ = bld_.make_run("5y5", 0, 20);
    doc1_ = bld_.make_run("d0c1", 20, doc1_len);
    doc2_ = bld_.make_run("d0c2", 20, 25);
    const int own_len[4] = {7, 12, 5, 3};
    const int rows[4] = {1, 12, 5, 1};
    const KvRun* doc[4] = {&doc1_, &doc2_, &doc1_, &doc2_};
    for (int i = 0; i < 4; ++i) {
      const int start = doc[i]->truth.start_pos + doc[i]->pages.num_tokens();
      own_[i] = bld_.make_run("", start, own_len[i]);
      bld_.add_seq(batch_, {&sys_, doc[i], &own_[i]}, rows[i]);
    }
    bld_.make_queries(batch_);
  }

  static std::vector<std::int32_t> cat(std::initializer_list<const std::vector<std::int32_t>*> parts) {
    std::vector<std::int32_t> out;
    for (auto* p : parts) out.insert(out.end(), p->begin(), p->end());
    return out;
  }
  static std::vector<std::int32_t> iota(int first, int n) {
    std::vector<std::int32_t> v(n);
    for (int i = 0; i < n; ++i) v[i] = first + i;
    return v;
  }

  HeadLayout hl_{8, 2, 64};
  PagedKvPool pool_;
  Builder bld_;
  KvRun sys_, doc1_, doc2_, own_[4];
  Batch batch_;
};

TEST_F(KnownPlanTest, SystemThenDocumentsThenQueries) {
  build();
  CascadeScheduler sched({CascadeMode::kOn, 3, 256});
  const CascadePlan plan = sched.plan(batch_.seqs);
  // Row ids in batch order: q0 -> 0, q1 -> 1..12, q2 -> 13..17, q3 -> 18. DFS order: q0, q2 (doc1),
  // q1, q3 (doc2).
  ASSERT_EQ(plan.num_rows, 19);
  std::vector<std::int32_t> order = {0};
  for (int r : iota(13, 5)) order.push_back(r);
  for (int r : iota(1, 12)) order.push_back(r);
  order.push_back(18);
  EXPECT_EQ(plan.row_order, order);
  std::vector<std::int32_t> q_pos = {66};
  for (int p : iota(45, 12)) q_pos.push_back(p);
  for (int p : iota(60, 5)) q_pos.push_back(p);
  q_pos.push_back(47);
  EXPECT_EQ(plan.q_pos, q_pos);
  ASSERT_EQ(plan.levels.size(), 3u);
  EXPECT_TRUE(plan.uses_shared_levels);

  const CascadeLevel& l0 = plan.levels[0];
  EXPECT_EQ(l0.q_indptr, (std::vector<std::int32_t>{0, 19}));
  EXPECT_EQ(l0.page_indptr, (std::vector<std::int32_t>{0, 2}));
  EXPECT_EQ(l0.page_ids, sys_.pages.pages);
  EXPECT_EQ(l0.page_lens, (std::vector<std::int32_t>{16, 4}));
  EXPECT_EQ(l0.kv_start_pos, (std::vector<std::int32_t>{0}));

  const CascadeLevel& l1 = plan.levels[1];
  EXPECT_EQ(l1.q_indptr, (std::vector<std::int32_t>{0, 6, 19}));
  EXPECT_EQ(l1.page_indptr, (std::vector<std::int32_t>{0, 3, 5}));
  EXPECT_EQ(l1.page_ids, cat({&doc1_.pages.pages, &doc2_.pages.pages}));
  EXPECT_EQ(l1.page_lens, (std::vector<std::int32_t>{16, 16, 8, 16, 9}));
  EXPECT_EQ(l1.kv_start_pos, (std::vector<std::int32_t>{20, 20}));

  const CascadeLevel& l2 = plan.levels[2];
  EXPECT_EQ(l2.q_indptr, (std::vector<std::int32_t>{0, 1, 6, 18, 19}));
  EXPECT_EQ(l2.page_indptr, (std::vector<std::int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(l2.page_ids, cat({&own_[0].pages.pages, &own_[2].pages.pages, &own_[1].pages.pages,
                              &own_[3].pages.pages}));
  EXPECT_EQ(l2.page_lens, (std::vector<std::int32_t>{7, 5, 12, 3}));
  EXPECT_EQ(l2.kv_start_pos, (std::vector<std::int32_t>{60, 60, 45, 45}));

  check_against_flat_and_reference(plan, batch_, pool_, hl_);
  const CascadePlanStats& st = sched.last_stats();
  EXPECT_EQ(st.levels, 3);
  EXPECT_EQ(st.shared_groups, 3);
  EXPECT_EQ(st.kv_tokens_flat, 67 + 57 + 65 + 48);
  EXPECT_EQ(st.kv_tokens_plan, 20 + 40 + 25 + 7 + 12 + 5 + 3);
  EXPECT_EQ(sched.counters().plans, 1);
  EXPECT_EQ(sched.counters().plans_with_shared_levels, 1);
}

TEST_F(KnownPlanTest, TwoLevelsFoldDocumentsIntoEachQuery) {
  build();
  CascadeScheduler sched({CascadeMode::kOn, 2, 256});
  const CascadePlan plan = sched.plan(batch_.seqs);
  ASSERT_EQ(plan.levels.size(), 2u);
  EXPECT_EQ(plan.levels[0].page_ids, sys_.pages.pages);
  EXPECT_EQ(plan.levels[0].q_indptr, (std::vector<std::int32_t>{0, 19}));
  const CascadeLevel& last = plan.levels[1];
  EXPECT_EQ(last.q_indptr, (std::vector<std::int32_t>{0, 1, 6, 18, 19}));
  EXPECT_EQ(last.page_ids, cat({&doc1_.pages.pages, &own_[0].pages.pages, &doc1_.pages.pages,
                                &own_[2].pages.pages, &doc2_.pages.pages, &own_[1].pages.pages,
                                &doc2_.pages.pages, &own_[3].pages.pages}));
  EXPECT_EQ(last.kv_start_pos, (std::vector<std::int32_t>{20, 20, 20, 20}));
  check_against_flat_and_reference(plan, batch_, pool_, hl_);
  // Four levels allowed, only three needed.
  CascadeScheduler four({CascadeMode::kOn, 4, 256});
  EXPECT_EQ(four.plan(batch_.seqs).levels.size(), 3u);
}

TEST_F(KnownPlanTest, OffAndOneLevelGiveTheFlatPlan) {
  build();
  const CascadePlan flat = make_flat_plan(batch_.seqs);
  EXPECT_EQ(flat.row_order, iota(0, 19));
  ASSERT_EQ(flat.levels.size(), 1u);
  EXPECT_EQ(flat.levels[0].q_indptr, (std::vector<std::int32_t>{0, 1, 13, 18, 19}));
  EXPECT_EQ(flat.levels[0].page_indptr, (std::vector<std::int32_t>{0, 6, 11, 17, 22}));
  EXPECT_FALSE(flat.uses_shared_levels);
  for (const CascadeSchedulerOptions& o :
       {CascadeSchedulerOptions{CascadeMode::kOff, 3, 0}, CascadeSchedulerOptions{CascadeMode::kOn, 1, 0}}) {
    CascadeScheduler sched(o);
    const CascadePlan p = sched.plan(batch_.seqs);
    EXPECT_EQ(p.row_order, flat.row_order);
    EXPECT_EQ(p.levels[0].page_ids, flat.levels[0].page_ids);
    EXPECT_EQ(p.levels[0].q_indptr, flat.levels[0].q_indptr);
    EXPECT_FALSE(sched.last_stats().uses_shared_levels);
  }
  Config config;
  config.enable_cascade_attention = false;
  config.cascade_mode = CascadeMode::kOn;
  EXPECT_EQ(cascade_scheduler_options(config).mode, CascadeMode::kOff);
  config.enable_cascade_attention = true;
  config.max_cascade_levels = 4;
  EXPECT_EQ(cascade_scheduler_options(config).mode, CascadeMode::kOn);
  EXPECT_EQ(cascade_scheduler_options(config).max_cascade_levels, 4);
}

// kAuto: the 20-token system prompt saves 3 * 20 = 60 reads (< 256), not worth a level; it is
// passed down and doc1's group (2 sequences, 20 + 300 keys: saves 320) takes it; doc2's group
// (2 sequences, 45 keys: saves 45) is folded into its sequences' own lists.
TEST_F(KnownPlanTest, AutoFoldsRunsThatDoNotPay) {
  build(/*doc1_len=*/300);
  CascadeScheduler sched({CascadeMode::kAuto, 3, 256});
  const CascadePlan plan = sched.plan(batch_.seqs);
  ASSERT_EQ(plan.levels.size(), 2u);
  const CascadeLevel& l0 = plan.levels[0];
  EXPECT_EQ(l0.q_indptr, (std::vector<std::int32_t>{0, 6}));  // q1, q3 rows not covered
  EXPECT_EQ(l0.page_ids, cat({&sys_.pages.pages, &doc1_.pages.pages}));
  EXPECT_EQ(l0.kv_start_pos, (std::vector<std::int32_t>{0}));
  const CascadeLevel& l1 = plan.levels[1];
  EXPECT_EQ(l1.q_indptr, (std::vector<std::int32_t>{0, 1, 6, 18, 19}));
  EXPECT_EQ(l1.page_ids, cat({&own_[0].pages.pages, &own_[2].pages.pages, &sys_.pages.pages,
                              &doc2_.pages.pages, &own_[1].pages.pages, &sys_.pages.pages,
                              &doc2_.pages.pages, &own_[3].pages.pages}));
  EXPECT_EQ(l1.kv_start_pos, (std::vector<std::int32_t>{320, 320, 0, 0}));
  check_against_flat_and_reference(plan, batch_, pool_, hl_);
  // A higher threshold: nothing pays, flat plan.
  CascadeScheduler strict({CascadeMode::kAuto, 3, 321});
  EXPECT_FALSE(strict.plan(batch_.seqs).uses_shared_levels);
}

// ---- named corner cases ------------------------------------------------------------------------

class CornerCaseTest : public ::testing::TestWithParam<int /*page size*/> {
 protected:
  HeadLayout hl_{4, 1, 32};
};

TEST_P(CornerCaseTest, SingleSequenceAndNothingSharedArePlannedFlat) {
  PagedKvPool pool(GetParam(), hl_.kv_heads, hl_.head_dim, 1200, 11);
  Builder bld(pool, hl_, 11);
  const KvRun a = bld.make_run("aa", 0, 33), own = bld.make_run("", 33, 9);
  Batch one;
  bld.add_seq(one, {&a, &own}, 4);
  bld.make_queries(one);
  CascadeScheduler sched({CascadeMode::kOn, 3, 0});
  CascadePlan plan = sched.plan(one.seqs);
  EXPECT_EQ(plan.levels.size(), 1u);
  EXPECT_FALSE(plan.uses_shared_levels);

  std::vector<std::unique_ptr<KvRun>> runs;
  const Batch none = random_tree(bld, runs, 7, false, /*share_prob=*/0.0);
  plan = sched.plan(none.seqs);
  EXPECT_EQ(plan.levels.size(), 1u);
  const Outputs a_out = attend(plan, none, pool, hl_, 0.2f);
  const Outputs f_out = attend(make_flat_plan(none.seqs), none, pool, hl_, 0.2f);
  EXPECT_EQ(std::memcmp(a_out.o.data(), f_out.o.data(), a_out.o.size() * 4), 0);
}

// Every sequence is all shared chunks, its rows inside them: the last level has groups with no
// pages, and the whole result comes from the shared levels.
TEST_P(CornerCaseTest, EverythingShared) {
  PagedKvPool pool(GetParam(), hl_.kv_heads, hl_.head_dim, 1200, 12);
  Builder bld(pool, hl_, 12);
  const KvRun a = bld.make_run("aa", 0, 21), b = bld.make_run("bb", 21, 17);
  for (bool decode : {true, false}) {
    Batch batch;
    for (int s = 0; s < 4; ++s) bld.add_seq(batch, {&a, &b}, decode ? 1 : 3 + s);
    bld.make_queries(batch);
    CascadeScheduler sched({CascadeMode::kOn, 3, 0});
    const CascadePlan plan = sched.plan(batch.seqs);
    ASSERT_EQ(plan.levels.size(), 2u);
    EXPECT_EQ(plan.levels[0].num_groups(), 1);
    std::vector<std::int32_t> ab = a.pages.pages;
    ab.insert(ab.end(), b.pages.pages.begin(), b.pages.pages.end());
    EXPECT_EQ(plan.levels[0].page_ids, ab);
    for (int g = 0; g < plan.levels[1].num_groups(); ++g) EXPECT_EQ(plan.levels[1].group_kv_len(g), 0);
    check_plan_structure(plan, batch, 3);
    check_against_flat_and_reference(plan, batch, pool, hl_);
  }
}

// A sequence computes chunks c1, c2 in this step (prefill of every position) while others reuse
// them: its rows in c1 see no key of c2's level (fully masked there) and the merge must still give
// the flat result. One sequence has its KV start after some of its rows: fully masked everywhere.
TEST_P(CornerCaseTest, RowsInsideChunksComputedThisStepAndFullyMaskedRows) {
  PagedKvPool pool(GetParam(), hl_.kv_heads, hl_.head_dim, 1200, 13);
  Builder bld(pool, hl_, 13);
  const KvRun c1 = bld.make_run("c1", 0, 18), c2 = bld.make_run("c2", 18, 30);
  const KvRun own_a = bld.make_run("", 48, 5), own_b = bld.make_run("", 48, 2), own_c = bld.make_run("", 18, 4);
  Batch batch;
  bld.add_seq(batch, {&c1, &c2, &own_a}, 53);  // computes everything
  bld.add_seq(batch, {&c1, &c2, &own_b}, 1);
  bld.add_seq(batch, {&c1, &own_c}, 2);
  bld.make_queries(batch);
  for (int levels : {2, 3, 4}) {
    CascadeScheduler sched({CascadeMode::kOn, levels, 0});
    const CascadePlan plan = sched.plan(batch.seqs);
    EXPECT_EQ(static_cast<int>(plan.levels.size()), std::min(levels, 3));
    check_plan_structure(plan, batch, levels);
    check_against_flat_and_reference(plan, batch, pool, hl_);
  }
  // KV starting at position 10 with rows from position 6: rows 6..9 see nothing.
  Batch masked;
  const KvRun late = bld.make_run("", 10, 12);
  bld.add_seq(masked, {&late}, 12);
  masked.seqs[0].first_row_pos = 6;
  masked.seqs[0].num_rows = 16;
  masked.rows = 16;
  masked.truth[0].start_pos = 10;
  bld.make_queries(masked);
  const Outputs out = attend(make_flat_plan(masked.seqs), masked, pool, hl_, 0.2f);
  for (int r = 0; r < 16; ++r) {
    for (int h = 0; h < hl_.q_heads; ++h) {
      const float l = out.lse[r * hl_.q_heads + h];
      EXPECT_EQ(r < 4, std::isinf(l) && l < 0) << "row " << r;
      for (int d = 0; d < hl_.head_dim; ++d) ASSERT_FALSE(std::isnan(out.o[(r * hl_.q_heads + h) * hl_.head_dim + d]));
    }
  }
  check_against_flat_and_reference(make_flat_plan(masked.seqs), masked, pool, hl_);
}

// A sequence that shares only the system prompt sits between two document groups (batch order):
// level 1 steps over its rows with a group that has no pages.
TEST_P(CornerCaseTest, UncoveredRowsBetweenGroupsGetAnEmptyGroup) {
  PagedKvPool pool(GetParam(), hl_.kv_heads, hl_.head_dim, 1200, 14);
  Builder bld(pool, hl_, 14);
  const KvRun sys = bld.make_run("s", 0, 10), d1 = bld.make_run("d1", 10, 20), d2 = bld.make_run("d2", 10, 15);
  std::vector<KvRun> own;
  for (int i = 0; i < 5; ++i) own.push_back(bld.make_run("", i == 1 ? 10 : (i < 3 ? 30 : 25), 3));
  Batch batch;
  bld.add_seq(batch, {&sys, &d1, &own[0]}, 1);
  bld.add_seq(batch, {&sys, &own[1]}, 2);
  bld.add_seq(batch, {&sys, &d1, &own[2]}, 1);
  bld.add_seq(batch, {&sys, &d2, &own[3]}, 3);
  bld.add_seq(batch, {&sys, &d2, &own[4]}, 1);
  bld.make_queries(batch);
  CascadeScheduler sched({CascadeMode::kOn, 3, 0});
  const CascadePlan plan = sched.plan(batch.seqs);
  ASSERT_EQ(plan.levels.size(), 3u);
  // Rows: s0 -> 0, s1 -> 1,2, s2 -> 3, s3 -> 4..6, s4 -> 7. DFS: s0, s2, s1, s3, s4.
  EXPECT_EQ(plan.row_order, (std::vector<std::int32_t>{0, 3, 1, 2, 4, 5, 6, 7}));
  const CascadeLevel& l1 = plan.levels[1];
  EXPECT_EQ(l1.q_indptr, (std::vector<std::int32_t>{0, 2, 4, 8}));
  EXPECT_EQ(l1.group_kv_len(0), 20);
  EXPECT_EQ(l1.group_kv_len(1), 0);
  EXPECT_EQ(l1.group_kv_len(2), 15);
  check_plan_structure(plan, batch, 3);
  check_against_flat_and_reference(plan, batch, pool, hl_);
}

// Nested sharing a > b > c: one level per depth up to max_cascade_levels, deeper sharing folded
// into the last level.
TEST_P(CornerCaseTest, DeepSharingUsesUpToMaxLevels) {
  PagedKvPool pool(GetParam(), hl_.kv_heads, hl_.head_dim, 1200, 15);
  Builder bld(pool, hl_, 15);
  const KvRun a = bld.make_run("a", 0, 9), b = bld.make_run("ab", 9, 17), c = bld.make_run("abc", 26, 20);
  std::vector<KvRun> own;
  for (int i = 0; i < 5; ++i) own.push_back(bld.make_run("", i == 0 ? 9 : (i == 1 ? 26 : 46), 2 + i));
  Batch batch;
  bld.add_seq(batch, {&a, &own[0]}, 2);
  bld.add_seq(batch, {&a, &b, &own[1]}, 1);
  bld.add_seq(batch, {&a, &b, &c, &own[2]}, 4);
  bld.add_seq(batch, {&a, &b, &c, &own[3]}, 1);
  bld.add_seq(batch, {&a, &b, &c, &own[4]}, 6);
  bld.make_queries(batch);
  for (int levels : {2, 3, 4, 5}) {
    CascadeScheduler sched({CascadeMode::kOn, levels, 0});
    const CascadePlan plan = sched.plan(batch.seqs);
    ASSERT_EQ(static_cast<int>(plan.levels.size()), std::min(levels, 4));
    EXPECT_EQ(plan.levels[0].group_kv_len(0), 9);
    // Deeper levels start with one page-less group over the rows of sequences that stop sharing
    // earlier (they come first in batch order).
    for (int l = 1; l + 1 < std::min(levels, 4); ++l) {
      const CascadeLevel& lv = plan.levels[l];
      ASSERT_EQ(lv.num_groups(), 2);
      EXPECT_EQ(lv.group_kv_len(0), 0);
      EXPECT_EQ(lv.group_rows(0), l == 1 ? 2 : 3);
      EXPECT_EQ(lv.group_kv_len(1), l == 1 ? 17 : 20);
    }
    check_plan_structure(plan, batch, levels);
    check_against_flat_and_reference(plan, batch, pool, hl_);
  }
}

INSTANTIATE_TEST_SUITE_P(PageSizes, CornerCaseTest, ::testing::Values(1, 16));

// ---- input validation ---------------------------------------------------------------------------

TEST(CascadeSchedulerInput, RejectsMalformedBatches) {
  EXPECT_THROW(CascadeScheduler({CascadeMode::kOn, 0, 256}), Error);
  EXPECT_THROW(CascadeScheduler({CascadeMode::kOn, 3, -1}), Error);
  CascadeScheduler sched({CascadeMode::kOn, 3, 0});
  auto list = [](std::vector<std::int32_t> pages, std::vector<std::int32_t> lens, std::int32_t start) {
    KvPageList l;
    l.pages = std::move(pages);
    l.lens = std::move(lens);
    l.start_pos = start;
    return l;
  };
  const SeqAttnInput good{1, 19, {KvBlock{"k", list({0}, {16}, 0)}, KvBlock{"", list({1}, {4}, 16)}}};
  EXPECT_NO_THROW(sched.plan({good, good}));
  SeqAttnInput gap = good;
  gap.blocks[1].kv.start_pos = 17;  // a hole between blocks
  EXPECT_THROW(sched.plan({gap}), Error);
  EXPECT_THROW(make_flat_plan({gap}), Error);
  SeqAttnInput beyond = good;
  beyond.num_rows = 2;  // row at position 20, but KV ends at 20
  EXPECT_THROW(sched.plan({beyond}), Error);
  SeqAttnInput conflict = good;
  conflict.blocks[0].kv.pages = {2};  // same key, other page
  conflict.blocks[1].kv.pages = {3};
  EXPECT_THROW(sched.plan({good, conflict}), Error);
  SeqAttnInput mismatched = good;
  mismatched.blocks[1].kv.lens = {2, 2};
  EXPECT_THROW(sched.plan({mismatched}), Error);
  // Sequences without rows are ignored (even malformed ones never reach a plan).
  SeqAttnInput idle = gap;
  idle.num_rows = 0;
  const CascadePlan p = sched.plan({good, idle, good});
  EXPECT_EQ(p.num_rows, 2);
}

}  // namespace
}  // namespace cascade::test

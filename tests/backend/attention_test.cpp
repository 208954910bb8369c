// CPU reference attention: merge of states, flat attention against a float64 reference computed
// from unpaged K/V, masking and empty states, and batch invariance of the flat plan.
#include "backend/cpu/attention.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "backend/paged_kv_fixture.h"
#include "core/error.h"
#include "sched/cascade_scheduler.h"

namespace cascade::test {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ---- merge_state ------------------------------------------------------------------------------

TEST(MergeState, EmptyIsIdentityAndNeverReadsItsOutput) {
  std::mt19937_64 rng(1);
  const int D = 24;
  const std::vector<float> o = random_values(rng, D, 1.0f);
  const std::vector<float> garbage(D, kNaN);  // an empty state's o must be ignored
  for (float s : {-30.0f, 0.0f, 2.5f, 80.0f}) {
    std::vector<float> out(D);
    EXPECT_EQ(cpu::merge_state(garbage.data(), -kInf, o.data(), s, D, out.data()), s);
    EXPECT_TRUE(same_bits(out, o));
    EXPECT_EQ(cpu::merge_state(o.data(), s, garbage.data(), -kInf, D, out.data()), s);
    EXPECT_TRUE(same_bits(out, o));
  }
  std::vector<float> out(D, 7.0f);
  const float s = cpu::merge_state(garbage.data(), -kInf, garbage.data(), -kInf, D, out.data());
  EXPECT_TRUE(std::isinf(s) && s < 0);
  for (float x : out) EXPECT_EQ(x, 0.0f);
}

TEST(MergeState, CommutativeBitForBitAndAssociative) {
  std::mt19937_64 rng(2);
  std::uniform_real_distribution<float> lse_dist(-40.0f, 40.0f);
  const int D = 64;
  for (int trial = 0; trial < 200; ++trial) {
    const auto oa = random_values(rng, D, 1.0f), ob = random_values(rng, D, 1.0f),
               oc = random_values(rng, D, 1.0f);
    const float sa = lse_dist(rng), sb = trial % 7 == 0 ? sa : lse_dist(rng), sc = lse_dist(rng);
    std::vector<float> ab(D), ba(D);
    const float s_ab = cpu::merge_state(oa.data(), sa, ob.data(), sb, D, ab.data());
    const float s_ba = cpu::merge_state(ob.data(), sb, oa.data(), sa, D, ba.data());
    EXPECT_EQ(s_ab, s_ba);
    EXPECT_TRUE(same_bits(ab, ba));
    // (a + b) + c vs a + (b + c), and output aliasing an input.
    std::vector<float> left = ab, right = ob;
    const float s_left = cpu::merge_state(left.data(), s_ab, oc.data(), sc, D, left.data());
    const float s_bc = cpu::merge_state(right.data(), sb, oc.data(), sc, D, right.data());
    const float s_right = cpu::merge_state(oa.data(), sa, right.data(), s_bc, D, right.data());
    EXPECT_NEAR(s_left, s_right, 1e-6 * std::max(1.0f, std::abs(s_left)));
    EXPECT_LT(rel_error(left.data(), right.data(), D), 1e-6);
  }
}

// States of two disjoint key sets, computed in double and rounded to float, merge to the state of
// the union computed in double.
TEST(MergeState, MatchesUnionComputedInDouble) {
  std::mt19937_64 rng(3);
  const int D = 32, n = 50;
  for (int trial = 0; trial < 50; ++trial) {
    const float temp = trial % 2 == 0 ? 1.0f : 6.0f;  // some trials with peaky softmax
    std::vector<double> score(n);
    for (double& s : score) s = random_values(rng, 1, temp)[0];
    const std::vector<float> v = random_values(rng, static_cast<std::size_t>(n) * D, 1.0f);
    const int split = static_cast<int>(rng() % (n + 1));
    auto state = [&](int lo, int hi, std::vector<double>& o) {
      double m = -std::numeric_limits<double>::infinity(), den = 0.0;
      for (int j = lo; j < hi; ++j) m = std::max(m, score[j]);
      o.assign(D, 0.0);
      for (int j = lo; j < hi; ++j) {
        const double p = std::exp(score[j] - m);
        den += p;
        for (int d = 0; d < D; ++d) o[d] += p * v[j * D + d];
      }
      if (hi == lo) return -std::numeric_limits<double>::infinity();
      for (double& x : o) x /= den;
      return m + std::log(den);
    };
    std::vector<double> oa, ob, ou;
    const double sa = state(0, split, oa), sb = state(split, n, ob), su = state(0, n, ou);
    std::vector<float> fa(oa.begin(), oa.end()), fb(ob.begin(), ob.end()), out(D);
    const float s = cpu::merge_state(fa.data(), static_cast<float>(sa), fb.data(),
                                     static_cast<float>(sb), D, out.data());
    EXPECT_NEAR(s, su, 1e-6 * std::max(1.0, std::abs(su)));
    EXPECT_LT(rel_error(out.data(), ou.data(), D), 2e-6);
  }
}

// ---- flat attention against float64 ------------------------------------------------------------

struct HeadLayout {
  int q_heads, kv_heads, head_dim;
};

struct RandomSeqs {
  std::vector<SeqAttnInput> batch;
  std::vector<KvTruth> truth;  // per sequence, all its keys
  std::vector<float> q;        // [rows, q_heads, head_dim]
  int rows = 0;
};

// Sequences of random lengths, split into 1-3 blocks (as chunks would be, with partial pages),
// with `rows_per_seq` rows (0: random 1..12) at the end; if kv_start > 0 the first sequence's KV
// starts at position kv_start and its first rows lie before it (fully masked).
RandomSeqs make_seqs(PagedKvPool& pool, const HeadLayout& hl, int num_seqs, int rows_per_seq,
                     std::mt19937_64& rng, int kv_start = 0) {
  RandomSeqs r;
  const int slot = hl.kv_heads * hl.head_dim;
  for (int s = 0; s < num_seqs; ++s) {
    const int len = 1 + static_cast<int>(rng() % 70);
    KvTruth t;
    t.start_pos = s == 0 ? kv_start : 0;
    t.k = random_values(rng, static_cast<std::size_t>(len) * slot, 1.0f);
    t.v = random_values(rng, static_cast<std::size_t>(len) * slot, 1.0f);
    SeqAttnInput in;
    const int num_blocks = 1 + static_cast<int>(rng() % 3);
    int at = 0;
    for (int b = 0; b < num_blocks && at < len; ++b) {
      const int end = b + 1 == num_blocks ? len : at + 1 + static_cast<int>(rng() % (len - at));
      in.blocks.push_back(KvBlock{b + 1 == num_blocks ? "" : "chunk" + std::to_string(s * 10 + b),
                                  pool.write(t, at, end)});
      at = end;
    }
    if (at < len) in.blocks.push_back(KvBlock{"", pool.write(t, at, len)});
    const int end_pos = t.start_pos + len;
    in.num_rows = rows_per_seq > 0 ? std::min(rows_per_seq, end_pos) : 1 + static_cast<int>(rng() % std::min(12, end_pos));
    in.first_row_pos = end_pos - in.num_rows;
    if (s == 0 && kv_start > 0) {  // rows from before the first key through the end
      in.first_row_pos = kv_start - 3;
      in.num_rows = end_pos - in.first_row_pos;
    }
    r.rows += in.num_rows;
    r.batch.push_back(std::move(in));
    r.truth.push_back(std::move(t));
  }
  r.q = random_values(rng, static_cast<std::size_t>(r.rows) * hl.q_heads * hl.head_dim, 1.0f);
  return r;
}

struct FlatCase {
  HeadLayout heads;
  int page_size;
  int rows_per_seq;  // 1: decode, 0: prefill (random)
};

class FlatAttentionTest : public ::testing::TestWithParam<FlatCase> {};

TEST_P(FlatAttentionTest, MatchesFloat64ReferenceFromUnpagedKv) {
  const FlatCase c = GetParam();
  const HeadLayout hl = c.heads;
  for (std::uint64_t seed = 0; seed < 4; ++seed) {
    std::mt19937_64 rng(100 + seed);
    PagedKvPool pool(c.page_size, hl.kv_heads, hl.head_dim, 1200 / c.page_size + 64, seed);
    RandomSeqs r = make_seqs(pool, hl, 1 + static_cast<int>(seed % 4) * 2, c.rows_per_seq, rng,
                             seed == 3 ? 6 : 0);
    const CascadePlan plan = make_flat_plan(r.batch);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hl.head_dim));
    const int HD = hl.q_heads * hl.head_dim;
    std::vector<float> out(static_cast<std::size_t>(r.rows) * HD, kNaN);
    std::vector<float> lse(static_cast<std::size_t>(r.rows) * hl.q_heads, kNaN);
    cpu::cascade_attention(r.q.data(), plan, pool.view(), hl.q_heads, scale, out.data(), lse.data());

    std::vector<double> ref_o(HD), ref_lse(hl.q_heads);
    int row = 0, masked = 0;
    for (std::size_t s = 0; s < r.batch.size(); ++s) {
      for (int i = 0; i < r.batch[s].num_rows; ++i, ++row) {
        const std::int32_t pos = r.batch[s].first_row_pos + i;
        reference_attention(r.q.data() + row * HD, hl.q_heads, hl.kv_heads, hl.head_dim, r.truth[s],
                            pos, scale, ref_o.data(), ref_lse.data());
        for (int h = 0; h < hl.q_heads; ++h) {
          const float* o = out.data() + row * HD + h * hl.head_dim;
          const float l = lse[row * hl.q_heads + h];
          if (std::isinf(ref_lse[h])) {  // fully masked: exactly the empty state
            ++masked;
            EXPECT_TRUE(std::isinf(l) && l < 0) << "row " << row;
            for (int d = 0; d < hl.head_dim; ++d) ASSERT_EQ(o[d], 0.0f);
            continue;
          }
          EXPECT_LT(rel_error(o, ref_o.data() + h * hl.head_dim, hl.head_dim), 1e-5)
              << "seed " << seed << " row " << row << " head " << h;
          EXPECT_NEAR(l, ref_lse[h], 1e-5 * std::max(1.0, std::abs(ref_lse[h])));
        }
      }
    }
    if (seed == 3) EXPECT_EQ(masked, 3 * hl.q_heads);  // the 3 rows before the first key
  }
}

INSTANTIATE_TEST_SUITE_P(
    HeadsPagesRows, FlatAttentionTest,
    ::testing::Values(FlatCase{{4, 4, 64}, 16, 1}, FlatCase{{4, 4, 64}, 1, 0},
                      FlatCase{{8, 2, 64}, 16, 0}, FlatCase{{8, 2, 20}, 1, 1},
                      FlatCase{{4, 1, 20}, 16, 0}, FlatCase{{4, 1, 128}, 1, 1},
                      FlatCase{{6, 3, 32}, 16, 1}));

// ---- batch invariance ---------------------------------------------------------------------------

std::vector<float> run_flat(const std::vector<SeqAttnInput>& batch, const std::vector<float>& q,
                            const PagedKvPool& pool, const HeadLayout& hl) {
  const CascadePlan plan = make_flat_plan(batch);
  std::vector<float> out(static_cast<std::size_t>(plan.num_rows) * hl.q_heads * hl.head_dim, kNaN);
  cpu::cascade_attention(q.data(), plan, pool.view(), hl.q_heads, 0.125f, out.data(), nullptr);
  return out;
}

TEST(BatchInvariance, RowAloneEqualsRowInBatchBitForBit) {
  const HeadLayout hl{8, 2, 64};
  const int HD = hl.q_heads * hl.head_dim;
  std::mt19937_64 rng(7);
  PagedKvPool pool(16, hl.kv_heads, hl.head_dim, 200, 7);
  RandomSeqs r = make_seqs(pool, hl, 6, 0, rng);
  const std::vector<float> batched = run_flat(r.batch, r.q, pool, hl);
  int row0 = 0;
  for (std::size_t s = 0; s < r.batch.size(); ++s) {
    const int n = r.batch[s].num_rows;
    const std::vector<float> q(r.q.begin() + row0 * HD, r.q.begin() + (row0 + n) * HD);
    const std::vector<float> alone = run_flat({r.batch[s]}, q, pool, hl);
    const std::vector<float> part(batched.begin() + row0 * HD, batched.begin() + (row0 + n) * HD);
    EXPECT_TRUE(same_bits(alone, part)) << "sequence " << s;
    // Each prefill row also equals the same token decoded on its own.
    for (int i = 0; i < n; ++i) {
      SeqAttnInput one = r.batch[s];
      one.num_rows = 1;
      one.first_row_pos += i;
      const std::vector<float> qi(q.begin() + i * HD, q.begin() + (i + 1) * HD);
      const std::vector<float> decoded = run_flat({one}, qi, pool, hl);
      EXPECT_TRUE(same_bits(decoded, std::vector<float>(alone.begin() + i * HD, alone.begin() + (i + 1) * HD)))
          << "sequence " << s << " row " << i;
    }
    row0 += n;
  }
}

// The same tokens held as chunks with partial pages or as one packed run give the same bits, and
// the thread count does not matter.
TEST(BatchInvariance, PagingAndThreadCountDoNotChangeBits) {
  const HeadLayout hl{4, 1, 64};
  const int slot = hl.kv_heads * hl.head_dim;
  std::mt19937_64 rng(8);
  PagedKvPool pool(16, hl.kv_heads, hl.head_dim, 64, 8);
  KvTruth t;
  const int len = 75;
  t.k = random_values(rng, len * slot, 1.0f);
  t.v = random_values(rng, len * slot, 1.0f);
  SeqAttnInput packed{5, len - 5, {KvBlock{"", pool.write(t)}}};
  SeqAttnInput chunked{5, len - 5, {KvBlock{"a", pool.write(t, 0, 20)}, KvBlock{"b", pool.write(t, 20, 53)},
                                    KvBlock{"", pool.write(t, 53, len)}}};
  const std::vector<float> q = random_values(rng, 5 * hl.q_heads * hl.head_dim, 1.0f);
  const std::vector<float> a = run_flat({packed}, q, pool, hl);
  const std::vector<float> b = run_flat({chunked}, q, pool, hl);
  EXPECT_TRUE(same_bits(a, b));
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const std::vector<float> one_thread = run_flat({chunked}, q, pool, hl);
  omp_set_num_threads(3);
  const std::vector<float> three_threads = run_flat({chunked}, q, pool, hl);
  omp_set_num_threads(threads);
  EXPECT_TRUE(same_bits(a, one_thread));
  EXPECT_TRUE(same_bits(a, three_threads));
}

// ---- attend_level: coverage, empty levels, errors -----------------------------------------------

TEST(AttendLevel, UncoveredRowsEmptyGroupsAndEmptyLevels) {
  const HeadLayout hl{2, 1, 16};
  const int HD = hl.q_heads * hl.head_dim;
  std::mt19937_64 rng(9);
  PagedKvPool pool(4, hl.kv_heads, hl.head_dim, 16, 9);
  KvTruth t;
  t.k = random_values(rng, 10 * hl.head_dim, 1.0f);
  t.v = random_values(rng, 10 * hl.head_dim, 1.0f);
  const KvPageList pages = pool.write(t);
  CascadePlan plan;
  plan.num_rows = 4;
  plan.row_order = {3, 1, 0, 2};
  plan.q_pos = {9, 9, 4, 9};
  CascadeLevel lv;  // group 0: row 3, no pages (steps over it); group 1: rows 1 and 0; row 2 uncovered
  lv.q_indptr = {0, 1, 3};
  lv.page_indptr = {0, 0, static_cast<std::int32_t>(pages.pages.size())};
  lv.page_ids = pages.pages;
  lv.page_lens = pages.lens;
  lv.kv_start_pos = {0, 0};
  plan.levels = {CascadeLevel{}, lv, CascadeLevel{}};  // empty levels around it
  plan.levels[0].q_indptr = {0};  // zero groups
  const std::vector<float> q = random_values(rng, 4 * HD, 1.0f);
  std::vector<float> o(4 * HD, kNaN), lse(4 * hl.q_heads, kNaN);
  cpu::attend_level(q.data(), plan, 1, pool.view(), hl.q_heads, 0.25f, o.data(), lse.data());
  std::vector<double> ref_o(HD), ref_lse(hl.q_heads);
  for (int row = 0; row < 4; ++row) {
    const bool covered = row == 0 || row == 1;
    if (covered) {
      reference_attention(q.data() + row * HD, hl.q_heads, hl.kv_heads, hl.head_dim, t,
                          plan.q_pos[row], 0.25, ref_o.data(), ref_lse.data());
    }
    for (int h = 0; h < hl.q_heads; ++h) {
      if (covered) {
        EXPECT_LT(rel_error(o.data() + row * HD + h * hl.head_dim, ref_o.data() + h * hl.head_dim,
                            hl.head_dim), 1e-5);
      } else {
        EXPECT_TRUE(std::isinf(lse[row * hl.q_heads + h]) && lse[row * hl.q_heads + h] < 0);
        for (int d = 0; d < hl.head_dim; ++d) EXPECT_EQ(o[row * HD + h * hl.head_dim + d], 0.0f);
      }
    }
  }
  // All levels together: the empty levels change nothing, bit for bit.
  std::vector<float> all(4 * HD, kNaN), all_lse(4 * hl.q_heads, kNaN);
  cpu::cascade_attention(q.data(), plan, pool.view(), hl.q_heads, 0.25f, all.data(), all_lse.data());
  EXPECT_TRUE(same_bits(all, o));
  EXPECT_TRUE(same_bits(all_lse, lse));
}

TEST(AttendLevel, RejectsMalformedPlansAndHeadLayouts) {
  PagedKvPool pool(4, 2, 8, 4, 1);
  KvTruth t;
  t.k.assign(6 * 16, 1.0f);
  t.v.assign(6 * 16, 1.0f);
  SeqAttnInput seq{1, 5, {KvBlock{"", pool.write(t)}}};
  CascadePlan plan = make_flat_plan({seq});
  std::vector<float> q(3 * 8, 0.5f), o(3 * 8), lse(3);
  auto run = [&](const CascadePlan& p, int heads) {
    cpu::attend_level(q.data(), p, 0, pool.view(), heads, 1.0f, o.data(), lse.data());
  };
  EXPECT_NO_THROW(run(plan, 2));
  EXPECT_THROW(run(plan, 3), Error);  // 3 query heads over 2 KV heads
  CascadePlan bad = plan;
  bad.levels[0].page_ids[0] = 4;  // outside the 4-page pool
  EXPECT_THROW(run(bad, 2), Error);
  bad = plan;
  bad.levels[0].page_lens[0] = 5;  // longer than a page
  EXPECT_THROW(run(bad, 2), Error);
  bad = plan;
  bad.row_order = {1};
  EXPECT_THROW(run(bad, 2), Error);
  EXPECT_THROW(cpu::attend_level(q.data(), plan, 1, pool.view(), 2, 1.0f, o.data(), lse.data()), Error);
}

}  // namespace
}  // namespace cascade::test

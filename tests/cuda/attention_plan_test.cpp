// Host-side packing of a CascadePlan for the attention kernels (pack_plan): malformed plans are
// refused with a reason, and on random plans every packed array reproduces the plan, the work
// items cover every (group, stacked row tile), and the split-K choice keeps its invariants (splits
// cut at multiples of 64 tokens, none empty, within the state-slice budget). Runs without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/ab_switch.h"
#include "backend/cuda/attention.h"
#include "bench/bench_json.h"
#include "sched/cascade_plan.h"

namespace cascade::cuda {
namespace {

// A level with one group per entry of group_rows (that many consecutive rows each), each group
// with random pages (lengths 1..page_size, partial pages anywhere).
CascadeLevel random_level(std::mt19937_64& rng, const std::vector<int>& group_rows, int page_size,
                          int max_tokens, int& next_page) {
  CascadeLevel lv;
  lv.q_indptr.push_back(0);
  lv.page_indptr.push_back(0);
  for (int rows : group_rows) {
    lv.q_indptr.push_back(lv.q_indptr.back() + rows);
    int tokens = 1 + static_cast<int>(rng() % static_cast<unsigned>(max_tokens));
    while (tokens > 0) {
      const int len = std::min(tokens, 1 + static_cast<int>(rng() % static_cast<unsigned>(page_size)));
      lv.page_ids.push_back(next_page++);
      lv.page_lens.push_back(len);
      tokens -= len;
    }
    lv.page_indptr.push_back(static_cast<int>(lv.page_ids.size()));
    lv.kv_start_pos.push_back(static_cast<int>(rng() % 1000));
  }
  return lv;
}

// Rows 0..n-1 in order, a shared level over all of them, a middle level of random groups and a
// last level of one group per row.
CascadePlan random_plan(std::mt19937_64& rng, int rows, int max_tokens, int page_size) {
  CascadePlan plan;
  plan.num_rows = rows;
  for (int r = 0; r < rows; ++r) {
    plan.row_order.push_back(r);
    plan.q_pos.push_back(5000 + static_cast<int>(rng() % 1000));
  }
  int next_page = 0;
  plan.levels.push_back(random_level(rng, {rows}, page_size, max_tokens, next_page));
  std::vector<int> middle;
  for (int left = rows; left > 0;) {
    const int g = std::min(left, 1 + static_cast<int>(rng() % 9));
    middle.push_back(g);
    left -= g;
  }
  plan.levels.push_back(random_level(rng, middle, page_size, max_tokens, next_page));
  plan.levels.push_back(random_level(rng, std::vector<int>(static_cast<std::size_t>(rows), 1), page_size,
                                     max_tokens / 4 + 1, next_page));
  plan.uses_shared_levels = true;
  return plan;
}

std::vector<std::int32_t> slice(const PlanPack& pk, int offset, std::size_t n) {
  return {pk.data.begin() + offset, pk.data.begin() + offset + static_cast<std::ptrdiff_t>(n)};
}

// read_ahead: packed with written slots.
void check_pack(const CascadePlan& plan, const PlanPack& pk, int heads, int kv_heads, int num_sms, int max_slices,
                bool read_ahead = false) {
  const int gqa = heads / kv_heads;
  EXPECT_EQ(slice(pk, pk.row_order, plan.row_order.size()), plan.row_order);
  EXPECT_EQ(slice(pk, pk.q_pos, plan.q_pos.size()), plan.q_pos);
  ASSERT_EQ(pk.levels.size(), plan.levels.size());
  int slices = 0;
  for (std::size_t l = 0; l < plan.levels.size(); ++l) {
    const CascadeLevel& lv = plan.levels[l];
    const LevelPack& lp = pk.levels[l];
    const int groups = lv.num_groups();
    EXPECT_EQ(slice(pk, lp.q_indptr, lv.q_indptr.size()), lv.q_indptr);
    EXPECT_EQ(slice(pk, lp.page_indptr, lv.page_indptr.size()), lv.page_indptr);
    EXPECT_EQ(slice(pk, lp.page_ids, lv.page_ids.size()), lv.page_ids);
    EXPECT_EQ(slice(pk, lp.kv_start_pos, lv.kv_start_pos.size()), lv.kv_start_pos);
    int max_m = 0, max_len = 0;
    for (int g = 0; g < groups; ++g) {
      max_m = std::max(max_m, lv.group_rows(g) * gqa);
      max_len = std::max(max_len, lv.group_kv_len(g));
      EXPECT_EQ(pk.data[lp.kv_len + g], lv.group_kv_len(g));
      int t = 0;  // page_start: tokens before each page within its group
      for (int i = lv.page_indptr[g]; i < lv.page_indptr[g + 1]; ++i) {
        EXPECT_EQ(pk.data[lp.page_start + i], t);
        t += lv.page_lens[i];
      }
    }
    // (The wide form only where the caller allowed it; wide_form_rule checks when.)
    if (lp.warps == kWideWarps) {
      EXPECT_GT(max_m, 64);
    } else {
      EXPECT_EQ(lp.warps, max_m <= 16 ? 1 : 4);
    }
    // Items: every 16 * warps (wide: 128) stacked rows of every group with keys, in order.
    const int m_tile = lp.warps == kWideWarps ? 128 : 16 * lp.warps;
    std::vector<std::int32_t> want_items;
    for (int g = 0; g < groups; ++g) {
      if (lv.group_kv_len(g) == 0) continue;
      for (int m0 = 0; m0 < lv.group_rows(g) * gqa; m0 += m_tile) {
        want_items.push_back(g);
        want_items.push_back(m0);
      }
    }
    EXPECT_EQ(lp.num_items, static_cast<int>(want_items.size() / 2));
    EXPECT_EQ(slice(pk, lp.items, want_items.size()), want_items);
    // Splits: cut at multiples of 64 tokens, every split non-empty for the longest group.
    ASSERT_GE(lp.num_splits, 1);
    if (lp.num_splits > 1) {
      EXPECT_GT(num_sms, 0) << "split without SMs to fill";
      EXPECT_EQ(lp.tokens_per_split % (lp.warps == kWideWarps ? 128 : 64), 0);
      EXPECT_LT(static_cast<long long>(lp.num_splits - 1) * lp.tokens_per_split, max_len);
    }
    EXPECT_GE(static_cast<long long>(lp.num_splits) * lp.tokens_per_split, max_len);
    EXPECT_EQ(slice(pk, lp.counts, 3), (std::vector<std::int32_t>{lp.num_items, lp.num_splits, lp.tokens_per_split}));
    // 16-token tiles exactly where a one-warp CTA covers at most kShortTileMaxTokens keys.
    const int keys_per_cta = std::min(lp.tokens_per_split, max_len);
    EXPECT_EQ(lp.short_tiles, lp.warps == 1 && !read_ahead && max_len > 0 && keys_per_cta <= kShortTileMaxTokens)
        << "level " << l << ": " << keys_per_cta << " keys per CTA";
    // Direct output only for a lone one-warp level of one split, or of short-tile splits that
    // the warps of at least one CTA per SM run and merge.
    if (lp.direct_out) {
      EXPECT_EQ(busy_levels(pk.levels), 1);
      EXPECT_EQ(lp.warps, 1);
      if (lp.num_splits > 1) {
        EXPECT_TRUE(lp.short_tiles);
        EXPECT_LE(lp.num_splits, kMaxCtaSplits);
        EXPECT_GE(lp.num_items * kv_heads, num_sms);
        const long long ctas = static_cast<long long>(lp.num_items) * kv_heads, per_sm = 12 / lp.num_splits;
        EXPECT_LE((ctas + per_sm * num_sms - 1) / (per_sm * num_sms),
                  (ctas * lp.num_splits + 12LL * num_sms - 1) / (12LL * num_sms));
      }
    }
    EXPECT_EQ(lp.slice_base, slices);
    slices += lp.num_splits;
  }
  EXPECT_EQ(pk.num_slices, slices);
  EXPECT_LE(slices, max_slices);
}

TEST(CudaPlanPack, RandomPlansPackFaithfully) {
  std::mt19937_64 rng(41);
  for (int iter = 0; iter < 300; ++iter) {
    const int rows = 1 + static_cast<int>(rng() % 70);
    const int page_size = iter % 3 == 0 ? 1 : 16;
    const int max_tokens = 1 + static_cast<int>(rng() % (page_size == 1 ? 300 : 5000));
    const CascadePlan plan = random_plan(rng, rows, max_tokens, page_size);
    const int heads = 16, kv_heads = iter % 2 == 0 ? 8 : 2;
    for (const int num_sms : {0, 132}) {
      for (const int max_slices : {3, 16, 64}) {
        PlanPack pk;
        const char* why = "";
        ASSERT_TRUE(pack_plan(plan, heads, kv_heads, num_sms, max_slices, &pk, &why)) << why;
        check_pack(plan, pk, heads, kv_heads, num_sms, max_slices);
        if (num_sms == 0) {
          for (const LevelPack& lp : pk.levels) EXPECT_EQ(lp.num_splits, 1);
        }
      }
    }
  }
}

// Flat decode: `seqs` rows, each its own group of `tokens` keys in pages of 16.
CascadePlan flat_plan(int seqs, int tokens) {
  CascadePlan plan;
  plan.num_rows = seqs;
  int next_page = 0;
  for (int r = 0; r < seqs; ++r) {
    plan.row_order.push_back(r);
    plan.q_pos.push_back(tokens - 1);
  }
  CascadeLevel lv;
  lv.q_indptr.push_back(0);
  lv.page_indptr.push_back(0);
  for (int r = 0; r < seqs; ++r) {
    lv.q_indptr.push_back(r + 1);
    for (int t = 0; t < tokens; t += 16) {
      lv.page_ids.push_back(next_page++);
      lv.page_lens.push_back(std::min(16, tokens - t));
    }
    lv.page_indptr.push_back(static_cast<int>(lv.page_ids.size()));
    lv.kv_start_pos.push_back(0);
  }
  plan.levels.push_back(lv);
  return plan;
}

// One group of `rows` rows (all at the last position) over `tokens` keys.
CascadePlan one_group_plan(int rows, int tokens) {
  CascadePlan plan = flat_plan(1, tokens);
  plan.num_rows = rows;
  plan.row_order.resize(rows);
  std::iota(plan.row_order.begin(), plan.row_order.end(), 0);
  plan.q_pos.assign(rows, tokens - 1);
  plan.levels[0].q_indptr = {0, rows};
  return plan;
}

// flat_plan(4, 100) and a fifth row outside every group.
CascadePlan uncovered_plan() {
  CascadePlan plan = flat_plan(4, 100);
  plan.num_rows = 5;
  plan.row_order.push_back(4);
  plan.q_pos.push_back(99);
  return plan;
}

// A prefix-0 cascade: a shared level without keys (no items) over flat_plan(4, 100).
CascadePlan keyless_shared_over_flat() {
  CascadePlan plan = flat_plan(4, 100);
  CascadeLevel empty;
  empty.q_indptr = {0, 4};
  empty.page_indptr = {0, 0};
  empty.kv_start_pos = {0};
  plan.levels.insert(plan.levels.begin(), empty);
  return plan;
}

// A decode level that already fills the chip (two waves of one-warp CTAs: 12 per SM) is not split;
// one that leaves it mostly idle is.
TEST(CudaPlanPack, SplitsOnlyLevelsThatLeaveTheChipIdle) {
  for (const int seqs : {1, 64, 200}) {
    const CascadePlan plan = flat_plan(seqs, 513);
    PlanPack pk;
    const char* why = "";
    const int num_sms = 132, kv_heads = 8;
    ASSERT_TRUE(pack_plan(plan, 16, kv_heads, num_sms, 64, &pk, &why)) << why;
    check_pack(plan, pk, 16, kv_heads, num_sms, 64);
    const int ctas = seqs * kv_heads;
    if (ctas >= 12 * num_sms) {
      EXPECT_EQ(pk.levels[0].num_splits, 1) << seqs << " sequences";
    } else {
      EXPECT_GT(pk.levels[0].num_splits, 1) << seqs << " sequences";
    }
  }
}

// one_warp_wave_splits (CASCADE_ATTENTION_ONE_WARP_WAVES=1) takes the split count of the least
// modelled time, waves x (64-key tiles per CTA + 2), where the default's target of 12 CTAs an SM
// rounded up adds a mostly idle wave. 132 SMs: a wave is 1584 one-warp CTAs.
TEST(CudaPlanPack, OneWarpWaveSplitsAvoidAMostlyIdleWave) {
  if (std::getenv("CASCADE_ATTENTION_ONE_WARP_PER_SM") != nullptr) GTEST_SKIP() << "the CTAs an SM are switched";
  struct Case {
    int ctas, max_len, most, want;
    bool may_merge;
  };
  for (const Case c : {
           // 4 splits of 128 keys merge 4 to a CTA, 3 CTAs an SM: 1.29 waves, 2 x (2 + 2); 3 of
           // 192 at 4 CTAs an SM: one wave, 3 + 2.
           Case{512, 512, 4, 3, true},
           // Not merged: 2048 one-warp CTAs, 2 x (2 + 2), against 1536, 3 + 2.
           Case{512, 512, 4, 3, false},
           // 2048 CTAs of 17 tiles: 2 x 19; 1536 of 22 (not short tiles, never merged): 24.
           Case{512, 4224, 4, 3, true},
           // All in one wave: the most splits, capped at the 9 tiles.
           Case{16, 576, 9, 9, true},
           // 13 splits (1664 CTAs of 20 tiles): 2 x 22; 12 (1536 of 22): 24.
           Case{128, 16384, 13, 12, false},
           // 2 splits of 512 keys (1600 CTAs): 2 x 10; unsplit (800): 16 + 2.
           Case{800, 1024, 2, 1, true},
           // 3 merged splits of 192 (768 CTAs, 4 an SM): 2 x 5; 2 of 320 (1536 one-warp CTAs): 5 + 2.
           Case{768, 513, 3, 2, true},
       }) {
    EXPECT_EQ(one_warp_wave_splits(c.ctas, c.max_len, c.most, 132, true, c.may_merge), c.want)
        << c.ctas << " CTAs over " << c.max_len << " keys, at most " << c.most;
  }
  // Read ahead (no short tiles): 4 splits of 128 keys are 2048 one-warp CTAs, 2 waves.
  EXPECT_EQ(one_warp_wave_splits(512, 512, 4, 132, false, true), 3);
  // Nothing to split, or no SMs to fill: one split.
  EXPECT_EQ(one_warp_wave_splits(8, 0, 4, 132, true, true), 1);
  EXPECT_EQ(one_warp_wave_splits(8, 512, 4, 0, true, true), 1);
}

// A shared prefix of `prefix` keys over all `seqs` rows (one group) and a unique part of `unique`
// keys per row (the attention bench's cascade plan; unique 0: that level has no keys).
CascadePlan prefix_unique_plan(int seqs, int prefix, int unique) {
  CascadePlan plan = one_group_plan(seqs, prefix);
  plan.q_pos.assign(seqs, prefix + unique - 1);
  const CascadePlan own = flat_plan(seqs, std::max(unique, 1));
  CascadeLevel lv = own.levels[0];
  for (std::int32_t& id : lv.page_ids) id += 100000;  // pages apart from the prefix's
  if (unique == 0) {
    lv.page_ids.clear();
    lv.page_lens.clear();
    std::fill(lv.page_indptr.begin(), lv.page_indptr.end(), 0);
  }
  lv.kv_start_pos.assign(seqs, prefix);
  plan.levels.push_back(lv);
  plan.uses_shared_levels = true;
  return plan;
}

// The shared (four-warp) level of a cascade runs beside its unique (one-warp) level, so its split
// count weighs that level's work (v17): with none (no keys, or no unique level) it is the split
// of the level alone; on these shapes more unique work beside it never gives it more splits, since
// its CTAs would hold SMs the unique level needs; and a four-warp level after the first busy one
// (run after the unique level on LevelFork's second stream, not beside it) keeps the alone rule.
// Every level keeps pack_plan's invariants. (The A/B switches change the rule: skipped under them.)
TEST(CudaPlanPack, SharedLevelSplitsWeighTheUniqueWorkBesideIt) {
  if (std::getenv("CASCADE_ATTENTION_SPLIT_ALONE") != nullptr || std::getenv("CASCADE_ATTENTION_NO_FORK") != nullptr) {
    GTEST_SKIP() << "an A/B switch of the split rule is set";
  }
  const int num_sms = 132, kv_heads = 8;
  for (const int seqs : {32, 64, 128, 256}) {
    for (const int prefix : {1024, 4096, 16384}) {
      PlanPack alone;
      const char* why = "";
      const CascadePlan shared_only = one_group_plan(seqs, prefix);
      ASSERT_TRUE(pack_plan(shared_only, 16, kv_heads, num_sms, 64, &alone, &why)) << why;
      ASSERT_EQ(alone.levels[0].warps, 4);
      int last = alone.levels[0].num_splits;
      for (const int unique : {0, 64, 128, 256, 512, 1024}) {
        const CascadePlan plan = prefix_unique_plan(seqs, prefix, unique);
        PlanPack pk;
        ASSERT_TRUE(pack_plan(plan, 16, kv_heads, num_sms, 64, &pk, &why)) << why;
        check_pack(plan, pk, 16, kv_heads, num_sms, 64);
        const int splits = pk.levels[0].num_splits;
        const std::string at = std::to_string(prefix) + "/" + std::to_string(unique) + "/" + std::to_string(seqs);
        if (unique == 0) {
          EXPECT_EQ(splits, alone.levels[0].num_splits) << at;
          EXPECT_EQ(pk.levels[0].tokens_per_split, alone.levels[0].tokens_per_split) << at;
        }
        EXPECT_LE(splits, last) << at << ": more splits beside more unique work";
        last = splits;
      }
      EXPECT_LT(last, alone.levels[0].num_splits) << prefix << "/1024/" << seqs << ": the unique level took no room";
    }
  }
  // Three levels: the prefix over all 64 rows, a middle level of 4 groups of 16 rows (four-warp:
  // 32 stacked rows a group) over 2048 keys each, and 512 unique keys per row.
  CascadePlan three = prefix_unique_plan(64, 4096, 512);
  CascadeLevel middle = flat_plan(4, 2048).levels[0];
  for (int g = 0; g <= 4; ++g) middle.q_indptr[g] = 16 * g;
  for (std::int32_t& id : middle.page_ids) id += 200000;
  middle.kv_start_pos.assign(4, 4096);
  three.levels.insert(three.levels.begin() + 1, middle);
  for (std::int32_t& q : three.q_pos) q += 2048;
  for (std::int32_t& k : three.levels[2].kv_start_pos) k += 2048;
  PlanPack pk3, mid_alone;
  const char* why = "";
  ASSERT_TRUE(pack_plan(three, 16, kv_heads, num_sms, 64, &pk3, &why)) << why;
  check_pack(three, pk3, 16, kv_heads, num_sms, 64);
  ASSERT_EQ(pk3.levels[1].warps, 4);
  CascadePlan middle_only = three;
  middle_only.levels = {middle};
  ASSERT_TRUE(pack_plan(middle_only, 16, kv_heads, num_sms, 64, &mid_alone, &why)) << why;
  EXPECT_EQ(pk3.levels[1].num_splits, mid_alone.levels[0].num_splits);
  EXPECT_EQ(pk3.levels[1].tokens_per_split, mid_alone.levels[0].tokens_per_split);
}

// The wide form (attention.h, kWideWarps) where the caller allows it, for levels of more than 64
// stacked rows per group that no causal cut divides, whose pages fit the page size, and whose
// rows x keys are at least 64 times the one-warp work beside them (pack_plan's wide_min_ratio(): here GQA 2 x
// prefix / unique keys per sequence); 128-row items; splits of whole 128-key tiles that make at most one
// CTA per SM. Never without wide_ok.
TEST(CudaPlanPack, WideFormRule) {
  if (std::getenv("CASCADE_ATTENTION_NO_FORK") != nullptr || std::getenv("CASCADE_ATTENTION_WIDE_MIN_RATIO") != nullptr ||
      std::getenv("CASCADE_ATTENTION_WIDE_CTAS") != nullptr) {
    GTEST_SKIP() << "an A/B switch changes the rule";
  }
  const int num_sms = 132;
  struct Case {
    int seqs, prefix, unique;
    bool wide;
  };
  for (const Case c : {Case{256, 16384, 128, true}, Case{64, 16384, 128, true}, Case{256, 4096, 128, true},
                       Case{256, 16384, 512, true}, Case{256, 4096, 512, false}, Case{64, 4096, 512, false},
                       Case{33, 1000, 1, true}, Case{32, 5000, 7, false}, Case{300, 100, 3, true},
                       Case{300, 100, 4, false}, Case{300, 2000, 0, true}}) {
    const CascadePlan plan = prefix_unique_plan(c.seqs, c.prefix, c.unique);
    const std::string at = std::to_string(c.prefix) + "/" + std::to_string(c.unique) + "/" + std::to_string(c.seqs);
    PlanPack pk, off;
    const char* why = "";
    ASSERT_TRUE(pack_plan(plan, 16, 8, num_sms, 64, &pk, &why, nullptr, 16, true)) << why;
    ASSERT_TRUE(pack_plan(plan, 16, 8, num_sms, 64, &off, &why, nullptr, 16, false)) << why;
    check_pack(plan, pk, 16, 8, num_sms, 64);
    EXPECT_NE(off.levels[0].warps, kWideWarps) << at;
    EXPECT_EQ(pk.levels[0].warps == kWideWarps, c.wide) << at;
    if (pk.levels[0].warps == kWideWarps) {
      const LevelPack& lp = pk.levels[0];
      EXPECT_EQ(lp.num_items, (2 * c.seqs + 127) / 128) << at;  // GQA 2
      EXPECT_LE(lp.num_items * 8 * lp.num_splits, std::max(num_sms, lp.num_items * 8)) << at;
      EXPECT_TRUE(lp.num_splits == 1 || lp.tokens_per_split % 128 == 0) << at;
    }
  }
  // A causal cut (a prefill row sees only part of the shared keys), or a page that holds more
  // keys than a page has slots: not wide.
  CascadePlan cut = prefix_unique_plan(100, 2048, 0);
  PlanPack pk;
  const char* why = "";
  ASSERT_TRUE(pack_plan(cut, 16, 8, num_sms, 64, &pk, &why, nullptr, 16, true)) << why;
  ASSERT_EQ(pk.levels[0].warps, kWideWarps);
  cut.q_pos[7] = 1000;
  ASSERT_TRUE(pack_plan(cut, 16, 8, num_sms, 64, &pk, &why, nullptr, 16, true)) << why;
  EXPECT_EQ(pk.levels[0].warps, 4);
  const CascadePlan big_page = prefix_unique_plan(100, 2048, 0);
  ASSERT_TRUE(pack_plan(big_page, 16, 8, num_sms, 64, &pk, &why, nullptr, 8, true)) << why;
  EXPECT_EQ(pk.levels[0].warps, 4) << "pages of 16 keys where a page has 8 slots";
}

// A wide level's split count weighs the one-warp work LevelFork runs beside it (pack_plan's
// wide_splits): at most one wave of wide CTAs; alone, and beside no keys or only a few (16
// unique keys per row beside a 16k prefix), v24's split that fills every SM; never more CTAs the
// more unique work there is beside them; and fewer than that where 128 unique keys per row of 256
// sequences need SMs beside it. (The A/B switches change the rule: skipped under them.)
TEST(CudaPlanPack, WideSplitsLeaveSmsToTheWorkBesideThem) {
  for (const char* sw : {"CASCADE_ATTENTION_NO_FORK", "CASCADE_ATTENTION_SPLIT_ALONE", "CASCADE_ATTENTION_WIDE_MIN_RATIO",
                         "CASCADE_ATTENTION_WIDE_FILL", "CASCADE_ATTENTION_WIDE_CTAS",
                         "CASCADE_ATTENTION_WIDE_SM_RATE"}) {
    if (std::getenv(sw) != nullptr) GTEST_SKIP() << sw << " changes the rule";
  }
  const int num_sms = 132, kv_heads = 8;
  for (const int seqs : {64, 128, 256}) {
    const int ctas = (2 * seqs + 127) / 128 * kv_heads;  // GQA 2: 128 stacked rows an item
    PlanPack alone;
    const char* why = "";
    ASSERT_TRUE(pack_plan(one_group_plan(seqs, 16384), 16, kv_heads, num_sms, 64, &alone, &why, nullptr, 16, true))
        << why;
    ASSERT_EQ(alone.levels[0].warps, kWideWarps);
    EXPECT_EQ(alone.levels[0].num_splits, num_sms / ctas) << seqs << " sequences alone";
    int last = alone.levels[0].num_splits;
    for (const int unique : {0, 16, 32, 64, 128}) {
      const CascadePlan plan = prefix_unique_plan(seqs, 16384, unique);
      const std::string at = "16384/" + std::to_string(unique) + "/" + std::to_string(seqs);
      PlanPack pk;
      ASSERT_TRUE(pack_plan(plan, 16, kv_heads, num_sms, 64, &pk, &why, nullptr, 16, true)) << why;
      check_pack(plan, pk, 16, kv_heads, num_sms, 64);
      const LevelPack& lp = pk.levels[0];
      ASSERT_EQ(lp.warps, kWideWarps) << at;
      EXPECT_LE(lp.num_items * kv_heads * lp.num_splits, num_sms) << at << ": more than one wave";
      EXPECT_LE(lp.num_splits, last) << at << ": more CTAs beside more unique work";
      if (unique <= 16) {
        EXPECT_EQ(lp.num_splits, alone.levels[0].num_splits) << at;
        EXPECT_EQ(lp.tokens_per_split, alone.levels[0].tokens_per_split) << at;
      }
      if (unique == 128 && seqs == 256) EXPECT_LT(lp.num_splits, alone.levels[0].num_splits) << at;
      last = lp.num_splits;
      // A state buffer of 3 slices: the wide level keeps one for the unique level.
      PlanPack small;
      ASSERT_TRUE(pack_plan(plan, 16, kv_heads, num_sms, 3, &small, &why, nullptr, 16, true)) << why;
      check_pack(plan, small, 16, kv_heads, num_sms, 3);
      EXPECT_LE(small.levels[0].num_splits, 2) << at << " with 3 slices";
    }
  }
}

// bench/wide_model_picks.py replicates wide_splits on the host for refits: at its default
// constants it must print the splits pack_plan gives the cascade bench's shapes (16 q / 8 KV
// heads, page 16, 132 SMs), so that the replica does not drift from the model it stands for.
TEST(CudaPlanPack, WideModelReplicaPicksWhatPackPlanPicks) {
  CASCADE_REQUIRE_PYTHON();
  for (const char* sw : {"CASCADE_ATTENTION_NO_FORK", "CASCADE_ATTENTION_SPLIT_ALONE", "CASCADE_ATTENTION_WIDE_MIN_RATIO",
                         "CASCADE_ATTENTION_WIDE_FILL", "CASCADE_ATTENTION_WIDE_CTAS",
                         "CASCADE_ATTENTION_WIDE_SM_RATE"}) {
    if (std::getenv(sw) != nullptr) GTEST_SKIP() << sw << " changes the rule";
  }
  const auto r = cascade::test::run_bench_script("wide_model_picks.py", "");
  ASSERT_EQ(r.status, 0) << r.out;
  struct Shape {
    int prefix, unique, seqs;
  };
  for (const Shape s : {Shape{16384, 128, 256}, Shape{16384, 128, 64}, Shape{4096, 128, 256}, Shape{4096, 128, 64},
                        Shape{16384, 512, 256}, Shape{16384, 512, 64}}) {
    const CascadePlan plan = prefix_unique_plan(s.seqs, s.prefix, s.unique);
    PlanPack pk;
    const char* why = "";
    ASSERT_TRUE(pack_plan(plan, 16, 8, 132, 64, &pk, &why, nullptr, 16, true)) << why;
    const LevelPack& lp = pk.levels[0];
    const std::string at = std::to_string(s.prefix) + "/" + std::to_string(s.unique) + "/" + std::to_string(s.seqs);
    ASSERT_EQ(lp.warps, kWideWarps) << at;
    const std::string row = "| " + at + " | " + std::to_string(lp.num_splits) + " | " +
                            std::to_string(lp.num_items * 8 * lp.num_splits) + " | ";
    EXPECT_TRUE(cascade::test::contains(r.out, row)) << row << "\n" << r.out;
  }
}

// 16-token tiles exactly for one-warp CTAs of at most 192 keys, and never where the caller may
// read keys ahead (written slots given) or for four-warp levels.
TEST(CudaPlanPack, ShortTilesForOneWarpCtasOfFewKeys) {
  struct Case {
    int seqs, tokens;
    bool written, want;
  };
  // 256 x 8 CTAs fill the chip: one split of all the keys. One sequence of 513 keys: 9 splits of
  // 64. 64 sequences of 513: 3 splits of 192. 64 of 1025: 4 splits of 320. 200 of 513: one split.
  for (const Case c : {Case{256, 192, false, true}, Case{256, 193, false, false}, Case{1, 513, false, true},
                       Case{1, 513, true, false}, Case{64, 513, false, true}, Case{64, 1025, false, false},
                       Case{200, 513, false, false}}) {
    const CascadePlan plan = flat_plan(c.seqs, c.tokens);
    const std::vector<std::int32_t> written(static_cast<std::size_t>(c.seqs), 0);  // slot 0: page 0
    PlanPack pk;
    const char* why = "";
    ASSERT_TRUE(pack_plan(plan, 16, 8, 132, 64, &pk, &why, c.written ? &written : nullptr, 16)) << why;
    ASSERT_EQ(pk.levels[0].warps, 1);
    EXPECT_EQ(pk.levels[0].short_tiles, c.want)
        << c.seqs << " x " << c.tokens << (c.written ? ", written slots" : "") << ": "
        << pk.levels[0].num_splits << " splits of " << pk.levels[0].tokens_per_split;
  }
  // One group of 64 rows over 64 keys: a four-warp level, never short.
  const CascadePlan shared = one_group_plan(64, 64);
  PlanPack pk;
  const char* why = "";
  ASSERT_TRUE(pack_plan(shared, 16, 8, 132, 64, &pk, &why)) << why;
  EXPECT_EQ(pk.levels[0].warps, 4);
  EXPECT_FALSE(pk.levels[0].short_tiles);
}

// A level may write the output rows itself (direct_out: no states, fill or merge kernel) only
// where it is the plan's one level with work, runs one-warp CTAs, covers every row with keys and
// has one split (each row one state) or 2..kMaxCtaSplits short-tile splits (<= 192 keys each)
// over at least one CTA per SM and no more waves (12 / splits CTAs per SM) than the one-warp CTAs
// would take (12 per SM), which the CTA's warps run and merge.
TEST(CudaPlanPack, DirectOutputOnlyForALoneOneWarpLevel) {
  if (ab_switch_on("CASCADE_ATTENTION_ONE_WARP_WAVES") ||
      std::getenv("CASCADE_ATTENTION_ONE_WARP_PER_SM") != nullptr) {
    GTEST_SKIP() << "the cases' split counts are the default split rule's";
  }
  struct Case {
    int seqs, tokens, want_splits;
    bool want;
  };
  for (const Case c : {
           Case{64, 513, 3, true},     // 512 CTAs of 3 splits of 192 keys: merged in the CTA
           Case{17, 200, 4, true},     // 136 CTAs (>= 132 SMs), 4 splits of 64
           Case{16, 200, 4, false},    // 128 CTAs: fewer than the SMs
           Case{17, 512, 8, false},    // 136 CTAs of 8 splits: one fits per SM, two waves
           Case{20, 300, 5, true},     // 160 CTAs of 5 splits: two per SM, one wave
           Case{36, 513, 5, false},    // 288 CTAs of 5 splits: two waves, 1440 one-warp CTAs one
           Case{96, 513, 3, true},     // 768 CTAs of 3 splits: two waves, as 2304 one-warp CTAs
           Case{1, 512, 8, false},     // 8 CTAs of 8 splits of 64
           Case{100, 1024, 2, false},  // 2 splits of 512 keys: not short tiles
           Case{200, 513, 1, true},    // 1600 CTAs fill the chip: one split
       }) {
    const CascadePlan plan = flat_plan(c.seqs, c.tokens);
    PlanPack pk;
    const char* why = "";
    ASSERT_TRUE(pack_plan(plan, 16, 8, 132, 64, &pk, &why)) << why;
    EXPECT_EQ(pk.levels[0].num_splits, c.want_splits) << c.seqs << " x " << c.tokens;
    EXPECT_EQ(pk.levels[0].direct_out, c.want) << c.seqs << " x " << c.tokens;
    EXPECT_TRUE(!pk.levels[0].direct_out || pk.levels[0].num_splits == 1 ||
                (pk.levels[0].short_tiles && pk.levels[0].num_splits <= kMaxCtaSplits));
  }
  const char* why = "";
  // Without SMs to fill, a lone one-warp level is not split: direct, and resolve_direct_out
  // keeps it unless the A/B switch is set.
  PlanPack pk;
  ASSERT_TRUE(pack_plan(flat_plan(4, 100), 16, 8, 0, 64, &pk, &why)) << why;
  EXPECT_TRUE(pk.levels[0].direct_out);
  EXPECT_EQ(resolve_direct_out(&pk), attention_direct_out_enabled());
  EXPECT_EQ(pk.levels[0].direct_out, attention_direct_out_enabled());
  // A row outside every group: the merge kernel's empty state (zeros) is its output, so no.
  ASSERT_TRUE(pack_plan(uncovered_plan(), 16, 8, 0, 64, &pk, &why)) << why;
  EXPECT_FALSE(pk.levels[0].direct_out);
  // A row twice in row_order (and so another never): no.
  CascadePlan twice = flat_plan(4, 100);
  twice.row_order = {0, 0, 2, 3};
  ASSERT_TRUE(pack_plan(twice, 16, 8, 0, 64, &pk, &why)) << why;
  EXPECT_FALSE(pk.levels[0].direct_out);
  // A group without keys (no CTA covers its rows): no.
  CascadePlan keyless = flat_plan(4, 100);
  CascadeLevel& lv = keyless.levels[0];
  const int pages = lv.page_indptr[4] - lv.page_indptr[3];
  lv.page_ids.resize(lv.page_ids.size() - pages);
  lv.page_lens.resize(lv.page_lens.size() - pages);
  lv.page_indptr[4] = lv.page_indptr[3];
  ASSERT_TRUE(pack_plan(keyless, 16, 8, 0, 64, &pk, &why)) << why;
  EXPECT_FALSE(pk.levels[0].direct_out);
  // A keyless shared level (no items: a prefix-0 cascade) over a flat one: the flat level is the
  // only busy one, so it writes directly; the empty level does not.
  ASSERT_TRUE(pack_plan(keyless_shared_over_flat(), 16, 8, 0, 64, &pk, &why)) << why;
  EXPECT_EQ(pk.levels[0].num_items, 0);
  EXPECT_FALSE(pk.levels[0].direct_out);
  EXPECT_TRUE(pk.levels[1].direct_out);
  // Three busy levels (a cascade): states and the merge kernel.
  std::mt19937_64 rng(5);
  ASSERT_TRUE(pack_plan(random_plan(rng, 12, 300, 16), 16, 8, 0, 64, &pk, &why)) << why;
  for (const LevelPack& l : pk.levels) EXPECT_FALSE(l.direct_out);
  // A lone four-warp level (64 rows in one group): no.
  ASSERT_TRUE(pack_plan(one_group_plan(64, 64), 16, 8, 0, 64, &pk, &why)) << why;
  EXPECT_EQ(pk.levels[0].warps, 4);
  EXPECT_FALSE(pk.levels[0].direct_out);
}

// A level may take q/k RMSNorm, RoPE and the K/V writes in (qk_rope: no qk_norm_rope kernel)
// only where it is the plan's one busy level, runs one-warp CTAs and every row is a decode row:
// alone in its group, its q position the group's last key. Splits do not matter (the CTA
// holding the key writes it).
TEST(CudaPlanPack, QkRopeOnlyForALoneLevelOfDecodeRows) {
  const char* why = "";
  PlanPack pk;
  for (const int seqs : {1, 64, 200}) {  // 8, 3 and 1 splits
    ASSERT_TRUE(pack_plan(flat_plan(seqs, 513), 16, 8, 132, 64, &pk, &why)) << why;
    EXPECT_TRUE(pk.levels[0].qk_rope) << seqs;
  }
  // Where it measured faster (qk_rope_pays): short-tile CTAs, at least 4 per SM. Batch 64 at
  // context 512 (3 splits of 192 keys), 8 at 512 (576 CTAs of 64 keys) and 16 at 2048 (11 splits
  // of 192) pay; 4 at 512 (288 CTAs) and 256 at 512 (one split of 513 keys: long tiles) do not.
  struct Pays {
    int seqs, tokens;
    bool want;
  };
  for (const Pays c : {Pays{64, 513, true}, Pays{8, 513, true}, Pays{16, 2048, true}, Pays{4, 513, false},
                       Pays{256, 513, false}}) {
    ASSERT_TRUE(pack_plan(flat_plan(c.seqs, c.tokens), 16, 8, 132, 64, &pk, &why)) << why;
    EXPECT_TRUE(pk.levels[0].qk_rope);
    EXPECT_EQ(qk_rope_pays(pk, 8, 132), c.want) << c.seqs << " x " << c.tokens;
  }
  // The level writes each row's K/V at its slot_mapping entry: that must be the group's last key
  // (flat_plan(4, 100): 7 pages of 16 per sequence, the last holding 4 keys).
  ASSERT_TRUE(pack_plan(flat_plan(4, 100), 16, 8, 132, 64, &pk, &why)) << why;
  std::vector<std::int32_t> last_keys = {6 * 16 + 3, 13 * 16 + 3, 20 * 16 + 3, 27 * 16 + 3};
  EXPECT_TRUE(qk_rope_slots_match(flat_plan(4, 100), pk, last_keys, 16));
  last_keys[2] -= 1;  // a row writing the key before its last
  EXPECT_FALSE(qk_rope_slots_match(flat_plan(4, 100), pk, last_keys, 16));
  EXPECT_FALSE(qk_rope_slots_match(flat_plan(4, 100), pk, {99, 211, 323}, 16));  // too few slots
  // Not where the caller may read keys ahead (written slots given: batches of 1-2).
  const std::vector<std::int32_t> written = {99, 211};  // each sequence's last key
  ASSERT_TRUE(pack_plan(flat_plan(2, 100), 16, 8, 132, 64, &pk, &why, &written, 16)) << why;
  EXPECT_FALSE(pk.levels[0].qk_rope);
  // resolve_qk_rope keeps it unless the model has a qkv bias or the A/B switch is set.
  ASSERT_TRUE(pack_plan(flat_plan(4, 100), 16, 8, 0, 64, &pk, &why)) << why;
  PlanPack biased = pk;
  EXPECT_FALSE(resolve_qk_rope(&biased, false));
  EXPECT_FALSE(biased.levels[0].qk_rope);
  EXPECT_EQ(resolve_qk_rope(&pk, true), attention_qk_rope_enabled());
  EXPECT_EQ(pk.levels[0].qk_rope, attention_qk_rope_enabled());
  // A row whose q position is not its group's last key (a row of a prefill chunk, or a key
  // past the row): no.
  for (const int pos : {98, 100}) {
    CascadePlan off = flat_plan(4, 100);
    off.q_pos[2] = pos;
    ASSERT_TRUE(pack_plan(off, 16, 8, 0, 64, &pk, &why)) << why;
    EXPECT_FALSE(pk.levels[0].qk_rope) << pos;
  }
  // The last key counts from the group's kv_start_pos.
  CascadePlan shifted = flat_plan(4, 100);
  shifted.levels[0].kv_start_pos[1] = 1000;
  shifted.q_pos[1] = 1099;
  ASSERT_TRUE(pack_plan(shifted, 16, 8, 0, 64, &pk, &why)) << why;
  EXPECT_TRUE(pk.levels[0].qk_rope);
  // Two rows in one group: no (one-warp, 4 stacked rows).
  ASSERT_TRUE(pack_plan(one_group_plan(2, 64), 16, 8, 0, 64, &pk, &why)) << why;
  EXPECT_EQ(pk.levels[0].warps, 1);
  EXPECT_FALSE(pk.levels[0].qk_rope);
  // A row outside every group: no.
  ASSERT_TRUE(pack_plan(uncovered_plan(), 16, 8, 0, 64, &pk, &why)) << why;
  EXPECT_FALSE(pk.levels[0].qk_rope);
  // A keyless shared level over a flat one: the flat level is the only busy one.
  ASSERT_TRUE(pack_plan(keyless_shared_over_flat(), 16, 8, 0, 64, &pk, &why)) << why;
  EXPECT_FALSE(pk.levels[0].qk_rope);
  EXPECT_TRUE(pk.levels[1].qk_rope);
  // A cascade (several busy levels): no level, and so no slots to match.
  std::mt19937_64 rng(5);
  const CascadePlan cascade = random_plan(rng, 12, 300, 16);
  ASSERT_TRUE(pack_plan(cascade, 16, 8, 0, 64, &pk, &why)) << why;
  for (const LevelPack& l : pk.levels) EXPECT_FALSE(l.qk_rope);
  EXPECT_FALSE(qk_rope_slots_match(cascade, pk, std::vector<std::int32_t>(12, 0), 16));
}

// LevelFork's chain takes a pack whose busy levels after the first may each run beside it
// (AttentionLevelParams::beside): one-warp, without direct output or rope. Levels without items
// launch nothing and do not count; the first busy level may be of any form.
TEST(CudaPlanPack, ChainOnlyWhereEveryLaterLevelMayRunBeside) {
  const auto level = [](int items, int warps, bool direct_out = false, bool qk_rope = false) {
    LevelPack lp;
    lp.num_items = items;
    lp.warps = warps;
    lp.direct_out = direct_out;
    lp.qk_rope = qk_rope;
    return lp;
  };
  EXPECT_TRUE(levels_may_chain({}));
  EXPECT_TRUE(levels_may_chain({level(4, kWideWarps), level(64, 1)}));
  EXPECT_TRUE(levels_may_chain({level(4, 4), level(8, 1), level(64, 1)}));
  EXPECT_TRUE(levels_may_chain({level(0, 4), level(64, 1, true, true)}));  // the lone level is first
  EXPECT_TRUE(levels_may_chain({level(4, 4), level(0, 4), level(64, 1)}));  // no items, no launch
  EXPECT_FALSE(levels_may_chain({level(4, 1), level(8, 4)}));
  EXPECT_FALSE(levels_may_chain({level(4, 1), level(8, kWideWarps)}));
  EXPECT_FALSE(levels_may_chain({level(4, 4), level(64, 1, true)}));
  EXPECT_FALSE(levels_may_chain({level(4, 4), level(64, 1, false, true)}));
  EXPECT_FALSE(levels_may_chain({level(4, 4), level(8, 1), level(64, 4)}));
}

TEST(CudaPlanPack, MalformedPlansAreRefusedWithAReason) {
  std::mt19937_64 rng(43);
  const CascadePlan good = random_plan(rng, 5, 100, 16);
  auto refused = [](const CascadePlan& p, int max_slices = 16) {
    PlanPack pk;
    const char* why = "";
    const bool ok = pack_plan(p, 16, 8, 132, max_slices, &pk, &why);
    return !ok && why != nullptr && why[0] != '\0';
  };
  {
    PlanPack pk;
    const char* why = "";
    EXPECT_TRUE(pack_plan(good, 16, 8, 132, 16, &pk, &why)) << why;
  }
  CascadePlan p = good;
  p.q_pos.pop_back();
  EXPECT_TRUE(refused(p));
  p = good;
  p.row_order[0] = 5;
  EXPECT_TRUE(refused(p));
  p = good;
  p.levels[1].page_lens[0] = 0;
  EXPECT_TRUE(refused(p));
  p = good;
  p.levels[1].page_indptr.back() += 1;
  EXPECT_TRUE(refused(p));
  p = good;
  std::swap(p.levels[1].q_indptr[1], p.levels[1].q_indptr[2]);
  if (p.levels[1].q_indptr[1] > p.levels[1].q_indptr[2]) EXPECT_TRUE(refused(p));
  EXPECT_TRUE(refused(good, 2));  // three levels, two state slices
  // Indices past their arrays in a group before the last (refused before any level is read).
  p = good;
  p.levels[1].q_indptr[1] = 100;
  EXPECT_TRUE(refused(p));
  p = good;
  p.levels[1].page_indptr[1] = 1000;
  EXPECT_TRUE(refused(p));
  p = good;
  p.levels[0].q_indptr = {INT32_MIN, INT32_MAX};
  EXPECT_TRUE(refused(p));
  p = good;
  p.levels[2].page_lens[0] = INT32_MAX;  // the group's keys overflow
  EXPECT_TRUE(refused(p));
}

// kv_fresh: per group, the start (within the group's keys) of its first page holding a slot the
// step writes, its key count if none; 0 everywhere without the step's slots (nothing read ahead).
// Checked against a token-by-token scan of random plans.
TEST(CudaPlanPack, KvFreshIsTheStartOfEachGroupsFirstWrittenPage) {
  std::mt19937_64 rng(47);
  const int page_size = 16;
  for (int trial = 0; trial < 20; ++trial) {
    const CascadePlan plan = random_plan(rng, 1 + static_cast<int>(rng() % 12), 300, page_size);
    int max_page = 0;
    for (const CascadeLevel& lv : plan.levels) {
      for (const std::int32_t id : lv.page_ids) max_page = std::max(max_page, id);
    }
    std::vector<std::int32_t> slots;  // a few random slots, one not written (-1)
    for (int i = 0; i < 4; ++i) slots.push_back(static_cast<int>(rng() % ((max_page + 1) * page_size)));
    slots.push_back(-1);
    const char* why = "";
    PlanPack none, with;
    ASSERT_TRUE(pack_plan(plan, 16, 8, 132, 64, &none, &why)) << why;
    ASSERT_TRUE(pack_plan(plan, 16, 8, 132, 64, &with, &why, &slots, page_size)) << why;
    EXPECT_EQ(none.data.size(), with.data.size());
    for (std::size_t l = 0; l < plan.levels.size(); ++l) {
      const CascadeLevel& lv = plan.levels[l];
      for (int g = 0; g < lv.num_groups(); ++g) {
        int want = 0, t = 0;
        bool found = false;
        for (int i = lv.page_indptr[g]; i < lv.page_indptr[g + 1] && !found; ++i) {
          for (const std::int32_t s : slots) {
            if (s >= 0 && s / page_size == lv.page_ids[i]) found = true;
          }
          if (!found) t += lv.page_lens[i];
        }
        want = t;
        EXPECT_EQ(none.data[none.levels[l].kv_fresh + g], 0);
        EXPECT_EQ(with.data[with.levels[l].kv_fresh + g], want) << "trial " << trial << " level " << l << " group " << g;
      }
    }
  }
  // Slots without a page size are refused.
  const CascadePlan plan = random_plan(rng, 3, 50, page_size);
  const std::vector<std::int32_t> slots = {0};
  PlanPack pk;
  const char* why = "";
  EXPECT_FALSE(pack_plan(plan, 16, 8, 132, 64, &pk, &why, &slots, 0));
}

}  // namespace
}  // namespace cascade::cuda

// Host side of the attention kernels (see attention.h): packing a CascadePlan, and LevelFork.
#include <algorithm>
#include <cstdint>

#include "backend/cuda/ab_switch.h"
#include "backend/cuda/attention.h"

namespace cascade::cuda {
namespace {
constexpr int kTile = 64;  // split granularity: a multiple of attention.cu's tiles (16, 32 and 64)
// One-warp CTAs of 16-token tiles resident per SM (16.4 KiB of shared memory and 164 registers a
// thread at head_dim 128): the split target; a merged CTA of s splits fits 12 / s times.
constexpr int kOneWarpCtasPerSm = 12;
// The count that the one-warp split target and the CTA-merge rule take: kOneWarpCtasPerSm, or N
// with CASCADE_ATTENTION_ONE_WARP_PER_SM=N (A/B: other split targets, e.g. 9 for one wave of
// 0/512/64's splits, NOTES v30). The four-warp model below keeps its fit's 12.
int one_warp_ctas_per_sm() {
  static const int n = static_cast<int>(
      std::max(1LL, ab_switch_value("CASCADE_ATTENTION_ONE_WARP_PER_SM", kOneWarpCtasPerSm)));
  return n;
}
// Four-warp CTAs resident per SM (the kernel's launch bounds); each holds the registers and
// shared memory of kOneWarpCtasPerSm / 3 = 4 one-warp CTAs.
constexpr int kFourWarpCtasPerSm = 3;

// The split model of a four-warp level that runs beside one-warp levels (a cascade's shared
// level beside its unique one, LevelFork's chain or fork): an H100 fit (bench/NOTES_cuda.md
// v17) of the time in us to
//   max(shared level, one-warp work)
//   shared level  = waves x (64-key tiles per CTA + kBesideFixedTiles) x kBesideTileUs,
//   one-warp work = its time alone (beside_us in pack_plan) slowed by the share of the SMs'
//                   one-warp slots that the shared CTAs hold while they run (kOneWarpCtasPerSm /
//                   kFourWarpCtasPerSm each), at full speed after them;
//   beside_us     = kBesideFixedUs + keys x KV heads x 512 bytes (K + V at head_dim 128, the
//                   fit's; other head dims keep the same shape of rule) / kBesideBytesPerUs.
// Levels alone keep the model below (waves x (tiles + 2)).
constexpr double kBesideTileUs = 4.0;
constexpr double kBesideFixedTiles = 6.0;
constexpr double kBesideFixedUs = 8.6;
constexpr double kBesideBytesPerUs = 2.9e6;
// Keys per tile of the wide form (attention_wide.cu), its split granularity.
constexpr int kWideTile = 128;
// The wide form holds its SMs' registers and most of their shared memory, so the one-warp levels
// LevelFork runs beside the level read only on the SMs it leaves free (wide_splits below chooses
// how many): the level takes the form only where its stacked
// rows x keys (x KV heads) are at least wide_min_ratio() times the one-warp work beside it (keys
// x 16-row tiles x KV heads, level_work), or nothing runs beside it. A fit to the H100's cascade
// bench with wide_splits' model (v26 run 2): the form won at a ratio of 256 (16384/128/*) and
// 64 (4096/128/256 72.3 us against 80.5, 16384/512/256 233.9 against 255.7, 16384/512/64 87.0
// against 92.2, 4096/128/64 even) and lost at 16 (4096/512/*: 215.8 and 71.3 against 203.7 and
// 69.2). (v24's fill split lost at 64.) Leaving room for one-warp CTAs beside it (128 registers a
// thread at launch, 64-key tiles) measured slower, 145 against 137 us at 16384/128/256 (v24 run 8).
// CASCADE_ATTENTION_WIDE_MIN_RATIO=R replaces the 64 (A/B; 0: wherever the form may run).
long long wide_min_ratio() {
  static const long long r = ab_switch_value("CASCADE_ATTENTION_WIDE_MIN_RATIO", 64);
  return r;
}

// The wide level's split model (wide_splits below): a wide CTA takes wide_tile_us() per 128-key tile
// plus kWideFixedUs, one CTA per SM; the one-warp work beside it reads at wide_sm_rate() bytes per
// us on each SM the wide CTAs leave free (at most kBesideBytesPerUs, the whole chip's), after its
// kBesideFixedUs. An H100 fit (bench/NOTES_cuda.md v26): 83 us for 32 tiles alone (v24 run 5);
// 128 CTAs of 2 tiles beside 33.5 MB of unique keys took 41 us where 88 of 3 took 34 (so the
// fixed cost is well above v25's guess of 3 us); and 64 CTAs beat 80 beside 134 MB. v27's faster
// kernel (~2 us a tile) was not refit: at the bench's shapes a tile cost anywhere in 1.6-2.28 us
// picks the same splits but at 16384/128/64 and 4096/128/64 (one or two fewer), and the picks
// measured best but at 16384/512/64, as in v26 (NOTES v27; bench/wide_model_picks.py replicates
// this model on the host for such what-ifs).
// CASCADE_ATTENTION_WIDE_TILE_NS=N replaces the tile cost with N ns (A/B, refits).
double wide_tile_us() {
  static const double us =
      static_cast<double>(std::max(1LL, ab_switch_value("CASCADE_ATTENTION_WIDE_TILE_NS", 2280))) / 1000.0;
  return us;
}
constexpr double kWideFixedUs = 10.0;
// One-warp CTAs' read rate per SM (B/us) beside the wide level: 40 KB/us saturates the chip's
// kBesideBytesPerUs at ~72 SMs. CASCADE_ATTENTION_WIDE_SM_RATE=B replaces it (A/B, sweeps).
double wide_sm_rate() {
  static const double r = static_cast<double>(std::max(1LL, ab_switch_value("CASCADE_ATTENTION_WIDE_SM_RATE", 40000)));
  return r;
}

// `max_len` keys cut into `s` splits of whole `unit`-key tiles: the tiles a split takes (rounded
// up) and, returned, the splits that then need (at most s). Both split models step s through it.
int whole_tile_splits(int max_len, int s, int unit, int* tiles) {
  *tiles = ((max_len + s - 1) / s + unit - 1) / unit;
  return (max_len + *tiles * unit - 1) / (*tiles * unit);
}

// Waves of `n` CTAs at `per_sm` CTAs per SM.
long long waves_of(long long n, long long per_sm, int num_sms) {
  return (n + per_sm * num_sms - 1) / (per_sm * num_sms);
}

// Whether a lone one-warp level of `ctas` CTAs runs its `splits` short-tile splits as CTAs of
// `splits` warps that merge them (direct output; pack_plan's cta_merge): where those CTAs fill
// every SM and take no more waves (one_warp_ctas_per_sm() / splits of them per SM) than the
// separate one-warp CTAs would: fewer CTAs would put a small batch's whole KV read on a few SMs,
// and e.g. 136 CTAs of 8 splits (one fits per SM) would take two waves where their 1088 one-warp
// CTAs take one.
bool cta_merges(bool short_tiles, int splits, int ctas, int num_sms) {
  const int per_sm = one_warp_ctas_per_sm();
  return short_tiles && splits <= kMaxCtaSplits && num_sms > 0 && ctas >= num_sms &&
         waves_of(ctas, std::max(1, per_sm / splits), num_sms) <=
             waves_of(static_cast<long long>(ctas) * splits, per_sm, num_sms);
}

// A one-warp CTA's fixed costs (start-up, first loads, its state written and merged) in 64-key
// tiles, as in the four-warp model of pack_plan.
constexpr double kOneWarpFixedTiles = 2.0;
// CASCADE_ATTENTION_ONE_WARP_WAVES=1 splits one-warp levels by one_warp_wave_splits (A/B; v31).
bool one_warp_waves() {
  static const bool on = ab_switch_on("CASCADE_ATTENTION_ONE_WARP_WAVES");
  return on;
}

// The modelled time (us) until both the wide level (`ctas` CTAs of `tiles` 128-key tiles each)
// and the one-warp work beside it (`beside_bytes` of K/V) are done.
double beside_makespan(long long ctas, int tiles, int num_sms, double beside_bytes) {
  const long long waves = (ctas + num_sms - 1) / num_sms;
  const double wide_us = static_cast<double>(waves) * (tiles * wide_tile_us() + kWideFixedUs);
  if (beside_bytes <= 0.0) return wide_us;
  const long long free_sms = std::max(0LL, num_sms - ctas);
  const double rate = std::min(kBesideBytesPerUs, static_cast<double>(free_sms) * wide_sm_rate());
  // While the wide CTAs run, the work beside them starts (its fixed cost) and reads at `rate`;
  // what is left after them reads on the whole chip.
  const double during = rate * std::max(0.0, wide_us - kBesideFixedUs);
  const double beside_end = during >= beside_bytes
                                ? kBesideFixedUs + beside_bytes / rate
                                : std::max(wide_us, kBesideFixedUs) + (beside_bytes - during) / kBesideBytesPerUs;
  return std::max(wide_us, beside_end);
}

// The split count of a wide level of `ctas` CTAs (items x KV heads) over at most `max_len` keys.
// Alone (no bytes beside it), as many splits of whole 128-key tiles as make one CTA per SM (v24's
// rule: one wide CTA holds an SM's registers and most of its shared memory; two waves of shorter
// CTAs measured 8-23% slower in v24's first form).
// Beside one-warp work that LevelFork runs beside it (chained or forked), the split count at most that one
// that minimises beside_makespan(): fewer, longer CTAs leave SMs to the work beside them (v24 run
// 5: at 16384/128/256 the unique level waited 83 us for the wide level's 128 CTAs, then took 55).
// Ties go to the more splits. CASCADE_ATTENTION_WIDE_FILL=1 keeps v24's rule beside work too, and
// CASCADE_ATTENTION_WIDE_CTAS=N makes it aim for N CTAs instead of the SMs' count (A/B, sweeps;
// 2 x SMs is v24's CASCADE_ATTENTION_WIDE_CTAS_PER_SM=2).
int wide_splits(int ctas, int max_len, int num_sms, int slice_budget, double beside_bytes) {
  static const bool fill = ab_switch_on("CASCADE_ATTENTION_WIDE_FILL");
  static const long long cap = ab_switch_value("CASCADE_ATTENTION_WIDE_CTAS", 0);
  if (num_sms <= 0 || ctas <= 0 || max_len <= 0 || slice_budget <= 1) return 1;
  const int max_tiles = (max_len + kWideTile - 1) / kWideTile;
  const long long target = cap > 0 ? cap : num_sms;
  const int most = static_cast<int>(std::max(1LL, std::min<long long>({target / ctas, max_tiles, slice_budget})));
  if (fill || cap > 0 || beside_bytes <= 0.0) return most;
  int best = 1;
  double best_cost = -1;
  for (int s = 1; s <= most; ++s) {
    int tiles = 0;
    const int real = whole_tile_splits(max_len, s, kWideTile, &tiles);
    const double cost = beside_makespan(static_cast<long long>(ctas) * real, tiles, num_sms, beside_bytes);
    if (best_cost < 0 || cost <= best_cost * (1.0 + 1e-9)) {
      best_cost = cost;
      best = real;
    }
  }
  return best;
}

// A level's keys: each page's first token within its group and each group's key count.
struct LevelKeys {
  std::vector<std::int32_t> page_start, kv_len;
};

// Why a level's arrays cannot be packed, or nullptr, with its keys counted in the same pass:
// every index pack_plan and the kernels follow stays inside its array, and no group's key count
// overflows. Run over every level before any level is used.
const char* scan_level(const CascadeLevel& lv, int rows, LevelKeys* keys) {
  const int groups = lv.num_groups();
  keys->page_start.assign(lv.page_ids.size(), 0);
  keys->kv_len.assign(static_cast<std::size_t>(std::max(groups, 0)), 0);
  if (groups <= 0) return nullptr;
  if (static_cast<int>(lv.page_indptr.size()) != groups + 1 || static_cast<int>(lv.kv_start_pos.size()) != groups ||
      lv.page_ids.size() != lv.page_lens.size() || lv.q_indptr.front() != 0 || lv.q_indptr.back() > rows ||
      lv.page_indptr.front() != 0 || lv.page_indptr.back() != static_cast<int>(lv.page_ids.size())) {
    return "a level's CSR arrays are inconsistent";
  }
  for (int g = 0; g < groups; ++g) {
    if (lv.q_indptr[g + 1] < lv.q_indptr[g] || lv.page_indptr[g + 1] < lv.page_indptr[g]) {
      return "a level's indptr arrays decrease";
    }
  }
  for (int g = 0; g < groups; ++g) {
    long long t = 0;
    for (int i = lv.page_indptr[g]; i < lv.page_indptr[g + 1]; ++i) {
      if (lv.page_lens[i] <= 0) return "a page length is not positive";
      if (t + lv.page_lens[i] > (1LL << 30)) return "a group holds more than 2^30 keys";
      keys->page_start[i] = static_cast<std::int32_t>(t);
      t += lv.page_lens[i];
    }
    keys->kv_len[g] = static_cast<std::int32_t>(t);
  }
  return nullptr;
}

// Where a level's work is in a step: whether it launches CTAs (a group with rows and keys), whether
// they are one-warp CTAs (groups of at most 16 stacked rows), and the keys x KV heads they read
// (each 16-row tile of a group its own pass over the group's keys). For a scanned level.
struct LevelWork {
  bool busy = false, one_warp = true;
  long long key_heads = 0;
};
LevelWork level_work(const CascadeLevel& lv, const LevelKeys& lk, int gqa, int num_kv_heads) {
  LevelWork w;
  for (int g = 0; g < lv.num_groups(); ++g) {
    const long long m = static_cast<long long>(lv.q_indptr[g + 1] - lv.q_indptr[g]) * gqa;
    const long long keys = lk.kv_len[g];
    w.one_warp = w.one_warp && m <= 16;
    w.busy = w.busy || (m > 0 && keys > 0);
    w.key_heads += keys * ((m + 15) / 16) * num_kv_heads;
  }
  return w;
}

int append(std::vector<std::int32_t>& data, const std::vector<std::int32_t>& v) {
  const int off = static_cast<int>(data.size());
  data.insert(data.end(), v.begin(), v.end());
  return off;
}
}  // namespace

int one_warp_wave_splits(int ctas, int max_len, int most, int num_sms, bool short_ok, bool may_merge) {
  if (ctas <= 0 || max_len <= 0 || num_sms <= 0) return 1;
  const int per_sm = one_warp_ctas_per_sm();
  int best = 1;
  double best_cost = -1;
  for (int s = 1; s <= most; ++s) {
    int tiles = 0;
    const int real = whole_tile_splits(max_len, s, kTile, &tiles);
    const int per_split = real == 1 ? max_len : tiles * kTile;
    const bool short_tiles = short_ok && per_split <= kShortTileMaxTokens;
    const bool merged = may_merge && real > 1 && cta_merges(short_tiles, real, ctas, num_sms);
    const long long w = merged ? waves_of(ctas, std::max(1, per_sm / real), num_sms)
                               : waves_of(static_cast<long long>(ctas) * real, per_sm, num_sms);
    const double cost = static_cast<double>(w) * (tiles + kOneWarpFixedTiles);
    if (best_cost < 0 || cost <= best_cost) {  // s grows and `real` never falls: ties to more splits
      best_cost = cost;
      best = real;
    }
  }
  return best;
}

bool pack_plan(const CascadePlan& plan, int num_heads, int num_kv_heads, int num_sms,
               int max_slices, PlanPack* out, const char** why,
               const std::vector<std::int32_t>* written_slots, int page_size, bool wide_ok) {
  const int rows = plan.num_rows;
  const int gqa = num_heads / num_kv_heads;
  if (static_cast<int>(plan.row_order.size()) != rows || static_cast<int>(plan.q_pos.size()) != rows) {
    *why = "row_order and q_pos must have num_rows entries";
    return false;
  }
  std::vector<char> seen(static_cast<std::size_t>(rows), 0);
  bool row_order_is_permutation = true;  // direct_out needs every row written exactly once
  for (std::int32_t r : plan.row_order) {
    if (r < 0 || r >= rows) {
      *why = "row_order holds a row id outside [0, num_rows)";
      return false;
    }
    row_order_is_permutation = row_order_is_permutation && !seen[r];
    seen[r] = 1;
  }
  const int num_levels = static_cast<int>(plan.levels.size());
  if (num_levels > max_slices) {
    *why = "too many levels for the state buffer";
    return false;
  }
  // Pages the step writes K/V into, sorted (a step writes one slot per row).
  std::vector<std::int32_t> dirty;
  if (written_slots != nullptr) {
    if (page_size <= 0) {
      *why = "written slots need a positive page size";
      return false;
    }
    for (const std::int32_t s : *written_slots) {
      if (s >= 0) dirty.push_back(s / page_size);
    }
    std::sort(dirty.begin(), dirty.end());
  }
  PlanPack& pk = *out;
  pk.data.clear();
  pk.levels.assign(num_levels, LevelPack{});
  pk.row_order = append(pk.data, plan.row_order);
  pk.q_pos = append(pk.data, plan.q_pos);
  std::vector<LevelKeys> level_keys(static_cast<std::size_t>(num_levels));
  for (int l = 0; l < num_levels; ++l) {
    if (const char* defect = scan_level(plan.levels[l], rows, &level_keys[l])) {
      *why = defect;
      return false;
    }
  }
  int used_slices = 0;
  // LevelFork runs the first busy level on the step's stream and the others, one after another,
  // beside it (chained on that stream, or forked onto a second one). Where that first level is four-warp, its split count weighs the
  // one-warp levels' work beside it (the model above), in us at head_dim 128: the fit's shape.
  // CASCADE_ATTENTION_SPLIT_ALONE=1 splits it as if alone (the rule before v17, A/B).
  static const bool split_alone = ab_switch_on("CASCADE_ATTENTION_SPLIT_ALONE");
  int first_busy = -1, busy_count = 0;
  long long beside_keys = 0;
  for (int l = 0; l < num_levels; ++l) {
    const LevelWork w = level_work(plan.levels[l], level_keys[l], gqa, num_kv_heads);
    if (!w.busy) continue;
    ++busy_count;
    if (first_busy < 0) {
      first_busy = l;
    } else if (w.one_warp) {
      beside_keys += w.key_heads;
    }
  }
  const double beside_us = split_alone || !attention_fork_enabled() || beside_keys == 0
                               ? 0.0
                               : kBesideFixedUs + static_cast<double>(beside_keys) * 512.0 / kBesideBytesPerUs;
  for (int l = 0; l < num_levels; ++l) {
    const CascadeLevel& lv = plan.levels[l];
    const int groups = lv.num_groups();
    LevelPack& lp = pk.levels[l];
    const std::vector<std::int32_t>& page_start = level_keys[l].page_start;
    const std::vector<std::int32_t>& kv_len = level_keys[l].kv_len;
    std::vector<std::int32_t> kv_fresh(groups, 0);
    std::vector<std::int32_t> items;
    int max_m = 0, max_len = 0;
    // Every row in a group with keys (and row_order a permutation, so none twice).
    bool all_keyed = groups > 0 && lv.q_indptr.back() == rows && row_order_is_permutation;
    bool decode_rows = true;  // every group one row whose q position is its last key (qk_rope)
    // Every row sees every key of its group (no causal cut) and no page holds more keys than a
    // page has slots: what the wide form needs besides enough rows.
    bool uncut = wide_ok && page_size > 0;
    for (int g = 0; g < groups; ++g) {
      const int t = kv_len[g];
      all_keyed = all_keyed && t > 0;
      if (written_slots != nullptr) {
        kv_fresh[g] = t;
        for (int i = lv.page_indptr[g]; i < lv.page_indptr[g + 1]; ++i) {
          if (std::binary_search(dirty.begin(), dirty.end(), lv.page_ids[i])) {
            kv_fresh[g] = page_start[i];
            break;
          }
        }
      }
      // A decode row: alone in its group, its q position the group's last key.
      if (lv.q_indptr[g + 1] - lv.q_indptr[g] != 1) {
        decode_rows = false;
      } else {
        const std::int32_t row = plan.row_order[lv.q_indptr[g]];
        decode_rows = decode_rows && static_cast<std::int64_t>(plan.q_pos[row]) ==
                                         static_cast<std::int64_t>(lv.kv_start_pos[g]) + t - 1;
      }
      if (uncut && t > 0) {
        const std::int64_t last_key = static_cast<std::int64_t>(lv.kv_start_pos[g]) + t - 1;
        for (int i = lv.q_indptr[g]; i < lv.q_indptr[g + 1] && uncut; ++i) {
          uncut = plan.q_pos[plan.row_order[i]] >= last_key;
        }
        for (int i = lv.page_indptr[g]; i < lv.page_indptr[g + 1] && uncut; ++i) uncut = lv.page_lens[i] <= page_size;
      }
      max_len = std::max(max_len, t);
      max_m = std::max(max_m, (lv.q_indptr[g + 1] - lv.q_indptr[g]) * gqa);
    }
    // The wide form's work against the one-warp levels' beside it (wide_min_ratio(); they run beside
    // only the first busy level, chained or forked by LevelFork).
    bool wide = uncut && max_m > 64;
    if (wide && l == first_busy && attention_fork_enabled()) {
      long long rows_keys = 0;
      for (int g = 0; g < groups; ++g) {
        rows_keys += static_cast<long long>(lv.q_indptr[g + 1] - lv.q_indptr[g]) * gqa * kv_len[g] * num_kv_heads;
      }
      wide = rows_keys >= wide_min_ratio() * beside_keys;
    }
    lp.warps = max_m <= 16 ? 1 : wide ? kWideWarps : 4;
    const int m_tile = lp.warps == kWideWarps ? 128 : 16 * lp.warps;
    for (int g = 0; g < groups; ++g) {
      const int m = (lv.q_indptr[g + 1] - lv.q_indptr[g]) * gqa;
      if (kv_len[g] == 0) continue;  // contributes the empty state, which the fill provides
      for (int m0 = 0; m0 < m; m0 += m_tile) {
        items.push_back(g);
        items.push_back(m0);
      }
    }
    lp.num_items = static_cast<int>(items.size() / 2);
    // Split-K when the level alone would leave SMs idle. One-warp CTAs (32.5 KiB of shared memory
    // with 32-token tiles) fit 6 per SM: aim for at least two full waves of those (one of the
    // 12 per SM that 16-token tiles allow), splits of at least 64 tokens, so that a level of
    // e.g. 512 CTAs (0.65 of a wave of 792) does not leave a third of the chip idle. Other
    // targets measured worse somewhere (v11). Four-warp CTAs (3 per SM, see the kernel's launch bounds; these are the shared
    // levels of big batches, compute-bound): take the split count that minimises the modelled
    // makespan, waves x (64-token tiles + 2) per CTA, so that e.g. 64 CTAs over a 16k prefix get
    // 6 splits (384 CTAs, one wave of 396 slots) rather than a second, mostly idle wave; beside
    // one-warp levels, the model of kBesideTileUs above (v17: e.g. 3 splits there with unique
    // parts of 512 keys for 256 sequences, whose one-warp CTAs then run beside the shared ones).
    int splits = 1;
    const int ctas = lp.num_items * num_kv_heads;
    const int slice_budget = max_slices - used_slices - (num_levels - l - 1);
    const bool beside = l == first_busy && beside_us > 0.0;  // one-warp work runs beside this level
    if (lp.warps == kWideWarps) {
      splits = wide_splits(ctas, max_len, num_sms, slice_budget, beside ? static_cast<double>(beside_keys) * 512.0 : 0.0);
    } else if (lp.warps == 1) {
      const int target = one_warp_ctas_per_sm() * num_sms;
      if (num_sms > 0 && ctas > 0 && ctas < target) {
        splits = std::min((target + ctas - 1) / ctas, (max_len + kTile - 1) / kTile);
        splits = std::max(1, std::min(splits, slice_budget));
        if (one_warp_waves()) {
          const bool may_merge = busy_count == 1 && all_keyed && attention_direct_out_enabled();
          splits = one_warp_wave_splits(ctas, max_len, splits, num_sms, written_slots == nullptr, may_merge);
        }
      }
    } else {
      const int slots = kFourWarpCtasPerSm * num_sms;
      if (num_sms > 0 && ctas > 0 && ctas < slots && max_len > 0) {
        const int cap = std::max(1, std::min((max_len + 2 * kTile - 1) / (2 * kTile), slice_budget));
        double best_cost = -1;
        for (int s = 1; s <= cap; ++s) {
          int tiles = 0;
          const int real = whole_tile_splits(max_len, s, kTile, &tiles);
          const long long n = static_cast<long long>(ctas) * real;
          const long long w = waves_of(n, kFourWarpCtasPerSm, num_sms);
          double cost;
          if (!beside) {
            // + 2 tiles per CTA for its fixed costs (start-up, first loads, its state written
            // and merged): 37 splits of 7 tiles lost to 6 of 43 over a 16k prefix (v9).
            cost = static_cast<double>(w * (tiles + 2));
          } else {
            // Beside one-warp levels (the model above): fewer, longer CTAs leave them SMs.
            const double shared = static_cast<double>(w) * (tiles + kBesideFixedTiles) * kBesideTileUs;
            const double held = std::min<double>(kFourWarpCtasPerSm, static_cast<double>(n) / num_sms) *
                                (kOneWarpCtasPerSm / kFourWarpCtasPerSm);
            const double left = std::max(0.0, kOneWarpCtasPerSm - held) / kOneWarpCtasPerSm;
            const double unique = beside_us <= shared * left ? beside_us / left : shared + (beside_us - shared * left);
            cost = std::max(shared, unique);
          }
          // Beside one-warp levels, exact ties (e.g. 19 splits of 14 tiles and 20 of 13 at
          // 16384/128/64, where cost = one-warp time + shared x held / 12) go to the more splits
          // (s grows, so `real` never falls) whatever the rounding: the picks measured in v17.
          if (best_cost < 0 || (beside ? cost <= best_cost * (1.0 + 1e-9) : cost < best_cost)) {
            best_cost = cost;
            splits = real;
          }
        }
      }
    }
    int per_split = std::max(1, (max_len + splits - 1) / splits);
    if (splits > 1) {
      const int unit = lp.warps == kWideWarps ? kWideTile : kTile;
      int tiles = 0;
      splits = whole_tile_splits(max_len, splits, unit, &tiles);
      per_split = tiles * unit;
    }
    lp.num_splits = splits;
    lp.tokens_per_split = per_split;
    // Few keys per CTA (cascades' unique levels, decode splits): the 16-token tiles' occupancy
    // wins; over more keys their per-tile work costs more (v11: 4096/128/64 -7%, decode batch
    // 64 at 192 keys per CTA -2.3%, but flat 16k contexts +13% and batch 256 at 512 keys +3.5%
    // with them; a cut at 256 measured mixed).
    // Not where the caller may read keys ahead (written_slots given: batches of 1-2, whose
    // read-ahead form keeps 32-token tiles), so that the flag names the form that runs.
    lp.short_tiles = lp.warps == 1 && written_slots == nullptr && max_len > 0 &&
                     std::min(per_split, max_len) <= kShortTileMaxTokens;
    // Provisional: cleared below unless this is the plan's only busy level. Several splits merge
    // inside their CTA where cta_merges says so.
    const bool cta_merge = cta_merges(lp.short_tiles, splits, ctas, num_sms);
    lp.direct_out = all_keyed && lp.warps == 1 && (splits == 1 || cta_merge);
    // Not where the caller may read keys ahead (batches of 1-2): their read-ahead form keeps
    // qk_norm_rope, which releases its successor early (v13: taken in, batch 1 was 8% slower).
    lp.qk_rope = all_keyed && lp.warps == 1 && decode_rows && written_slots == nullptr;
    lp.slice_base = used_slices;
    used_slices += splits;
    lp.items = append(pk.data, items);
    lp.q_indptr = append(pk.data, lv.q_indptr.empty() ? std::vector<std::int32_t>{0} : lv.q_indptr);
    lp.page_indptr =
        append(pk.data, lv.page_indptr.empty() ? std::vector<std::int32_t>{0} : lv.page_indptr);
    lp.page_ids = append(pk.data, lv.page_ids);
    lp.page_start = append(pk.data, page_start);
    lp.kv_len = append(pk.data, kv_len);
    lp.kv_start_pos = append(pk.data, lv.kv_start_pos);
    lp.kv_fresh = append(pk.data, kv_fresh);
    lp.counts = append(pk.data, {lp.num_items, lp.num_splits, lp.tokens_per_split});
  }
  pk.num_slices = used_slices;
  // Direct output (AttentionLevelParams::direct_out) replaces the merge: a lone level only.
  const bool lone = busy_levels(pk.levels) == 1;
  // So does taking q/k RMSNorm + RoPE and the K/V writes in (LevelPack::qk_rope): a step of
  // several busy levels needs q in every level and the K/V written before any of them.
  for (LevelPack& lp : pk.levels) {
    lp.direct_out = lp.direct_out && lone;
    lp.qk_rope = lp.qk_rope && lone;
  }
  return true;
}

LevelFork::~LevelFork() {
  if (forked_ != nullptr) cudaEventDestroy(forked_);
  if (joined_ != nullptr) cudaEventDestroy(joined_);
  if (side_ != nullptr) cudaStreamDestroy(side_);
}

cudaError_t LevelFork::init() {
  if (side_ != nullptr) return cudaSuccess;
  cudaEvent_t forked = nullptr, joined = nullptr;
  cudaStream_t side = nullptr;
  cudaError_t e = cudaEventCreateWithFlags(&forked, cudaEventDisableTiming);
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&joined, cudaEventDisableTiming);
  if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking);
  if (e != cudaSuccess) {  // nothing half made is kept
    if (forked != nullptr) cudaEventDestroy(forked);
    if (joined != nullptr) cudaEventDestroy(joined);
    return e;
  }
  forked_ = forked;
  joined_ = joined;
  side_ = side;
  return cudaSuccess;
}

cudaError_t LevelFork::synchronize() const {
  return side_ != nullptr ? cudaStreamSynchronize(side_) : cudaSuccess;
}

cudaError_t LevelFork::begin(int busy_levels, cudaStream_t main, bool chain_ok) {
  main_ = main;
  launched_ = 0;
  const bool together = busy_levels > 1 && attention_fork_enabled();
  chained_now_ = together && chain_ok && attention_chain_enabled();
  forked_now_ = side_ != nullptr && together && !chained_now_;
  if (!forked_now_) return cudaSuccess;
  cudaError_t e = cudaEventRecord(forked_, main);
  if (e == cudaSuccess) e = cudaStreamWaitEvent(side_, forked_, 0);
  if (e != cudaSuccess) forked_now_ = false;  // nothing was queued on the side stream
  return e;
}

cudaError_t LevelFork::end() {
  chained_now_ = false;  // a chain joins by itself: the merge's wait covers every level (launch.cuh)
  if (!forked_now_) return cudaSuccess;
  forked_now_ = false;
  const cudaError_t e = cudaEventRecord(joined_, side_);
  return e != cudaSuccess ? e : cudaStreamWaitEvent(main_, joined_, 0);
}

int busy_levels(const std::vector<LevelPack>& levels) {
  return static_cast<int>(
      std::count_if(levels.begin(), levels.end(), [](const LevelPack& lp) { return lp.num_items > 0; }));
}

bool resolve_direct_out(PlanPack* pack, bool take) {
  bool direct = false;
  for (LevelPack& lp : pack->levels) {
    lp.direct_out = lp.direct_out && take && attention_direct_out_enabled();
    direct = direct || (lp.direct_out && lp.num_items > 0);
  }
  return direct;
}

bool qk_rope_pays(const PlanPack& pack, int num_kv_heads, int num_sms) {
  for (const LevelPack& lp : pack.levels) {
    if (lp.qk_rope && lp.num_items > 0) {
      return lp.short_tiles && static_cast<long long>(lp.num_items) * num_kv_heads * lp.num_splits >=
                                   4LL * num_sms;
    }
  }
  return false;
}

bool qk_rope_slots_match(const CascadePlan& plan, const PlanPack& pack,
                         const std::vector<std::int32_t>& slot_mapping, int page_size) {
  for (std::size_t l = 0; l < pack.levels.size() && l < plan.levels.size(); ++l) {
    if (!pack.levels[l].qk_rope) continue;
    const CascadeLevel& lv = plan.levels[l];
    for (int g = 0; g < lv.num_groups(); ++g) {
      const int last = lv.page_indptr[g + 1] - 1;  // pack_plan's rule: one row, keys, last key
      const std::int32_t row = plan.row_order[lv.q_indptr[g]];
      if (last < lv.page_indptr[g] || row < 0 || static_cast<std::size_t>(row) >= slot_mapping.size() ||
          static_cast<std::int64_t>(slot_mapping[row]) !=
              static_cast<std::int64_t>(lv.page_ids[last]) * page_size + lv.page_lens[last] - 1) {
        return false;
      }
    }
    return true;
  }
  return false;
}

bool resolve_qk_rope(PlanPack* pack, bool take) {
  bool fused = false;
  for (LevelPack& lp : pack->levels) {
    lp.qk_rope = lp.qk_rope && take && attention_qk_rope_enabled();
    fused = fused || (lp.qk_rope && lp.num_items > 0);
  }
  return fused;
}

LevelArrays level_arrays(const PlanPack& pack, int l, const std::int32_t* dev) {
  return level_arrays(pack.levels[l], dev);
}

LevelArrays level_arrays(const LevelPack& lp, const std::int32_t* dev) {
  LevelArrays a;
  a.items = dev + lp.items;
  a.q_indptr = dev + lp.q_indptr;
  a.page_indptr = dev + lp.page_indptr;
  a.page_ids = dev + lp.page_ids;
  a.page_start = dev + lp.page_start;
  a.kv_len = dev + lp.kv_len;
  a.kv_start_pos = dev + lp.kv_start_pos;
  a.counts = dev + lp.counts;
  return a;
}

}  // namespace cascade::cuda

// The cascade attention kernels (flat decode, split-K, causal prefill, 2-3 level cascades) against
// a float64 softmax over exactly the keys the plan makes visible to each row, on random paged
// layouts with partially filled pages.
#include "backend/cuda/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <numeric>
#include <stdexcept>

#include "backend/cuda/ab_switch.h"
#include "backend/cuda/kernels.h"
#include "cuda_test_util.h"

namespace cascade::cuda::test {
namespace {

struct Model {
  int heads, kv_heads, head_dim, page_size = 16, num_pages = 512;
};

// Allocates pages for runs of tokens; every run starts on a fresh page and may leave its last
// page partial.
struct PageAlloc {
  std::vector<int> free;
  explicit PageAlloc(int n, std::mt19937_64& rng) {
    free.resize(n);
    std::iota(free.begin(), free.end(), 0);
    std::shuffle(free.begin(), free.end(), rng);
  }
  // Appends a run of `len` tokens to (pages, lens).
  void run(int len, int page_size, std::vector<std::int32_t>& pages, std::vector<std::int32_t>& lens) {
    while (len > 0) {
      if (free.empty()) throw std::runtime_error("test page pool exhausted");
      pages.push_back(free.back());
      free.pop_back();
      lens.push_back(std::min(len, page_size));
      len -= lens.back();
    }
  }
};

// Adds one group to `lv` holding rows `rows` and a KV list of `chunks` runs starting at start_pos.
void add_group(CascadeLevel& lv, std::vector<std::int32_t>& row_order, const std::vector<int>& rows,
               const std::vector<int>& chunks, int start_pos, PageAlloc& alloc, int page_size) {
  if (lv.q_indptr.empty()) {
    lv.q_indptr.push_back(static_cast<int>(row_order.size()));
    lv.page_indptr.push_back(0);
  }
  for (int r : rows) row_order.push_back(r);
  for (int c : chunks) alloc.run(c, page_size, lv.page_ids, lv.page_lens);
  lv.q_indptr.push_back(static_cast<int>(row_order.size()));
  lv.page_indptr.push_back(static_cast<int>(lv.page_ids.size()));
  lv.kv_start_pos.push_back(start_pos);
}

// A two-level plan over `rows` (row ids in batch order): one shared group of the runs `shared`
// starting at `start`, then one group per row of 1..max_own keys of its own right after the shared
// ones; each row's query sits at its last key.
CascadePlan shared_then_own(const std::vector<int>& rows, const std::vector<int>& shared, int start, int max_own,
                            std::mt19937_64& rng, PageAlloc& alloc, int page_size) {
  CascadePlan plan;
  plan.num_rows = static_cast<int>(rows.size());
  plan.levels.resize(2);
  plan.uses_shared_levels = true;
  add_group(plan.levels[0], plan.row_order, rows, shared, start, alloc, page_size);
  int shared_len = 0;
  for (int c : shared) shared_len += c;
  std::vector<std::int32_t> order1;
  plan.q_pos.assign(plan.num_rows, 0);
  for (int r : rows) {
    const int own = 1 + static_cast<int>(rng() % static_cast<unsigned>(max_own));
    add_group(plan.levels[1], order1, {r}, {own}, start + shared_len, alloc, page_size);
    plan.q_pos[r] = start + shared_len + own - 1;
  }
  EXPECT_EQ(order1, plan.row_order);
  return plan;
}

// How gpu_attention runs a plan, beyond the pack's choices.
struct RunOptions {
  const std::vector<std::int32_t>* written = nullptr;  // pack_plan's written slots (read ahead)
  bool no_wgmma = false;
  LevelFork* fork = nullptr;  // levels after the first busy one on its side stream, as the engine
  bool chain = false;         // with fork: chained instead where the plan allows (LevelFork::begin)
  int short_tiles = -1;       // one-warp levels: -1 the pack's choice, 0 or 1 forced
  bool direct_out = false;    // a lone level the pack marks direct_out writes the output itself
  bool wide = false;          // pack_plan may take the wide form (attention_wide_usable must hold)
  // A one-warp level (not read ahead; these are decode plans) forms q from rope->qkv and writes
  // the step's K/V into this run's pools (rope's k_cache / v_cache are replaced by them);
  // k_after / v_after receive the pools after the run.
  const QkNormRopeParams* rope = nullptr;
  std::vector<bf16>* k_after = nullptr;
  std::vector<bf16>* v_after = nullptr;
  // Out: the bf16 output rows [rows, heads * head_dim] (written by the merge or the level), and
  // whether the level wrote them (no merge kernel ran).
  std::vector<bf16>* bf16_out = nullptr;
  bool* wrote_directly = nullptr;
};

// Runs of a level of several splits that merged them in its CTAs (direct_out with splits > 1).
int cta_merges = 0;
// Levels run in the wide form.
int wide_levels = 0;
// Plans whose levels ran chained (LevelFork::chained).
int chained_runs = 0;

// Runs every level on the GPU and merges; returns the merged fp32 output [rows, heads, head_dim].
std::vector<float> gpu_attention(const Model& m, const CascadePlan& plan, const std::vector<float>& q,
                                 const std::vector<float>& kpool, const std::vector<float>& vpool,
                                 int num_sms, const RunOptions& opt = {}) {
  const std::vector<std::int32_t>* written = opt.written;
  LevelFork* fork = opt.fork;
  PlanPack pack;
  const char* why = "";
  EXPECT_TRUE(pack_plan(plan, m.heads, m.kv_heads, num_sms, 64, &pack, &why, written, m.page_size, opt.wide)) << why;
  const int n = plan.num_rows;
  auto d_q = upload(to_bf16(q));
  auto d_k = upload(to_bf16(kpool)), d_v = upload(to_bf16(vpool));
  auto d_plan = upload(pack.data);
  const int slices = std::max(1, pack.num_slices);
  DeviceBuffer<float> o(static_cast<std::size_t>(slices) * n * m.heads * m.head_dim);
  DeviceBuffer<float> lse(static_cast<std::size_t>(slices) * n * m.heads);
  poison(o);
  EXPECT_EQ(launch_fill_f32(lse.get(), lse.size(), -INFINITY, nullptr), cudaSuccess);
  DeviceBuffer<bf16> outb(static_cast<std::size_t>(n) * m.heads * m.head_dim);
  poison(outb);
  bool direct = false, roped = false;
  if (fork != nullptr) {
    const int busy = busy_levels(pack.levels);
    // The engine's rule (nothing is read ahead in these runs).
    const bool chain_ok = opt.chain && written == nullptr && levels_may_chain(pack.levels);
    EXPECT_EQ(fork->begin(busy, nullptr, chain_ok), cudaSuccess);
    const bool chained = chain_ok && attention_chain_enabled();
    EXPECT_EQ(fork->chained(), chained && busy > 1);
    EXPECT_TRUE(fork->forked() || chained || busy < 2) << "a plan of " << busy << " busy levels ran unforked";
    chained_runs += fork->chained() ? 1 : 0;
  }
  for (int l = 0; l < static_cast<int>(pack.levels.size()); ++l) {
    const LevelPack& lp = pack.levels[l];
    if (lp.num_items == 0) continue;
    AttentionLevelParams p;
    p.q = d_q.get();
    p.k_cache = d_k.get();
    p.v_cache = d_v.get();
    p.row_order = d_plan.get() + pack.row_order;
    p.q_pos = d_plan.get() + pack.q_pos;
    p.level = level_arrays(pack, l, d_plan.get());
    p.kv_fresh = level_kv_fresh(lp, d_plan.get());
    p.read_ahead = written != nullptr;
    p.o = o.get();
    p.lse = lse.get();
    p.slice_base = lp.slice_base;
    p.rows = n;
    p.num_heads = m.heads;
    p.num_kv_heads = m.kv_heads;
    p.head_dim = m.head_dim;
    p.page_size = m.page_size;
    p.sm_scale = 1.0f / std::sqrt(static_cast<float>(m.head_dim));
    p.grid_items = lp.num_items;
    p.grid_splits = lp.num_splits;
    p.warps = lp.warps;
    p.num_slots = m.num_pages * m.page_size;
    wide_levels += lp.warps == kWideWarps ? 1 : 0;
    p.no_wgmma = opt.no_wgmma;
    p.short_tiles = opt.short_tiles < 0 ? lp.short_tiles : lp.warps == 1 && opt.short_tiles == 1;
    // A level of several splits writes directly only as the CTA merge (short tiles, not read ahead).
    if (opt.direct_out && lp.direct_out && (lp.num_splits == 1 || (p.short_tiles && !p.read_ahead))) {
      p.direct_out = outb.get();
      direct = true;
      cta_merges += lp.num_splits > 1 ? 1 : 0;
    }
    if (opt.rope != nullptr && lp.warps == 1 && !p.read_ahead) {
      p.rope = *opt.rope;
      p.rope.k_cache = d_k.get();
      p.rope.v_cache = d_v.get();
      roped = true;
    }
    const cudaStream_t stream = fork != nullptr ? fork->next(&p) : nullptr;
    EXPECT_EQ(launch_attention_level(p, stream), cudaSuccess);
  }
  if (fork != nullptr) EXPECT_EQ(fork->end(), cudaSuccess);
  if (opt.wrote_directly != nullptr) *opt.wrote_directly = direct;
  EXPECT_EQ(roped, opt.rope != nullptr) << "a run asked to form q/k RMSNorm + RoPE had no one-warp level";
  if (opt.k_after != nullptr) *opt.k_after = download(d_k, d_k.size());
  if (opt.v_after != nullptr) *opt.v_after = download(d_v, d_v.size());
  DeviceBuffer<float> out(static_cast<std::size_t>(n) * m.heads * m.head_dim);
  poison(out);
  if (!direct) {
    MergeStatesParams mp;
    mp.o = o.get();
    mp.lse = lse.get();
    mp.out = outb.get();
    mp.out_o = out.get();
    mp.num_states = slices;
    mp.rows = n;
    mp.heads = m.heads;
    mp.head_dim = m.head_dim;
    EXPECT_EQ(launch_merge_states(mp, nullptr), cudaSuccess);
  }
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<bf16> rows_bf16 = download(outb, outb.size());
  if (opt.bf16_out != nullptr) *opt.bf16_out = rows_bf16;
  return direct ? from_bf16(rows_bf16) : download(out, out.size());
}

// Bit patterns of bf16 rows, for exact comparisons (NaN poison included).
std::vector<std::uint16_t> bits(const std::vector<bf16>& v) {
  std::vector<std::uint16_t> b(v.size());
  std::memcpy(b.data(), v.data(), v.size() * sizeof(bf16));
  return b;
}

// float64 reference: each row attends to every key of every group containing it, causally.
std::vector<double> reference(const Model& m, const CascadePlan& plan, const std::vector<float>& q,
                              const std::vector<float>& kpool, const std::vector<float>& vpool) {
  const int n = plan.num_rows, D = m.head_dim, gqa = m.heads / m.kv_heads;
  std::vector<std::vector<std::pair<int, int>>> keys(n);  // (slot, position)
  for (const CascadeLevel& lv : plan.levels) {
    for (int g = 0; g < lv.num_groups(); ++g) {
      for (int i = lv.q_indptr[g]; i < lv.q_indptr[g + 1]; ++i) {
        const int r = plan.row_order[i];
        int t = 0;
        for (int p = lv.page_indptr[g]; p < lv.page_indptr[g + 1]; ++p) {
          for (int s = 0; s < lv.page_lens[p]; ++s, ++t) {
            const int pos = lv.kv_start_pos[g] + t;
            if (pos <= plan.q_pos[r]) keys[r].push_back({lv.page_ids[p] * m.page_size + s, pos});
          }
        }
      }
    }
  }
  std::vector<double> out(static_cast<std::size_t>(n) * m.heads * D, 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int r = 0; r < n; ++r) {
    for (int h = 0; h < m.heads; ++h) {
      const int kvh = h / gqa;
      const float* qv = q.data() + (static_cast<std::size_t>(r) * m.heads + h) * D;
      std::vector<double> s(keys[r].size());
      double mx = -INFINITY;
      for (std::size_t j = 0; j < keys[r].size(); ++j) {
        const float* kv = kpool.data() + (static_cast<std::size_t>(keys[r][j].first) * m.kv_heads + kvh) * D;
        double dot = 0;
        for (int d = 0; d < D; ++d) dot += static_cast<double>(qv[d]) * kv[d];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      double den = 0;
      for (double& x : s) den += (x = std::exp(x - mx));
      double* o = out.data() + (static_cast<std::size_t>(r) * m.heads + h) * D;
      for (std::size_t j = 0; j < keys[r].size(); ++j) {
        const float* vv = vpool.data() + (static_cast<std::size_t>(keys[r][j].first) * m.kv_heads + kvh) * D;
        for (int d = 0; d < D; ++d) o[d] += s[j] / den * vv[d];
      }
    }
  }
  return out;
}

struct Fixture {
  Model m;
  std::mt19937_64 rng;
  std::vector<float> kpool, vpool;
  Fixture(Model model, std::uint64_t seed) : m(model), rng(seed) {
    const std::size_t n = static_cast<std::size_t>(m.num_pages) * m.page_size * m.kv_heads * m.head_dim;
    kpool = random_vec(rng, n, -2.0f, 2.0f);
    vpool = random_vec(rng, n);
  }
  // Returns check_direct_out's count of runs that wrote their rows directly.
  int check(const CascadePlan& plan, const char* what) {
    auto q = random_vec(rng, static_cast<std::size_t>(plan.num_rows) * m.heads * m.head_dim, -2.0f, 2.0f);
    const auto ref = reference(m, plan, q, kpool, vpool);
    std::vector<float> split;
    for (int sms : {0, 132}) {
      const auto got = gpu_attention(m, plan, q, kpool, vpool, sms);
      EXPECT_LT(rel_error(got, ref), 1e-2)
          << what << " H=" << m.heads << " KVH=" << m.kv_heads << " D=" << m.head_dim << " sms=" << sms;
      split = got;
    }
    // Where four-warp levels run as wgmma (sm_90a), the mma.sync form must pass too.
    if (attention_wgmma_available()) {
      const auto got = gpu_attention(m, plan, q, kpool, vpool, 132, {.no_wgmma = true});
      EXPECT_LT(rel_error(got, ref), 1e-2)
          << what << " (mma.sync) H=" << m.heads << " KVH=" << m.kv_heads << " D=" << m.head_dim;
    }
    // Shared levels in the wide form where it runs (the engine's choice on an H100/H200), with
    // one split and with the split count 132 SMs give.
    if (attention_wide_usable(m.head_dim, m.page_size)) {
      for (int sms : {0, 132}) {
        const auto got = gpu_attention(m, plan, q, kpool, vpool, sms, {.wide = true});
        EXPECT_LT(rel_error(got, ref), 1e-2) << what << " (wide form) H=" << m.heads << " KVH=" << m.kv_heads
                                             << " D=" << m.head_dim << " page " << m.page_size << " sms=" << sms;
      }
    }
    // One-warp levels with 16- and 32-token tiles whatever the pack chose (short_tiles): both
    // forms must pass.
    std::vector<float> tiles32;
    for (const int short_tiles : {0, 1}) {
      const auto got = gpu_attention(m, plan, q, kpool, vpool, 132, {.short_tiles = short_tiles});
      EXPECT_LT(rel_error(got, ref), 1e-2) << what << (short_tiles ? " (16-token tiles)" : " (32-token tiles)")
                                           << " H=" << m.heads << " KVH=" << m.kv_heads << " D=" << m.head_dim;
      if (short_tiles == 0) tiles32 = got;
    }
    // Levels side by side (LevelFork, as the engine and the benchmark run them), forked and
    // chained: the same bits; chained with the shared levels in the wide form too.
    if (!ab_switch_on("CASCADE_ATTENTION_NO_FORK")) {
      LevelFork fork;
      if (fork.init() != cudaSuccess) {
        ADD_FAILURE() << "LevelFork::init failed";
        return 0;
      }
      for (const bool chain : {false, true}) {
        const auto got = gpu_attention(m, plan, q, kpool, vpool, 132, {.fork = &fork, .chain = chain});
        EXPECT_EQ(got, split) << what << (chain ? " (levels chained)" : " (levels forked)") << " H=" << m.heads
                              << " KVH=" << m.kv_heads << " D=" << m.head_dim;
      }
      if (attention_wide_usable(m.head_dim, m.page_size)) {
        const auto alone = gpu_attention(m, plan, q, kpool, vpool, 132, {.wide = true});
        const auto got = gpu_attention(m, plan, q, kpool, vpool, 132, {.fork = &fork, .chain = true, .wide = true});
        EXPECT_EQ(got, alone) << what << " (wide form, levels chained) H=" << m.heads << " KVH=" << m.kv_heads
                              << " D=" << m.head_dim;
      }
    }
    // Keys read ahead of the wait (kv_fresh): with nothing written this step every tile may be,
    // with each row's last key written only those before its page; the same bits either way as
    // the 32-token tiles without read-ahead (the read-ahead form's tiling).
    std::vector<std::int32_t> last_keys;
    const CascadeLevel& last = plan.levels.back();
    for (int g = 0; g < last.num_groups(); ++g) {
      const int i = last.page_indptr[g + 1] - 1;
      if (i >= last.page_indptr[g]) last_keys.push_back(last.page_ids[i] * m.page_size + last.page_lens[i] - 1);
    }
    const std::vector<std::int32_t> none;
    for (const std::vector<std::int32_t>* written : {&none, static_cast<const std::vector<std::int32_t>*>(&last_keys)}) {
      const auto got = gpu_attention(m, plan, q, kpool, vpool, 132, {.written = written});
      EXPECT_EQ(got, tiles32) << what << " H=" << m.heads << " KVH=" << m.kv_heads << " D=" << m.head_dim
                              << (written->empty() ? ", all keys read ahead" : ", last pages written");
    }
    return check_direct_out(plan, q, ref, what);
  }
  // A lone one-warp level (LevelPack::direct_out) writes its rows itself: the bf16 rows the
  // states + merge kernel write, bit for bit, and within tolerance of float64; of one split in
  // every one-warp form (16- and 32-token tiles, read ahead), of several (8 SMs to fill: splits
  // merged in the CTA) in the 16-token form. Returns how many runs wrote directly.
  int check_direct_out(const CascadePlan& plan, const std::vector<float>& q, const std::vector<double>& ref,
                       const char* what) {
    int direct = 0;
    const std::vector<std::int32_t> none;
    for (const int sms : {0, 8, 132}) {
      PlanPack pack;
      const char* why = "";
      if (!pack_plan(plan, m.heads, m.kv_heads, sms, 64, &pack, &why) ||
          std::none_of(pack.levels.begin(), pack.levels.end(), [](const LevelPack& lp) { return lp.direct_out; })) {
        continue;  // not a lone one-warp level of one split here
      }
      const bool split = std::any_of(pack.levels.begin(), pack.levels.end(),
                                     [](const LevelPack& lp) { return lp.direct_out && lp.num_splits > 1; });
      for (int form = 0; form < 3; ++form) {
        if (split && form != 1) continue;
        RunOptions base;
        if (form < 2) base.short_tiles = form;
        if (form == 2) base.written = &none;
        std::vector<bf16> want, got;
        RunOptions a = base, b = base;
        a.bf16_out = &want;
        b.bf16_out = &got;
        b.direct_out = true;
        bool wrote = false;
        b.wrote_directly = &wrote;
        gpu_attention(m, plan, q, kpool, vpool, sms, a);
        const auto out = gpu_attention(m, plan, q, kpool, vpool, sms, b);
        EXPECT_TRUE(wrote) << what << ": the pack marks a level direct_out, the run did not write directly";
        ++direct;
        // (Merged in the CTA: the warp merge kernel's bits; the block kernel, an A/B switch, sums otherwise.)
        if (!split || !ab_switch_on("CASCADE_MERGE_BLOCK_PER_HEAD")) {
          EXPECT_EQ(bits(got), bits(want)) << what << " (direct output, form " << form << ", sms " << sms
                                           << ") H=" << m.heads << " KVH=" << m.kv_heads << " D=" << m.head_dim;
        }
        EXPECT_LT(rel_error(out, ref), 1e-2) << what << " (direct output, form " << form << ")";
      }
    }
    return direct;
  }
};

// Page sizes 1 and 4 as well as 16: a 64-token tile then spans more than 32 pages (the kernel
// maps tokens to slots 32 pages per round) or many partial ones.
const Model kModels[] = {{8, 2, 128}, {4, 4, 64}, {16, 2, 128}, {6, 2, 64}, {16, 8, 128},
                         {8, 2, 128, 1, 8192}, {4, 4, 64, 4, 2048}};

TEST(CudaAttention, WgmmaFormRunsOnSm90) {
  SKIP_WITHOUT_GPU();
  // The repository builds sm_90a code (CASCADE_CUDA_ARCHS): on an H100/H200 the 64-row CTAs must
  // run as wgmma (so the tests below cover it), unless switched off for A/B.
  EXPECT_EQ(attention_wgmma_available(), device_is_sm90() && !ab_switch_on("CASCADE_ATTENTION_NO_WGMMA"));
}

// A shared level over a long prefix with partial pages at a large start position: more than 32
// pages per split at page size 16 (the loader's page window moves), and 37 rows, so the last
// 64-row tile holds invalid rows whose query positions are far below the keys'.
TEST(CudaAttention, LongSharedPrefixAtLargePositions) {
  SKIP_WITHOUT_GPU();
  for (const Model& model : {Model{16, 8, 128}, Model{8, 2, 64}, Model{4, 4, 128, 4, 2048}}) {
    Fixture f(model, 15);
    PageAlloc alloc(model.num_pages, f.rng);
    const int start = 1000000, shared = model.page_size == 16 ? 2500 : 1100;
    std::vector<int> rows(37);
    std::iota(rows.begin(), rows.end(), 0);
    std::shuffle(rows.begin(), rows.end(), f.rng);
    // The prefix in three chunks, so that two of its pages are partial.
    const CascadePlan plan = shared_then_own(rows, {shared / 3 + 5, shared / 3 - 7, shared - 2 * (shared / 3) + 2},
                                             start, 40, f.rng, alloc, model.page_size);
    f.check(plan, "long shared prefix");
  }
}

// The wide form (attention_wide.cu) on the shared levels it is made for: many rows over a long
// prefix (its rule: the level's rows x keys at least 64 times the unique level's keys), not a
// multiple of 128 stacked rows (so the last CTA's second warpgroup is partly or wholly idle),
// prefixes cut into chunks with partial pages, page sizes 8-64 (2-16 pages a tile), GQA 1-8;
// at page size 4 (not taken) the other forms.
TEST(CudaAttention, WideFormOnSharedLevels) {
  SKIP_WITHOUT_GPU();
  const int before = wide_levels, chained_before = chained_runs;
  struct Case {
    Model model;
    int rows, shared;
  };
  const Case cases[] = {{{16, 8, 128, 16, 2048}, 150, 3000}, {{8, 2, 128, 8, 4096}, 40, 1234},
                        {{8, 1, 128, 32, 1024}, 17, 2049},  {{4, 4, 128, 16, 2048}, 200, 3000}, {{8, 2, 128, 4, 4096}, 50, 600},
                        {{16, 16, 128, 64, 256}, 65, 5000}};
  for (const Case& c : cases) {
    Fixture f(c.model, 23);
    PageAlloc alloc(c.model.num_pages, f.rng);
    std::vector<int> rows(c.rows);
    std::iota(rows.begin(), rows.end(), 0);
    std::shuffle(rows.begin(), rows.end(), f.rng);
    const int a = c.shared / 3 + 5, b = c.shared / 3 - 7;
    const CascadePlan plan = shared_then_own(rows, {a, b, c.shared - a - b}, 77, 30, f.rng, alloc, c.model.page_size);
    f.check(plan, "wide form");
    if (attention_wide_usable(c.model.head_dim, c.model.page_size)) {
      PlanPack pack;
      const char* why = "";
      ASSERT_TRUE(pack_plan(plan, c.model.heads, c.model.kv_heads, 132, 64, &pack, &why, nullptr, c.model.page_size,
                            true))
          << why;
      EXPECT_EQ(pack.levels[0].warps, kWideWarps) << "rows " << c.rows << " page " << c.model.page_size;
    }
  }
  // On an H100/H200 the form must have run (the repository builds sm_90a code).
  if (device_is_sm90() && !ab_switch_on("CASCADE_ATTENTION_NO_WIDE") && !ab_switch_on("CASCADE_ATTENTION_NO_WGMMA")) {
    EXPECT_GT(wide_levels, before);
  }
  // These plans' unique levels are one-warp: with PDL on they ran chained too (check's fork runs).
  if (attention_chain_enabled() && !ab_switch_on("CASCADE_ATTENTION_NO_FORK")) EXPECT_GT(chained_runs, chained_before);
}

TEST(CudaAttention, FlatDecodeWithPartialPagesAndSplitK) {
  SKIP_WITHOUT_GPU();
  const int merges_before = cta_merges;
  for (const Model& model : kModels) {
    Fixture f(model, 11);
    PageAlloc alloc(model.num_pages, f.rng);
    CascadePlan plan;
    plan.num_rows = 6;
    plan.levels.resize(1);
    for (int r = 0; r < plan.num_rows; ++r) {
      // Two chunks (the first may end on a partial page), then the decode token itself.
      const int a = 1 + static_cast<int>(f.rng() % 300), b = static_cast<int>(f.rng() % 400);
      std::vector<int> chunks = {a};
      if (b > 0) chunks.push_back(b);
      add_group(plan.levels[0], plan.row_order, {r}, chunks, 0, alloc, model.page_size);
      plan.q_pos.push_back(a + b - 1);
    }
    // Without SMs to fill (sms 0) the lone level has one split and writes its rows directly.
    EXPECT_GT(f.check(plan, "flat decode"), 0) << "H=" << model.heads << " KVH=" << model.kv_heads;
  }
  EXPECT_GT(cta_merges, merges_before) << "no flat decode level merged its splits in the CTA";
}

// A flat decode level that takes q/k RMSNorm, RoPE and the K/V writes in (LevelPack::qk_rope)
// gives the bits of qk_norm_rope_kernel followed by the level reading its q: the same output rows
// and the same pools, in every one-warp form it takes (1 and many splits, 16- and 32-token tiles,
// direct output; not the read-ahead form), with the written slots poisoned beforehand and q
// poisoned (never read). kModels and gqa 8 at head_dim 64 (the most q rows in stage 1's
// smallest K tile).
TEST(CudaAttention, FlatDecodeFormsQkRopeItself) {
  SKIP_WITHOUT_GPU();
  std::vector<Model> models(std::begin(kModels), std::end(kModels));
  models.push_back({16, 2, 64});
  for (const Model& model : models) {
    for (const int start : {0, 200000}) {  // rotary angles past sinf/cosf's fast range too
      Fixture f(model, 21 + start);
      PageAlloc alloc(model.num_pages, f.rng);
      const int H = model.heads, KVH = model.kv_heads, D = model.head_dim;
      CascadePlan plan;
      plan.num_rows = 6;
      plan.levels.resize(1);
      plan.q_pos.assign(plan.num_rows, 0);
      std::vector<std::int32_t> slots(plan.num_rows), rows(plan.num_rows);
      std::iota(rows.begin(), rows.end(), 0);
      std::shuffle(rows.begin(), rows.end(), f.rng);  // groups not in row order
      for (int i = 0; i < plan.num_rows; ++i) {
        const int r = rows[i];
        const int a = 1 + static_cast<int>(f.rng() % 300), b = static_cast<int>(f.rng() % 400);
        std::vector<int> chunks = {a};
        if (b > 0) chunks.push_back(b);
        add_group(plan.levels[0], plan.row_order, {r}, chunks, start, alloc, model.page_size);
        plan.q_pos[r] = start + a + b - 1;
        const CascadeLevel& lv = plan.levels[0];
        const int last = lv.page_indptr[i + 1] - 1;
        slots[r] = lv.page_ids[last] * model.page_size + lv.page_lens[last] - 1;
      }
      // Positions and slots by row id, as the runner passes them.
      const auto qkv = random_vec(f.rng, static_cast<std::size_t>(plan.num_rows) * (H + 2 * KVH) * D, -3.0f, 3.0f);
      const auto qn = random_vec(f.rng, D, 0.5f, 1.5f), kn = random_vec(f.rng, D, 0.5f, 1.5f);
      RopeConfig rotary;
      rotary.theta = 1e6;
      const QkNormRopeInputs in(qkv, qn, kn, rotary, plan.q_pos, slots, H, KVH, D);
      // Reference path: qk_norm_rope_kernel into q and pools, then the level reading q.
      auto d_k = upload(to_bf16(f.kpool)), d_v = upload(to_bf16(f.vpool));
      DeviceBuffer<bf16> d_q(static_cast<std::size_t>(plan.num_rows) * H * D);
      poison(d_q);
      const QkNormRopeParams qp = in.params(d_q.get(), d_k.get(), d_v.get());
      ASSERT_EQ(launch_qk_norm_rope_kv_write(qp, nullptr), cudaSuccess);
      const auto q = from_bf16(download(d_q, d_q.size()));
      const auto kpool = from_bf16(download(d_k, d_k.size())), vpool = from_bf16(download(d_v, d_v.size()));
      const auto ref = reference(model, plan, q, kpool, vpool);
      // The fused path starts from the pools before the step, its new slots poisoned.
      std::vector<float> kpoison = f.kpool, vpoison = f.vpool;
      for (const int slot : slots) {
        for (int i = 0; i < KVH * D; ++i) {
          kpoison[static_cast<std::size_t>(slot) * KVH * D + i] = NAN;
          vpoison[static_cast<std::size_t>(slot) * KVH * D + i] = NAN;
        }
      }
      const std::vector<float> qnan(q.size(), NAN);
      const QkNormRopeParams rope = qp;  // the same inputs; gpu_attention points it at its pools
      const auto kbits = bits(to_bf16(kpool)), vbits = bits(to_bf16(vpool));
      for (const int sms : {0, 8, 132}) {  // 8: several splits merged in the CTA where short
        PlanPack pack;
        const char* why = "";
        ASSERT_TRUE(pack_plan(plan, H, KVH, sms, 64, &pack, &why)) << why;
        EXPECT_TRUE(pack.levels[0].qk_rope) << "a flat decode plan the pack does not mark qk_rope";
        EXPECT_TRUE(qk_rope_slots_match(plan, pack, slots, model.page_size));
        for (int form = 0; form < 3; ++form) {  // 32- and 16-token tiles, direct output
          RunOptions a;
          if (form < 2) a.short_tiles = form;
          a.direct_out = form == 2;
          RunOptions b = a;
          std::vector<bf16> want, got, k_after, v_after;
          a.bf16_out = &want;
          b.bf16_out = &got;
          b.rope = &rope;
          b.k_after = &k_after;
          b.v_after = &v_after;
          gpu_attention(model, plan, q, kpool, vpool, sms, a);
          const auto out = gpu_attention(model, plan, qnan, kpoison, vpoison, sms, b);
          const std::string what = "H=" + std::to_string(H) + " KVH=" + std::to_string(KVH) + " D=" +
                                   std::to_string(D) + " page " + std::to_string(model.page_size) + " start " +
                                   std::to_string(start) + " sms " + std::to_string(sms) + " form " +
                                   std::to_string(form);
          EXPECT_EQ(bits(got), bits(want)) << what;
          EXPECT_TRUE(bits(k_after) == kbits) << what << ": K pool differs from qk_norm_rope's";
          EXPECT_TRUE(bits(v_after) == vbits) << what << ": V pool differs from qk_norm_rope's";
          EXPECT_LT(rel_error(out, ref), 1e-2) << what;
        }
      }
    }
  }
}

TEST(CudaAttention, CausalPrefill) {
  SKIP_WITHOUT_GPU();
  for (const Model& model : kModels) {
    Fixture f(model, 12);
    PageAlloc alloc(model.num_pages, f.rng);
    CascadePlan plan;
    plan.levels.resize(1);
    // Two prefilling sequences: a cached prefix plus new rows, the new rows' KV in the same list.
    int row = 0;
    for (int s = 0; s < 2; ++s) {
      const int prefix = s == 0 ? 37 : 0, fresh = s == 0 ? 150 : 70;
      std::vector<int> rows;
      for (int i = 0; i < fresh; ++i) {
        rows.push_back(row++);
        plan.q_pos.push_back(prefix + i);
      }
      add_group(plan.levels[0], plan.row_order, rows, {prefix > 0 ? prefix : fresh, prefix > 0 ? fresh : 0},
                0, alloc, model.page_size);
    }
    // add_group skips zero-length chunks only via alloc.run(0) (no pages), so lengths add up.
    plan.num_rows = row;
    f.check(plan, "prefill");
  }
}

// Groups of a few query rows each (short prefills or speculative steps: 1-8 new tokens, stacked
// rows gqa x tokens of at most 16, so one-warp CTAs), causal within the group, with row ids
// shuffled: every row of a CTA's 16 may be valid, and alone in the plan with one split (sms 0)
// the level writes its rows directly.
TEST(CudaAttention, FewRowsPerGroupInOneWarpLevel) {
  SKIP_WITHOUT_GPU();
  for (const Model& model : kModels) {
    Fixture f(model, 17);
    PageAlloc alloc(model.num_pages, f.rng);
    CascadePlan plan;
    plan.levels.resize(1);
    const int gqa = model.heads / model.kv_heads;
    const int groups = 5, max_new = std::max(1, 16 / gqa);
    std::vector<int> order;
    std::vector<int> news, prefixes;
    for (int g = 0; g < groups; ++g) {
      news.push_back(1 + static_cast<int>(f.rng() % max_new));
      prefixes.push_back(1 + static_cast<int>(f.rng() % 200));
      for (int i = 0; i < news.back(); ++i) order.push_back(static_cast<int>(order.size()));
    }
    std::shuffle(order.begin(), order.end(), f.rng);
    plan.num_rows = static_cast<int>(order.size());
    plan.q_pos.assign(plan.num_rows, 0);
    int next = 0;
    for (int g = 0; g < groups; ++g) {
      std::vector<int> rows(order.begin() + next, order.begin() + next + news[g]);
      next += news[g];
      for (int i = 0; i < news[g]; ++i) plan.q_pos[rows[i]] = prefixes[g] + i;
      add_group(plan.levels[0], plan.row_order, rows, {prefixes[g], news[g]}, 0, alloc, model.page_size);
    }
    // 5 groups of at most 216 keys: with 8 SMs to fill, short splits merged in the CTA (a warp
    // per split), up to 16 stacked rows per CTA.
    const int merges_before = cta_merges;
    EXPECT_GT(f.check(plan, "few rows per group"), 0) << "H=" << model.heads << " KVH=" << model.kv_heads;
    EXPECT_GT(cta_merges, merges_before) << "H=" << model.heads << " KVH=" << model.kv_heads;
  }
}

// A prefix-0 cascade: a shared level without keys (no items) over a flat level. The flat level is
// the only busy one: with one split (sms 0) it writes its rows directly, the empty level nothing.
TEST(CudaAttention, KeylessSharedLevelOverFlatLevel) {
  SKIP_WITHOUT_GPU();
  for (const Model& model : kModels) {
    Fixture f(model, 19);
    PageAlloc alloc(model.num_pages, f.rng);
    const CascadePlan plan = shared_then_own({3, 0, 4, 1, 2}, {}, 0, 150, f.rng, alloc, model.page_size);
    EXPECT_GT(f.check(plan, "keyless shared level over a flat level"), 0) << "H=" << model.heads << " KVH=" << model.kv_heads;
  }
}

TEST(CudaAttention, ThreeLevelCascadeDecode) {
  SKIP_WITHOUT_GPU();
  for (const Model& model : kModels) {
    Fixture f(model, 13);
    PageAlloc alloc(model.num_pages, f.rng);
    CascadePlan plan;
    plan.num_rows = 6;
    plan.levels.resize(3);
    plan.uses_shared_levels = true;
    const int l0 = 333, l1a = 70, l1b = 129;
    // Rows in a shuffled batch order: groups are contiguous in row_order, not in row ids.
    std::vector<int> rows = {4, 0, 5, 2, 1, 3};
    add_group(plan.levels[0], plan.row_order, rows, {l0}, 0, alloc, model.page_size);
    std::vector<std::int32_t> order1;
    add_group(plan.levels[1], order1, {4, 0, 5}, {l1a}, l0, alloc, model.page_size);
    add_group(plan.levels[1], order1, {2, 1, 3}, {l1b}, l0, alloc, model.page_size);
    std::vector<std::int32_t> order2;
    plan.q_pos.assign(6, 0);
    for (int r : rows) {
      const int mid = (r == 4 || r == 0 || r == 5) ? l1a : l1b;
      const int own = 1 + static_cast<int>(f.rng() % 90);
      add_group(plan.levels[2], order2, {r}, {own}, l0 + mid, alloc, model.page_size);
      plan.q_pos[r] = l0 + mid + own - 1;
    }
    // One row_order serves every level: levels 1 and 2 use the same permutation as level 0.
    ASSERT_EQ(order1, plan.row_order);
    ASSERT_EQ(order2, plan.row_order);
    f.check(plan, "3-level cascade");
  }
}

TEST(CudaAttention, TwoLevelCascadeWithPrefillInLastLevel) {
  SKIP_WITHOUT_GPU();
  for (const Model& model : kModels) {
    Fixture f(model, 14);
    PageAlloc alloc(model.num_pages, f.rng);
    CascadePlan plan;
    plan.levels.resize(2);
    plan.uses_shared_levels = true;
    const int shared = 200;
    std::vector<int> all_rows;
    std::vector<std::vector<int>> seq_rows(3);
    int row = 0;
    for (int s = 0; s < 3; ++s) {
      const int fresh = s == 1 ? 1 : 20 + 13 * s;  // one decoding sequence among prefills
      for (int i = 0; i < fresh; ++i) {
        seq_rows[s].push_back(row);
        all_rows.push_back(row++);
        plan.q_pos.push_back(shared + i);
      }
    }
    plan.num_rows = row;
    add_group(plan.levels[0], plan.row_order, all_rows, {shared}, 0, alloc, model.page_size);
    std::vector<std::int32_t> order1;
    for (int s = 0; s < 3; ++s) {
      add_group(plan.levels[1], order1, seq_rows[s], {static_cast<int>(seq_rows[s].size())}, shared,
                alloc, model.page_size);
    }
    ASSERT_EQ(order1, plan.row_order);
    f.check(plan, "2-level cascade with prefill");
  }
}

TEST(CudaAttention, RejectsUnsupportedHeadDim) {
  SKIP_WITHOUT_GPU();
  AttentionLevelParams p;
  p.grid_items = 1;
  p.grid_splits = 1;
  p.num_heads = 4;
  p.num_kv_heads = 4;
  p.head_dim = 96;
  EXPECT_EQ(launch_attention_level(p, nullptr), cudaErrorInvalidValue);
  p.head_dim = 128;
  p.num_heads = 32;
  p.num_kv_heads = 2;  // GQA 16
  EXPECT_EQ(launch_attention_level(p, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace cascade::cuda::test

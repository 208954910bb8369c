// The wide form of a shared cascade level (attention.h, kWideWarps): FlashAttention-3's layout of
// work for the level that is bound by tensor-core work (a long shared prefix read by many rows).
//
// A CTA takes 128 stacked (row, head) pairs of one group and one KV head, over one split of the
// group's keys. Warp 0 is the producer: it walks the split's pages and loads K and V in tiles of
// 128 keys (128 / page_size whole pages) with TMA, 64 columns of a page per box in the 128-byte
// swizzle that wgmma reads, into a ring of three stages guarded by mbarriers, K's and V's apart
// ("full": bytes landed; "empty": all eight consumer warps are done with it, K after S and the
// softmax, V a tile later after P V, so K's refill starts a tile earlier). Warpgroups 1 and 2
// are the consumers, 64 rows each: S = Q Kᵀ as wgmma m64n128k16 with Q's fragments in registers
// and K from shared memory, the online softmax in registers (a tile's while the warpgroup's
// P V of the tile before still runs), O += P V with P from registers and V read transposed. The
// two share each tile (half the tile reads per row of the four-warp form) and take turns on the
// tensor cores (ping-pong), and the producer holds none of their issue slots or registers
// (setmaxnreg).
//
// A tile is whole pages, so a page's keys outside the split or past its fill (a chunk's partial
// last page) are masked per column from the page's valid range, which the producer puts beside
// the tile; V rows outside the ranges are zeroed before P V (the pool's unused slots may hold any
// bits, and 0 x NaN is NaN). Levels take this form only where no row is cut by causality
// (pack_plan), so there is no per-row mask.
//
// Measured on an H100 (bench/NOTES_cuda.md v24): the shared level of 16384/128/256 alone in 83 us
// (414 TFLOP/s) against 143 us for the four-warp form; three stages against two 83 against 113
// us. v27: the softmax's instructions cut by a third and K freed apart from V, 104.8 against
// 121.7 us under ncu (base clocks) for 96 CTAs of 43 tiles. v28: the softmax during P V measured
// even (104.9 us), and with no softmax at all (a diagnostic build, bench/diag_build.sh) the
// kernel still took 87 us, the tensor pipe 74% busy; with 64-key pages (a tile in 8 copies, not
// 32) 93 us. The CTA holds the whole register file and 194 KB of shared memory, so the one-warp
// levels beside it run only on the SMs its CTAs leave free: pack_plan takes it only where the
// level's rows x keys are at least 64 times their work, and splits it for fewer CTAs the more
// work runs beside it (wide_splits, v26).
#include <cuda.h>
#include <cudaTypedefs.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <unordered_map>

#include "backend/cuda/ab_switch.h"
#include "backend/cuda/attention.h"
#include "backend/cuda/device_utils.cuh"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/timeline.cuh"
#include "backend/cuda/wgmma.cuh"

namespace cascade::cuda {
namespace {

// Diagnostic builds only (bench/diag_build.sh; 0 in every real build): bit 1 drops the
// warpgroups' turns, bit 2 the softmax (P is S: wrong results, for timing the rest under ncu).
#ifndef CASCADE_WIDE_EXPERIMENT
#define CASCADE_WIDE_EXPERIMENT 0
#endif
constexpr bool kExpNoTurns = (CASCADE_WIDE_EXPERIMENT & 1) != 0;
constexpr bool kExpNoSoftmax = (CASCADE_WIDE_EXPERIMENT & 2) != 0;

constexpr int kD = 128;     // head_dim of the form
constexpr int kTile = 128;  // keys per tile, and per softmax step (S is 64 rows x kTile a warpgroup)
// Stages of the load ring (v24: 2 stages 113 us for the 16k shared level alone, 3 stages 83;
// 64-key tiles in 4 stages 91, and S in 64-key halves slower).
constexpr int kStages = 3;
// Warpgroup 0 is the producer's (warp 0 loads, warps 1-3 leave at once), warpgroups 1 and 2 the
// consumers: registers move from the first to the others (setmaxnreg), 232 a consumer thread,
// so that Q's fragments, S, P and O stay in registers without spills (at 168, the most a CTA of
// 288 threads gets, they spilled and ptxas serialized the wgmmas).
constexpr int kThreads = 32 * (kWideWarps + 4);
constexpr int kProducerWarp = 0;
constexpr int kProducerRegs = 40, kConsumerRegs = 232;
static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= 65536, "the register file");
constexpr int kTileBytes = kTile * kD * 2;   // one K or V tile: two 64-column halves of kTile rows
constexpr int kHalfBytes = kTile * 128;      // one half (128-byte rows)
constexpr int kMaxPages = kTile / 8;         // pages per tile at the smallest page size
// Shared memory from a 1024-aligned base (the swizzle atoms): K stages, V stages, each stage's
// page ranges and whole-tile flag (one copy with K, one with V), the barriers (full and empty, K
// then V), the split's pages.
constexpr int kOffV = kStages * kTileBytes;
constexpr int kOffRange = 2 * kStages * kTileBytes;
constexpr int kOffFlag = kOffRange + 2 * kStages * kMaxPages * 8;
constexpr int kOffBar = kOffFlag + (8 * kStages + 15) / 16 * 16;
constexpr int kOffInfo = kOffBar + 4 * kStages * 8;
constexpr int kSmem = kOffInfo + 16 + 1024;

struct WideParams {
  AttentionLevelParams p;
  CUtensorMap k_map, v_map;  // the layer's pools as [slots][kv heads][kD], boxes of 64 x 1 x page
};

// The last page in [lo, end) whose first token is at or before t (page_start non-decreasing,
// page_start[lo] <= t): each round the warp's lanes probe evenly spaced pages.
__device__ __forceinline__ int last_page_at(const std::int32_t* page_start, int lo, int end, int t, int lane) {
  int n = end - lo;
  while (n > 1) {
    const int stride = (n + 31) / 32;
    const int probe = lo + lane * stride;
    const unsigned pass = __ballot_sync(0xffffffffu, probe < lo + n && page_start[probe] <= t);
    const int k = 31 - __clz(pass);
    const int e = lo + n;
    lo += k * stride;
    n = min(stride, e - lo);
  }
  return lo;
}

__global__ void __launch_bounds__(kThreads, 1) attention_wide_kernel(const __grid_constant__ WideParams wp) {
#ifndef CASCADE_SM90A
  __trap();  // launch_attention_wide runs only where the sm_90a code does
#else
  const AttentionLevelParams& p = wp.p;
  if (threadIdx.x == 0) timeline::mark(timeline::kWide, 0);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const std::uint32_t raw = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem_raw));
  const std::uint32_t base = (raw + 1023u) & ~1023u;
  unsigned char* const sb = smem_raw + (base - raw);
  int2* const range_s = reinterpret_cast<int2*>(sb + kOffRange);
  int* const flag_s = reinterpret_cast<int*>(sb + kOffFlag);
  int* const info_s = reinterpret_cast<int*>(sb + kOffInfo);
  // K (kv 0) and V (kv 1) of a stage have barriers of their own: K's stage is free once S and
  // the softmax are done with it, a tile before P V frees V's, and the producer refills it then.
  const auto full_bar = [&](int kv, int stage) { return base + kOffBar + 8 * (kv * kStages + stage); };
  const auto empty_bar = [&](int kv, int stage) { return base + kOffBar + 8 * ((2 + kv) * kStages + stage); };

  const LevelArrays& L = p.level;
  const int num_items = L.counts[0], num_splits = L.counts[1], per_split = L.counts[2];
  if (static_cast<int>(blockIdx.x) >= num_items || static_cast<int>(blockIdx.z) >= num_splits) {
    pdl_wait();  // launch.cuh: wait before any early return
    pdl_release();
    return;
  }
  const int group = L.items[2 * blockIdx.x];
  const int m_base = L.items[2 * blockIdx.x + 1];
  const int kvh = blockIdx.y, split = blockIdx.z;
  const int gqa = p.num_heads / p.num_kv_heads;
  const int q_begin = L.q_indptr[group];
  const int m_count = (L.q_indptr[group + 1] - q_begin) * gqa;
  const int kv_len = L.kv_len[group];
  const int page_begin = L.page_indptr[group], page_end = L.page_indptr[group + 1];
  const int t_begin = split * per_split;
  const int t_end = min(kv_len, t_begin + per_split);
  const int ps = p.page_size, ps_shift = __ffs(ps) - 1;
  const int ppt = kTile / ps;  // pages per tile
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);

  // The split's pages and the barriers, before the wait (plan arrays only).
  if (warp == kProducerWarp) {
    int first = page_begin, count = 0;
    if (t_end > t_begin) {
      first = last_page_at(L.page_start, page_begin, page_end, t_begin, lane);
      count = last_page_at(L.page_start, first, page_end, t_end - 1, lane) - first + 1;
    }
    if (lane == 0) {
      info_s[0] = first;
      info_s[1] = count;
      for (int s = 0; s < kStages; ++s) {
        for (int kv = 0; kv < 2; ++kv) {
          mbar_init(full_bar(kv, s), 1);
          mbar_init(empty_bar(kv, s), kWideWarps);
        }
      }
      mbar_fence_init();
    }
  }
  __syncthreads();
  const int first_page = info_s[0], num_pages = info_s[1];
  const int num_tiles = (num_pages + ppt - 1) / ppt;
  if (threadIdx.x == 0) timeline::mark(timeline::kWide, 1);

  pdl_wait();  // launch.cuh: q (and, in general, K/V) come from the previous kernels
  pdl_release();
  if (threadIdx.x == 0) timeline::mark(timeline::kWide, 2);

  if (warp < 4) {  // the producer's warpgroup
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegs));
    if (warp != kProducerWarp) return;
    for (int t = 0; t < num_tiles; ++t) {
      const int stage = t % kStages;
      // The tile's pages (plan arrays) before the wait for its stage, off the critical path.
      const int pi = t * ppt + lane;
      const bool in = lane < ppt && pi < num_pages;
      int lo = 0, hi = 0, pid = 0;
      if (in) {
        const int pg = first_page + pi;
        const int pstart = L.page_start[pg];
        const int pend = pg + 1 < page_end ? L.page_start[pg + 1] : kv_len;
        lo = max(0, t_begin - pstart);
        hi = min(pend, t_end) - pstart;
        pid = L.page_ids[pg];
      }
      const unsigned loaded = __ballot_sync(0xffffffffu, in);
      const unsigned whole = __ballot_sync(0xffffffffu, in && lo == 0 && hi == ps);
      const unsigned all = ppt >= 32 ? 0xffffffffu : (1u << ppt) - 1u;
      // K, then V, each once its copy of the stage is free (V's a tile later than K's).
#pragma unroll
      for (int kv = 0; kv < 2; ++kv) {
        if (t >= kStages) mbar_wait(empty_bar(kv, stage), (t / kStages - 1) & 1);
        if (lane < ppt) range_s[(kv * kStages + stage) * kMaxPages + lane] = make_int2(lo, hi);
        if (lane == 0) flag_s[kv * kStages + stage] = whole == all ? 1 : 0;
        __syncwarp();  // the ranges and flag before the arrive that publishes them
        const std::uint32_t bar = full_bar(kv, stage);
        if (lane == 0) mbar_arrive_expect_tx(bar, static_cast<std::uint32_t>(__popc(loaded)) * ps * 2 * 128);
        __syncwarp();
        if (in) {
          const std::uint32_t dst = base + (kv == 0 ? 0 : kOffV) + stage * kTileBytes + lane * ps * 128;
          const CUtensorMap* map = kv == 0 ? &wp.k_map : &wp.v_map;
          const int slot = pid * ps;
          tma_load_3d(dst, map, bar, 0, kvh, slot);
          tma_load_3d(dst + kHalfBytes, map, bar, 64, kvh, slot);
        }
      }
    }
    return;
  }

  // Consumers: warpgroup wg holds stacked rows m_base + 64 wg .. + 63.
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegs));
  const int cw = warp - 4;  // consumer warp 0..7
  const int wg = cw >> 2, wwarp = cw & 3;
  const int g = lane >> 2, tig = lane & 3;
  const int m0 = m_base + 64 * wg;
  // Q's A fragments (row-major 16 x kD per warp) straight from global memory: regs 0, 2 of
  // k-step kk hold row g, 1, 3 row g + 8 (rows past the group are zero).
  unsigned qa[kD / 16][4];
  {
    const __nv_bfloat16* qrow[2];
    bool qvalid[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + wwarp * 16 + g + 8 * h;
      qvalid[h] = m < m_count;
      const int mm = qvalid[h] ? m : 0;
      const int row = p.row_order[q_begin + mm / gqa];
      qrow[h] = p.q + (static_cast<std::int64_t>(row) * p.num_heads + kvh * gqa + mm % gqa) * kD + tig * 2;
    }
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int h = r & 1;
        qa[kk][r] = qvalid[h] ? *reinterpret_cast<const unsigned*>(qrow[h] + kk * 16 + (r >> 1) * 8) : 0u;
      }
    }
  }

  // Tile i's S and tile i - 1's O += P V are issued together.
  float o[kD / 2];
#pragma unroll
  for (int i = 0; i < kD / 2; ++i) o[i] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_run[2] = {0.0f, 0.0f};
  const float scale2 = p.sm_scale * kLog2e;

  // Before S of tile t: its K landed.
  const auto acquire_k = [&](int t) { mbar_wait(full_bar(0, t % kStages), (t / kStages) & 1); };
  // Before P V of tile t: its V landed, and V rows outside the pages' ranges (V's copy) zeroed by
  // both warpgroups before either reads them.
  const auto acquire_v = [&](int t) {
    const int stage = t % kStages;
    mbar_wait(full_bar(1, stage), (t / kStages) & 1);
    if (flag_s[kStages + stage] != 0) return;
    const int2* rg = range_s + (kStages + stage) * kMaxPages;
    unsigned char* v_s = sb + kOffV + stage * kTileBytes;
#pragma unroll 1
    for (int k = 0; k < kTile / 16; ++k) {  // kTile rows x 16 chunks over 256 threads
      const int idx = static_cast<int>(threadIdx.x) - 128 + 256 * k;
      const int r = idx >> 4, c = idx & 15;
      const int2 pr = rg[r >> ps_shift];
      const int off = r & (ps - 1);
      if (off < pr.x || off >= pr.y) {
        *reinterpret_cast<uint4*>(v_s + (c >> 3) * kHalfBytes + r * 128 + (c & 7) * 16) = make_uint4(0u, 0u, 0u, 0u);
      }
    }
    fence_proxy_async_smem();
    named_barrier_sync(3, 256);
  };
  // S = Q Kᵀ for tile t: s[4j + e] is row g + 8 (e >> 1) of this warp's 16, key 8j + 2 tig + (e & 1).
  const auto issue_s = [&](int t, float (&s)[kTile / 2]) {
    const std::uint32_t k_addr = base + (t % kStages) * kTileBytes;
    fence_operands(s);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {  // the first overwrites s
      const std::uint64_t kd = sw128_kmajor_desc(k_addr + (kk >> 2) * kHalfBytes + (kk & 3) * 32);
      if (kk == 0) {
        wgmma_m64n128k16_rs<0, 0>(s, qa[kk], kd);
      } else {
        wgmma_m64n128k16_rs<0, 1>(s, qa[kk], kd);
      }
    }
    wgmma_commit();
  };
  // O += P V for tile t (V MN-major: 16 keys = 16 rows, the next 64 columns of d a half further).
  const auto issue_pv = [&](int t, const unsigned (&pa)[kTile / 16][4]) {
    const std::uint32_t v_addr = base + kOffV + (t % kStages) * kTileBytes;
    fence_operands(o);
    wgmma_fence();
#pragma unroll
    for (int kj = 0; kj < kTile / 16; ++kj) {
      wgmma_m64n128k16_rs<1>(o, pa[kj], sw128_desc(v_addr + kj * 16 * 128, kHalfBytes, 1024));
    }
    wgmma_commit();
  };
  // Masks (K's copy of the ranges), scales and exponentiates S of tile t in place, with the
  // running max and sum; corr is what O must be multiplied by before P V of this tile.
  const auto softmax = [&](int t, float (&s)[kTile / 2], float (&corr)[2]) {
    if constexpr (kExpNoSoftmax) {
      corr[0] = corr[1] = 1.0f;
      return;
    }
    const int stage = t % kStages;
    const bool whole = flag_s[stage] != 0;
    const int2* rg = range_s + stage * kMaxPages;
    float tile_max[2] = {-INFINITY, -INFINITY};
    if (whole) {
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[4 * j + e]);
        }
      }
    } else {
      // A thread's keys 8j + 2 tig + {0, 1} lie in one page (pages of at least 8 slots).
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j) {
        const int c = 8 * j + 2 * tig;
        const int2 pr = rg[c >> ps_shift];
        const int off = c & (ps - 1);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool ok = off + (e & 1) >= pr.x && off + (e & 1) < pr.y;
          s[4 * j + e] = ok ? s[4 * j + e] : -INFINITY;
          tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[4 * j + e]);
        }
      }
    }
    online_softmax_step_raw(reinterpret_cast<float (&)[kTile / 8][4]>(s), tile_max, scale2, m_run, l_run, corr);
  };
  // The softmax's weights as P (bf16, the A layout of P V).
  const auto to_p = [&](const float (&s)[kTile / 2], unsigned (&pa)[kTile / 16][4]) {
#pragma unroll
    for (int kj = 0; kj < kTile / 16; ++kj) {
      pa[kj][0] = pack_bf16x2(s[8 * kj], s[8 * kj + 1]);
      pa[kj][1] = pack_bf16x2(s[8 * kj + 2], s[8 * kj + 3]);
      pa[kj][2] = pack_bf16x2(s[8 * kj + 4], s[8 * kj + 5]);
      pa[kj][3] = pack_bf16x2(s[8 * kj + 6], s[8 * kj + 7]);
    }
  };
  // This warp is done with K (S and the softmax of tile t) or V (P V of tile t) of t's stage.
  const auto release = [&](int kv, int t) {
    __syncwarp();
    if (lane == 0) mbar_arrive(empty_bar(kv, t % kStages));
  };
  // O times the softmax's corr, skipped where no row of the warp moved its max (corr exactly 1
  // in every lane), as after a row's first tiles most do: a multiply by 1 changes no bit.
  const auto rescale = [&](const float (&corr)[2]) {
    if (__all_sync(0xffffffffu, corr[0] == 1.0f && corr[1] == 1.0f)) return;
    rescale_rows<kD / 8>([&](int n, int e) -> float& { return o[4 * n + e]; }, corr);
  };

  // The two warpgroups take turns issuing their products (FlashAttention-3's ping-pong): a
  // warpgroup issues once the other has issued, so the tensor cores run one warpgroup's
  // products while the other does its softmax, instead of both at once and then neither.
  // Named barriers 4 (warpgroup 0's turn) and 5 (1's), each the 128 threads of the one that
  // waits and the 128 of the one that arrives; warpgroup 1 opens with an arrive on 4 and leaves
  // out its last, so every arrive is waited for. (Without the turns: 2-3% slower in v24's order
  // of work; in v28's, even at 16384/128/256 and 10% slower at 4096/128/64 under ncu.)
  const int issues = num_tiles + 1;
  int issued = 0;
  const auto turn_begin = [&] {
    if constexpr (!kExpNoTurns) named_barrier_sync(4 + wg, 256);
  };
  const auto turn_end = [&] {
    ++issued;
    if (!kExpNoTurns && (wg == 0 || issued < issues)) named_barrier_arrive(5 - wg, 256);
  };
  if (!kExpNoTurns && wg == 1 && num_tiles > 0) named_barrier_arrive(4, 256);
  if (num_tiles > 0) {
    unsigned pa[kTile / 16][4];
    float corr[2];
    float s[kTile / 2];
    acquire_k(0);
    if (threadIdx.x == 128) timeline::mark(timeline::kWide, 3);
    turn_begin();
    issue_s(0, s);
    turn_end();
    wgmma_wait<0>();
    fence_operands(s);
    softmax(0, s, corr);  // O is zero: nothing to rescale
    release(0, 0);
    to_p(s, pa);
    for (int i = 1; i < num_tiles; ++i) {
      // S of tile i and P V of tile i - 1 back to back on the tensor cores; the softmax of tile
      // i once S is done, while P V still runs (FlashAttention-3's overlap within a warpgroup),
      // then O's rescale and the new P once P V is done.
      acquire_k(i);
      acquire_v(i - 1);
      turn_begin();
      issue_s(i, s);
      issue_pv(i - 1, pa);
      turn_end();
      wgmma_wait<1>();
      fence_operands(s);
      softmax(i, s, corr);
      release(0, i);
      wgmma_wait<0>();
      fence_operands(o);
      fence_operands(pa);
      release(1, i - 1);
      rescale(corr);
      to_p(s, pa);
    }
    acquire_v(num_tiles - 1);
    turn_begin();
    issue_pv(num_tiles - 1, pa);
    turn_end();
    wgmma_wait<0>();
    fence_operands(o);
    fence_operands(pa);
    release(1, num_tiles - 1);
  }
  if (threadIdx.x == 128) timeline::mark(timeline::kWide, 4);

  // The states of this thread's two rows, as the other forms write them (store_row_state).
  quad_sum_rows(l_run);
  const int slice = p.slice_base + split;
  const std::int64_t plane = static_cast<std::int64_t>(p.rows) * p.num_heads;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int m = m0 + wwarp * 16 + g + 8 * h;
    if (m >= m_count) continue;
    const int row = p.row_order[q_begin + m / gqa];
    const std::int64_t rh = static_cast<std::int64_t>(row) * p.num_heads + kvh * gqa + m % gqa;
    store_row_state<kD>([&](int n, int j) { return o[4 * n + 2 * h + j]; }, m_run[h], l_run[h], tig,
                        p.o + (slice * plane + rh) * kD, p.lse + slice * plane + rh);
  }
  if (threadIdx.x == 128) timeline::mark(timeline::kWide, 5);
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) !=
            cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// Page boxes land at multiples of page_size x 128 bytes: at least 1024 (the swizzle atom, which a
// box of the 128-byte swizzle must start on), so pages of at least 8 slots.
bool page_size_ok(int page_size) { return page_size >= 8 && page_size <= kTile && (page_size & (page_size - 1)) == 0; }

// A pool [slots][kv_heads][kD] as a 3-D tensor map with boxes of 64 columns x 1 head x one page.
bool encode_pool(CUtensorMap* map, const void* pool, int num_slots, int kv_heads, int page_size) {
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(kD), static_cast<cuuint64_t>(kv_heads),
                              static_cast<cuuint64_t>(num_slots)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(kD) * 2, static_cast<cuuint64_t>(kv_heads) * kD * 2};
  const cuuint32_t box[3] = {64, 1, static_cast<cuuint32_t>(page_size)};
  const cuuint32_t elem[3] = {1, 1, 1};
  return tensor_map_encoder()(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(pool), dims, strides, box,
                              elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The K and V pools' tensor maps, encoded once per pool and shape: a launch copies them instead of
// encoding two per layer (the eager path launches every step; a graph, at capture). Keyed by the
// K pool; the entry matches only with every input the maps encode, so a freed pool whose address
// comes back for another shape is encoded anew.
bool pool_maps(const AttentionLevelParams& p, CUtensorMap* k_map, CUtensorMap* v_map) {
  struct Entry {
    const void* v_cache;
    int slots, kv_heads, page_size;
    CUtensorMap k_map, v_map;
  };
  static std::mutex mu;
  static std::unordered_map<const void*, Entry> cache;
  const std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(p.k_cache);
  if (it == cache.end() || it->second.v_cache != p.v_cache || it->second.slots != p.num_slots ||
      it->second.kv_heads != p.num_kv_heads || it->second.page_size != p.page_size) {
    Entry e{p.v_cache, p.num_slots, p.num_kv_heads, p.page_size, {}, {}};
    if (!encode_pool(&e.k_map, p.k_cache, p.num_slots, p.num_kv_heads, p.page_size) ||
        !encode_pool(&e.v_map, p.v_cache, p.num_slots, p.num_kv_heads, p.page_size)) {
      return false;
    }
    if (cache.size() >= 1024) cache.clear();  // pools come and go in tests and benches only
    it = cache.insert_or_assign(p.k_cache, e).first;
  }
  *k_map = it->second.k_map;
  *v_map = it->second.v_map;
  return true;
}

}  // namespace

bool attention_wide_usable(int head_dim, int page_size) {
  static const bool off = ab_switch_on("CASCADE_ATTENTION_NO_WIDE");
  return !off && head_dim == kD && page_size_ok(page_size) && attention_wgmma_available() &&
         tensor_map_encoder() != nullptr;
}

cudaError_t launch_attention_wide(const AttentionLevelParams& p, cudaStream_t stream) {
  if (p.grid_items <= 0 || p.grid_splits <= 0) return cudaSuccess;
  if (p.head_dim != kD || !page_size_ok(p.page_size) || p.num_slots <= 0 || p.num_kv_heads <= 0 ||
      p.num_heads % p.num_kv_heads != 0 || p.num_heads / p.num_kv_heads > 8 || p.direct_out != nullptr ||
      p.rope.qkv != nullptr || !(p.sm_scale > 0.0f) || !attention_wide_usable(p.head_dim, p.page_size) ||
      reinterpret_cast<std::uintptr_t>(p.k_cache) % 16 != 0 || reinterpret_cast<std::uintptr_t>(p.v_cache) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  WideParams wp;
  wp.p = p;
  if (!pool_maps(p, &wp.k_map, &wp.v_map)) return cudaErrorInvalidValue;
  static bool configured = false;
  if (!configured) {
    const cudaError_t err =
        cudaFuncSetAttribute(attention_wide_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    if (err != cudaSuccess) return err;
    configured = true;
  }
  const dim3 grid(p.grid_items, p.num_kv_heads, p.grid_splits);
  return launch_pdl<attention_wide_kernel>(grid, dim3(kThreads), kSmem, stream, wp);
}

CASCADE_TIMELINE_ATTACH(timeline::attach_wide)

}  // namespace cascade::cuda

#include <cstdint>
#include <type_traits>

#include "backend/cuda/attention.h"
#include "backend/cuda/device_utils.cuh"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/timeline.cuh"
#include "backend/cuda/wgmma.cuh"

namespace cascade::cuda {
namespace {

// KV tokens per shared-memory tile: 64 for the four-warp kernel (shared levels, many rows), 32 for
// the one-warp decode kernel, whose occupancy is set by shared memory (two stages of K and V
// tiles): 32.5 KiB lets 6 CTAs share an SM instead of 3, so twice the warps hide the latency of this
// issue-bound kernel. One-warp CTAs of at most kShortTileMaxTokens keys (pack_plan's short_tiles:
// the unique levels of cascades, decode splits) take 16-token tiles: 16.4 KiB and 164 registers
// (head_dim 128; at most 168 keep it) let 12 CTAs share an SM instead of 6, which pays where a
// CTA has only a few tiles to hide its latency behind; over longer ranges the small tile's
// per-tile work costs more (v11).
// attention_plan.cpp cuts splits at multiples of 64, a multiple of every tile.
template <int kWarps, bool kShort>
inline constexpr int kTileFor = kWarps == 1 ? (kShort ? 16 : 32) : 64;
// Stages of K/V tiles in shared memory. (For the wgmma form, 8-warp CTAs of 128 rows with four
// stages, one CTA per SM, were 3-6% slower at batch 256 than this with three CTAs per SM, v9.)
constexpr int kTileStages = 2;
// Shared memory of a CTA (for kCtaMerge, of each of its warps): the stages of K and V tiles and
// their slots (+ slack to align the tiles to 1024 for kWg's descriptors, 256 for the swizzle
// the others form on shared addresses).
template <int kD, int kWarps, bool kWg, bool kShort>
inline constexpr int kLevelSmem =
    kTileStages * (2 * kTileFor<kWarps, kShort> * kD * 2 + kTileFor<kWarps, kShort> * 4) + (kWg ? 1024 : 256);

__device__ inline void mma_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ldmatrix at a shared-memory address (the tiles' swizzled offsets are formed on the address).
__device__ inline void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ inline void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Element (token r, column col) of a staged K or V tile. For the mma.sync kernels, rows of kD
// elements with 16-byte chunk c of row r at chunk c ^ (r & 7): the eight rows an ldmatrix reads
// at one column then hit eight different bank groups, and a row of global memory lands in one
// unbroken row of shared memory (rows padded to kD + 8 made each cp.async ask L2 for ~1.5x the
// sectors it needed; v18). For the wgmma kernel (kWg) the 128-byte swizzle of wgmma.cuh, the
// tile cut into 64-column halves of kTile rows of 128 bytes each (K is then K-major for
// S = Q Kᵀ and V MN-major for O = P V).
template <int kD, int kTile, bool kWg>
__device__ __forceinline__ int tile_elem(int r, int col) {
  if constexpr (kWg) {
    return (col >> 6) * (kTile * 64) + r * 64 + ((((col & 63) >> 3) ^ (r & 7)) << 3);
  } else {
    // The XOR immediates of the ldmatrix steps reach bit 7 (kD 128): tiles aligned to 256 bytes
    // cover these two head dims only.
    static_assert(kD == 64 || kD == 128, "the swizzled addresses assume 256-byte-aligned tiles");
    return r * kD + (((col >> 3) ^ (r & 7)) << 3) + (col & 7);
  }
}

// P's A fragment for tokens 16kj..16kj+15: the accumulator layout of S (n-tiles 2kj and 2kj + 1)
// is the A layout of the next product, for mma.sync and wgmma alike.
template <int kN>
__device__ __forceinline__ void p_fragment(const float (&s)[kN][4], int kj, unsigned (&pa)[4]) {
  pa[0] = pack_bf16x2(s[2 * kj][0], s[2 * kj][1]);
  pa[1] = pack_bf16x2(s[2 * kj][2], s[2 * kj][3]);
  pa[2] = pack_bf16x2(s[2 * kj + 1][0], s[2 * kj + 1][1]);
  pa[3] = pack_bf16x2(s[2 * kj + 1][2], s[2 * kj + 1][3]);
}

// The loader of one KV tile (slots by warp 0's page cursor, then cp.async of K and V), as a
// macro so that the read-ahead instantiation can place a copy before the wait while the others
// keep the one after it: moving the only copy changed their code (v7).
#define CASCADE_LOAD_TILE_LAMBDA \
  [&](int tile, int stage) { \
      const int t0 = t_begin + tile * kTile; \
      int* slots = slot_s + stage * kTile; \
      if (warp == 0) { \
        for (int i = lane; i < kTile; i += 32) slots[i] = -1; \
        __syncwarp(); \
        const int t_hi = min(t0 + kTile, t_end); /* tokens [t0, t_hi) are read */ \
        const int t_next = t0 + kTile; \
        int next = -1; \
        /* wgmma form: the last window read stays in registers (pages before the cursor end */ \
        /* before t0, so they add no slots), and most tiles need no loads. */ \
        int win = kWg && w_base >= 0 && cursor >= w_base && cursor < w_base + 32 ? w_base : cursor; \
        for (; win < page_end; win += 32) { \
          const int pidx = win + lane; \
          const bool in = pidx < page_end; \
          if (!kWg || win != w_base) { \
            w_ps = in ? L.page_start[pidx] : 0x7fffffff; \
            w_pe = !in ? 0x7fffffff : pidx + 1 < page_end ? L.page_start[pidx + 1] : kv_len; \
            w_pid = in ? L.page_ids[pidx] : 0; \
            w_base = win; \
          } \
          const int ps = w_ps, pe = w_pe, pid = w_pid; \
          /* The window's pages that overlap [t0, t_hi) hand their range to the lanes, one page */ \
          /* at a time, and each lane fills the slots of its tokens (a lane per page looping over */ \
          /* its tokens left most lanes idle, v11). */ \
          for (unsigned over = __ballot_sync(0xffffffffu, in && ps < t_hi && pe > t0); over != 0u; \
               over &= over - 1u) { \
            const int k = __ffs(over) - 1; \
            const int kps = __shfl_sync(0xffffffffu, ps, k), kpe = __shfl_sync(0xffffffffu, pe, k); \
            const int kpid = __shfl_sync(0xffffffffu, pid, k); \
            _Pragma("unroll") \
            for (int u = lane; u < kTile; u += 32) { \
              const int t = t0 + u; \
              if (t >= kps && t < min(kpe, t_hi)) slots[u] = kpid * p.page_size + (t - kps); \
            } \
          } \
          const unsigned holds_next = __ballot_sync(0xffffffffu, in && pe > t_next); \
          if (next < 0 && holds_next != 0u) next = win + __ffs(holds_next) - 1; \
          if (__shfl_sync(0xffffffffu, pe, 31) >= t_hi) { \
            if (next < 0) next = win + 32; /* the window's last page ends at t_next or beyond t_end */ \
            break; \
          } \
        } \
        cursor = next < 0 ? page_end : next; \
      } \
      tile_sync(); \
      __nv_bfloat16* ks = k_s + stage * kTile * kStride; \
      __nv_bfloat16* vs = v_s + stage * kTile * kStride; \
      /* A thread keeps one 16-byte column chunk and every (kThreads / kChunks)-th row, so its */ \
      /* shared-memory offset moves by a fixed step per row (for kWg a multiple of 8 rows, */ \
      /* which keeps the swizzle phase) and its global address is a base plus slot x stride: */ \
      /* a row costs one shared load of its slot and one multiply-add. (A loop over flat chunk */ \
      /* indices spent ~19 integer instructions per cp.async on 64-bit index math: half of */ \
      /* the one-warp kernel's instructions, v11.) */ \
      /* (mma.sync tiles: row r0 + i * kRowStep has swizzle phase (r0 & 7) ^ ((i * kRowStep) & 7), */ \
      /* as r0 < kRowStep or kRowStep % 8 == 0 (powers of 2), so the step's phase is an XOR */ \
      /* with an immediate.) */ \
      constexpr int kRowStep = kThreads / kChunks; \
      static_assert(kTile % kRowStep == 0 && (!kWg || kRowStep % 8 == 0), "rows per pass"); \
      constexpr int kElemStep = kWg ? kRowStep * 64 : kRowStep * kStride; \
      const unsigned team_tid = kCtaMerge ? threadIdx.x & 31u : threadIdx.x; \
      const int r0 = team_tid / kChunks, col = (team_tid % kChunks) * 8; \
      const int e0 = tile_elem<kD, kTile, kWg>(r0, col); \
      const auto elem = [&](int i) { \
        return kWg ? e0 + i * kElemStep : (e0 ^ (((i * kRowStep) & 7) << 3)) + i * kElemStep; \
      }; \
      const __nv_bfloat16* kbase = p.k_cache + kvh * kD + col; \
      const __nv_bfloat16* vbase = p.v_cache + kvh * kD + col; \
      const std::int64_t slot_stride = static_cast<std::int64_t>(p.num_kv_heads) * kD; \
      _Pragma("unroll") \
      for (int i = 0; i < kTile / kRowStep; ++i) { \
        const int slot = slots[r0 + i * kRowStep]; \
        const std::int64_t off = static_cast<std::int64_t>(slot < 0 ? 0 : slot) * slot_stride; \
        cp_async16(ks + elem(i), kbase + off, slot >= 0); \
        cp_async16(vs + elem(i), vbase + off, slot >= 0); \
      } \
    }

// q_s rows (rope_q_and_kv): padded (no bank conflicts when the warp's 8 rows read one column); 8
// rows fit any stage-1 K tile.
template <int kD>
inline constexpr int kQRowPitch = kD + 8;

// qk_norm_rope_kernel's work in a one-warp CTA whose group is one decode row
// (AttentionLevelParams::rope), with device_utils.cuh's norm_rope_head, so with its bits. What
// does not come from the previous kernel (RopeLane's weights and cos/sin, and whether this CTA
// writes the row's new key: `slot`) is gathered before the wait. The row's gqa heads of q go
// through `q_s`, free shared memory (stage 1's K tile, loaded only after this), into the mma A
// fragments: row g of the warp is head g (rows g + 8 are never valid: gqa <= 8). The CTA whose KV
// range holds the row's new key writes K and V into the pages; only it reads that key this step,
// and it loads the tile that holds the key after this.
template <int kD>
__device__ __forceinline__ void rope_q_and_kv(const AttentionLevelParams& p, unsigned (&qa)[kD / 16][4], int row,
                                              int kvh, const RopeLane<kD>& rl, int slot, __nv_bfloat16* q_s) {
  constexpr int kPer = kD / 32;
  constexpr int kQPitch = kQRowPitch<kD>;
  const int lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
  const int gqa = p.num_heads / p.num_kv_heads;
  const QkNormRopeParams& R = p.rope;
  // Every load first: the group's q heads and, in the writing CTA, the key's K and V.
  const __nv_bfloat16* src = R.qkv + static_cast<std::int64_t>(row) * (p.num_heads + 2 * p.num_kv_heads) * kD;
  const __nv_bfloat16* qr = src + static_cast<std::int64_t>(kvh) * gqa * kD;
  const __nv_bfloat16* kr = src + static_cast<std::int64_t>(p.num_heads + kvh) * kD;
  const __nv_bfloat16* vr = kr + static_cast<std::int64_t>(p.num_kv_heads) * kD;
  const bool writes = slot >= 0;
  float q[8][kPer];
  __nv_bfloat16 kraw[kPer], vraw[kPer];
#pragma unroll
  for (int hh = 0; hh < 8; ++hh) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) q[hh][j] = hh < gqa ? __bfloat162float(qr[hh * kD + lane + 32 * j]) : 0.0f;
  }
  if (writes) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      kraw[j] = kr[lane + 32 * j];
      vraw[j] = vr[lane + 32 * j];
    }
  }
  // Heads two at a time, so that their warp sums' shuffle chains overlap (a head past gqa is
  // formed from zeros and not stored). Rows of q_s are kQPitch apart: no bank conflicts when
  // the warp's 8 rows read the same columns.
#pragma unroll
  for (int hh = 0; hh < 8; hh += 2) {
    if (hh < gqa) {
      norm_rope_head<kD>(q[hh], rl.wq, R.eps, rl);
      norm_rope_head<kD>(q[hh + 1], rl.wq, R.eps, rl);
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (hh + e < gqa) {
#pragma unroll
          for (int j = 0; j < kPer; ++j) q_s[(hh + e) * kQPitch + lane + 32 * j] = __float2bfloat16_rn(q[hh + e][j]);
        }
      }
    }
  }
  __syncwarp();
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {  // row g of the warp is head g; rows g + 8 none (gqa <= 8)
      const int col = kk * 16 + tig * 2 + half * 8;
      qa[kk][2 * half] = g < gqa ? *reinterpret_cast<const unsigned*>(q_s + g * kQPitch + col) : 0u;
      qa[kk][2 * half + 1] = 0u;
    }
  }
  if (!writes) return;
  const std::int64_t dst = (static_cast<std::int64_t>(slot) * p.num_kv_heads + kvh) * kD;
  float k[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    R.v_cache[dst + lane + 32 * j] = __float2bfloat16_rn(__bfloat162float(vraw[j]));  // as qk_norm_rope
    k[j] = __bfloat162float(kraw[j]);
  }
  norm_rope_head<kD>(k, rl.wk, R.eps, rl);
#pragma unroll
  for (int j = 0; j < kPer; ++j) R.k_cache[dst + lane + 32 * j] = __float2bfloat16_rn(k[j]);
  // The warp's cp.async reads of this key (the tile that holds it) come after this barrier.
  __threadfence_block();
  __syncwarp();
}

// Four-warp CTAs are held to 168 registers so that three fit per SM (12 warps to hide the mma and
// exp latency; 3 x 65.5 KiB of shared memory fits too). pack_plan's split-K assumes this.
// kReadAhead (one-warp CTAs of small batches, p.read_ahead): the first two KV tiles are loaded
// before the wait where kv_fresh allows. A separate instantiation, so that the others compile to
// the code they had before it (same PTX): with the extra load sites compiled into every launch,
// flat decode in cuda_attention_bench took up to 9% longer with nothing read ahead (v7).
// kWg (four-warp CTAs on sm_90a, attention_wgmma_available()): the same CTA work, with the two
// products as warpgroup MMAs: S = Q Kᵀ with Q's fragments from registers and K from the swizzled
// tile, O += P V with P from registers and V read transposed (MN-major) from its tile.
// kCtaMerge (a lone short-tile one-warp level of 2..kMaxCtaSplits splits writing its rows itself,
// LevelPack::direct_out): the CTA's warps are the splits of one (group, KV head), each the
// one-warp kernel over its own shared memory with warp-local barriers; at the end they put their
// states in shared memory and merge them with merge_states_warp_kernel's arithmetic, so the step
// needs no state slices, fill or merge kernel.
template <int kD, int kWarps, bool kReadAhead, bool kWg = false, bool kShort = false, bool kCtaMerge = false>
__global__ void __launch_bounds__(kCtaMerge ? 32 * kMaxCtaSplits : kWarps * 32, kWarps == 4 ? 3 : 1)
    attention_level_kernel(AttentionLevelParams p) {
  static_assert(!kWg || (kWarps == 4 && !kReadAhead), "the wgmma form is a four-warp kernel");
  static_assert(!kShort || (kWarps == 1 && !kReadAhead), "short tiles are a one-warp form");
  static_assert(!kCtaMerge || kShort, "the CTA merge is a short-tile one-warp form");
  constexpr int kTimelineId = kWarps == 1 ? timeline::kLevel : timeline::kFourWarp;  // diagnostics
  if (threadIdx.x == 0) timeline::mark(kTimelineId, 0);
  // A later level of a chained plan (AttentionLevelParams::beside; the launcher allows it only
  // in this form): its successor may launch at once, and it takes no wait but end_beside's.
  const bool beside = kWarps == 1 && !kReadAhead && !kCtaMerge && p.beside;
  if (beside) pdl_release();
  // The chain's join (launch.cuh): the grid's last CTA waits, before it exits, for the previous
  // level to complete, so that this grid completes after it. Only one CTA holds its SM slot
  // that long; the previous level's CTAs are all resident by then (this grid launched after
  // each of them had started), so its completion needs no slot of ours.
  const auto end_beside = [&] {
    if (beside && threadIdx.x == 0 && blockIdx.x == gridDim.x - 1 && blockIdx.y == gridDim.y - 1 &&
        blockIdx.z == gridDim.z - 1) {
      pdl_wait();
    }
  };
  // Shared-memory row (bf16), swizzled for conflict-free fragment loads (tile_elem).
  constexpr int kStride = kD;
  constexpr int kThreads = kWarps * 32;
  constexpr int kChunks = kD / 8;  // 16-byte chunks per KV row
  constexpr int kTile = kTileFor<kWarps, kShort>;
  constexpr int kStages = kTileStages;
#ifndef CASCADE_SM90A
  if constexpr (kWg) {
    __trap();  // launch_attention_level takes this form only where the sm_90a code runs
  }
#endif
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // kCtaMerge: warp w is split w, with the w-th slice of shared memory (its tiles, then its state
  // at the end); the tile loader's thread index and barriers are then the warp's own.
  [[maybe_unused]] const int split_warp = kCtaMerge ? static_cast<int>(threadIdx.x >> 5) : 0;
  unsigned char* const slice_base = smem_raw + split_warp * kLevelSmem<kD, kWarps, kWg, kShort>;
  const auto tile_sync = [] {
    if constexpr (kCtaMerge) {
      __syncwarp();
    } else {
      __syncthreads();
    }
  };
  // The swizzle patterns follow address bits 4-9 (kWg) or 4-7: align the tiles to 1024 or 256.
  constexpr unsigned kAlign = kWg ? 1024u : 256u;
  unsigned char* smem_base = slice_base;
  {
    const unsigned raw = static_cast<unsigned>(__cvta_generic_to_shared(slice_base));
    smem_base += ((raw + kAlign - 1u) & ~(kAlign - 1u)) - raw;
  }
  __nv_bfloat16* k_s = reinterpret_cast<__nv_bfloat16*>(smem_base);  // [kStages][kTile][kStride]
  __nv_bfloat16* v_s = k_s + kStages * kTile * kStride;
  int* slot_s = reinterpret_cast<int*>(v_s + kStages * kTile * kStride);  // [kStages][kTile]

  // The plan arrays are uploaded before the step's first kernel, so this CTA's rows, KV range and
  // first page are found before the wait, while the previous kernel drains (launch.cuh); q and
  // the step's new K/V come from the previous kernels (or, with p.rope, the qkv projection this
  // kernel forms them from) and are read only after it.
  const LevelArrays& L = p.level;
  const int num_items = L.counts[0], num_splits = L.counts[1], per_split = L.counts[2];
  // (kCtaMerge: warps past num_splits stay, over an empty range, for the CTA's barrier.)
  if (static_cast<int>(blockIdx.x) >= num_items || (!kCtaMerge && static_cast<int>(blockIdx.z) >= num_splits)) {
    if (beside) {
      end_beside();
      return;
    }
    pdl_wait();  // launch.cuh: wait before any early return
    pdl_release();
    return;
  }
  const int group = L.items[2 * blockIdx.x];
  const int m_base = L.items[2 * blockIdx.x + 1];
  const int kvh = blockIdx.y;
  const int split = kCtaMerge ? split_warp : static_cast<int>(blockIdx.z);
  const int gqa = p.num_heads / p.num_kv_heads;
  const int q_begin = L.q_indptr[group];
  const int m_count = (L.q_indptr[group + 1] - q_begin) * gqa;
  const int kv_len = L.kv_len[group];
  const int kv_start = L.kv_start_pos[group];
  const int page_begin = L.page_indptr[group], page_end = L.page_indptr[group + 1];

  const int lane = threadIdx.x & 31, warp = kCtaMerge ? 0 : static_cast<int>(threadIdx.x >> 5);
  const int g = lane >> 2, tig = lane & 3;

  // This thread's two stacked rows (g and g + 8 of its warp's 16).
  int row_id[2], head[2], qpos[2];
  bool valid[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int m = m_base + warp * 16 + g + 8 * h;
    valid[h] = m < m_count;
    const int mm = valid[h] ? m : 0;
    row_id[h] = p.row_order[q_begin + mm / gqa];
    head[h] = kvh * gqa + mm % gqa;
    qpos[h] = valid[h] ? p.q_pos[row_id[h]] : -2147483647;
  }

  // KV range of this split, cut by causality at the CTA's last visible key.
  int max_q = -2147483647;
  const int m_last = min(m_base + kWarps * 16, m_count) - 1;
  if constexpr (kWg) {  // up to 64 rows: a lane per row, every warp the same maximum
    for (int r = m_base / gqa + lane; r <= m_last / gqa; r += 32) {
      max_q = max(max_q, p.q_pos[p.row_order[q_begin + r]]);
    }
    max_q = __reduce_max_sync(0xffffffffu, max_q);
  } else if constexpr (kWarps == 1) {
    // The warp's 16 stacked rows are the CTA's (with kCtaMerge every warp holds the same ones),
    // and each lane has loaded the q positions of its two (qpos, invalid rows at the minimum):
    // their maximum is the loop below's, without its chain of dependent loads per row.
    max_q = __reduce_max_sync(0xffffffffu, max(qpos[0], qpos[1]));
  } else {
    for (int r = m_base / gqa; r <= m_last / gqa; ++r) {
      max_q = max(max_q, p.q_pos[p.row_order[q_begin + r]]);
    }
  }
  const int t_begin = split * per_split;
  int t_end = min(kv_len, t_begin + per_split);
  t_end = min(t_end, max_q - kv_start + 1);

  float acc[kD / 8][4];
#pragma unroll
  for (int n = 0; n < kD / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_run[2] = {0.0f, 0.0f};
  const float scale2 = p.sm_scale * kLog2e;

  const int num_tiles = t_end > t_begin ? (t_end - t_begin + kTile - 1) / kTile : 0;

  // Page cursor (warp 0): the page holding the next tile's first token. A 32-way search finds the
  // split's first page (each round the 32 lanes probe evenly spaced pages, so a 1024-page list
  // takes two rounds of loads, not the ten dependent ones of a binary search); after that each
  // tile's slots come from one round of loads (a lane per page, 32 pages a round).
  int cursor = page_begin;
  int w_base = -1, w_ps = 0, w_pe = 0, w_pid = 0;  // warp 0's window of 32 pages (the tile loader)
  if (warp == 0 && num_tiles > 0) {
    int lo = page_begin, n = page_end - page_begin;  // last page with page_start <= t_begin is in [lo, lo + n)
    while (n > 1) {
      const int stride = (n + 31) / 32;
      const int probe = lo + lane * stride;
      // page_start is non-decreasing, so the lanes that pass form a prefix; lane 0 always passes.
      const unsigned pass = __ballot_sync(0xffffffffu, probe < lo + n && L.page_start[probe] <= t_begin);
      const int k = 31 - __clz(pass);
      const int end = lo + n;
      lo += k * stride;
      n = min(stride, end - lo);
    }
    cursor = lo;
  }

  // KV before the group's first page written this step (kv_fresh, from the plan) was written by
  // earlier steps: the first two tiles' loads start before the wait when they lie wholly there,
  // so their memory latency overlaps the previous kernel.
  [[maybe_unused]] bool pre0 = false, pre1 = false;
  if constexpr (kReadAhead) {
    const int fresh = p.kv_fresh[group];
    pre0 = num_tiles > 0 && min(t_begin + kTile, t_end) <= fresh;
    pre1 = pre0 && num_tiles > 1 && min(t_begin + 2 * kTile, t_end) <= fresh;
    auto load_tile_ahead = CASCADE_LOAD_TILE_LAMBDA;
    if (pre0) {
      load_tile_ahead(0, 0);
      cp_async_commit();
      if (pre1) {
        load_tile_ahead(1, 1);
        cp_async_commit();
      }
    }
  }

  // q/k RMSNorm + RoPE taken in (p.rope: one-warp levels of single-row groups, not read ahead):
  // weights, rotary cos/sin and whether this CTA writes the new key, before the wait.
  const bool rope = kWarps == 1 && !kReadAhead && p.rope.qkv != nullptr;
  [[maybe_unused]] RopeLane<kD> rope_lane;
  [[maybe_unused]] int rope_slot = -1;  // the new key's slot where this CTA writes it
  if constexpr (kWarps == 1 && !kReadAhead) {
    if (rope) {
      const int row = p.row_order[q_begin];
      rope_lane.load(static_cast<float>(p.rope.positions[row]), p.rope.inv_freq, p.rope.q_norm, p.rope.k_norm);
      const int key = p.q_pos[row] - kv_start;  // the new key's index in the group (pack_plan's rule)
      if (key >= t_begin && key < t_begin + per_split) rope_slot = p.rope.slot_mapping[row];
    }
  }

  if (threadIdx.x == 0) timeline::mark(kTimelineId, 1);
  if (!beside) {
    pdl_wait();  // launch.cuh: q (or qkv) and this layer's new K/V are written by the previous kernels
    pdl_release();
  }
  if (threadIdx.x == 0) timeline::mark(kTimelineId, 2);

  auto load_tile = CASCADE_LOAD_TILE_LAMBDA;

  // Q fragments (A operand, row-major 16 x kD per warp) straight from global memory, or formed
  // here (rope). In that case the first tile's loads go first unless it holds the key this CTA
  // writes; stage 1's K tile holds q meanwhile.
  unsigned qa[kD / 16][4];
  [[maybe_unused]] bool first_loaded = false;
  if (!rope) {
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int h = r & 1;          // regs 0,2: row g; 1,3: row g + 8
        const int col = kk * 16 + tig * 2 + (r >> 1) * 8;
        const __nv_bfloat16* src =
            p.q + (static_cast<std::int64_t>(row_id[h]) * p.num_heads + head[h]) * kD + col;
        // Beside (no wait of ours): from L2, never a line an earlier layer's q left in L1.
        const unsigned* src32 = reinterpret_cast<const unsigned*>(src);
        qa[kk][r] = valid[h] ? (beside ? __ldcg(src32) : *src32) : 0u;
      }
    }
  } else if constexpr (kWarps == 1 && !kReadAhead) {
    const int key_tile = rope_slot < 0 ? num_tiles : (p.q_pos[row_id[0]] - kv_start - t_begin) / kTile;
    if (num_tiles > 0 && key_tile > 0) {
      load_tile(0, 0);
      first_loaded = true;
    }
    static_assert(8 * kQRowPitch<kD> <= kTile * kStride, "q_s (8 heads) fits stage 1's K tile");
    rope_q_and_kv<kD>(p, qa, row_id[0], kvh, rope_lane, rope_slot, k_s + kTile * kStride);
  }

  // Tiles not started before the wait start now. (Groups of cp.async: wait<1> below waits for
  // all but the newest, empty ones included.) The wgmma form keeps kStages - 1 tiles in flight:
  // one group per tile, so tile t is complete when at most kStages - 2 newer groups are pending.
  if constexpr (kWg) {
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < num_tiles) load_tile(s, s);
      cp_async_commit();
    }
  } else if constexpr (kReadAhead) {
    if (num_tiles > 0 && !pre0) load_tile(0, 0);
    cp_async_commit();
  } else {
    if (num_tiles > 0 && !first_loaded) load_tile(0, 0);
    cp_async_commit();
  }
  // This lane's ldmatrix offsets in a K and a V tile (bytes; tile_elem's swizzle): K row lane & 7
  // at chunk (lane >> 3) ^ (lane & 7); V row (lane & 7) + ((lane >> 3) & 1) * 8 at chunk
  // (lane >> 4) ^ (lane & 7). The k- and d-steps XOR them with immediates.
  [[maybe_unused]] const unsigned k_lane = (lane & 7) * kD * 2 + (((lane >> 3) ^ (lane & 7)) << 4);
  [[maybe_unused]] const unsigned v_lane = ((lane & 7) + ((lane >> 3) & 1) * 8) * kD * 2 + (((lane >> 4) ^ (lane & 7)) << 4);
  for (int tile = 0; tile < num_tiles; ++tile) {
    const int stage = tile % kStages;
    if constexpr (kWg) {
#ifdef CASCADE_SM90A
      cp_async_wait<kStages - 2>();
      fence_proxy_async_smem();  // this thread's cp.async writes -> wgmma reads
      __syncthreads();  // tile's data complete; every warpgroup is done with tile - 1's stage
#endif
    } else {
      if constexpr (kReadAhead) {
        if (tile + 1 < num_tiles && !(tile == 0 && pre1)) load_tile(tile + 1, stage ^ 1);
      } else {
        if (tile + 1 < num_tiles) load_tile(tile + 1, stage ^ 1);
      }
      cp_async_commit();
      cp_async_wait<1>();
      tile_sync();
    }

    if (tile == 0 && threadIdx.x == 0) timeline::mark(kTimelineId, 3);
    const __nv_bfloat16* ks = k_s + stage * kTile * kStride;
    const __nv_bfloat16* vs = v_s + stage * kTile * kStride;
    [[maybe_unused]] const unsigned k_tile = static_cast<unsigned>(__cvta_generic_to_shared(ks));
    [[maybe_unused]] const unsigned v_tile = static_cast<unsigned>(__cvta_generic_to_shared(vs));
    const int t0 = t_begin + tile * kTile;

    // S = Q K^T for 16 rows x kTile tokens: kTile / 8 n-tiles of 8 tokens.
    // K B-fragments come four 8x8 matrices per ldmatrix: token rows j*8..j*8+7, columns
    // kk*16 + {0, 8, 16, 24}, i.e. (b0, b1) of k-steps kk and kk + 1.
    float s[kTile / 8][4];
    if constexpr (kWg) {
#ifdef CASCADE_SM90A
      // The warpgroup's 64 rows x 64 tokens: s[j][e] is the accumulator register 4j + e (the
      // same row/column assignment as the mma.sync fragments). K-major K: 16 columns of d are
      // 32 bytes within a 128-byte row; columns 64+ are the second half of the tile.
      auto& sf = reinterpret_cast<float (&)[kTile / 2]>(s);
#pragma unroll
      for (int i = 0; i < kTile / 2; ++i) sf[i] = 0.0f;
      const unsigned k_addr = static_cast<unsigned>(__cvta_generic_to_shared(ks));
      fence_operands(sf);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        wgmma_m64n64k16_rs<0>(sf, qa[kk], sw128_kmajor_desc(k_addr + (kk >> 2) * (kTile * 128) + (kk & 3) * 32));
      }
      wgmma_commit();
      // While S is computed: refill the stage tile - 1 used (its wgmmas finished before the
      // barrier above) with the tile kStages - 1 ahead.
      const int ahead = tile + kStages - 1;
      if (ahead < num_tiles) load_tile(ahead, ahead % kStages);
      cp_async_commit();
      wgmma_wait_all();
      fence_operands(sf);
#endif
    } else {
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j) {
        s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < kD / 16; kk += 2) {
          unsigned b[4];
          // Logical chunk kk * 2 + q of row j * 8 + i (i = lane & 7, q = lane >> 3) sits at chunk
          // (q ^ i) ^ 2kk: k_lane's offset XOR kk * 32 bytes, rows j * 8 further.
          ldmatrix_x4(b, ((k_tile + k_lane) ^ static_cast<unsigned>(kk * 32)) + j * 8 * kD * 2);
          mma_bf16(s[j], qa[kk], b[0], b[1]);
          mma_bf16(s[j], qa[kk + 1], b[2], b[3]);
        }
      }
    }
    // Mask (split end, causality) and scale into log2 units. Per row, the tile's visible tokens
    // are a prefix: one compare per score against its length (the fragment layout is the same
    // for mma.sync and wgmma: column j * 8 + tig * 2 + (e & 1), row g + 8 * (e >> 1)).
    float tile_max[2] = {-INFINITY, -INFINITY};
    int vis[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // in 64 bits (an invalid row's qpos is -2^31 + 1), then
      // clamped to [-1, kTile], which keeps every comparison below
      const long long lim = min(static_cast<long long>(t_end), static_cast<long long>(qpos[h]) - kv_start + 1) -
                            t0 - tig * 2;
      vis[h] = static_cast<int>(max(-1LL, min(lim, static_cast<long long>(kTile))));
    }
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e >> 1;
        s[j][e] = j * 8 + (e & 1) < vis[h] ? s[j][e] * scale2 : -INFINITY;
        tile_max[h] = fmaxf(tile_max[h], s[j][e]);
      }
    }
    float corr[2];
    online_softmax_step(s, tile_max, m_run, l_run, corr);
    rescale_rows<kD / 8>([&](int n, int e) -> float& { return acc[n][e]; }, corr);
    // O += P V: P's accumulator layout is the A layout of the next mma (k = tokens).
    if constexpr (kWg) {
#ifdef CASCADE_SM90A
      // V is the MN-major B operand: 16 tokens are 16 rows (2048 bytes) of the tile, the next
      // 64 columns of d the other half (kTile rows further).
      unsigned pa[kTile / 16][4];
#pragma unroll
      for (int kj = 0; kj < kTile / 16; ++kj) {
        p_fragment(s, kj, pa[kj]);
      }
      auto& of = reinterpret_cast<float (&)[kD / 2]>(acc);
      const unsigned v_addr = static_cast<unsigned>(__cvta_generic_to_shared(vs));
      fence_operands(of);
      wgmma_fence();
#pragma unroll
      for (int kj = 0; kj < kTile / 16; ++kj) {
        const std::uint64_t vd = sw128_desc(v_addr + kj * 16 * 128, kTile * 128, 1024);
        if constexpr (kD == 128) {
          wgmma_m64n128k16_rs<1>(of, pa[kj], vd);
        } else {
          wgmma_m64n64k16_rs<1>(of, pa[kj], vd);
        }
      }
      wgmma_commit();
      wgmma_wait_all();
      fence_operands(of);
#endif
    } else {
#pragma unroll
      for (int kj = 0; kj < kTile / 16; ++kj) {
        unsigned pa[4];
        p_fragment(s, kj, pa);
#pragma unroll
        for (int dn = 0; dn < kD / 16; ++dn) {
          unsigned b[4];
          // Logical chunk dn * 2 + q of row kj * 16 + h * 8 + i (i = lane & 7, h = (lane >> 3) & 1,
          // q = lane >> 4) sits at chunk (q ^ i) ^ 2dn.
          ldmatrix_x4_trans(b, ((v_tile + v_lane) ^ static_cast<unsigned>(dn * 32)) + kj * 16 * kD * 2);
          mma_bf16(acc[2 * dn], pa, b[0], b[1]);
          mma_bf16(acc[2 * dn + 1], pa, b[2], b[3]);
        }
      }
    }
    if constexpr (!kWg) tile_sync();  // this stage is refilled by the next iteration's load
  }
  cp_async_wait<0>();
  if (threadIdx.x == 0) timeline::mark(kTimelineId, 4);

  // Finish: the row sums were kept per thread; reduce over the 4 threads of each row.
  quad_sum_rows(l_run);
  // The state of this thread's stacked row h (store_row_state) at o_row and *lse_out.
  const auto store_state = [&](int h, float* o_row, float* lse_out) {
    store_row_state<kD>([&](int n, int j) { return acc[n][2 * h + j]; }, m_run[h], l_run[h], tig, o_row, lse_out);
  };
  if constexpr (kCtaMerge) {
    // This warp's state (store_state, as the state path below) into its own slice of shared
    // memory, whose tiles are done (every cp.async waited for, the last barrier passed; the
    // __syncwarp orders the q staging reads of a warp that loaded no tile). Rows kStatePitch
    // floats apart: each half-warp's float2 stores hit 32 different banks.
    constexpr int kStatePitch = kD + 8;
    constexpr int kSlice = kLevelSmem<kD, kWarps, kWg, kShort>;
    static_assert((16 * kStatePitch + 16) * 4 <= kSlice && kSlice % 16 == 0, "a state fits a warp's slice");
    float* st_o = reinterpret_cast<float*>(slice_base);  // [16][kStatePitch]
    float* st_lse = st_o + 16 * kStatePitch;            // [16]
    __syncwarp();
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int lm = g + 8 * h;
      if (valid[h]) store_state(h, st_o + lm * kStatePitch, st_lse + lm);
    }
    __syncthreads();
    // Warp w merges rows w, w + W, ... of the CTA's states with merge_states_warp_kernel's merge
    // (device_utils.cuh's merge_states_warp; states in warp order), so its bits.
    constexpr int kVec = kD / 32;
    using Vec = std::conditional_t<kVec == 4, float4, float2>;
    const int num_warps = static_cast<int>(blockDim.x >> 5);
    const int m_rows = min(16, m_count - m_base);
    const auto state = [&](int s) { return reinterpret_cast<const float*>(smem_raw + s * kSlice); };
    for (int lm = split_warp; lm < m_rows; lm += num_warps) {
      const int m = m_base + lm;
      const std::int64_t rh = static_cast<std::int64_t>(p.row_order[q_begin + m / gqa]) * p.num_heads + kvh * gqa + m % gqa;
      float o[kVec];
      float mx;
      const float den = merge_states_warp<kVec>(
          num_warps, lane, [&](int s) { return state(s)[16 * kStatePitch + lm]; },
          [&](int s) { return reinterpret_cast<const Vec*>(state(s) + lm * kStatePitch)[lane]; }, o, mx);
      const float inv = den > 0.0f ? 1.0f / den : 0.0f;
      store_scaled_bf16<kVec>(p.direct_out + rh * kD + lane * kVec, o, inv);
    }
    if (threadIdx.x == 0) timeline::mark(kTimelineId, 5);
    return;
  }
  const int slice = p.slice_base + split;
  const std::int64_t plane = static_cast<std::int64_t>(p.rows) * p.num_heads;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (!valid[h]) continue;
    const std::int64_t rh = static_cast<std::int64_t>(row_id[h]) * p.num_heads + head[h];
    if constexpr (kWarps == 1) {
      if (p.direct_out != nullptr) {
        const bool empty = !(l_run[h] > 0.0f);
        const float inv = empty ? 0.0f : 1.0f / l_run[h];
        // The only state of the row: merge_states weighs it by 1 and adds it to +0 (so -0 becomes
        // +0), or writes 0 where it is empty (an l of 0 or NaN), then rounds to bf16; this writes
        // the same bits.
        const auto merged = [&](float a) { return empty ? 0.0f : a * inv + 0.0f; };
        __nv_bfloat16* out = p.direct_out + rh * kD + tig * 2;
#pragma unroll
        for (int n = 0; n < kD / 8; ++n) {
          *reinterpret_cast<unsigned*>(out + n * 8) = pack_bf16x2(merged(acc[n][2 * h]), merged(acc[n][2 * h + 1]));
        }
        continue;
      }
    }
    store_state(h, p.o + (slice * plane + rh) * kD, p.lse + slice * plane + rh);
  }
  end_beside();
  if (threadIdx.x == 0) timeline::mark(kTimelineId, 5);
}

template <int kD, int kWarps, bool kReadAhead = false, bool kWg = false, bool kShort = false, bool kCtaMerge = false>
cudaError_t launch_typed(const AttentionLevelParams& p, cudaStream_t stream) {
  constexpr int kSmem = kLevelSmem<kD, kWarps, kWg, kShort>;
  static_assert(!kCtaMerge || kMaxCtaSplits * kSmem <= 227 * 1024, "a merged CTA's slices fit an SM");
  constexpr auto kernel = attention_level_kernel<kD, kWarps, kReadAhead, kWg, kShort, kCtaMerge>;
  static bool configured = false;  // the attribute is per function; set once per process
  if (!configured) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 kCtaMerge ? kMaxCtaSplits * kSmem : kSmem);
    if (err != cudaSuccess) return err;
    configured = true;
  }
  if constexpr (kCtaMerge) {  // a CTA per (item, KV head), a warp per split
    const dim3 grid(p.grid_items, p.num_kv_heads, 1);
    return launch_pdl<kernel>(grid, dim3(32 * p.grid_splits), p.grid_splits * kSmem, stream, p);
  }
  const dim3 grid(p.grid_items, p.num_kv_heads, p.grid_splits);
  return launch_pdl<kernel>(grid, dim3(kWarps * 32), kSmem, stream, p);
}

}  // namespace

bool attention_wgmma_available() {
  static const bool off = ab_switch_on("CASCADE_ATTENTION_NO_WGMMA");
  return !off && sm90a_code_available();
}

bool attention_qk_rope_enabled() {
  static const bool off = ab_switch_on("CASCADE_ATTENTION_NO_ROPE_FUSE");
  return !off;
}

bool attention_fork_enabled() {
  static const bool off = ab_switch_on("CASCADE_ATTENTION_NO_FORK");
  return !off;
}

bool attention_chain_enabled() {
  // Without PDL the chain's levels would run one after another (ordinary stream order): correct,
  // but nothing beside anything. The one-warp form the chain's later levels take decides.
  static const bool on = !ab_switch_on("CASCADE_ATTENTION_NO_CHAIN") && pdl_enabled() &&
                         pdl_kernel_ok(reinterpret_cast<const void*>(attention_level_kernel<128, 1, false, false, true>));
  return on;
}

bool attention_direct_out_enabled() {
  static const bool off = ab_switch_on("CASCADE_ATTENTION_MERGE_KERNEL");
  return !off;
}

cudaError_t launch_attention_level(const AttentionLevelParams& p, cudaStream_t stream) {
  if (p.grid_items <= 0 || p.grid_splits <= 0) return cudaSuccess;
  if (p.beside && (p.warps != 1 || p.read_ahead || p.rope.qkv != nullptr || p.direct_out != nullptr)) {
    return cudaErrorInvalidValue;  // AttentionLevelParams::beside: the one-warp form only
  }
  if (p.warps == kWideWarps) return launch_attention_wide(p, stream);
  if (p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0 ||
      p.num_heads / p.num_kv_heads > 8) {
    return cudaErrorInvalidValue;
  }
  if (p.rope.qkv != nullptr &&
      (p.warps != 1 || p.read_ahead || p.rope.bias != nullptr || p.rope.k_cache == nullptr ||
       p.rope.v_cache == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const bool cta_merge = p.direct_out != nullptr && p.grid_splits > 1;
  if (p.direct_out != nullptr &&
      (p.warps != 1 || reinterpret_cast<std::uintptr_t>(p.direct_out) % 4 != 0 ||
       (cta_merge && (!p.short_tiles || p.read_ahead || p.grid_splits > kMaxCtaSplits ||
                      reinterpret_cast<std::uintptr_t>(p.direct_out) % (p.head_dim == 128 ? 8 : 4) != 0)))) {
    return cudaErrorInvalidValue;
  }
  const bool wg = p.warps == 4 && !p.no_wgmma && attention_wgmma_available();
  if (p.head_dim == 128) {
    if (p.warps == 4) return wg ? launch_typed<128, 4, false, true>(p, stream) : launch_typed<128, 4>(p, stream);
    if (p.read_ahead) return launch_typed<128, 1, true>(p, stream);
    if (cta_merge) return launch_typed<128, 1, false, false, true, true>(p, stream);
    return p.short_tiles ? launch_typed<128, 1, false, false, true>(p, stream) : launch_typed<128, 1>(p, stream);
  }
  if (p.head_dim == 64) {
    if (p.warps == 4) return wg ? launch_typed<64, 4, false, true>(p, stream) : launch_typed<64, 4>(p, stream);
    if (p.read_ahead) return launch_typed<64, 1, true>(p, stream);
    if (cta_merge) return launch_typed<64, 1, false, false, true, true>(p, stream);
    return p.short_tiles ? launch_typed<64, 1, false, false, true>(p, stream) : launch_typed<64, 1>(p, stream);
  }
  return cudaErrorInvalidValue;
}

#undef CASCADE_LOAD_TILE_LAMBDA

CASCADE_TIMELINE_ATTACH(timeline::attach_attention)

}  // namespace cascade::cuda

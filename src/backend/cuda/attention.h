// Paged attention of one cascade level on the GPU, and the device form of a CascadePlan.
//
// One kernel family handles every level: a CTA takes `16 * warps` stacked (query row, head) pairs
// of one group (all heads sharing one KV head, so GQA reads each KV tile once per group) and runs
// FlashAttention-2 style online softmax over KV tiles (32 tokens for one-warp CTAs, 16 where
// they cover few keys, 64 for four-warp ones) staged in shared memory with cp.async, with bf16 mma.sync m16n8k16 tensor-core
// products and fp32 accumulation. Decode-like
// levels (<= 16 stacked rows per group) use one-warp CTAs and split the KV range across CTAs
// (split-K); the partial states are merged with the other levels' states by merge_states, except
// where a plan's only level writes its output rows itself (direct_out): of one split, or of a few
// short splits that the warps of one CTA run and merge in shared memory.
// On sm_90a the four-warp CTAs do the same work with warpgroup MMAs (wgmma: Q and P from
// registers, K and V from 128-byte-swizzled tiles), attention_wgmma_available().
// One-warp CTAs over at most kShortTileMaxTokens keys stage 16-token tiles instead (short_tiles).
// Supported: head_dim 64 or 128, num_heads / num_kv_heads in 1..8.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "backend/cuda/kernels.h"
#include "sched/cascade_plan.h"

namespace cascade::cuda {

// Device arrays of one level (all pointers into device memory).
struct LevelArrays {
  const std::int32_t* items = nullptr;        // [num_items * 2]: (group, first stacked row)
  const std::int32_t* q_indptr = nullptr;     // [groups + 1]
  const std::int32_t* page_indptr = nullptr;  // [groups + 1]
  const std::int32_t* page_ids = nullptr;     // [pages]
  const std::int32_t* page_start = nullptr;   // [pages]: tokens before the page within its group
  const std::int32_t* kv_len = nullptr;       // [groups]
  const std::int32_t* kv_start_pos = nullptr; // [groups]
  const std::int32_t* counts = nullptr;       // [3]: num_items, num_splits, tokens_per_split
};

struct AttentionLevelParams {
  const __nv_bfloat16* q = nullptr;        // [rows, num_heads, head_dim]
  const __nv_bfloat16* k_cache = nullptr;  // layer pool [slots, num_kv_heads, head_dim]
  const __nv_bfloat16* v_cache = nullptr;
  const std::int32_t* row_order = nullptr; // plan.row_order
  const std::int32_t* q_pos = nullptr;     // plan.q_pos (by original row id)
  LevelArrays level;
  float* o = nullptr;    // states [num_slices, rows, num_heads, head_dim]; split s -> slice_base+s
  float* lse = nullptr;  // [num_slices, rows, num_heads], natural log; -inf = empty
  int slice_base = 0;
  int rows = 0;          // plane stride of o / lse (>= plan.num_rows)
  int num_heads = 0, num_kv_heads = 0, head_dim = 0, page_size = 0;
  float sm_scale = 0.0f;
  // Launch shape (grid.x >= num_items, grid.z >= num_splits; extra CTAs exit): host-known maxima.
  int grid_items = 0, grid_splits = 0;
  int warps = 1;         // 1 (decode-like), 4, or kWideWarps (the wide form)
  // One-warp levels: load the first KV tiles before the PDL wait where kv_fresh allows (worth it
  // when the previous kernel releases early, launch.cuh; the runner's small batches). kv_fresh:
  // the level's [groups] array of LevelPack::kv_fresh (level_kv_fresh). These come last so that
  // the other kernels' parameter offsets, and so their code, are those of a build without them.
  bool read_ahead = false;
  const std::int32_t* kv_fresh = nullptr;
  // Four-warp levels use the wgmma form where attention_wgmma_available(); true keeps them on
  // mma.sync (tests compare the two).
  bool no_wgmma = false;
  // One-warp levels (not read ahead): 16-token KV tiles, for CTAs of few keys (LevelPack).
  bool short_tiles = false;
  // A plan's only level, one-warp, of one split or of 2..kMaxCtaSplits short-tile splits
  // (LevelPack::direct_out): set, the level writes its rows straight into direct_out
  // [rows, num_heads * head_dim] as bf16 (the bits the states + launch_merge_states would give)
  // and writes no states; rows it does not cover are not written. With several splits a CTA per
  // (item, KV head) runs them as its warps and merges them in shared memory (grid_splits is then
  // the warp count: exact, spare warps cost a CTA's share of an SM). 4-byte aligned (8 for head_dim 128 split);
  // the launcher refuses it (cudaErrorInvalidValue) for four-warp levels, a misaligned pointer,
  // or several splits that are not short tiles, are read ahead or number more than
  // kMaxCtaSplits, and cannot check the rest.
  __nv_bfloat16* direct_out = nullptr;
  // One-warp levels whose groups each hold one row whose q position is the group's last key
  // (decode; LevelPack::qk_rope), not read ahead: set (rope.qkv), the level does
  // qk_norm_rope_kernel's work itself, with its bits: every CTA forms its rows' q from rope.qkv
  // instead of reading `q`, and the CTA whose split holds a row's new key first writes that key's
  // K and V into rope.k_cache / v_cache at slot_mapping[row]. Of the rest of QkNormRopeParams only
  // q_norm, k_norm, inv_freq, positions and eps are read. The launcher refuses it
  // (cudaErrorInvalidValue) for four-warp or read-ahead levels, a qkv bias or missing pools.
  QkNormRopeParams rope;
  // Slots in each KV pool (k_cache / v_cache hold num_slots x num_kv_heads x head_dim): the
  // extent of the wide form's tensor maps (warps == kWideWarps); other forms ignore it.
  int num_slots = 0;
  // A later level of a chained plan (LevelFork's chain, launch.cuh): launched right after the
  // plan's previous level on the same stream, it runs beside it instead of after it. Its CTAs
  // release their successor at once and skip the wait (the previous level's CTAs all passed
  // theirs before this grid could launch, so q and the step's K/V are complete; q is then read
  // from L2, as the K/V tiles always are), and its last CTA waits for the previous level before
  // it exits, so that this grid completes after it and the merge's wait covers both. One-warp
  // levels only, not read ahead, without rope or direct_out (the launcher refuses the rest).
  bool beside = false;
};

// `warps` of a level in the wide form (LevelPack, AttentionLevelParams): CTAs of 128 stacked rows
// (two consumer warpgroups of 64) and one producer warp that loads 128-key tiles of whole pages
// with TMA into a three-stage ring, for shared levels without a causal cut (every row sees every
// key of its group) at head_dim 128 on sm_90a (attention_wide.cu). pack_plan takes it only when
// its caller says the form can run (attention_wide_usable).
inline constexpr int kWideWarps = 8;

/// \brief True when levels may take the wide form on this device for this model: the sm_90a
/// code runs (attention_wgmma_available), head_dim is 128, the page size a power of two in
/// 8..128, the driver gives cuTensorMapEncodeTiled, and CASCADE_ATTENTION_NO_WIDE=1 is not set.
/// Call it first outside stream capture (it probes the device).
bool attention_wide_usable(int head_dim, int page_size);

/// \brief True when four-warp levels (more than 16 stacked rows per group: shared cascade levels,
/// prefill) run as warpgroup MMAs: the device runs this build's sm_90a code and
/// CASCADE_ATTENTION_NO_WGMMA=1 is not set. The first call probes the device (a synchronous
/// copy): make it outside stream capture.
bool attention_wgmma_available();

/// \brief False with CASCADE_ATTENTION_MERGE_KERNEL=1 (A/B): levels marked direct_out then write
/// states for launch_merge_states as every other level does (resolve_direct_out).
bool attention_direct_out_enabled();

/// \brief False with CASCADE_ATTENTION_NO_ROPE_FUSE=1 (A/B): levels marked qk_rope then read q
/// from qk_norm_rope_kernel as every other level does (resolve_qk_rope).
bool attention_qk_rope_enabled();

/// \brief False with CASCADE_ATTENTION_NO_FORK=1 (A/B): LevelFork keeps every level on the
/// caller's stream, and pack_plan splits levels as if each ran alone.
bool attention_fork_enabled();
/// \brief Whether LevelFork may chain a plan's levels (LevelFork::begin): PDL is on and the
/// one-warp kernels carry it (launch.cuh), and CASCADE_ATTENTION_NO_CHAIN=1 is not set (A/B).
bool attention_chain_enabled();

/// \brief Runs one level: per (row, head) covered by the level writes the state of attending to
/// the group's KV (causal by q_pos vs kv_start_pos + offset) into its split's slice, or with
/// direct_out the bf16 output row.
cudaError_t launch_attention_level(const AttentionLevelParams& p, cudaStream_t stream);

// The wide form (p.warps == kWideWarps), which launch_attention_level hands on to; refuses
// (cudaErrorInvalidValue) what attention_wide_usable or the form's rules exclude, and an
// sm_scale that is not positive (its softmax scales inside the exponent: 0 x -inf is NaN).
cudaError_t launch_attention_wide(const AttentionLevelParams& p, cudaStream_t stream);

// Host-side packing of a plan into one int32 buffer (uploaded with one copy) plus per-level
// launch metadata. Offsets are in int32 elements from the buffer start.
struct LevelPack {
  int items = 0, q_indptr = 0, page_indptr = 0, page_ids = 0, page_start = 0, kv_len = 0,
      kv_start_pos = 0, kv_fresh = 0, counts = 0;
  int num_items = 0, num_splits = 1, tokens_per_split = 0, warps = 1, slice_base = 0;
  // One-warp level whose CTAs cover at most kShortTileMaxTokens keys, packed without written
  // slots (so not read ahead): AttentionLevelParams's short_tiles.
  bool short_tiles = false;
  // The plan's only level with items, one-warp, every group with keys and every row in a group,
  // of one split (each row has one state) or of 2..kMaxCtaSplits short-tile splits over at least
  // one CTA per SM and no more waves than their one-warp CTAs (a CTA's warps then run the splits
  // and merge them, kCtaMerge in attention.cu):
  // the level may write the output rows itself (AttentionLevelParams::direct_out) and the step
  // needs no fill and no merge kernel. pack_plan marks it whatever the A/B switch;
  // resolve_direct_out applies the switch.
  bool direct_out = false;
  // The plan's only level with items, one-warp, packed without written slots (not read ahead),
  // every group one row (every row in a group) whose q position is the group's last key: a
  // decode step, so the level may take q/k RMSNorm, RoPE and the K/V writes in
  // (AttentionLevelParams::rope) and the step needs no qk_norm_rope kernel.
  // pack_plan marks it whatever the A/B switch and the model; resolve_qk_rope settles it. The
  // level then writes each row's K/V at slot_mapping[row] from the CTA that holds the group's
  // last key, before that CTA loads it and with no other CTA reading it, so the caller must know
  // that slot to be that key's (qk_rope_slots_match) and that no group's KV holds a slot another
  // row writes this step (each sequence writes into its own last page).
  bool qk_rope = false;
};
inline constexpr int kShortTileMaxTokens = 192;
// The most splits a lone direct_out level runs as the warps of one CTA (8 x 16.4 KiB of shared
// memory at head_dim 128).
inline constexpr int kMaxCtaSplits = 8;
struct PlanPack {
  std::vector<std::int32_t> data;
  int row_order = 0, q_pos = 0;
  std::vector<LevelPack> levels;
  int num_slices = 0;  // total state slices over levels (sum of splits)
};

// Packs `plan` for a model with the given head counts; num_sms guides split-K (0: no splits).
// max_slices caps the total number of state slices. written_slots (the step's slot_mapping, with
// page_size) tells which pages the step writes: each group's kv_fresh is the start of its first
// such page (its key count if none), and the kernels may read the keys before it ahead of the
// step's earlier kernels. Without it kv_fresh is 0 (nothing read ahead). Returns false (with *why
// set) if the plan is malformed.
// wide_ok (attention_wide_usable for the model and page size): four-warp levels of more than 64
// stacked rows per group whose rows all see every key of their group take the wide form.
bool pack_plan(const CascadePlan& plan, int num_heads, int num_kv_heads, int num_sms,
               int max_slices, PlanPack* out, const char** why,
               const std::vector<std::int32_t>* written_slots = nullptr, int page_size = 0,
               bool wide_ok = false);

// The split count of a one-warp level of `ctas` CTAs (items x KV heads) over at most `max_len`
// keys that pack_plan takes with CASCADE_ATTENTION_ONE_WARP_WAVES=1 (A/B, v31), given `most`: its
// default, the target of 12 CTAs an SM rounded up (v11: two waves of the 6 per SM that 32-token
// tiles allow, one of the 12 that 16-token tiles allow), capped by the 64-key tiles and slices.
// Rounding up can add a mostly idle wave: at 0/512/64 (512 CTAs), 4 splits make 2048 one-warp
// CTAs (1.29 waves of 12 an SM), or 512 merged CTAs of 4 warps at 3 an SM (1.29 waves again),
// where 3 splits make one wave of either. So of 1..most, the count with the least modelled time,
// waves x (64-key tiles per CTA + 2 for its fixed costs), in waves of 12 one-warp CTAs an SM
// (CASCADE_ATTENTION_ONE_WARP_PER_SM=N: N) or, where the splits merge in their CTA (`may_merge`:
// the plan's lone level, writing its rows itself), of 12 / splits merged CTAs; ties go to the
// more splits. `short_ok`: splits of at most
// kShortTileMaxTokens keys take 16-token tiles (not read ahead); `may_merge` does not know
// whether the runner takes direct output (resolve_direct_out). On the H100 a target of 9 CTAs
// an SM, which makes the same picks at 512 CTAs, ran 0/512/64 in 53.4 us against 58.8 and the
// bench's other levels of 512 one-warp CTAs 0.8-3.7% faster (bench/NOTES_cuda.md v31); where the
// two rules differ elsewhere (e.g. one split instead of two for 793-1583 CTAs) is not yet measured.
int one_warp_wave_splits(int ctas, int max_len, int most, int num_sms, bool short_ok, bool may_merge);

// Concurrent levels. A plan's levels write disjoint state slices and read only q, the plan and
// the KV pools (a level that writes K/V itself, qk_rope, is the plan's only busy one), so none
// waits for another: only the merge needs them all. A shared level of many
// rows is bound by tensor-core work and the unique levels by memory, so running them side by side
// overlaps the two (v11). LevelFork runs them so in one of two ways:
// - chained (v30; where the caller says every level after the first busy one may run `beside`,
//   AttentionLevelParams, and PDL is on): all on the caller's stream, each later level marked
//   beside, so that it launches as soon as the previous level's CTAs have all started (they take
//   their SMs first) and the merge follows the last level by PDL, not by a graph join;
// - forked (v11): levels after the first on a second stream that waits for the caller's stream
//   (fork) and that the caller's stream waits for before the merge (join); under CUDA-graph
//   capture the two become parallel branches of the graph, which the driver starts in either
//   order. CASCADE_ATTENTION_NO_CHAIN=1 forks wherever it would chain (A/B timing).
// CASCADE_ATTENTION_NO_FORK=1 keeps every level on the caller's stream, one after another (A/B).
class LevelFork {
 public:
  LevelFork() = default;
  ~LevelFork();
  LevelFork(const LevelFork&) = delete;
  LevelFork& operator=(const LevelFork&) = delete;
  /// \brief Creates the side stream and the events (once; call outside graph capture).
  cudaError_t init();
  /// \brief Starts a plan's levels on `main`. With `busy_levels` (levels that launch a grid,
  /// busy_levels()) of two or more and CASCADE_ATTENTION_NO_FORK not set: chained where
  /// `chain_ok` (every busy level after the first is one-warp, not read ahead, without rope or
  /// direct_out) and attention_chain_enabled(); else, init() done, forked: the side stream waits
  /// for the work queued so far on `main`.
  cudaError_t begin(int busy_levels, cudaStream_t main, bool chain_ok = false);
  /// \brief The stream for the next busy level, whose params it marks (AttentionLevelParams::
  /// beside): `main` for the first; for the others `main`, beside, when chained, the side stream
  /// when forked.
  cudaStream_t next(AttentionLevelParams* p) {
    const bool later = launched_++ > 0;
    p->beside = chained_now_ && later;
    return forked_now_ && later ? side_ : main_;
  }
  /// \brief Whether the plan in progress (begin() to end()) runs forked.
  bool forked() const { return forked_now_; }
  /// \brief Whether the plan in progress (begin() to end()) runs chained.
  bool chained() const { return chained_now_; }
  /// \brief `main` waits for the side stream's levels. Call it after begin() even when a level's
  /// launch failed, so that nothing is left unjoined (graph capture needs every fork joined).
  cudaError_t end();
  /// \brief Waits for the side stream's work (for callers that free buffers after an error).
  cudaError_t synchronize() const;

 private:
  cudaStream_t side_ = nullptr;
  cudaEvent_t forked_ = nullptr, joined_ = nullptr;
  // The plan in progress (begin() to end()).
  cudaStream_t main_ = nullptr;
  bool forked_now_ = false, chained_now_ = false;
  int launched_ = 0;
};

/// \brief Levels of a pack that launch a grid (those with items), for LevelFork::begin.
int busy_levels(const std::vector<LevelPack>& levels);
/// \brief LevelFork::begin's chain_ok for levels none of which is read ahead: every busy level
/// after the first one-warp, without direct_out or qk_rope (AttentionLevelParams::beside). Any
/// record with those fields (`warps`, `direct_out`, `qk_rope`) and a `busy` test: the runner's
/// launch records, whose busy test is its own (a bucket's graph launches levels without items).
template <typename Level, typename Busy>
bool levels_may_chain(const std::vector<Level>& levels, Busy busy) {
  bool ok = true;
  int seen = 0;
  for (const Level& lv : levels) {
    if (busy(lv)) ok = ok && (seen++ == 0 || (lv.warps == 1 && !lv.direct_out && !lv.qk_rope));
  }
  return ok;
}
/// \brief levels_may_chain of a pack launched as packed (busy: the levels with items).
inline bool levels_may_chain(const std::vector<LevelPack>& levels) {
  return levels_may_chain(levels, [](const LevelPack& lp) { return lp.num_items > 0; });
}

/// \brief Settles a packed plan's direct output once, for its callers to follow: clears every
/// LevelPack::direct_out where the caller does not take it (`take` false: CudaRunnerOptions for
/// tests) or attention_direct_out_enabled() is false, and returns whether a level with items
/// writes the output rows itself (then run no fill and no merge kernel).
bool resolve_direct_out(PlanPack* pack, bool take = true);

/// \brief Whether taking q/k RMSNorm + RoPE into the pack's qk_rope level measured faster than
/// qk_norm_rope_kernel (v13, H100, Qwen3-0.6B decode at contexts 512 and 2048): where its CTAs
/// cover few keys (short_tiles) and number at least 4 per SM, i.e. split-K decode of batches
/// 8-96 at context 512 and 3-16 at 2048 (level to 6.5% faster steps; batch 8 level). Where they
/// are fewer (batches 3-4 at context 512: up to 4% slower) or take long tiles (batches 128-256:
/// level to 1% slower) the separate kernel stays. Measured at gqa 2, head_dim 128 only.
bool qk_rope_pays(const PlanPack& pack, int num_kv_heads, int num_sms);

/// \brief Whether every group of the pack's qk_rope level has its row's slot_mapping entry at the
/// group's last key (page_ids[last] * page_size + page_lens[last] - 1), where the level writes
/// the new K/V; false if no level is marked.
bool qk_rope_slots_match(const CascadePlan& plan, const PlanPack& pack,
                         const std::vector<std::int32_t>& slot_mapping, int page_size);

/// \brief Settles a packed plan's q/k RMSNorm + RoPE once: clears every LevelPack::qk_rope where
/// the caller does not take it (`take` false: a qkv bias, or not qk_rope_pays) or
/// attention_qk_rope_enabled() is false, and returns whether a level with items forms q and writes K/V itself (then run no
/// qk_norm_rope kernel, and pass AttentionLevelParams::rope to that level).
bool resolve_qk_rope(PlanPack* pack, bool take);

// Fills AttentionLevelParams::level (and ::kv_fresh) for level `l` of a pack uploaded at `dev`.
LevelArrays level_arrays(const LevelPack& level, const std::int32_t* dev);
LevelArrays level_arrays(const PlanPack& pack, int l, const std::int32_t* dev);
inline const std::int32_t* level_kv_fresh(const LevelPack& level, const std::int32_t* dev) {
  return dev + level.kv_fresh;
}

}  // namespace cascade::cuda

// C ABI over the CUDA backend's cascade attention, for benchmarks driven from Python (ctypes).
//
// A plan handle owns the packed plan on the device (cuda::pack_plan, uploaded once) and the fp32
// state slices. cascade_attn_run then does exactly what CudaRunner::forward does per layer: one
// launch_attention_level per level, then launch_merge_states into the bf16 output (or, for a
// lone one-warp level, LevelPack::direct_out, the level writes the output itself). The KV pools
// are one layer's K and V in the src/cache/kv_layout.h layout, [num_pages, page_size, kv_heads,
// head_dim], which is also FlashInfer's paged "NHD" layout, so both libraries can read the same
// buffers. Errors are returned as codes; cascade_attn_last_error() says what went wrong.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/attention.h"
#include "backend/cuda/kernels.h"
#include "sched/cascade_plan.h"

namespace {

thread_local std::string g_last_error;

int fail(const std::string& what) {
  g_last_error = what;
  return 1;
}

int fail_cuda(const char* what, cudaError_t e) {
  g_last_error = std::string(what) + ": " + cudaGetErrorString(e);
  return static_cast<int>(e) == 0 ? 1 : static_cast<int>(e);
}

struct PlanHandle {
  cascade::cuda::PlanPack pack;
  bool direct_out = false;  // resolve_direct_out: a lone one-warp level writes out itself
  std::int32_t* d_plan = nullptr;
  float* d_o = nullptr;
  float* d_lse = nullptr;
  int rows = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0, page_size = 0, slices = 0;
  cascade::cuda::LevelFork fork;  // levels side by side, as the engine runs them

  ~PlanHandle() {
    if (d_plan != nullptr) cudaFree(d_plan);
    if (d_o != nullptr) cudaFree(d_o);
    if (d_lse != nullptr) cudaFree(d_lse);
  }
};

}  // namespace

extern "C" {

// Text of the last failure on this thread ("" if none).
const char* cascade_attn_last_error() { return g_last_error.c_str(); }

// Builds a plan from its CSR description (host arrays) and uploads it. Level l has
// level_groups[l] groups and level_pages[l] pages; its arrays are the next slices of the
// concatenated q_indptr (groups+1 each), page_indptr (groups+1), page_ids / page_lens (pages)
// and kv_start_pos (groups). num_sms guides split-K like the engine does; max_slices caps the
// state slices (the engine uses 64). Returns a handle, or nullptr (see cascade_attn_last_error).
void* cascade_attn_plan_create(int num_rows, const std::int32_t* row_order, const std::int32_t* q_pos,
                               int num_levels, const std::int32_t* level_groups,
                               const std::int32_t* level_pages, const std::int32_t* q_indptr,
                               const std::int32_t* page_indptr, const std::int32_t* page_ids,
                               const std::int32_t* page_lens, const std::int32_t* kv_start_pos,
                               int num_heads, int num_kv_heads, int head_dim, int page_size,
                               int num_sms, int max_slices) {
  g_last_error.clear();
  if (num_rows <= 0 || num_levels <= 0 || num_heads <= 0 || num_kv_heads <= 0 || head_dim <= 0 ||
      page_size <= 0) {
    fail("cascade_attn_plan_create: sizes must be positive");
    return nullptr;
  }
  cascade::CascadePlan plan;
  plan.num_rows = num_rows;
  plan.row_order.assign(row_order, row_order + num_rows);
  plan.q_pos.assign(q_pos, q_pos + num_rows);
  std::size_t qo = 0, po = 0, pg = 0, go = 0;
  for (int l = 0; l < num_levels; ++l) {
    const int g = level_groups[l], p = level_pages[l];
    cascade::CascadeLevel lv;
    lv.q_indptr.assign(q_indptr + qo, q_indptr + qo + g + 1);
    lv.page_indptr.assign(page_indptr + po, page_indptr + po + g + 1);
    lv.page_ids.assign(page_ids + pg, page_ids + pg + p);
    lv.page_lens.assign(page_lens + pg, page_lens + pg + p);
    lv.kv_start_pos.assign(kv_start_pos + go, kv_start_pos + go + g);
    qo += g + 1;
    po += g + 1;
    pg += p;
    go += g;
    plan.levels.push_back(std::move(lv));
  }
  plan.uses_shared_levels = num_levels > 1;

  auto h = std::make_unique<PlanHandle>();
  const char* why = "";
  if (!cascade::cuda::pack_plan(plan, num_heads, num_kv_heads, num_sms, max_slices, &h->pack, &why)) {
    fail(std::string("cascade_attn_plan_create: pack_plan rejected the plan: ") + why);
    return nullptr;
  }
  h->direct_out = cascade::cuda::resolve_direct_out(&h->pack);
  h->rows = num_rows;
  h->num_heads = num_heads;
  h->num_kv_heads = num_kv_heads;
  h->head_dim = head_dim;
  h->page_size = page_size;
  h->slices = std::max(1, h->pack.num_slices);
  const std::size_t plan_bytes = h->pack.data.size() * sizeof(std::int32_t);
  const std::size_t o_elems = static_cast<std::size_t>(h->slices) * num_rows * num_heads * head_dim;
  const std::size_t lse_elems = static_cast<std::size_t>(h->slices) * num_rows * num_heads;
  cudaError_t e;
  if ((e = cudaMalloc(&h->d_plan, std::max<std::size_t>(plan_bytes, 4))) != cudaSuccess ||
      (e = cudaMalloc(&h->d_o, o_elems * sizeof(float))) != cudaSuccess ||
      (e = cudaMalloc(&h->d_lse, lse_elems * sizeof(float))) != cudaSuccess ||
      (e = h->fork.init()) != cudaSuccess) {
    fail_cuda("cascade_attn_plan_create: cudaMalloc / stream", e);
    return nullptr;
  }
  if ((e = cudaMemcpy(h->d_plan, h->pack.data.data(), plan_bytes, cudaMemcpyHostToDevice)) != cudaSuccess) {
    fail_cuda("cascade_attn_plan_create: plan upload", e);
    return nullptr;
  }
  // Slices a level does not write keep the empty state; runs rewrite the same covered slots, so
  // one fill per plan is what the engine's one fill per step amounts to.
  if ((e = cascade::cuda::launch_fill_f32(h->d_lse, static_cast<std::int64_t>(lse_elems), -INFINITY,
                                          nullptr)) != cudaSuccess ||
      (e = cudaDeviceSynchronize()) != cudaSuccess) {
    fail_cuda("cascade_attn_plan_create: state fill", e);
    return nullptr;
  }
  return h.release();
}

// Number of levels, total state slices, and per level: warps, splits, items (for reports).
int cascade_attn_plan_info(void* handle, int* num_levels, int* num_slices, int* level_info, int cap) {
  auto* h = static_cast<PlanHandle*>(handle);
  if (h == nullptr) return fail("cascade_attn_plan_info: null handle");
  *num_levels = static_cast<int>(h->pack.levels.size());
  *num_slices = h->slices;
  for (int l = 0; l < *num_levels && 3 * l + 2 < cap; ++l) {
    level_info[3 * l] = h->pack.levels[l].warps;
    level_info[3 * l + 1] = h->pack.levels[l].num_splits;
    level_info[3 * l + 2] = h->pack.levels[l].num_items;
  }
  return 0;
}

// Runs every level and the merge on `stream` (a cudaStream_t; 0 = legacy default stream); levels
// after the first run beside it on the plan's side stream (LevelFork), joined before the merge. A
// lone one-warp level writes out itself instead (LevelPack::direct_out; out 8-byte aligned).
// q: bf16 [rows, num_heads, head_dim]; k, v: bf16 pools [pages, page_size, kv_heads, head_dim];
// out: bf16 [rows, num_heads * head_dim]. Asynchronous; returns the first launch error.
int cascade_attn_run(void* handle, const void* q, const void* k, const void* v, void* out, void* stream) {
  auto* h = static_cast<PlanHandle*>(handle);
  if (h == nullptr) return fail("cascade_attn_run: null handle");
  auto s = static_cast<cudaStream_t>(stream);
  // A lone one-warp level writes its rows into out itself (no merge kernel), as in the engine,
  // where out is 8-byte aligned (pointers come from Python; the merge takes any alignment; the
  // launcher wants 4 bytes for one split, 8 for head_dim 128 merged in the CTA).
  const bool direct_out = h->direct_out && reinterpret_cast<std::uintptr_t>(out) % 8 == 0;
  if (const cudaError_t e = h->fork.begin(cascade::cuda::busy_levels(h->pack.levels), s); e != cudaSuccess) {
    return fail_cuda("cascade_attn_run: fork", e);
  }
  for (int l = 0; l < static_cast<int>(h->pack.levels.size()); ++l) {
    const cascade::cuda::LevelPack& lp = h->pack.levels[l];
    if (lp.num_items == 0) continue;  // launches nothing
    cascade::cuda::AttentionLevelParams ap;
    ap.q = static_cast<const __nv_bfloat16*>(q);
    ap.k_cache = static_cast<const __nv_bfloat16*>(k);
    ap.v_cache = static_cast<const __nv_bfloat16*>(v);
    ap.row_order = h->d_plan + h->pack.row_order;
    ap.q_pos = h->d_plan + h->pack.q_pos;
    ap.level = cascade::cuda::level_arrays(h->pack, l, h->d_plan);
    ap.o = h->d_o;
    ap.lse = h->d_lse;
    ap.slice_base = lp.slice_base;
    ap.rows = h->rows;
    ap.num_heads = h->num_heads;
    ap.num_kv_heads = h->num_kv_heads;
    ap.head_dim = h->head_dim;
    ap.page_size = h->page_size;
    ap.sm_scale = 1.0f / std::sqrt(static_cast<float>(h->head_dim));
    ap.grid_items = lp.num_items;
    ap.grid_splits = lp.num_splits;
    ap.warps = lp.warps;
    ap.short_tiles = lp.short_tiles;
    if (direct_out) ap.direct_out = static_cast<cascade::cuda::bf16*>(out);
    const cudaError_t e = cascade::cuda::launch_attention_level(ap, h->fork.next_stream());
    if (e != cudaSuccess) {
      h->fork.end();  // leave nothing unjoined on the side stream
      return fail_cuda("cascade_attn_run: launch_attention_level", e);
    }
  }
  if (const cudaError_t e = h->fork.end(); e != cudaSuccess) return fail_cuda("cascade_attn_run: join", e);
  if (direct_out) return 0;
  cascade::cuda::MergeStatesParams mp;
  mp.o = h->d_o;
  mp.lse = h->d_lse;
  mp.out = static_cast<cascade::cuda::bf16*>(out);
  mp.num_states = h->slices;
  mp.rows = h->rows;
  mp.heads = h->num_heads;
  mp.head_dim = h->head_dim;
  const cudaError_t e = cascade::cuda::launch_merge_states(mp, s);
  if (e != cudaSuccess) return fail_cuda("cascade_attn_run: launch_merge_states", e);
  return 0;
}

// Frees the plan's device buffers (synchronises the device first).
void cascade_attn_plan_destroy(void* handle) {
  cudaDeviceSynchronize();
  delete static_cast<PlanHandle*>(handle);
}

}  // extern "C"

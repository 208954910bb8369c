// Cascade decode attention for one layer on the GPU: a shared prefix of P tokens and U unique
// tokens per sequence, B sequences, 16 query / 8 KV heads, head_dim 128, page 16. Times the
// two-level cascade plan (prefix once for all rows + unique per row, merged) against the flat
// paged plan of the same sequences (each row reads prefix + unique), and both against the
// shared-read floor (prefix once + each unique part once, over the measured copy bandwidth).
//
// Before timing, each shape is checked: cascade and flat outputs must agree (bf16 tolerance) and
// two rows of each are compared with a float64 CPU softmax over the same pages.
//
// Usage: cuda_attention_bench OUT.json [--quick | --shape P/U/B]
// Each timed run is one replay of a CUDA graph holding a layer's level kernels + merge (the
// states' fill, which the engine runs once a step for all layers, runs before the replays;
// CASCADE_BENCH_FILL_IN_GRAPH=1 puts it in each replay, as until v28), with L2
// flushed before it (l2_flush.cuh: a 256 MB read; CASCADE_BENCH_FLUSH=memset for the older
// 256 MB memset, which made the timed kernels write dirty lines back); the median of the runs is
// reported. The levels run side by side as in the engine (LevelFork; CASCADE_ATTENTION_NO_FORK=1
// runs them one after another). Pages are handed out in a shuffled order; with
// CASCADE_BENCH_PAGE_ORDER=sequential in order (the prefix one run of page ids, as a chunk on a
// fresh pool), which the wide form copies a tile at a time. A diagnostic build with
// CASCADE_TIMELINE=1 (bench/diag_build.sh) also prints, per shape, when each kernel's CTAs
// reached their marks in one replay of each graph (timeline.cuh).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/ab_switch.h"
#include "backend/cuda/attention.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/timeline.cuh"
#include "cuda_bench_util.h"
#include "l2_flush.cuh"

namespace {

using bf16 = __nv_bfloat16;
// The pool's page size: 16, as the engine's default; other sizes only in diagnostic builds
// (-DCASCADE_BENCH_PAGE=N: the wide form's TMA copies one page per box, NOTES v28).
#ifndef CASCADE_BENCH_PAGE
#define CASCADE_BENCH_PAGE 16
#endif
constexpr int kHeads = 16, kKvHeads = 8, kDim = 128, kPage = CASCADE_BENCH_PAGE;

__global__ void fill_random(bf16* out, std::size_t n, unsigned long long seed) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    unsigned long long z = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    out[i] = __float2bfloat16_rn(static_cast<float>(z >> 40) / 16777216.0f * 2.0f - 1.0f);
  }
}

struct Shape {
  int prefix, unique, batch;
};

struct Op {  // one attention op (plan uploaded, graph captured)
  cascade::cuda::PlanPack pack;
  int* d_plan = nullptr;
  cudaGraphExec_t exec = nullptr;
  std::int64_t lse_fill = 0;  // lse entries the step's fill sets to -inf first (0: direct out)
};

using cascade::bench::median;

float bf(bf16 x) { return __bfloat162float(x); }

#if CASCADE_TIMELINE
// Diagnostic builds (bench/diag_build.sh): the kernels' stamps of one replay of `exec` after the
// flush, per kernel and mark, in us from the first stamp: CTAs, min / median / max.
void print_timeline(const char* what, cudaGraphExec_t exec, unsigned long long* buf, void* flush,
                    std::size_t flush_bytes, cudaStream_t st) {
  namespace tl = cascade::cuda::timeline;
  CK(cudaMemsetAsync(buf, 0, tl::kWords * 8, st));
  CK(cascade::bench::flush_l2(flush, flush_bytes, 0, st));
  CK(cudaGraphLaunch(exec, st));
  CK(cudaStreamSynchronize(st));
  std::vector<unsigned long long> h(tl::kWords);
  CK(cudaMemcpy(h.data(), buf, tl::kWords * 8, cudaMemcpyDeviceToHost));
  std::vector<unsigned long long> all;
  for (unsigned long long t : h) {
    if (t != 0) all.push_back(t);
  }
  if (all.empty()) return;
  std::sort(all.begin(), all.end());
  const unsigned long long t0 = all.front();
  unsigned long long step = ~0ull;  // the timer's granularity, as far as these stamps show it
  for (std::size_t i = 1; i < all.size(); ++i) {
    if (all[i] != all[i - 1]) step = std::min(step, all[i] - all[i - 1]);
  }
  std::printf("  timeline %s: %zu stamps, smallest step %llu ns\n", what, all.size(), step);
  const char* names[tl::kKernels] = {"fill", "wide", "level", "merge", "four-warp"};
  for (int k = 0; k < tl::kKernels; ++k) {
    for (int m = 0; m < tl::kMarks; ++m) {
      std::vector<double> v;
      for (int c = 0; c < tl::kMaxCtas; ++c) {
        const unsigned long long t = h[(static_cast<std::size_t>(k) * tl::kMaxCtas + c) * tl::kMarks + m];
        if (t != 0) v.push_back(static_cast<double>(t - t0) / 1e3);
      }
      if (v.empty()) continue;
      std::sort(v.begin(), v.end());
      std::printf("  timeline %s %s mark %d: %zu CTAs, %.2f / %.2f / %.2f us\n", what, names[k], m, v.size(), v.front(),
                  v[v.size() / 2], v.back());
    }
  }
}
#endif

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s OUT.json [--quick | --shape P/U/B]\n", argv[0]);
    return 1;
  }
  const bool quick = argc > 2 && std::string(argv[2]) == "--quick";
  Shape only{-1, 0, 0};  // --shape P/U/B: that case alone (profiling)
  if (argc > 2 && std::string(argv[2]) == "--shape" &&
      (argc < 4 || std::sscanf(argv[3], "%d/%d/%d", &only.prefix, &only.unique, &only.batch) != 3 || only.prefix < 0 ||
       only.prefix % kPage != 0 || only.unique <= 0 || only.unique % kPage != 0 || only.batch <= 0 ||
       only.batch > 256)) {
    std::fprintf(stderr, "--shape wants P/U/B: P and U multiples of %d (U > 0), 0 < B <= 256\n", kPage);
    return 1;
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  const int num_sms = prop.multiProcessorCount;
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  // CASCADE_BENCH_RUNS=N: N timed runs and no warm-up (for profilers).
  const char* runs_env = std::getenv("CASCADE_BENCH_RUNS");
  const int runs_override = runs_env != nullptr ? std::atoi(runs_env) : 0;
  cascade::cuda::LevelFork level_fork;  // levels side by side, as the engine runs them
  CK(level_fork.init());
#if CASCADE_TIMELINE
  unsigned long long* timeline_buf = nullptr;
  CK(cudaMalloc(&timeline_buf, cascade::cuda::timeline::kWords * 8));
  CK(cascade::cuda::timeline::attach_attention(timeline_buf));
  CK(cascade::cuda::timeline::attach_wide(timeline_buf));
  CK(cascade::cuda::timeline::attach_kernels(timeline_buf));
#endif

  const double bw = cascade::bench::copy_bandwidth();
  const std::size_t flush_bytes = 256u << 20;
  void* flush = nullptr;
  CK(cudaMalloc(&flush, flush_bytes + 16));
  CK(cudaMemset(flush, 0, flush_bytes + 16));

  std::vector<Shape> shapes;
  for (int b : {64, 256}) {
    for (int p : {0, 4096, 16384}) {
      for (int u : {128, 512}) shapes.push_back({p, u, b});
    }
  }
  if (quick) shapes = {{4096, 128, 64}, {0, 512, 64}};
  if (only.prefix >= 0) shapes = {only};
  // One pool big enough for the largest shape; pages are handed out in a shuffled order (or in
  // order).
  const char* order = std::getenv("CASCADE_BENCH_PAGE_ORDER");
  const bool sequential_pages = order != nullptr && std::string(order) == "sequential";
  if (sequential_pages) std::fprintf(stderr, "pages in order (CASCADE_BENCH_PAGE_ORDER=sequential)\n");
  int max_pages = 0;
  for (const Shape& s : shapes) max_pages = std::max(max_pages, (s.prefix + s.batch * s.unique) / kPage + 1);
  // Shared levels take the wide form where the engine would (attention.h).
  const bool wide_ok = cascade::cuda::attention_wide_usable(kDim, kPage);
  std::fprintf(stderr, "wide form of shared levels: %s\n", wide_ok ? "on" : "off");
  const std::size_t pool_elems = static_cast<std::size_t>(max_pages) * kPage * kKvHeads * kDim;
  bf16 *k_pool, *v_pool, *q, *out_flat, *out_casc;
  CK(cudaMalloc(&k_pool, pool_elems * 2));
  CK(cudaMalloc(&v_pool, pool_elems * 2));
  fill_random<<<4096, 256, 0, st>>>(k_pool, pool_elems, 11);
  fill_random<<<4096, 256, 0, st>>>(v_pool, pool_elems, 12);
  const int max_b = 256;
  CK(cudaMalloc(&q, static_cast<std::size_t>(max_b) * kHeads * kDim * 2));
  fill_random<<<256, 256, 0, st>>>(q, static_cast<std::size_t>(max_b) * kHeads * kDim, 13);
  CK(cudaMalloc(&out_flat, static_cast<std::size_t>(max_b) * kHeads * kDim * 2));
  CK(cudaMalloc(&out_casc, static_cast<std::size_t>(max_b) * kHeads * kDim * 2));
  float *st_o, *st_lse;
  const std::size_t max_slices = 64;
  CK(cudaMalloc(&st_o, max_slices * max_b * kHeads * kDim * 4));
  CK(cudaMalloc(&st_lse, max_slices * max_b * kHeads * 4));
  CK(cudaGetLastError());
  std::mt19937_64 rng(7);

  // Probed here, outside the graph captures below.
  const bool wgmma = cascade::cuda::attention_wgmma_available();
  // CASCADE_BENCH_FILL_IN_GRAPH=1: each timed replay begins with the states' fill, as until v28.
  const bool fill_in_graph = cascade::cuda::ab_switch_on("CASCADE_BENCH_FILL_IN_GRAPH");
  std::printf("device: %s, %d SMs; copy bandwidth %.0f GB/s (1 GiB D2D, read+write); four-warp "
              "levels on %s; L2 flush: %s; states' fill %s\n",
              prop.name, num_sms, bw / 1e9, wgmma ? "wgmma" : "mma.sync", cascade::bench::flush_name(),
              fill_in_graph ? "in each replay" : "once a step, before the replays");
  std::string json = "{\n  \"device\": \"" + std::string(prop.name) + "\",\n  \"copy_bandwidth_GBps\": " +
                     std::to_string(bw / 1e9) + ",\n  \"l2_flush\": \"" + cascade::bench::flush_name() +
                     "\",\n  \"page_order\": \"" + (sequential_pages ? "sequential" : "shuffled") +
                     "\",\n  \"fill\": \"" + (fill_in_graph ? "in_graph" : "per_step") +
                     "\",\n  \"four_warp_levels\": \"" +
                     (wgmma ? "wgmma" : "mma.sync") + "\",\n  \"shapes\": [\n";
  std::printf("%-22s %9s %9s %9s %9s %8s %8s %9s %9s\n", "shape (P/U/B)", "flat us", "casc us",
              "floor us", "flatflr", "casc/flr", "casc/flt", "err c-f", "err ref");
  bool all_ok = true;
  for (std::size_t si = 0; si < shapes.size(); ++si) {
    const Shape& s = shapes[si];
    const int B = s.batch;
    std::vector<int> perm(max_pages);
    std::iota(perm.begin(), perm.end(), 0);
    if (!sequential_pages) std::shuffle(perm.begin(), perm.end(), rng);
    int next = 0;
    std::vector<int> prefix_pages(s.prefix / kPage);
    for (int& p : prefix_pages) p = perm[next++];
    std::vector<std::vector<int>> uniq(B, std::vector<int>(s.unique / kPage));
    for (auto& v : uniq) {
      for (int& p : v) p = perm[next++];
    }
    const int qpos = s.prefix + s.unique;
    auto base_plan = [&]() {
      cascade::CascadePlan pl;
      pl.num_rows = B;
      pl.row_order.resize(B);
      std::iota(pl.row_order.begin(), pl.row_order.end(), 0);
      pl.q_pos.assign(B, qpos);
      return pl;
    };
    auto add_pages = [](cascade::CascadeLevel& lv, const std::vector<int>& pages) {
      for (int p : pages) {
        lv.page_ids.push_back(p);
        lv.page_lens.push_back(kPage);
      }
    };
    cascade::CascadePlan flat = base_plan();
    {
      cascade::CascadeLevel lv;
      lv.q_indptr.push_back(0);
      lv.page_indptr.push_back(0);
      for (int b = 0; b < B; ++b) {
        add_pages(lv, prefix_pages);
        add_pages(lv, uniq[b]);
        lv.q_indptr.push_back(b + 1);
        lv.page_indptr.push_back(static_cast<int>(lv.page_ids.size()));
        lv.kv_start_pos.push_back(0);
      }
      flat.levels.push_back(lv);
    }
    cascade::CascadePlan casc = base_plan();
    {
      cascade::CascadeLevel l0;
      l0.q_indptr = {0, B};
      l0.page_indptr = {0};
      add_pages(l0, prefix_pages);
      l0.page_indptr.push_back(static_cast<int>(l0.page_ids.size()));
      l0.kv_start_pos = {0};
      cascade::CascadeLevel l1;
      l1.q_indptr.push_back(0);
      l1.page_indptr.push_back(0);
      for (int b = 0; b < B; ++b) {
        add_pages(l1, uniq[b]);
        l1.q_indptr.push_back(b + 1);
        l1.page_indptr.push_back(static_cast<int>(l1.page_ids.size()));
        l1.kv_start_pos.push_back(s.prefix);
      }
      casc.levels.push_back(l0);
      casc.levels.push_back(l1);
    }
    auto build = [&](const cascade::CascadePlan& plan, bf16* out, Op& op) {
      const char* why = "";
      if (!cascade::cuda::pack_plan(plan, kHeads, kKvHeads, num_sms, max_slices, &op.pack, &why, nullptr, kPage,
                                    wide_ok)) {
        std::fprintf(stderr, "pack_plan failed: %s\n", why);
        std::exit(2);
      }
      CK(cudaMalloc(&op.d_plan, op.pack.data.size() * 4));
      CK(cudaMemcpy(op.d_plan, op.pack.data.data(), op.pack.data.size() * 4, cudaMemcpyHostToDevice));
      const int slices = std::max(1, op.pack.num_slices);
      // A lone one-warp level writes its rows itself (no states, fill or merge), as in the engine.
      const bool direct_out = cascade::cuda::resolve_direct_out(&op.pack);
      CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed));
      // The states' fill runs once a step in the engine (CudaRunner::enqueue, before the layers;
      // every layer's levels rewrite the same slices), so it is no part of a layer's graph here:
      // fill_states runs it before the op's replays (v29; until v28, and with
      // CASCADE_BENCH_FILL_IN_GRAPH=1, each replay began with it).
      if (!direct_out) {
        if (fill_in_graph) {
          CK(cascade::cuda::launch_fill_f32(st_lse, static_cast<std::int64_t>(slices) * B * kHeads, -INFINITY, st));
        } else {
          op.lse_fill = static_cast<std::int64_t>(slices) * B * kHeads;
        }
      }
      // Chained where the pack allows (LevelFork::begin), as the engine.
      CK(level_fork.begin(cascade::cuda::busy_levels(op.pack.levels), st,
                          cascade::cuda::levels_may_chain(op.pack.levels)));
      for (int l = 0; l < static_cast<int>(op.pack.levels.size()); ++l) {
        const cascade::cuda::LevelPack& lp = op.pack.levels[l];
        if (lp.num_items == 0) continue;  // launches nothing
        cascade::cuda::AttentionLevelParams p;
        p.q = q;
        p.k_cache = k_pool;
        p.v_cache = v_pool;
        p.row_order = op.d_plan + op.pack.row_order;
        p.q_pos = op.d_plan + op.pack.q_pos;
        p.level = cascade::cuda::level_arrays(op.pack, l, op.d_plan);
        p.o = st_o;
        p.lse = st_lse;
        p.slice_base = lp.slice_base;
        p.rows = B;
        p.num_heads = kHeads;
        p.num_kv_heads = kKvHeads;
        p.head_dim = kDim;
        p.page_size = kPage;
        p.sm_scale = 1.0f / std::sqrt(static_cast<float>(kDim));
        p.grid_items = lp.num_items;
        p.grid_splits = lp.num_splits;
        p.warps = lp.warps;
        p.short_tiles = lp.short_tiles;
        p.num_slots = max_pages * kPage;
        if (direct_out) p.direct_out = out;
        const cudaStream_t level_stream = level_fork.next(&p);
        CK(cascade::cuda::launch_attention_level(p, level_stream));
      }
      CK(level_fork.end());
      if (!direct_out) {
        cascade::cuda::MergeStatesParams mp;
        mp.o = st_o;
        mp.lse = st_lse;
        mp.out = out;
        mp.num_states = slices;
        mp.rows = B;
        mp.heads = kHeads;
        mp.head_dim = kDim;
        CK(cascade::cuda::launch_merge_states(mp, st));
      }
      cudaGraph_t g;
      CK(cudaStreamEndCapture(st, &g));
      CK(cudaGraphInstantiate(&op.exec, g, 0));
      CK(cudaGraphDestroy(g));
    };
    Op fop, cop;
    build(flat, out_flat, fop);
    build(casc, out_casc, cop);
    // The step's fill for an op (before its replays: the ops share the state buffers).
    const auto fill_states = [&](const Op& op) {
      if (op.lse_fill > 0) CK(cascade::cuda::launch_fill_f32(st_lse, op.lse_fill, -INFINITY, st));
    };
    const std::size_t out_n = static_cast<std::size_t>(B) * kHeads * kDim;
    CK(cudaMemsetAsync(out_flat, 0xFF, out_n * 2, st));  // NaN poison
    CK(cudaMemsetAsync(out_casc, 0xFF, out_n * 2, st));
    fill_states(fop);
    CK(cudaGraphLaunch(fop.exec, st));
    fill_states(cop);
    CK(cudaGraphLaunch(cop.exec, st));
    CK(cudaStreamSynchronize(st));
    std::vector<bf16> hf(out_n), hc(out_n);
    CK(cudaMemcpy(hf.data(), out_flat, out_n * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hc.data(), out_casc, out_n * 2, cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    for (std::size_t i = 0; i < out_n; ++i) {
      const double a = bf(hc[i]), b = bf(hf[i]);
      if (!std::isfinite(a) || !std::isfinite(b)) num = INFINITY;
      num += (a - b) * (a - b);
      den += b * b;
    }
    const double err_cf = std::sqrt(num / den);
    // float64 reference for rows 0 and B-1 (all 16 heads) from the pages on the device.
    double rnum = 0, rden = 0;
    std::vector<bf16> hq(out_n);
    CK(cudaMemcpy(hq.data(), q, out_n * 2, cudaMemcpyDeviceToHost));
    const std::size_t page_elems = static_cast<std::size_t>(kPage) * kKvHeads * kDim;
    for (int row : {0, B - 1}) {
      std::vector<int> pages = prefix_pages;
      pages.insert(pages.end(), uniq[row].begin(), uniq[row].end());
      std::vector<bf16> kk(pages.size() * page_elems), vv(pages.size() * page_elems);
      for (std::size_t i = 0; i < pages.size(); ++i) {
        CK(cudaMemcpy(kk.data() + i * page_elems, k_pool + pages[i] * page_elems, page_elems * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(vv.data() + i * page_elems, v_pool + pages[i] * page_elems, page_elems * 2, cudaMemcpyDeviceToHost));
      }
      const int T = static_cast<int>(pages.size()) * kPage;
      for (int h = 0; h < kHeads; ++h) {
        const int kvh = h / (kHeads / kKvHeads);
        std::vector<double> sc(T);
        double mx = -INFINITY;
        for (int t = 0; t < T; ++t) {
          double d = 0;
          for (int i = 0; i < kDim; ++i) {
            d += static_cast<double>(bf(hq[(static_cast<std::size_t>(row) * kHeads + h) * kDim + i])) *
                 bf(kk[(static_cast<std::size_t>(t) * kKvHeads + kvh) * kDim + i]);
          }
          sc[t] = d / std::sqrt(static_cast<double>(kDim));
          mx = std::max(mx, sc[t]);
        }
        double z = 0;
        for (double& x : sc) z += (x = std::exp(x - mx));
        for (int i = 0; i < kDim; ++i) {
          double acc = 0;
          for (int t = 0; t < T; ++t) acc += sc[t] * bf(vv[(static_cast<std::size_t>(t) * kKvHeads + kvh) * kDim + i]);
          const double ref = acc / z;
          const double got = bf(hc[(static_cast<std::size_t>(row) * kHeads + h) * kDim + i]);
          rnum += (got - ref) * (got - ref);
          rden += ref * ref;
        }
      }
    }
    const double err_ref = std::isfinite(num) ? std::sqrt(rnum / rden) : INFINITY;
    const bool ok = err_cf < 2e-2 && err_ref < 2e-2;
    all_ok = all_ok && ok;

    auto time_op = [&](Op& op) {
      std::vector<double> t;
      const int runs = runs_override > 0 ? runs_override : quick ? 20 : 60;
      const int warm = runs_override > 0 ? 0 : 5;
      fill_states(op);
      for (int i = 0; i < runs + warm; ++i) {
        CK(cascade::bench::flush_l2(flush, flush_bytes, i, st));
        CK(cudaEventRecord(e0, st));
        CK(cudaGraphLaunch(op.exec, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= warm) t.push_back(ms * 1e3);
      }
      return median(t);
    };
    const double t_flat = time_op(fop), t_casc = time_op(cop);
#if CASCADE_TIMELINE
    fill_states(fop);
    print_timeline("flat", fop.exec, timeline_buf, flush, flush_bytes, st);
    fill_states(cop);
    print_timeline("cascade", cop.exec, timeline_buf, flush, flush_bytes, st);
#endif
    const double kv_tok = static_cast<double>(kKvHeads) * kDim * 2 * 2;  // K+V bytes per token
    const double io = 2.0 * out_n * 2;                                      // q in + out
    const double shared_bytes = (s.prefix + static_cast<double>(B) * s.unique) * kv_tok + io;
    const double flat_bytes = static_cast<double>(B) * (s.prefix + s.unique) * kv_tok + io;
    const double floor_us = shared_bytes / bw * 1e6, flat_floor_us = flat_bytes / bw * 1e6;
    char name[64];
    std::snprintf(name, sizeof name, "%d/%d/%d", s.prefix, s.unique, B);
    std::printf("%-22s %9.1f %9.1f %9.1f %9.1f %8.2f %8.2f %9.1e %9.1e%s\n", name, t_flat, t_casc,
                floor_us, flat_floor_us, t_casc / floor_us, t_casc / t_flat, err_cf, err_ref,
                ok ? "" : "  CHECK FAILED");
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "    {\"prefix\": %d, \"unique\": %d, \"batch\": %d, \"flat_us\": %.2f, \"cascade_us\": %.2f, "
                  "\"shared_floor_us\": %.2f, \"flat_floor_us\": %.2f, \"cascade_over_floor\": %.3f, "
                  "\"cascade_over_flat\": %.3f, \"err_cascade_vs_flat\": %.3e, \"err_vs_f64\": %.3e, "
                  "\"levels\": %zu, \"slices\": %d}%s\n",
                  s.prefix, s.unique, B, t_flat, t_casc, floor_us, flat_floor_us, t_casc / floor_us,
                  t_casc / t_flat, err_cf, err_ref, cop.pack.levels.size(), cop.pack.num_slices,
                  si + 1 < shapes.size() ? "," : "");
    json += buf;
    for (Op* op : {&fop, &cop}) {
      CK(cudaGraphExecDestroy(op->exec));
      CK(cudaFree(op->d_plan));
    }
  }
  json += "  ],\n  \"checks_passed\": " + std::string(all_ok ? "true" : "false") + "\n}\n";
  if (!cascade::bench::write_text(argv[1], json)) return 2;
  std::printf("checks %s; JSON written to %s\n", all_ok ? "passed" : "FAILED", argv[1]);
  return all_ok ? 0 : 3;
}

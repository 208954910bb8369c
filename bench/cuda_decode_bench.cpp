// One decode step of a Qwen3-0.6B-shaped model (random weights: 28 layers, hidden 1024, 16 q /
// 8 KV heads, head_dim 128, intermediate 3072, vocab 151936, tied embeddings) on the CUDA runner,
// at several batch sizes with CTX tokens of context per sequence, against the floor: bf16 weight
// bytes + KV bytes read per step over the copy bandwidth measured in the same run.
//
// Usage: cuda_decode_bench OUT.json [--ctx N] [--steps N] [--batches 1,16,64,256] [--no-eager] [--keep-logits]
// A step is forward() + greedy sample() as the engine calls them (StepBatch::keep_logits false, as
// the engine's greedy-only steps; --keep-logits keeps them, for A/B), timed on the host clock (the
// runner synchronises in sample() at the latest); median over --steps steps after 5 warm-up steps.
// "fwd us" is forward() alone: the whole step's GPU time where forward() waits, only the host's
// enqueue where it does not (1-64 rows, whose greedy argmax is fused into lm_head).
// "overlap us" times the same steps as the engine runs them with Config::overlap_scheduling: each
// forward() is enqueued fed by the previous step's greedy ids (StepBatch::feed) before collect()
// waits for those ids (the host's work between steps overlaps the device's); median interval
// between successive collect()s.
// Run once with CUDA graphs and once without (same padded launches, eager).
// CASCADE_BENCH_PROFILE_BATCH=B runs one extra step of batch B inside a cudaProfilerStart/Stop range.
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backend/cuda/cuda_runner.h"
#include "cuda_bench_util.h"
#include "model/weights.h"

namespace {

using namespace cascade;

using bench::copy_bandwidth;
using bench::median;

struct Seqs {
  int page_size = 16, ctx = 512;
  std::vector<std::vector<int>> pages;   // per sequence
  std::vector<std::vector<int>> tokens;  // ctx + 1 tokens per sequence
};

// A flat plan step over sequences [0, B) for tokens [from, to) of each.
StepBatch make_step(const Seqs& s, int B, int from, int to, bool all_logits, CascadePlan& plan) {
  StepBatch b;
  plan = CascadePlan{};
  plan.levels.resize(1);
  CascadeLevel& lv = plan.levels[0];
  lv.q_indptr.push_back(0);
  lv.page_indptr.push_back(0);
  for (int q = 0; q < B; ++q) {
    for (int t = from; t < to; ++t) {
      plan.row_order.push_back(b.num_rows());
      plan.q_pos.push_back(t);
      b.token_ids.push_back(s.tokens[q][t]);
      b.positions.push_back(t);
      b.slot_mapping.push_back(s.pages[q][t / s.page_size] * s.page_size + t % s.page_size);
      if (all_logits) b.logit_rows.push_back(b.num_rows() - 1);
    }
    if (!all_logits) b.logit_rows.push_back(b.num_rows() - 1);
    for (int p = 0; p * s.page_size < to; ++p) {
      lv.page_ids.push_back(s.pages[q][p]);
      lv.page_lens.push_back(std::min(s.page_size, to - p * s.page_size));
    }
    lv.q_indptr.push_back(b.num_rows());
    lv.page_indptr.push_back(static_cast<int>(lv.page_ids.size()));
    lv.kv_start_pos.push_back(0);
  }
  plan.num_rows = b.num_rows();
  b.plan = &plan;
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s OUT.json [--ctx N] [--steps N] [--batches 1,16,64,256] [--no-eager] [--keep-logits]\n",
                 argv[0]);
    return 1;
  }
  int ctx = 512, steps = 30;
  bool eager = true, keep_logits = false;
  std::vector<int> batches = {1, 16, 64, 256};
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--ctx" && i + 1 < argc) ctx = std::atoi(argv[++i]);
    else if (a == "--steps" && i + 1 < argc) steps = std::atoi(argv[++i]);
    else if (a == "--no-eager") eager = false;
    else if (a == "--keep-logits") keep_logits = true;
    else if (a == "--batches" && i + 1 < argc) {
      batches.clear();
      std::stringstream ss(argv[++i]);
      std::string x;
      while (std::getline(ss, x, ',')) batches.push_back(std::atoi(x.c_str()));
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 1;
    }
  }
  const int max_b = *std::max_element(batches.begin(), batches.end());

  ModelConfig c;
  c.vocab_size = 151936;
  c.hidden_size = 1024;
  c.intermediate_size = 3072;
  c.num_hidden_layers = 28;
  c.num_attention_heads = 16;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  c.max_position_embeddings = 40960;
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = true;
  const auto t0 = std::chrono::steady_clock::now();
  const Qwen3Weights w = random_qwen3_weights(c, 2024);
  std::printf("random weights in %.1f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());

  const double bw = copy_bandwidth();
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s; copy bandwidth %.0f GB/s (1 GiB D2D, read+write)\n", prop.name, bw / 1e9);

  // Bytes a decode step must read: every bf16 weight matrix once (lm_head = embedding) + norms.
  const double E = c.hidden_size, I = c.intermediate_size, D = c.head_dim;
  const double q = c.num_attention_heads * D, kv = c.num_key_value_heads * D;
  const double layer_params = E * (q + 2 * kv) + q * E + 2 * I * E + I * E + 2 * E + 2 * D;
  const double weight_bytes = 2.0 * (c.num_hidden_layers * layer_params + double(c.vocab_size) * E + E);
  const double kv_token_bytes = 2.0 * 2.0 * kv * c.num_hidden_layers;  // K + V, all layers

  Seqs s;
  s.ctx = ctx;
  std::mt19937_64 rng(5);
  const int pages_per_seq = (ctx + 1 + s.page_size - 1) / s.page_size;
  s.pages.resize(max_b);
  s.tokens.resize(max_b);
  std::vector<int> perm(max_b * pages_per_seq);
  for (std::size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int>(i);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int b = 0; b < max_b; ++b) {
    for (int p = 0; p < pages_per_seq; ++p) s.pages[b].push_back(perm[b * pages_per_seq + p]);
    for (int t = 0; t <= ctx; ++t) s.tokens[b].push_back(static_cast<int>(rng() % c.vocab_size));
  }

  std::string json = "{\n  \"device\": \"" + std::string(prop.name) + "\",\n  \"copy_bandwidth_GBps\": " +
                     std::to_string(bw / 1e9) + ",\n  \"context\": " + std::to_string(ctx) +
                     ",\n  \"weight_bytes\": " + std::to_string(weight_bytes) + ",\n  \"results\": [\n";
  std::vector<std::string> rows;
  std::vector<std::vector<float>> graph_logits;  // first batch's logits per mode, compared below
  std::printf("%-8s %-6s %10s %10s %10s %10s %7s %7s %10s\n", "batch", "graphs", "step us", "fwd us",
              "overlap us", "floor us", "ratio", "ovl/fl", "tok/s");
  for (int mode = 0; mode < (eager ? 2 : 1); ++mode) {
    CudaRunnerOptions opt;
    opt.cuda_graphs = mode == 0;
    auto runner = make_cuda_runner(c, w, max_b * pages_per_seq, s.page_size, opt);
    // Prefill the context of every sequence, 16 sequences per step.
    const auto p0 = std::chrono::steady_clock::now();
    for (int b0 = 0; b0 < max_b; b0 += 16) {
      Seqs part = s;
      const int nb = std::min(16, max_b - b0);
      part.pages.assign(s.pages.begin() + b0, s.pages.begin() + b0 + nb);
      part.tokens.assign(s.tokens.begin() + b0, s.tokens.begin() + b0 + nb);
      CascadePlan plan;
      runner->forward(make_step(part, nb, 0, ctx, false, plan));
    }
    std::printf("prefill of %d x %d tokens in %.2f s (graphs %s)\n", max_b, ctx,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - p0).count(),
                mode == 0 ? "on" : "off");
    for (int B : batches) {
      CascadePlan plan;
      // Greedy only and no logits wanted, as the engine marks such steps (StepBatch::keep_logits).
      StepBatch step = make_step(s, B, ctx, ctx + 1, true, plan);
      step.keep_logits = keep_logits;
      const std::vector<RowSampling> greedy(B);
      std::vector<double> t_step, t_fwd;
      for (int i = 0; i < steps + 5; ++i) {
        const auto a = std::chrono::steady_clock::now();
        runner->forward(step);
        const auto m = std::chrono::steady_clock::now();
        const auto ids = runner->sample(greedy);
        const auto z = std::chrono::steady_clock::now();
        if (i >= 5) {
          t_step.push_back(std::chrono::duration<double, std::micro>(z - a).count());
          t_fwd.push_back(std::chrono::duration<double, std::micro>(m - a).count());
        }
        (void)ids;
      }
      // Overlapped: step s+1 enqueued on step s's ids (still on the device) before waiting for them.
      StepBatch fed = step;
      fed.feed.resize(B);
      std::iota(fed.feed.begin(), fed.feed.end(), 0);
      std::vector<double> t_ovl;
      runner->forward(step);
      runner->sample_async(greedy);
      auto prev = std::chrono::steady_clock::now();
      for (int i = 0; i < steps + 5; ++i) {
        runner->forward(runner->can_feed() ? fed : step);  // not where sample_async() drew at once (256 rows)
        const auto ids = runner->collect();
        runner->sample_async(greedy);
        const auto now = std::chrono::steady_clock::now();
        if (i >= 5) t_ovl.push_back(std::chrono::duration<double, std::micro>(now - prev).count());
        prev = now;
        (void)ids;
      }
      (void)runner->collect();
      // With CASCADE_BENCH_PROFILE_BATCH=B, one more step of that batch runs inside a profiler
      // range (ncu --profile-from-start off) for a per-kernel breakdown.
      const char* prof = std::getenv("CASCADE_BENCH_PROFILE_BATCH");
      if (mode == 0 && prof != nullptr && std::atoi(prof) == B) {
        CK(cudaProfilerStart());
        runner->forward(step);
        runner->sample(greedy);
        CK(cudaProfilerStop());
      }
      const CudaGraphStats gs = cuda_graph_stats(*runner);  // before the check's own capture
      if (B == batches.front()) {
        step.keep_logits = true;
        runner->forward(step);
        const auto logits = runner->copy_logits();
        graph_logits.push_back(logits);
      }
      const double step_us = median(t_step), fwd_us = median(t_fwd), ovl_us = median(t_ovl);
      const double floor_us = (weight_bytes + B * (ctx + 1.0) * kv_token_bytes) / bw * 1e6;
      const double tps = B / (step_us * 1e-6);
      std::printf("%-8d %-6s %10.1f %10.1f %10.1f %10.1f %7.2f %7.2f %10.0f\n", B, mode == 0 ? "on" : "off",
                  step_us, fwd_us, ovl_us, floor_us, step_us / floor_us, ovl_us / floor_us, tps);
      char buf[640];
      std::snprintf(buf, sizeof buf,
                    "    {\"batch\": %d, \"cuda_graphs\": %s, \"step_us\": %.1f, \"forward_us\": %.1f, "
                    "\"floor_us\": %.1f, \"step_over_floor\": %.3f, \"tokens_per_s\": %.0f, "
                    "\"overlap_step_us\": %.1f, \"overlap_over_floor\": %.3f, "
                    "\"captures\": %ld, \"replays\": %ld}",
                    B, mode == 0 ? "true" : "false", step_us, fwd_us, floor_us, step_us / floor_us, tps, ovl_us,
                    ovl_us / floor_us, gs.captures, gs.replays);
      rows.push_back(buf);
    }
  }
  bool same = true;
  if (graph_logits.size() == 2) {
    same = graph_logits[0] == graph_logits[1];
    std::printf("logits of batch %d with and without graphs: %s\n", batches.front(),
                same ? "bit-identical" : "DIFFER");
  }
  for (std::size_t i = 0; i < rows.size(); ++i) json += rows[i] + (i + 1 < rows.size() ? ",\n" : "\n");
  json += "  ],\n  \"graph_eager_identical\": " + std::string(same ? "true" : "false") + "\n}\n";
  if (!cascade::bench::write_text(argv[1], json)) return 2;
  return same ? 0 : 3;
}

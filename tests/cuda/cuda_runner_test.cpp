// The CUDA runner end to end on a small random Qwen3: logits of a batched prefill step and a decode
// step against an fp32 CPU forward composed from the CPU reference ops (float64 attention), with
// the weights rounded to bf16 on both sides so only activation rounding differs.
#include "backend/cuda/cuda_runner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "backend/cpu/ops.h"
#include "backend/cuda/ab_switch.h"
#include "backend/cuda/attention.h"
#include "backend/cuda/gemv.h"
#include "backend/cuda/skinny_gemm.h"
#include "engine/default_model.h"
#include "engine/sampler.h"
#include "cuda_test_util.h"

namespace cascade::cuda::test {
namespace {

ModelConfig small_config(int head_dim, bool tie) {
  ModelConfig c;
  c.vocab_size = 300;
  c.hidden_size = 128;
  c.intermediate_size = 256;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = head_dim;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = tie;
  return c;
}

void round_all(Qwen3Weights& w) {
  auto r = [](HostTensor& t) {
    for (float& v : t.data) v = round_bf16(v);
  };
  r(w.embed_tokens);
  r(w.norm);
  r(w.lm_head);
  for (LayerWeights& l : w.layers) {
    for (HostTensor* t : {&l.input_layernorm, &l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.q_norm,
                          &l.k_norm, &l.post_attention_layernorm, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      r(*t);
    }
  }
}

// Full causal forward of one sequence on the CPU; returns logits [T, vocab].
std::vector<float> cpu_forward(const ModelConfig& c, const Qwen3Weights& w, const std::vector<int>& tokens) {
  const int T = static_cast<int>(tokens.size()), E = c.hidden_size, H = c.num_attention_heads,
            KVH = c.num_key_value_heads, D = c.head_dim, I = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  std::vector<float> x(T * E), h(T * E), q(T * H * D), k(T * KVH * D), v(T * KVH * D), att(T * H * D),
      tmp(T * E), gu(T * 2 * I), act(T * I);
  std::vector<std::int32_t> pos(T);
  for (int t = 0; t < T; ++t) pos[t] = t;
  cpu::embedding(w.embed_tokens.ptr(), tokens.data(), T, E, x.data());
  for (const LayerWeights& L : w.layers) {
    cpu::rms_norm(x.data(), L.input_layernorm.ptr(), eps, T, E, h.data());
    cpu::matmul_nt(h.data(), L.q_proj.ptr(), nullptr, T, H * D, E, q.data());
    cpu::matmul_nt(h.data(), L.k_proj.ptr(), nullptr, T, KVH * D, E, k.data());
    cpu::matmul_nt(h.data(), L.v_proj.ptr(), nullptr, T, KVH * D, E, v.data());
    cpu::rms_norm(q.data(), L.q_norm.ptr(), eps, T * H, D, q.data());
    cpu::rms_norm(k.data(), L.k_norm.ptr(), eps, T * KVH, D, k.data());
    cpu::rope_rotate_half(q.data(), pos.data(), T, H, D, c.rope);
    cpu::rope_rotate_half(k.data(), pos.data(), T, KVH, D, c.rope);
    for (int t = 0; t < T; ++t) {
      for (int hh = 0; hh < H; ++hh) {
        const int kvh = hh / (H / KVH);
        std::vector<double> s(t + 1);
        double mx = -INFINITY;
        for (int j = 0; j <= t; ++j) {
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += static_cast<double>(q[(t * H + hh) * D + d]) * k[(j * KVH + kvh) * D + d];
          s[j] = dot / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, s[j]);
        }
        double den = 0;
        for (double& e : s) den += (e = std::exp(e - mx));
        for (int d = 0; d < D; ++d) {
          double acc = 0;
          for (int j = 0; j <= t; ++j) acc += s[j] * v[(j * KVH + kvh) * D + d];
          att[(t * H + hh) * D + d] = static_cast<float>(acc / den);
        }
      }
    }
    cpu::matmul_nt(att.data(), L.o_proj.ptr(), nullptr, T, E, H * D, tmp.data());
    cpu::add_rms_norm(tmp.data(), x.data(), L.post_attention_layernorm.ptr(), eps, T, E, h.data());
    std::vector<float> g(T * I), u(T * I);
    cpu::matmul_nt(h.data(), L.gate_proj.ptr(), nullptr, T, I, E, g.data());
    cpu::matmul_nt(h.data(), L.up_proj.ptr(), nullptr, T, I, E, u.data());
    for (int t = 0; t < T; ++t) {
      std::copy_n(g.begin() + t * I, I, gu.begin() + t * 2 * I);
      std::copy_n(u.begin() + t * I, I, gu.begin() + t * 2 * I + I);
    }
    cpu::silu_mul(gu.data(), T, I, act.data());
    cpu::matmul_nt(act.data(), L.down_proj.ptr(), nullptr, T, E, I, tmp.data());
    for (int i = 0; i < T * E; ++i) x[i] += tmp[i];
  }
  cpu::rms_norm(x.data(), w.norm.ptr(), eps, T, E, h.data());
  std::vector<float> logits(static_cast<std::size_t>(T) * c.vocab_size);
  cpu::matmul_nt(h.data(), w.output_weight().ptr(), nullptr, T, c.vocab_size, E, logits.data());
  return logits;
}

struct Seq {
  std::vector<int> tokens;
  std::vector<int> pages;
};

// A flat plan over `seqs` where sequence s contributes new rows for tokens [from[s], to[s]).
StepBatch flat_step(const std::vector<Seq>& seqs, const std::vector<int>& from, const std::vector<int>& to,
                    int page_size, CascadePlan& plan) {
  StepBatch b;
  plan = CascadePlan{};
  plan.levels.resize(1);
  CascadeLevel& lv = plan.levels[0];
  lv.q_indptr.push_back(0);
  lv.page_indptr.push_back(0);
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    for (int t = from[s]; t < to[s]; ++t) {
      plan.row_order.push_back(b.num_rows());
      plan.q_pos.push_back(t);
      b.token_ids.push_back(seqs[s].tokens[t]);
      b.positions.push_back(t);
      b.slot_mapping.push_back(seqs[s].pages[t / page_size] * page_size + t % page_size);
    }
    b.logit_rows.push_back(b.num_rows() - 1);
    for (int p = 0; p * page_size < to[s]; ++p) {
      lv.page_ids.push_back(seqs[s].pages[p]);
      lv.page_lens.push_back(std::min(page_size, to[s] - p * page_size));
    }
    lv.q_indptr.push_back(b.num_rows());
    lv.page_indptr.push_back(static_cast<int>(lv.page_ids.size()));
    lv.kv_start_pos.push_back(0);
  }
  plan.num_rows = b.num_rows();
  b.plan = &plan;
  return b;
}

// Sequences s of start[s] + steps + 1 random tokens, sequence s in pages s * pages_each onwards.
std::vector<Seq> random_seqs(const std::vector<int>& start, int steps, int page_size, int pages_each, int vocab,
                             std::mt19937_64& rng) {
  std::vector<Seq> seqs(start.size());
  for (std::size_t s = 0; s < start.size(); ++s) {
    for (int t = 0; t < start[s] + steps + 1; ++t) seqs[s].tokens.push_back(static_cast<int>(rng() % vocab));
    for (int p = 0; p * page_size < start[s] + steps + 1; ++p) seqs[s].pages.push_back(static_cast<int>(s) * pages_each + p);
  }
  return seqs;
}

// The logits of a decode step over the first nb sequences (each's last row) against the CPU
// forward of its first len[s] tokens.
void expect_logits_match_cpu(const ModelConfig& c, const Qwen3Weights& w, const std::vector<float>& logits,
                             const std::vector<Seq>& seqs, const std::vector<int>& len, int nb,
                             const std::string& what) {
  for (int s = 0; s < nb; ++s) {
    std::vector<int> toks(seqs[s].tokens.begin(), seqs[s].tokens.begin() + len[s]);
    const auto ref = cpu_forward(c, w, toks);
    std::vector<float> got(logits.begin() + s * c.vocab_size, logits.begin() + (s + 1) * c.vocab_size);
    std::vector<float> want(ref.end() - c.vocab_size, ref.end());
    EXPECT_LT(rel_error(got, want), 3e-2) << "seq " << s << what;
  }
}

// One decode row for each of the first nb sequences, at position len[s].
StepBatch decode_step(const std::vector<Seq>& seqs, const std::vector<int>& len, int nb, int page_size,
                      CascadePlan& plan) {
  std::vector<Seq> sub(seqs.begin(), seqs.begin() + nb);
  std::vector<int> from(len.begin(), len.begin() + nb), to(from);
  for (int& t : to) ++t;
  return flat_step(sub, from, to, page_size, plan);
}

TEST(CudaRunner, LogitsMatchCpuForwardOverPrefillAndDecode) {
  SKIP_WITHOUT_GPU();
  for (int head_dim : {64, 128}) {
    const ModelConfig c = small_config(head_dim, head_dim == 64);
    Qwen3Weights w = random_qwen3_weights(c, 42 + head_dim);
    round_all(w);
    const int page_size = 16;
    auto runner = make_cuda_runner(c, w, 64, page_size);
    std::mt19937_64 rng(head_dim);
    std::vector<Seq> seqs(2);
    const int lens[2] = {23, 40};
    int next_page = 5;
    for (int s = 0; s < 2; ++s) {
      for (int t = 0; t < lens[s] + 1; ++t) seqs[s].tokens.push_back(static_cast<int>(rng() % c.vocab_size));
      for (int p = 0; p * page_size < lens[s] + 1; ++p) seqs[s].pages.push_back(next_page += 3);
    }
    std::vector<std::vector<float>> ref;
    for (const Seq& s : seqs) ref.push_back(cpu_forward(c, w, s.tokens));
    const int V = c.vocab_size;
    auto expect_rows = [&](const std::vector<float>& got, const std::vector<int>& at, const char* what) {
      for (int s = 0; s < 2; ++s) {
        std::vector<float> g(got.begin() + s * V, got.begin() + (s + 1) * V);
        std::vector<float> r(ref[s].begin() + static_cast<std::size_t>(at[s]) * V,
                             ref[s].begin() + static_cast<std::size_t>(at[s] + 1) * V);
        const double err = rel_error(g, r);
        EXPECT_LT(err, 3e-2) << what << " seq " << s << " head_dim " << head_dim;
        std::printf("  %s seq %d head_dim %d: logits rel err %.2e\n", what, s, head_dim, err);
      }
    };
    CascadePlan plan;
    StepBatch prefill = flat_step(seqs, {0, 0}, {lens[0], lens[1]}, page_size, plan);
    runner->forward(prefill);
    auto logits = runner->copy_logits();
    ASSERT_EQ(logits.size(), 2u * V);
    expect_rows(logits, {lens[0] - 1, lens[1] - 1}, "prefill");
    // Greedy sampling is the argmax of the copied logits.
    auto ids = runner->sample({RowSampling{}, RowSampling{}});
    for (int s = 0; s < 2; ++s) {
      auto first = logits.begin() + s * V;
      EXPECT_EQ(ids[s], std::max_element(first, first + V) - first);
    }
    StepBatch decode = flat_step(seqs, {lens[0], lens[1]}, {lens[0] + 1, lens[1] + 1}, page_size, plan);
    runner->forward(decode);
    expect_rows(runner->copy_logits(), {lens[0], lens[1]}, "decode");
  }
}

// A decode step of 40 sequences over one shared prefix of 650 keys (its last page partial), then a
// second step: a two-level cascade whose shared level is 80 stacked rows (GQA 2) at head_dim
// 128, so it takes the wide form where that runs (attention_wide.cu), in a CUDA graph and eagerly.
// Logits of a few sequences against the CPU forward of their whole token list, and the same tokens
// with the wide form switched off.
TEST(CudaRunner, SharedPrefixDecodeInTheWideForm) {
  SKIP_WITHOUT_GPU();
  const ModelConfig c = small_config(128, true);
  Qwen3Weights w = random_qwen3_weights(c, 5);
  round_all(w);
  const int page_size = 16, num_pages = 512, N = 40, P = 650, V = c.vocab_size;
  CudaRunnerOptions graphs, eager, narrow;
  eager.cuda_graphs = false;
  narrow.wide = false;
  auto g = make_cuda_runner(c, w, num_pages, page_size, graphs);
  auto e = make_cuda_runner(c, w, num_pages, page_size, eager);
  auto n = make_cuda_runner(c, w, num_pages, page_size, narrow);
  std::mt19937_64 rng(17);
  // The prefix in pages 0..40, each sequence's own tokens in page 100 + s.
  Seq prefix;
  for (int t = 0; t < P; ++t) prefix.tokens.push_back(static_cast<int>(rng() % V));
  for (int p = 0; p * page_size < P; ++p) prefix.pages.push_back(p);
  CascadePlan plan;
  const StepBatch prefill = flat_step({prefix}, {0}, {P}, page_size, plan);
  for (auto* r : {g.get(), e.get(), n.get()}) r->forward(prefill);
  std::vector<std::vector<int>> own(N);
  for (auto& o : own) o = {static_cast<int>(rng() % V), static_cast<int>(rng() % V)};
  // Step k (0, 1): every sequence's own token k at position P + k.
  auto step = [&](int k, CascadePlan& pl) {
    StepBatch b;
    pl = CascadePlan{};
    pl.num_rows = N;
    pl.uses_shared_levels = true;
    pl.levels.resize(2);
    CascadeLevel& l0 = pl.levels[0];
    l0.q_indptr = {0, N};
    l0.page_indptr = {0};
    for (int p = 0; p * page_size < P; ++p) {
      l0.page_ids.push_back(prefix.pages[p]);
      l0.page_lens.push_back(std::min(page_size, P - p * page_size));
    }
    l0.page_indptr.push_back(static_cast<int>(l0.page_ids.size()));
    l0.kv_start_pos = {0};
    CascadeLevel& l1 = pl.levels[1];
    l1.q_indptr = {0};
    l1.page_indptr = {0};
    for (int s = 0; s < N; ++s) {
      pl.row_order.push_back(s);
      pl.q_pos.push_back(P + k);
      b.token_ids.push_back(own[s][k]);
      b.positions.push_back(P + k);
      b.slot_mapping.push_back((100 + s) * page_size + k);
      b.logit_rows.push_back(s);
      l1.q_indptr.push_back(s + 1);
      l1.page_ids.push_back(100 + s);
      l1.page_lens.push_back(k + 1);
      l1.page_indptr.push_back(s + 1);
      l1.kv_start_pos.push_back(P);
    }
    b.plan = &pl;
    return b;
  };
  const bool wide_runs = attention_wide_usable(c.head_dim, page_size);
  if (device_is_sm90() && !ab_switch_on("CASCADE_ATTENTION_NO_WIDE") && !ab_switch_on("CASCADE_ATTENTION_NO_WGMMA")) {
    EXPECT_TRUE(wide_runs);
  }
  for (int k = 0; k < 2; ++k) {
    CascadePlan pl;
    const StepBatch b = step(k, pl);
    std::vector<std::vector<float>> logits;
    for (auto* r : {g.get(), e.get(), n.get()}) {
      r->forward(b);
      logits.push_back(r->copy_logits());
      ASSERT_EQ(logits.back().size(), static_cast<std::size_t>(N) * V);
    }
    EXPECT_EQ(logits[0], logits[1]) << "step " << k << ": graph and eager differ";
    for (const int s : {0, 17, N - 1}) {
      std::vector<int> tokens = prefix.tokens;
      tokens.insert(tokens.end(), own[s].begin(), own[s].begin() + k + 1);
      const std::vector<float> ref = cpu_forward(c, w, tokens);
      const std::vector<float> want(ref.end() - V, ref.end());
      for (int r = 0; r < 3; ++r) {
        const std::vector<float> got(logits[r].begin() + static_cast<std::size_t>(s) * V,
                                     logits[r].begin() + static_cast<std::size_t>(s + 1) * V);
        EXPECT_LT(rel_error(got, want), 3e-2) << "step " << k << " seq " << s << " runner " << r;
      }
    }
  }
  EXPECT_EQ(cuda_graph_stats(*g).wide, wide_runs ? 2 : 0);
  EXPECT_EQ(cuda_graph_stats(*e).wide, wide_runs ? 2 : 0);
  EXPECT_EQ(cuda_graph_stats(*n).wide, 0);
  EXPECT_GT(cuda_graph_stats(*g).replays, 0);
}

TEST(CudaRunner, RejectsUnsupportedHeadDim) {
  SKIP_WITHOUT_GPU();
  ModelConfig c = small_config(64, true);
  c.head_dim = 96;
  Qwen3Weights w = random_qwen3_weights(small_config(64, true), 1);
  try {
    make_cuda_runner(c, w, 8, 16);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("head_dim 96"), std::string::npos);
  }
}

// Which models the CUDA runner takes is known without a GPU; `--device auto` uses it to fall back
// to the CPU instead of failing (engine/default_model.h).
TEST(CudaRunner, UnsupportedReasonNamesTheLimit) {
  ModelConfig c = small_config(64, true);
  EXPECT_EQ(cuda_unsupported_reason(c), "");
  c.head_dim = 128;
  EXPECT_EQ(cuda_unsupported_reason(c), "");
  c.head_dim = 32;
  EXPECT_NE(cuda_unsupported_reason(c).find("head_dim 32"), std::string::npos);
  c.head_dim = 64;
  c.num_attention_heads = 16;
  c.num_key_value_heads = 1;  // a GQA group of 16
  EXPECT_NE(cuda_unsupported_reason(c).find("16 query heads over 1 KV heads"), std::string::npos);
  c.num_key_value_heads = 3;  // 16 over 3 does not divide
  EXPECT_FALSE(cuda_unsupported_reason(c).empty());
}

// With a GPU present, auto picks it for a model it takes and the CPU for one it does not, while an
// explicit --device cuda still refuses the latter with the reason.
TEST(CudaRunner, AutoDeviceFallsBackToTheCpuForUnsupportedModels) {
  SKIP_WITHOUT_GPU();
  ModelConfig ok = small_config(64, true), bad = ok;
  bad.head_dim = 32;
  EXPECT_EQ(resolve_device(Device::kAuto, ok), Device::kCuda);
  EXPECT_EQ(resolve_device(Device::kAuto, bad), Device::kCpu);
  EXPECT_EQ(resolve_device(Device::kCpu, ok), Device::kCpu);
  EXPECT_EQ(resolve_device(Device::kCuda, bad), Device::kCuda);
}

}  // namespace
}  // namespace cascade::cuda::test

namespace cascade::cuda::test {
namespace {

// Four runners of one model (small_config(head_dim), bf16-rounded random weights), with plans
// split for 2 SMs: `graph` as built (CUDA graphs), `eager` (the same padded launches without
// graphs), `unpadded` (the unbucketed eager path) and `kernel` (every level on states + the merge
// kernel: CudaRunnerOptions::direct_out false); and eight sequences of 60-226 tokens (plus
// `steps` more) in pages of 16, prefilled in all four. A step runs in all four; the logits of
// graph must equal eager's and kernel's bit for bit (kernel's within bf16 rounding where
// CASCADE_MERGE_BLOCK_PER_HEAD=1 makes the merge kernel sum otherwise) and unpadded's within bf16
// rounding.
struct MergeAbRunners {
  static constexpr int kPageSize = 16;
  ModelConfig c;
  Qwen3Weights w;
  std::unique_ptr<ModelRunner> graph, eager, unpadded, kernel;
  std::vector<int> len = {60, 130, 75, 200, 90, 226, 64, 150};
  std::vector<Seq> seqs;
  CascadePlan plan;
  MergeAbRunners(int head_dim, std::uint64_t weight_seed, std::uint64_t seq_seed, int steps)
      : c(small_config(head_dim, true)), w(random_qwen3_weights(c, weight_seed)) {
    round_all(w);
    const int num_pages = 256;
    CudaRunnerOptions o;
    o.num_sms = 2;
    graph = make_cuda_runner(c, w, num_pages, kPageSize, o);
    CudaRunnerOptions e = o, u = o, k = o;
    e.cuda_graphs = false;
    u.max_graph_rows = 0;
    k.direct_out = false;
    eager = make_cuda_runner(c, w, num_pages, kPageSize, e);
    unpadded = make_cuda_runner(c, w, num_pages, kPageSize, u);
    kernel = make_cuda_runner(c, w, num_pages, kPageSize, k);
    std::mt19937_64 rng(seq_seed);
    seqs = random_seqs(len, steps, kPageSize, 20, c.vocab_size, rng);
    forward(flat_step(seqs, std::vector<int>(seqs.size(), 0), len, kPageSize, plan));
  }
  // The plan of a decode step over the first nb sequences (in `plan`).
  StepBatch decode(int nb) { return decode_step(seqs, len, nb, kPageSize, plan); }
  // After a step over the first nb sequences.
  void advance(int nb) {
    for (int s = 0; s < nb; ++s) ++len[s];
  }
  // The last step's logits against the CPU forward.
  void expect_last_matches_cpu(int nb) {
    expect_logits_match_cpu(c, w, graph->copy_logits(), seqs, len, nb, " (head_dim " + std::to_string(c.head_dim) + ")");
  }
  void forward(const StepBatch& b) {
    for (auto* r : {graph.get(), eager.get(), unpadded.get(), kernel.get()}) r->forward(b);
  }
  // forward(b), then the comparisons; `what` names the step in failures.
  void step(const StepBatch& b, int vocab, const std::string& what) {
    forward(b);
    const auto lg = graph->copy_logits(), le = eager->copy_logits(), lu = unpadded->copy_logits(),
               lk = kernel->copy_logits();
    ASSERT_EQ(lg.size(), b.logit_rows.size() * static_cast<std::size_t>(vocab)) << what;
    ASSERT_EQ(std::memcmp(lg.data(), le.data(), lg.size() * 4), 0) << "graph != padded eager, " << what;
    if (!ab_switch_on("CASCADE_MERGE_BLOCK_PER_HEAD")) {
      ASSERT_EQ(std::memcmp(lg.data(), lk.data(), lg.size() * 4), 0) << "!= states + merge kernel, " << what;
    } else {
      EXPECT_LT(rel_error(lg, lk), 1e-2) << what;
    }
    EXPECT_LT(rel_error(lg, lu), 1e-2) << "unpadded eager, " << what;
  }
};

// Split decode levels merged in their CTAs (LevelPack::direct_out of several splits): with plans
// split for 2 SMs, batches of 3-8 over 60-250 keys take 2-3 short splits, which the warps of
// one CTA per (sequence, KV head) run and merge; batches of 2 (read ahead, 32-token tiles) keep
// states and the merge kernel, so graphs switch between the two (one graph per split count).
// MergeAbRunners compares, and the last step's logits match the CPU forward.
TEST(CudaRunner, SplitDecodeMergedInTheCtaMatchesTheMergeKernel) {
  SKIP_WITHOUT_GPU();
  for (const int head_dim : {64, 128}) {
    const int steps = 24;
    MergeAbRunners r(head_dim, 91 + head_dim, 31 + head_dim, steps);
    const ModelConfig& c = r.c;
    const int sizes[] = {3, 8, 5, 2, 7, 6};
    int last_nb = 0, merged_steps = 0;
    for (int i = 0; i < steps; ++i) {
      const int nb = sizes[i % 6];
      StepBatch step = r.decode(nb);
      cuda::PlanPack pack;
      const char* why = "";
      // Packed as the runner packs it (written slots where it may read ahead: batches of 1-2).
      ASSERT_TRUE(cuda::pack_plan(r.plan, c.num_attention_heads, c.num_key_value_heads, 2, 64, &pack, &why,
                                  nb <= kGemvMaxM ? &step.slot_mapping : nullptr, MergeAbRunners::kPageSize))
          << why;
      const bool split_direct = pack.levels[0].direct_out && pack.levels[0].num_splits > 1;
      merged_steps += split_direct ? 1 : 0;
      EXPECT_EQ(split_direct, nb > 2) << "step " << i << ": batch " << nb;
      r.step(step, c.vocab_size, "step " + std::to_string(i) + " (head_dim " + std::to_string(head_dim) + ")");
      if (HasFatalFailure()) return;
      r.advance(nb);
      last_nb = nb;
    }
    r.expect_last_matches_cpu(last_nb);
    // Batches of 3-8 merged in the CTA unless CASCADE_ATTENTION_MERGE_KERNEL=1, never in the
    // runner told to keep the merge kernel.
    const CudaGraphStats sg = cuda_graph_stats(*r.graph);
    EXPECT_EQ(merged_steps, steps / 6 * 5);
    EXPECT_EQ(sg.direct_out, attention_direct_out_enabled() ? merged_steps : 0);
    EXPECT_EQ(cuda_graph_stats(*r.eager).direct_out, sg.direct_out);
    EXPECT_EQ(cuda_graph_stats(*r.unpadded).direct_out, sg.direct_out);
    EXPECT_EQ(cuda_graph_stats(*r.kernel).direct_out, 0);
    EXPECT_EQ(sg.replays, steps);
  }
}

// Each sequence's first page as one level and the rest of its keys as a second (a two-level
// plan, rebuilt from the flat plan of decode_step).
void split_first_page(CascadePlan& plan, int nb, int page_size) {
  const CascadeLevel all = plan.levels[0];
  CascadeLevel l0, l1;
  l0.q_indptr = l1.q_indptr = all.q_indptr;
  l0.page_indptr = l1.page_indptr = {0};
  for (int s = 0; s < nb; ++s) {
    for (int k = all.page_indptr[s]; k < all.page_indptr[s + 1]; ++k) {
      CascadeLevel& dst = k == all.page_indptr[s] ? l0 : l1;
      dst.page_ids.push_back(all.page_ids[k]);
      dst.page_lens.push_back(all.page_lens[k]);
    }
    l0.page_indptr.push_back(static_cast<int>(l0.page_ids.size()));
    l1.page_indptr.push_back(static_cast<int>(l1.page_ids.size()));
    l0.kv_start_pos.push_back(0);
    l1.kv_start_pos.push_back(page_size);
  }
  plan.levels = {l0, l1};
}

// Decode steps through the bucketed path: CUDA-graph replays must equal the same padded launches
// run eagerly bit for bit, match the unpadded eager path within bf16 rounding, and match the CPU
// forward; batch sizes move between buckets, plans alternate between one and two levels, and small
// pages make the page capacity of a captured layout overflow (recapture).
// The one-level steps (contexts of at most 57 tokens here, so one split) write their rows from the
// attention kernel (LevelPack::direct_out: no fill, no merge kernel, padding rows of a bucket not
// written), and those of 3-5 rows form q/k RMSNorm + RoPE and the K/V writes in the attention
// kernel (LevelPack::qk_rope: no qk_norm_rope kernel; batches of 1-2 read keys ahead and keep
// it); the two-level steps and the prefill write states and merge after qk_norm_rope. Both run
// in all three runners.
TEST(CudaRunner, GraphDecodeMatchesEagerAndCpu) {
  SKIP_WITHOUT_GPU();
  const ModelConfig c = small_config(128, true);
  Qwen3Weights w = random_qwen3_weights(c, 77);
  round_all(w);
  const int page_size = 4, num_pages = 512;
  CudaRunnerOptions on, off, unpadded, plain;
  on.qk_rope = off.qk_rope = unpadded.qk_rope = 1;  // wherever a level may (these are small)
  off.cuda_graphs = false;
  unpadded.max_graph_rows = 0;
  plain.qk_rope = 0;  // qk_norm_rope everywhere: the same bits as the fused levels
  auto g = make_cuda_runner(c, w, num_pages, page_size, on);
  auto e = make_cuda_runner(c, w, num_pages, page_size, off);
  auto u = make_cuda_runner(c, w, num_pages, page_size, unpadded);
  auto n = make_cuda_runner(c, w, num_pages, page_size, plain);
  std::mt19937_64 rng(9);
  const int steps = 40;
  std::vector<int> len = {10, 17, 33, 5, 40};
  const std::vector<Seq> seqs = random_seqs(len, steps, page_size, 80, c.vocab_size, rng);
  CascadePlan plan;
  StepBatch prefill = flat_step(seqs, std::vector<int>(seqs.size(), 0), len, page_size, plan);
  for (auto* r : {g.get(), e.get(), u.get(), n.get()}) r->forward(prefill);
  const int sizes[] = {3, 4, 1, 5, 2};
  int last_nb = 0, roped_steps = 0;
  for (int i = 0; i < steps; ++i) {
    const int nb = sizes[i % 5];
    if (i % 2 == 0 && nb > kGemvMaxM) ++roped_steps;
    StepBatch step = decode_step(seqs, len, nb, page_size, plan);
    if (i % 2 == 1) split_first_page(plan, nb, page_size);  // two levels
    for (auto* r : {g.get(), e.get(), u.get(), n.get()}) r->forward(step);
    const auto lg = g->copy_logits(), le = e->copy_logits(), lu = u->copy_logits(), ln = n->copy_logits();
    ASSERT_EQ(lg.size(), static_cast<std::size_t>(nb) * c.vocab_size);
    ASSERT_EQ(std::memcmp(lg.data(), le.data(), lg.size() * 4), 0) << "graph != padded eager at step " << i;
    ASSERT_EQ(std::memcmp(lg.data(), ln.data(), lg.size() * 4), 0) << "q/k RMSNorm + RoPE in the level != "
                                                                   << "qk_norm_rope at step " << i;
    EXPECT_LT(rel_error(lg, lu), 1e-2) << "step " << i;
    const std::vector<RowSampling> greedy(nb);
    EXPECT_EQ(g->sample(greedy), e->sample(greedy)) << "step " << i;
    for (int s = 0; s < nb; ++s) ++len[s];
    last_nb = nb;
  }
  // The last step's logits against the CPU forward of each sequence.
  expect_logits_match_cpu(c, w, g->copy_logits(), seqs, len, last_nb, "");
  const CudaGraphStats sg = cuda_graph_stats(*g), se = cuda_graph_stats(*e), su = cuda_graph_stats(*u);
  std::printf("  graphs: %ld captures, %ld replays; eager runner: %ld padded steps\n", sg.captures,
              sg.replays, se.padded_eager);
  EXPECT_EQ(sg.replays, steps);
  EXPECT_GE(sg.captures, 5);   // four buckets (1, 2, 4, 8) x two plan shapes, at least 5 distinct
  EXPECT_LT(sg.captures, steps);
  EXPECT_EQ(se.padded_eager, steps);
  EXPECT_EQ(se.captures, 0);
  EXPECT_EQ(su.replays + su.padded_eager, 0);
  EXPECT_EQ(su.eager, steps + 1);
  // Every even step has one level (direct unless CASCADE_ATTENTION_MERGE_KERNEL=1, and forming
  // q/k RMSNorm + RoPE itself at 3+ rows unless CASCADE_ATTENTION_NO_ROPE_FUSE=1), odd ones two.
  for (const CudaGraphStats& st : {sg, se, su}) {
    EXPECT_EQ(st.direct_out, attention_direct_out_enabled() ? steps / 2 : 0);
    EXPECT_EQ(st.qk_rope, attention_qk_rope_enabled() ? roped_steps : 0);
  }
  EXPECT_EQ(cuda_graph_stats(*n).qk_rope, 0);
}

// Batches of 3-64 rows on sm_90a run the layers' residual adds, RMSNorms and SiLU inside the skinny
// GEMMs (SkinnyFusion); CASCADE_GEMM_NO_FUSE=1 runs the norm and silu kernels instead. A 39-row
// prefill and a 6-row decode: both against the CPU forward, and against each other within bf16
// rounding but not bit for bit (so the fused path did run).
TEST(CudaRunner, FusedLayersMatchUnfusedAndCpu) {
  SKIP_WITHOUT_GPU();
  if (!skinny_gemm_available()) GTEST_SKIP() << "no sm_90a device for the skinny GEMM";
  if (ab_switch_on("CASCADE_GEMM_NO_SKINNY") || ab_switch_on("CASCADE_GEMM_NO_FUSE")) {
    GTEST_SKIP() << "fused path switched off";
  }
  const ModelConfig c = small_config(128, false);
  Qwen3Weights w = random_qwen3_weights(c, 77);
  round_all(w);
  const int page_size = 16, S = 6;
  auto fused = make_cuda_runner(c, w, 64, page_size);
  setenv("CASCADE_GEMM_NO_FUSE", "1", 1);
  auto unfused = make_cuda_runner(c, w, 64, page_size);
  unsetenv("CASCADE_GEMM_NO_FUSE");
  std::mt19937_64 rng(78);
  std::vector<Seq> seqs(S);
  std::vector<int> lens(S), zeros(S, 0), next(S);
  for (int s = 0; s < S; ++s) {
    lens[s] = 4 + s;
    next[s] = lens[s] + 1;
    for (int t = 0; t <= lens[s]; ++t) seqs[s].tokens.push_back(static_cast<int>(rng() % c.vocab_size));
    for (int p = 0; p * page_size <= lens[s]; ++p) seqs[s].pages.push_back(3 + s * 4 + p);
  }
  const int V = c.vocab_size;
  CascadePlan plan;
  for (const bool decode : {false, true}) {
    StepBatch b = decode ? flat_step(seqs, lens, next, page_size, plan) : flat_step(seqs, zeros, lens, page_size, plan);
    ASSERT_GE(b.num_rows(), 3);
    ASSERT_LE(b.num_rows(), 64);
    fused->forward(b);
    const auto a = fused->copy_logits();
    unfused->forward(b);
    const auto u = unfused->copy_logits();
    ASSERT_EQ(a.size(), static_cast<std::size_t>(S) * V);
    EXPECT_LT(rel_error(a, u), 1e-2) << (decode ? "decode" : "prefill");
    EXPECT_NE(std::memcmp(a.data(), u.data(), a.size() * sizeof(float)), 0)
        << (decode ? "decode" : "prefill") << ": fused and unfused gave the same bits";
    for (int s = 0; s < S; ++s) {
      const auto ref = cpu_forward(c, w, seqs[s].tokens);
      const int at = decode ? lens[s] : lens[s] - 1;
      std::vector<float> g(a.begin() + s * V, a.begin() + (s + 1) * V);
      std::vector<float> r(ref.begin() + static_cast<std::size_t>(at) * V, ref.begin() + static_cast<std::size_t>(at + 1) * V);
      EXPECT_LT(rel_error(g, r), 3e-2) << (decode ? "decode" : "prefill") << " seq " << s;
    }
  }
}

// At 1-64 logit rows the lm_head takes the greedy argmax (the GEMV at 1-2 rows, the skinny GEMM
// at 3-64 on sm_90a; counted in CudaGraphStats::lm_head_argmax) and sample() with greedy rows only
// copies it: those ids must be the CPU sampler's on the same logits, for steps through the graph
// and the eager path, after a greedy sample() (forward leaves the step queued) and after a
// sampled one (forward waits at 3-64 rows); a step with a sampled (temperature > 0) row, greedy
// or not beside it, goes through the sampling kernel and must equal the CPU sampler too; and a
// second forward before any sample() replaces the first one's ids. A step with keep_logits = false
// gives the same greedy ids.
// Where the lm_head takes the greedy argmax of nb logit rows (A/B switches off, and for 3-64 rows
// an sm_90a device).
bool takes_argmax(int nb) {
  if (nb <= 2) return !ab_switch_on("CASCADE_GEMM_NO_GEMV") && !ab_switch_on("CASCADE_GEMV_NO_NORM");
  return skinny_gemm_available() && !ab_switch_on("CASCADE_GEMM_NO_SKINNY") && !ab_switch_on("CASCADE_GEMM_NO_ARGMAX");
}

TEST(CudaRunner, GreedyIdsFromLmHeadMatchTheCpuSampler) {
  SKIP_WITHOUT_GPU();
  const ModelConfig c = small_config(128, false);
  Qwen3Weights w = random_qwen3_weights(c, 91);
  round_all(w);
  const int page_size = 16, num_pages = 64, num_seqs = 6;
  const int batches[] = {1, 2, 5, 3, 2, 6, 1, 4};
  CudaRunnerOptions graphs, eager;
  eager.cuda_graphs = false;
  for (const CudaRunnerOptions& opt : {graphs, eager}) {
    auto r = make_cuda_runner(c, w, num_pages, page_size, opt);
    std::mt19937_64 rng(5);
    std::vector<Seq> seqs(num_seqs);
    std::vector<int> len(num_seqs), zero(num_seqs, 0);
    for (int s = 0; s < num_seqs; ++s) {
      for (int t = 0; t < 40; ++t) seqs[s].tokens.push_back(static_cast<int>(rng() % c.vocab_size));
      for (int p = 0; p < 3; ++p) seqs[s].pages.push_back(s * 8 + p);
      len[s] = 20 + 3 * s;
    }
    CascadePlan plan;
    const StepBatch prefill = flat_step(seqs, zero, len, page_size, plan);
    r->forward(prefill);
    // The prefill goes through the unpadded path (rows != logit rows): its greedy ids, with the
    // logits kept and without.
    const auto prefill_logits = r->copy_logits();
    const std::vector<RowSampling> greedy_all(num_seqs);
    const auto want_prefill = sample_tokens(prefill_logits, c.vocab_size, greedy_all);
    EXPECT_EQ(r->sample(greedy_all), want_prefill) << "prefill";
    StepBatch lean_prefill = prefill;
    lean_prefill.keep_logits = false;
    r->forward(lean_prefill);
    EXPECT_EQ(r->sample(greedy_all), want_prefill) << "prefill, lean";
    if (takes_argmax(num_seqs)) EXPECT_THROW(r->copy_logits(), Error) << "prefill, lean";
    for (int i = 0; i < static_cast<int>(std::size(batches)); ++i) {
      const int nb = batches[i];
      const StepBatch step = decode_step(seqs, len, nb, page_size, plan);
      std::vector<RowSampling> greedy(nb), mixed(nb);
      for (int k = 0; k < nb; ++k) {
        mixed[k].temperature = k == 0 ? 0.8f : 0.0f;
        mixed[k].top_p = 0.9f;
        mixed[k].seed = 1000 + i;
        mixed[k].step = k;
      }
      const std::string what = std::string(opt.cuda_graphs ? "graphs" : "eager") + " step " + std::to_string(i) +
                               " batch " + std::to_string(nb);
      const long argmax_before = cuda_graph_stats(*r).lm_head_argmax;
      const int forwards = i == 4 || i == 5 ? 2 : 1;
      if (forwards == 2) r->forward(step);  // a forward nobody samples: the next one replaces its ids
      r->forward(step);
      EXPECT_EQ(cuda_graph_stats(*r).lm_head_argmax - argmax_before, takes_argmax(nb) ? forwards : 0) << what;
      const auto logits = r->copy_logits();
      ASSERT_EQ(logits.size(), static_cast<std::size_t>(nb) * c.vocab_size);
      EXPECT_EQ(r->sample(greedy), sample_tokens(logits, c.vocab_size, greedy)) << what;
      // Steps 1, 4 and 7 sample greedily only, so the next step's forward leaves it queued.
      if (i % 3 != 1) {
        EXPECT_EQ(r->sample(mixed), sample_tokens(logits, c.vocab_size, mixed)) << what << ", sampled";
      }
      // keep_logits = false (the engine's greedy-only steps): the same greedy ids. Where the
      // skinny lm_head takes them (3-64 rows) the logits are left out and asking for them, or for
      // a sampled row, throws; elsewhere they are the same logits.
      StepBatch lean = step;
      lean.keep_logits = false;
      r->forward(lean);
      EXPECT_EQ(r->sample(greedy), sample_tokens(logits, c.vocab_size, greedy)) << what << ", lean";
      if (nb >= 3 && takes_argmax(nb)) {
        EXPECT_THROW(r->copy_logits(), Error) << what;
        EXPECT_THROW(r->sample(mixed), Error) << what;
      } else {
        EXPECT_EQ(r->copy_logits(), logits) << what << ", lean";
      }
      for (int k = 0; k < nb; ++k) ++len[k];
    }
  }
}

// Overlapped decode (Config::overlap_scheduling): steps fed by the previous step's greedy ids on
// the device (sample_async(), StepBatch::feed, collect()) give the ids and logits of steps given
// those ids from the host, at 1-2 rows (the GEMV's ids) and 3-6 (the skinny lm_head's keys), with
// graphs, without, and unpadded. A sampled row is drawn at once and cannot be fed; misuse throws.
TEST(CudaRunner, FedStepsMatchStepsGivenTheIds) {
  SKIP_WITHOUT_GPU();
  const ModelConfig c = small_config(128, false);
  Qwen3Weights w = random_qwen3_weights(c, 93);
  round_all(w);
  const int page_size = 16, num_pages = 64, steps = 4;
  // Graphs, the same padded launches without graphs, and the unpadded eager path (its own staging).
  CudaRunnerOptions graphs, eager, unpadded;
  eager.cuda_graphs = false;
  unpadded.max_graph_rows = 0;
  for (const CudaRunnerOptions& opt : {graphs, eager, unpadded}) {
    for (int nb : {1, 2, 3, 6}) {
      const std::string what = std::string(opt.max_graph_rows == 0 ? "unpadded" : opt.cuda_graphs ? "graphs" : "eager") +
                               " batch " + std::to_string(nb);
      auto host = make_cuda_runner(c, w, num_pages, page_size, opt);
      auto fed = make_cuda_runner(c, w, num_pages, page_size, opt);
      std::mt19937_64 rng(11 + nb);
      std::vector<Seq> seqs(nb);
      std::vector<int> len(nb), zero(nb, 0);
      for (int s = 0; s < nb; ++s) {
        for (int t = 0; t < 30; ++t) seqs[s].tokens.push_back(static_cast<int>(rng() % c.vocab_size));
        for (int p = 0; p < 2; ++p) seqs[s].pages.push_back(s * 8 + p);
        len[s] = 12 + s;
      }
      CascadePlan plan;
      const StepBatch prefill = flat_step(seqs, zero, len, page_size, plan);
      host->forward(prefill);
      fed->forward(prefill);
      const std::vector<RowSampling> greedy(nb);
      std::vector<std::int32_t> ids = host->sample(greedy);
      fed->sample_async(greedy);
      EXPECT_EQ(fed->can_feed(), takes_argmax(nb)) << what;
      if (!fed->can_feed()) {
        EXPECT_EQ(fed->collect(), ids) << what;
        continue;
      }
      EXPECT_THROW(fed->sample(greedy), Error) << what << ": sample() before collect()";
      for (int k = 0; k < steps; ++k) {
        // Row s takes the id of the last step's logit row nb-1-s (rows in reverse, so that each
        // row names its source): the host runner's step as its token, the fed one's as a feed.
        StepBatch step = decode_step(seqs, len, nb, page_size, plan);
        step.keep_logits = k % 2 == 0;  // odd steps greedy-only, as the engine marks them
        StepBatch host_step = step, fed_step = step;
        fed_step.feed.resize(nb);
        for (int s = 0; s < nb; ++s) {
          host_step.token_ids[s] = ids[nb - 1 - s];
          fed_step.feed[s] = nb - 1 - s;
          fed_step.token_ids[s] = 0;
        }
        host->forward(host_step);
        fed->forward(fed_step);
        EXPECT_FALSE(fed->can_feed()) << what;
        if (step.keep_logits) EXPECT_EQ(fed->copy_logits(), host->copy_logits()) << what << " step " << k;
        EXPECT_EQ(fed->collect(), ids) << what << " step " << k << ": the previous step's ids";
        ids = host->sample(greedy);
        fed->sample_async(greedy);
        ASSERT_TRUE(fed->can_feed()) << what;
        for (int s = 0; s < nb; ++s) ++len[s];
      }
      EXPECT_EQ(fed->collect(), ids) << what << ": the last step's ids";
      EXPECT_THROW(fed->collect(), Error) << what << ": collect() twice";
      // A sampled row: drawn at once (the sampler), not feedable.
      StepBatch step = decode_step(seqs, len, nb, page_size, plan);
      fed->forward(step);
      const auto logits = fed->copy_logits();
      std::vector<RowSampling> mixed(nb);
      mixed[0].temperature = 0.7f;
      mixed[0].seed = 3;
      fed->sample_async(mixed);
      EXPECT_FALSE(fed->can_feed()) << what;
      EXPECT_EQ(fed->collect(), sample_tokens(logits, c.vocab_size, mixed)) << what;
      StepBatch fed_step = step;
      fed_step.feed.assign(nb, 0);
      EXPECT_THROW(fed->forward(fed_step), Error) << what << ": feed without a feedable sample_async()";
    }
  }
}

}  // namespace
}  // namespace cascade::cuda::test

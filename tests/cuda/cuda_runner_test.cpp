// The CUDA runner end to end on a small random Qwen3: logits of a batched prefill step and a decode
// step against an fp32 CPU forward composed from the CPU reference ops (float64 attention), with
// the weights rounded to bf16 on both sides so only activation rounding differs.
#include "backend/cuda/cuda_runner.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "backend/cpu/ops.h"
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

}  // namespace
}  // namespace cascade::cuda::test

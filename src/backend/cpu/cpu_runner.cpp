#include "backend/cpu/cpu_runner.h"

#include <cmath>
#include <limits>

#include "backend/cpu/attention.h"
#include "backend/cpu/ops.h"
#include "core/error.h"
#include "engine/sampler.h"

namespace cascade {
namespace {

class CpuRunner final : public ModelRunner {
 public:
  CpuRunner(const ModelConfig& config, std::shared_ptr<const Qwen3Weights> weights, int num_pages,
            int page_size)
      : config_(config), w_(std::move(weights)) {
    layout_.num_layers = config.num_hidden_layers;
    layout_.num_pages = num_pages;
    layout_.page_size = page_size;
    layout_.num_kv_heads = config.num_key_value_heads;
    layout_.head_dim = config.head_dim;
    const std::size_t elems = static_cast<std::size_t>(layout_.layer_elems()) * layout_.num_layers;
    // Poisoned with NaN so a read of a slot nothing wrote shows up at once in tests.
    k_cache_.assign(elems, std::numeric_limits<float>::quiet_NaN());
    v_cache_.assign(elems, std::numeric_limits<float>::quiet_NaN());
  }

  const ModelConfig& config() const override { return config_; }
  const KvLayout& kv_layout() const override { return layout_; }
  const char* device_name() const override { return "cpu"; }

  void forward(const StepBatch& batch) override;
  std::vector<std::int32_t> sample(const std::vector<RowSampling>& params) override;
  std::vector<float> copy_logits() override { return logits_; }
  // Draws at once: the CPU has nothing to overlap; the tokens wait for collect() and a feed.
  void sample_async(const std::vector<RowSampling>& params) override {
    drawn_ = sample(params);
    drawn_pending_ = true;
    can_feed_ = true;
  }
  std::vector<std::int32_t> collect() override {
    if (!drawn_pending_) throw_error(ErrorCode::kInvalidArgument, "cpu runner: collect() without sample_async()");
    drawn_pending_ = false;
    return drawn_;
  }
  bool can_feed() const override { return can_feed_; }

 private:
  void write_kv(int layer, const StepBatch& batch, const float* k, const float* v);

  ModelConfig config_;
  std::shared_ptr<const Qwen3Weights> w_;
  KvLayout layout_;
  std::vector<float> k_cache_, v_cache_;
  std::vector<float> logits_;
  int num_logit_rows_ = 0;
  std::vector<std::int32_t> drawn_;  // the last sample_async()'s tokens
  bool drawn_pending_ = false;       // not collected yet
  bool can_feed_ = false;            // the next forward may feed on drawn_
};

void CpuRunner::write_kv(int layer, const StepBatch& batch, const float* k, const float* v) {
  const std::int64_t slot_elems = layout_.slot_elems();
  const std::int64_t total_slots = static_cast<std::int64_t>(layout_.num_pages) * layout_.page_size;
  float* kl = k_cache_.data() + layer * layout_.layer_elems();
  float* vl = v_cache_.data() + layer * layout_.layer_elems();
  for (int r = 0; r < batch.num_rows(); ++r) {
    const std::int32_t slot = batch.slot_mapping[r];
    if (slot < 0) continue;  // a recomputed token whose K/V already lives in a shared page
    CASCADE_CHECK(slot < total_slots, "slot {} outside the KV pool ({} slots)", slot, total_slots);
    std::copy(k + r * slot_elems, k + (r + 1) * slot_elems, kl + slot * slot_elems);
    std::copy(v + r * slot_elems, v + (r + 1) * slot_elems, vl + slot * slot_elems);
  }
}

void CpuRunner::forward(const StepBatch& batch) {
  const bool could_feed = can_feed_;  // only this forward may feed on them, even if it throws
  can_feed_ = false;
  const ModelConfig& c = config_;
  const int R = batch.num_rows();
  CASCADE_CHECK(batch.plan != nullptr && batch.plan->num_rows == R, "plan does not cover the batch");
  CASCADE_CHECK(static_cast<int>(batch.positions.size()) == R &&
                    static_cast<int>(batch.slot_mapping.size()) == R,
                "batch arrays disagree in length");
  std::vector<std::int32_t> tokens = batch.token_ids;
  if (!batch.feed.empty()) {
    if (!could_feed || static_cast<int>(batch.feed.size()) != R) {
      throw_error(ErrorCode::kInvalidArgument, "cpu runner: a fed step needs a sample_async() just before it and "
                  "one feed entry per row ({} for {} rows)", batch.feed.size(), R);
    }
    for (int r = 0; r < R; ++r) {
      const std::int32_t f = batch.feed[r];
      if (f < -1 || f >= static_cast<int>(drawn_.size())) {
        throw_error(ErrorCode::kInvalidArgument, "cpu runner: row {} feeds on logit row {} of {}", r, f, drawn_.size());
      }
      if (f >= 0) tokens[r] = drawn_[f];
    }
  }
  for (int r = 0; r < R; ++r) {
    if (tokens[r] < 0 || tokens[r] >= c.vocab_size) {
      throw_error(ErrorCode::kInvalidArgument, "token id {} is outside the vocabulary [0, {})",
                  tokens[r], c.vocab_size);
    }
  }
  const int H = c.hidden_size, D = c.head_dim, NQ = c.num_attention_heads, NKV = c.num_key_value_heads;
  const int I = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  std::vector<float> residual(static_cast<std::size_t>(R) * H), normed(residual.size()),
      delta(residual.size());
  std::vector<float> q(static_cast<std::size_t>(R) * NQ * D), k(static_cast<std::size_t>(R) * NKV * D),
      v(k.size()), attn(q.size());
  std::vector<float> gate(static_cast<std::size_t>(R) * I), up(gate.size());

  cpu::embedding(w_->embed_tokens.ptr(), tokens.data(), R, H, residual.data());
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = w_->layers[l];
    if (l == 0) {
      cpu::rms_norm(residual.data(), L.input_layernorm.ptr(), eps, R, H, normed.data());
    } else {
      cpu::add_rms_norm(delta.data(), residual.data(), L.input_layernorm.ptr(), eps, R, H, normed.data());
    }
    const auto bias = [](const HostTensor& t) { return t.data.empty() ? nullptr : t.ptr(); };
    cpu::matmul_nt(normed.data(), L.q_proj.ptr(), bias(L.q_bias), R, NQ * D, H, q.data());
    cpu::matmul_nt(normed.data(), L.k_proj.ptr(), bias(L.k_bias), R, NKV * D, H, k.data());
    cpu::matmul_nt(normed.data(), L.v_proj.ptr(), bias(L.v_bias), R, NKV * D, H, v.data());
    cpu::rms_norm(q.data(), L.q_norm.ptr(), eps, R * NQ, D, q.data());
    cpu::rms_norm(k.data(), L.k_norm.ptr(), eps, R * NKV, D, k.data());
    cpu::rope_rotate_half(q.data(), batch.positions.data(), R, NQ, D, c.rope);
    cpu::rope_rotate_half(k.data(), batch.positions.data(), R, NKV, D, c.rope);
    // Every row's K/V is written before any attention, so rows may attend to keys that other rows
    // of this step produce (a chunk computed by one sequence and read by another in the same step).
    write_kv(l, batch, k.data(), v.data());
    KvLayerView<const float> view;
    view.k = k_cache_.data() + l * layout_.layer_elems();
    view.v = v_cache_.data() + l * layout_.layer_elems();
    view.page_size = layout_.page_size;
    view.num_kv_heads = NKV;
    view.head_dim = D;
    cpu::cascade_attention(q.data(), *batch.plan, view, NQ, scale, attn.data(), nullptr);
    cpu::matmul_nt(attn.data(), L.o_proj.ptr(), bias(L.o_bias), R, H, NQ * D, delta.data());
    cpu::add_rms_norm(delta.data(), residual.data(), L.post_attention_layernorm.ptr(), eps, R, H,
                      normed.data());
    cpu::matmul_nt(normed.data(), L.gate_proj.ptr(), nullptr, R, I, H, gate.data());
    cpu::matmul_nt(normed.data(), L.up_proj.ptr(), nullptr, R, I, H, up.data());
    for (std::size_t i = 0; i < gate.size(); ++i) {
      const float g = gate[i];
      gate[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
    cpu::matmul_nt(gate.data(), L.down_proj.ptr(), nullptr, R, H, I, delta.data());
  }
  // Final norm and lm_head only for the rows whose logits are wanted.
  num_logit_rows_ = static_cast<int>(batch.logit_rows.size());
  std::vector<float> last(static_cast<std::size_t>(num_logit_rows_) * H);
  for (int i = 0; i < num_logit_rows_; ++i) {
    const int r = batch.logit_rows[i];
    CASCADE_CHECK(r >= 0 && r < R, "logit row {} out of range", r);
    for (int j = 0; j < H; ++j) last[i * H + j] = residual[r * H + j] + delta[r * H + j];
  }
  cpu::rms_norm(last.data(), w_->norm.ptr(), eps, num_logit_rows_, H, last.data());
  logits_.assign(static_cast<std::size_t>(num_logit_rows_) * c.vocab_size, 0.0f);
  cpu::matmul_nt(last.data(), w_->output_weight().ptr(), nullptr, num_logit_rows_, c.vocab_size, H,
                 logits_.data());
}

std::vector<std::int32_t> CpuRunner::sample(const std::vector<RowSampling>& params) {
  if (drawn_pending_) throw_error(ErrorCode::kInvalidArgument, "cpu runner: sample() before collect()");
  can_feed_ = false;
  CASCADE_CHECK(static_cast<int>(params.size()) == num_logit_rows_, "{} sampling params for {} rows",
                params.size(), num_logit_rows_);
  std::vector<std::int32_t> out(params.size());
  const int V = config_.vocab_size;
  for (int i = 0; i < num_logit_rows_; ++i) {
    out[i] = sample_token(std::span<const float>(logits_.data() + static_cast<std::size_t>(i) * V, V),
                          params[i]);
  }
  return out;
}

}  // namespace

std::unique_ptr<ModelRunner> make_cpu_runner(const ModelConfig& config,
                                             std::shared_ptr<const Qwen3Weights> weights,
                                             int num_pages, int page_size) {
  return std::make_unique<CpuRunner>(config, std::move(weights), num_pages, page_size);
}

}  // namespace cascade

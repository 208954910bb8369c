// The CUDA ModelRunner: Qwen3 in bf16 with fp32 residual stream, paged bf16 KV pools, cuBLASLt
// GEMMs, the cascade attention kernels, and sampling on the device.
#include "backend/cuda/cuda_runner.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "backend/cuda/attention.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/kernels.h"
#include "core/error.h"

namespace cascade {
namespace {

using cuda::bf16;
using cuda::DeviceBuffer;

constexpr int kMaxStateSlices = 64;

struct LayerDev {
  DeviceBuffer<bf16> in_ln, qkv, qkv_bias, o_proj, q_norm, k_norm, post_ln, gate_up, down;
};

class CudaRunner final : public ModelRunner {
 public:
  CudaRunner(const ModelConfig& config, const Qwen3Weights& w, int num_pages, int page_size)
      : config_(config) {
    validate_config(num_pages, page_size);
    CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    int dev = 0;
    CUDA_TRY(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    CUDA_TRY(cudaGetDeviceProperties(&prop, dev));
    device_name_ = std::string("cuda:") + std::to_string(dev) + " (" + prop.name + ")";
    num_sms_ = prop.multiProcessorCount;
    gemm_ = std::make_unique<cuda::Gemm>();

    layout_.num_layers = config.num_hidden_layers;
    layout_.num_pages = num_pages;
    layout_.page_size = page_size;
    layout_.num_kv_heads = config.num_key_value_heads;
    layout_.head_dim = config.head_dim;

    upload_weights(w);
    const std::size_t pool = static_cast<std::size_t>(layout_.layer_elems()) * layout_.num_layers;
    k_pool_.resize(pool);
    v_pool_.resize(pool);

    // inv_freq as cpu::rope_inv_freq computes it (double), rounded to fp32 like the CPU reference.
    const int half = config.head_dim / 2;
    std::vector<float> inv(half);
    const double factor = config.rope.type == "linear" ? config.rope.factor : 1.0;
    for (int i = 0; i < half; ++i) {
      inv[i] = static_cast<float>(1.0 / std::pow(config.rope.theta, (2.0 * i) / config.head_dim) / factor);
    }
    inv_freq_.resize(half);
    CUDA_TRY(cudaMemcpy(inv_freq_.get(), inv.data(), half * sizeof(float), cudaMemcpyHostToDevice));
  }

  ~CudaRunner() override {
    if (host_stage_ != nullptr) cudaFreeHost(host_stage_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  const ModelConfig& config() const override { return config_; }
  const KvLayout& kv_layout() const override { return layout_; }
  const char* device_name() const override { return device_name_.c_str(); }

  void forward(const StepBatch& batch) override {
    const int n = batch.num_rows();
    validate_batch(batch);
    const CascadePlan& plan = *batch.plan;
    cuda::PlanPack pack;
    const char* why = "";
    if (!cuda::pack_plan(plan, config_.num_attention_heads, config_.num_key_value_heads, num_sms_,
                         kMaxStateSlices, &pack, &why)) {
      throw_error(ErrorCode::kInvalidArgument, "cuda runner: invalid cascade plan: {}", why);
    }
    const int R = static_cast<int>(batch.logit_rows.size());
    // One H2D copy: tokens | positions | slots | logit rows | plan.
    const std::size_t off_pos = n, off_slot = 2 * n, off_logit = 3 * n, off_plan = 3 * n + R;
    const std::size_t total = off_plan + pack.data.size();
    stage(total * sizeof(std::int32_t));
    auto* h = static_cast<std::int32_t*>(host_stage_);
    std::memcpy(h, batch.token_ids.data(), n * 4);
    std::memcpy(h + off_pos, batch.positions.data(), n * 4);
    std::memcpy(h + off_slot, batch.slot_mapping.data(), n * 4);
    std::memcpy(h + off_logit, batch.logit_rows.data(), R * 4);
    std::memcpy(h + off_plan, pack.data.data(), pack.data.size() * 4);
    batch_dev_.reserve(total);
    CUDA_TRY(cudaMemcpyAsync(batch_dev_.get(), h, total * 4, cudaMemcpyHostToDevice, stream_));
    const std::int32_t* d = batch_dev_.get();
    const std::int32_t *d_tok = d, *d_pos = d + off_pos, *d_slot = d + off_slot,
                       *d_logit = d + off_logit, *d_plan = d + off_plan;

    const int H = config_.num_attention_heads, KVH = config_.num_key_value_heads,
              D = config_.head_dim, hidden = config_.hidden_size, inter = config_.intermediate_size;
    const int qkv_n = (H + 2 * KVH) * D;
    const float eps = static_cast<float>(config_.rms_norm_eps);
    residual_.reserve(static_cast<std::size_t>(n) * hidden);
    xb_.reserve(static_cast<std::size_t>(n) * std::max(hidden, H * D));
    tmp_.reserve(static_cast<std::size_t>(n) * std::max({qkv_n, 2 * inter, hidden}));
    q_.reserve(static_cast<std::size_t>(n) * H * D);
    act_.reserve(static_cast<std::size_t>(n) * inter);
    const int slices = std::max(1, pack.num_slices);
    states_o_.reserve(static_cast<std::size_t>(slices) * n * H * D);
    states_lse_.reserve(static_cast<std::size_t>(slices) * n * H);
    logits_.reserve(static_cast<std::size_t>(std::max(R, 1)) * config_.vocab_size);

    // Rows a level does not cover keep the empty state; the kernels rewrite the covered ones.
    CUDA_TRY(cuda::launch_fill_f32(states_lse_.get(), static_cast<std::int64_t>(slices) * n * H,
                                   -INFINITY, stream_));
    CUDA_TRY(cuda::launch_embedding({embed_.get(), d_tok, residual_.get(), n, hidden}, stream_));
    const std::int64_t layer_elems = layout_.layer_elems();
    bf16* mlp_out = nullptr;
    for (int li = 0; li < config_.num_hidden_layers; ++li) {
      const LayerDev& L = layers_[li];
      norm(mlp_out, L.in_ln.get(), nullptr, n, xb_.get(), true, eps);
      gemm_->run(xb_.get(), L.qkv.get(), tmp_.get(), false, n, qkv_n, hidden, stream_);
      bf16* kc = k_pool_.get() + li * layer_elems;
      bf16* vc = v_pool_.get() + li * layer_elems;
      cuda::QkNormRopeParams qp;
      qp.qkv = tmp_.get();
      qp.bias = config_.attention_bias ? L.qkv_bias.get() : nullptr;
      qp.q_norm = L.q_norm.get();
      qp.k_norm = L.k_norm.get();
      qp.inv_freq = inv_freq_.get();
      qp.positions = d_pos;
      qp.slot_mapping = d_slot;
      qp.q_out = q_.get();
      qp.k_cache = kc;
      qp.v_cache = vc;
      qp.eps = eps;
      qp.rows = n;
      qp.num_heads = H;
      qp.num_kv_heads = KVH;
      qp.head_dim = D;
      CUDA_TRY(cuda::launch_qk_norm_rope_kv_write(qp, stream_));
      for (int l = 0; l < static_cast<int>(pack.levels.size()); ++l) {
        const cuda::LevelPack& lp = pack.levels[l];
        cuda::AttentionLevelParams ap;
        ap.q = q_.get();
        ap.k_cache = kc;
        ap.v_cache = vc;
        ap.row_order = d_plan + pack.row_order;
        ap.q_pos = d_plan + pack.q_pos;
        ap.level = cuda::level_arrays(pack, l, d_plan);
        ap.o = states_o_.get();
        ap.lse = states_lse_.get();
        ap.slice_base = lp.slice_base;
        ap.rows = n;
        ap.num_heads = H;
        ap.num_kv_heads = KVH;
        ap.head_dim = D;
        ap.page_size = layout_.page_size;
        ap.sm_scale = 1.0f / std::sqrt(static_cast<float>(D));
        ap.grid_items = lp.num_items;
        ap.grid_splits = lp.num_splits;
        ap.warps = lp.warps;
        CUDA_TRY(cuda::launch_attention_level(ap, stream_));
      }
      cuda::MergeStatesParams mp;
      mp.o = states_o_.get();
      mp.lse = states_lse_.get();
      mp.out = xb_.get();
      mp.num_states = slices;
      mp.rows = n;
      mp.heads = H;
      mp.head_dim = D;
      CUDA_TRY(cuda::launch_merge_states(mp, stream_));
      gemm_->run(xb_.get(), L.o_proj.get(), tmp_.get(), false, n, hidden, H * D, stream_);
      norm(tmp_.get(), L.post_ln.get(), nullptr, n, xb_.get(), true, eps);
      gemm_->run(xb_.get(), L.gate_up.get(), tmp_.get(), false, n, 2 * inter, hidden, stream_);
      CUDA_TRY(cuda::launch_silu_mul({tmp_.get(), act_.get(), n, inter}, stream_));
      gemm_->run(act_.get(), L.down.get(), tmp_.get(), false, n, hidden, inter, stream_);
      mlp_out = tmp_.get();
    }
    // Final norm only for the rows whose logits are wanted (the residual is not needed after).
    norm(mlp_out, final_norm_.get(), d_logit, R, xb_.get(), false, eps);
    gemm_->run(xb_.get(), lm_head_, logits_.get(), true, R, config_.vocab_size, hidden, stream_);
    CUDA_TRY(cudaStreamSynchronize(stream_));
    num_logit_rows_ = R;
  }

  std::vector<std::int32_t> sample(const std::vector<RowSampling>& params) override {
    const int R = static_cast<int>(params.size());
    if (R != num_logit_rows_) {
      throw_error(ErrorCode::kInvalidArgument,
                  "cuda runner: sample() got {} parameter rows for {} logit rows", R, num_logit_rows_);
    }
    if (R == 0) return {};
    // Packed as 8-byte lanes: temperature, top_k, top_p, min_p (4 bytes each, padded), seed, step.
    const std::size_t bytes = static_cast<std::size_t>(R) * 6 * 8 + static_cast<std::size_t>(R) * 4;
    stage(bytes);
    auto* base = static_cast<unsigned char*>(host_stage_);
    auto* temp = reinterpret_cast<float*>(base);
    auto* topk = reinterpret_cast<int*>(base + R * 8);
    auto* topp = reinterpret_cast<float*>(base + R * 16);
    auto* minp = reinterpret_cast<float*>(base + R * 24);
    auto* seed = reinterpret_cast<unsigned long long*>(base + R * 32);
    auto* step = reinterpret_cast<unsigned long long*>(base + R * 40);
    for (int r = 0; r < R; ++r) {
      temp[r] = params[r].temperature;
      topk[r] = params[r].top_k;
      topp[r] = params[r].top_p;
      minp[r] = params[r].min_p;
      seed[r] = params[r].seed;
      step[r] = params[r].step;
    }
    sample_dev_.reserve(bytes);
    CUDA_TRY(cudaMemcpyAsync(sample_dev_.get(), base, R * 48, cudaMemcpyHostToDevice, stream_));
    unsigned char* d = sample_dev_.get();
    cuda::SampleParams sp;
    sp.logits = logits_.get();
    sp.temperature = reinterpret_cast<const float*>(d);
    sp.top_k = reinterpret_cast<const int*>(d + R * 8);
    sp.top_p = reinterpret_cast<const float*>(d + R * 16);
    sp.min_p = reinterpret_cast<const float*>(d + R * 24);
    sp.seed = reinterpret_cast<const unsigned long long*>(d + R * 32);
    sp.step = reinterpret_cast<const unsigned long long*>(d + R * 40);
    sp.out = reinterpret_cast<std::int32_t*>(d + R * 48);
    sp.rows = R;
    sp.vocab = config_.vocab_size;
    CUDA_TRY(cuda::launch_sample(sp, stream_));
    std::vector<std::int32_t> out(R);
    CUDA_TRY(cudaMemcpyAsync(out.data(), sp.out, R * 4, cudaMemcpyDeviceToHost, stream_));
    CUDA_TRY(cudaStreamSynchronize(stream_));
    for (int r = 0; r < R; ++r) {
      if (out[r] < 0) {
        throw_error(ErrorCode::kInvalidArgument,
                    "cuda runner: logit row {} is all -inf or NaN; no token can be sampled", r);
      }
    }
    return out;
  }

  std::vector<float> copy_logits() override {
    std::vector<float> out(static_cast<std::size_t>(num_logit_rows_) * config_.vocab_size);
    if (out.empty()) return out;
    CUDA_TRY(cudaMemcpyAsync(out.data(), logits_.get(), out.size() * 4, cudaMemcpyDeviceToHost, stream_));
    CUDA_TRY(cudaStreamSynchronize(stream_));
    return out;
  }

 private:
  void validate_config(int num_pages, int page_size) const {
    const ModelConfig& c = config_;
    if (c.head_dim != 64 && c.head_dim != 128) {
      throw_error(ErrorCode::kUnsupported,
                  "cuda runner: head_dim {} is not supported (the attention kernels take 64 or 128)",
                  c.head_dim);
    }
    if (c.num_key_value_heads <= 0 || c.num_attention_heads % c.num_key_value_heads != 0 ||
        c.num_attention_heads / c.num_key_value_heads > 8) {
      throw_error(ErrorCode::kUnsupported,
                  "cuda runner: {} query heads over {} KV heads is not supported (GQA group 1..8)",
                  c.num_attention_heads, c.num_key_value_heads);
    }
    if (num_pages <= 0 || page_size <= 0) {
      throw_error(ErrorCode::kInvalidArgument, "cuda runner: num_pages {} and page_size {} must be > 0",
                  num_pages, page_size);
    }
  }

  void validate_batch(const StepBatch& b) const {
    const int n = b.num_rows();
    if (b.plan == nullptr) throw_error(ErrorCode::kInvalidArgument, "cuda runner: step batch has no plan");
    if (static_cast<int>(b.positions.size()) != n || static_cast<int>(b.slot_mapping.size()) != n) {
      throw_error(ErrorCode::kInvalidArgument,
                  "cuda runner: batch has {} tokens but {} positions and {} slots", n,
                  b.positions.size(), b.slot_mapping.size());
    }
    if (b.plan->num_rows != n) {
      throw_error(ErrorCode::kInvalidArgument, "cuda runner: plan covers {} rows, batch has {}",
                  b.plan->num_rows, n);
    }
    const std::int64_t slots = static_cast<std::int64_t>(layout_.num_pages) * layout_.page_size;
    for (int i = 0; i < n; ++i) {
      if (b.token_ids[i] < 0 || b.token_ids[i] >= config_.vocab_size) {
        throw_error(ErrorCode::kInvalidArgument, "cuda runner: token id {} at row {} outside vocab {}",
                    b.token_ids[i], i, config_.vocab_size);
      }
      if (b.slot_mapping[i] < 0 || b.slot_mapping[i] >= slots) {
        throw_error(ErrorCode::kInvalidArgument, "cuda runner: slot {} at row {} outside the {} KV slots",
                    b.slot_mapping[i], i, slots);
      }
    }
    for (std::int32_t r : b.logit_rows) {
      if (r < 0 || r >= n) throw_error(ErrorCode::kInvalidArgument, "cuda runner: logit row {} outside batch of {}", r, n);
    }
    for (const CascadeLevel& lv : b.plan->levels) {
      for (std::size_t i = 0; i < lv.page_ids.size(); ++i) {
        if (lv.page_ids[i] < 0 || lv.page_ids[i] >= layout_.num_pages ||
            i >= lv.page_lens.size() || lv.page_lens[i] > layout_.page_size) {
          throw_error(ErrorCode::kInvalidArgument,
                      "cuda runner: plan page {} (len {}) outside the pool of {} pages of {} slots",
                      lv.page_ids[i], i < lv.page_lens.size() ? lv.page_lens[i] : -1,
                      layout_.num_pages, layout_.page_size);
        }
      }
    }
  }

  void norm(const bf16* x, const bf16* w, const std::int32_t* row_index, int rows, bf16* out,
            bool write_residual, float eps) {
    cuda::AddRmsNormParams p;
    p.x = x;
    p.residual = residual_.get();
    p.weight = w;
    p.row_index = row_index;
    p.out = out;
    p.eps = eps;
    p.rows = rows;
    p.dim = config_.hidden_size;
    p.write_residual = write_residual;
    CUDA_TRY(cuda::launch_add_rms_norm(p, stream_));
  }

  void stage(std::size_t bytes) {
    if (bytes <= host_stage_bytes_) return;
    if (host_stage_ != nullptr) CUDA_TRY(cudaFreeHost(host_stage_));
    host_stage_ = nullptr;
    host_stage_bytes_ = 0;
    CUDA_TRY(cudaMallocHost(&host_stage_, bytes));
    host_stage_bytes_ = bytes;
  }

  // Converts `t` (checked against `shape`) into dst[offset ...] as bf16.
  void put(const HostTensor& t, const char* name, std::size_t expect, DeviceBuffer<bf16>& dst,
           std::size_t offset, DeviceBuffer<float>& staging) {
    if (t.data.size() != expect) {
      throw_error(ErrorCode::kInvalidArgument, "cuda runner: weight {} has {} values, expected {}",
                  name, t.data.size(), expect);
    }
    staging.reserve(expect);
    CUDA_TRY(cudaMemcpy(staging.get(), t.data.data(), expect * 4, cudaMemcpyHostToDevice));
    CUDA_TRY(cuda::launch_convert_f32_to_bf16(
        {staging.get(), dst.get() + offset, static_cast<std::int64_t>(expect)}, nullptr));
  }

  void upload_weights(const Qwen3Weights& w) {
    const ModelConfig& c = config_;
    const std::size_t hidden = c.hidden_size, qs = c.q_size(), kvs = c.kv_size(),
                      inter = c.intermediate_size, D = c.head_dim, V = c.vocab_size;
    if (static_cast<int>(w.layers.size()) != c.num_hidden_layers) {
      throw_error(ErrorCode::kInvalidArgument, "cuda runner: weights have {} layers, config {}",
                  w.layers.size(), c.num_hidden_layers);
    }
    DeviceBuffer<float> staging;
    embed_.resize(V * hidden);
    put(w.embed_tokens, "embed_tokens", V * hidden, embed_, 0, staging);
    final_norm_.resize(hidden);
    put(w.norm, "norm", hidden, final_norm_, 0, staging);
    if (w.lm_head.data.empty()) {
      lm_head_ = embed_.get();
    } else {
      lm_head_buf_.resize(V * hidden);
      put(w.lm_head, "lm_head", V * hidden, lm_head_buf_, 0, staging);
      lm_head_ = lm_head_buf_.get();
    }
    layers_.resize(c.num_hidden_layers);
    for (int i = 0; i < c.num_hidden_layers; ++i) {
      const LayerWeights& s = w.layers[i];
      LayerDev& L = layers_[i];
      L.in_ln.resize(hidden);
      put(s.input_layernorm, "input_layernorm", hidden, L.in_ln, 0, staging);
      L.qkv.resize((qs + 2 * kvs) * hidden);
      put(s.q_proj, "q_proj", qs * hidden, L.qkv, 0, staging);
      put(s.k_proj, "k_proj", kvs * hidden, L.qkv, qs * hidden, staging);
      put(s.v_proj, "v_proj", kvs * hidden, L.qkv, (qs + kvs) * hidden, staging);
      if (c.attention_bias) {
        L.qkv_bias.resize(qs + 2 * kvs);
        put(s.q_bias, "q_bias", qs, L.qkv_bias, 0, staging);
        put(s.k_bias, "k_bias", kvs, L.qkv_bias, qs, staging);
        put(s.v_bias, "v_bias", kvs, L.qkv_bias, qs + kvs, staging);
      }
      L.o_proj.resize(hidden * qs);
      put(s.o_proj, "o_proj", hidden * qs, L.o_proj, 0, staging);
      L.q_norm.resize(D);
      put(s.q_norm, "q_norm", D, L.q_norm, 0, staging);
      L.k_norm.resize(D);
      put(s.k_norm, "k_norm", D, L.k_norm, 0, staging);
      L.post_ln.resize(hidden);
      put(s.post_attention_layernorm, "post_attention_layernorm", hidden, L.post_ln, 0, staging);
      L.gate_up.resize(2 * inter * hidden);
      put(s.gate_proj, "gate_proj", inter * hidden, L.gate_up, 0, staging);
      put(s.up_proj, "up_proj", inter * hidden, L.gate_up, inter * hidden, staging);
      L.down.resize(hidden * inter);
      put(s.down_proj, "down_proj", hidden * inter, L.down, 0, staging);
    }
    CUDA_TRY(cudaDeviceSynchronize());
  }

  ModelConfig config_;
  KvLayout layout_;
  std::string device_name_;
  int num_sms_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Gemm> gemm_;

  DeviceBuffer<bf16> embed_, final_norm_, lm_head_buf_;
  const bf16* lm_head_ = nullptr;
  std::vector<LayerDev> layers_;
  DeviceBuffer<bf16> k_pool_, v_pool_;
  DeviceBuffer<float> inv_freq_;

  DeviceBuffer<std::int32_t> batch_dev_;
  DeviceBuffer<float> residual_, states_o_, states_lse_, logits_;
  DeviceBuffer<bf16> xb_, tmp_, q_, act_;
  DeviceBuffer<unsigned char> sample_dev_;
  void* host_stage_ = nullptr;
  std::size_t host_stage_bytes_ = 0;
  int num_logit_rows_ = 0;
};

}  // namespace

std::unique_ptr<ModelRunner> make_cuda_runner(const ModelConfig& config, const Qwen3Weights& weights,
                                              int num_pages, int page_size) {
  if (!cuda_device_available()) {
    throw_error(ErrorCode::kCuda, "cuda runner: no CUDA device or driver is available");
  }
  return std::make_unique<CudaRunner>(config, weights, num_pages, page_size);
}

}  // namespace cascade

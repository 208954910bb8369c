// The CUDA ModelRunner: Qwen3 in bf16 with fp32 residual stream, paged bf16 KV pools, cuBLASLt
// GEMMs, the cascade attention kernels, and sampling on the device.
#include "backend/cuda/cuda_runner.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <string>

#include "backend/cuda/ab_switch.h"
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
  CudaRunner(const ModelConfig& config, const Qwen3Weights& w, int num_pages, int page_size,
             const CudaRunnerOptions& options)
      : config_(config), options_(options) {
    validate_config(num_pages, page_size);
    CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUDA_TRY(level_fork_.init());
    int dev = 0;
    CUDA_TRY(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    CUDA_TRY(cudaGetDeviceProperties(&prop, dev));
    device_name_ = std::string("cuda:") + std::to_string(dev) + " (" + prop.name + ")";
    num_sms_ = prop.multiProcessorCount;
    gemm_ = std::make_unique<cuda::Gemm>();
    skinny_argmax_ = gemm_->skinny_enabled() && !cuda::ab_switch_on("CASCADE_GEMM_NO_ARGMAX");
    // Probes the device (a synchronous copy) now, outside graph capture; Gemm has probed the
    // same sm_90a code already, this keeps the attention kernels' choice from depending on it.
    cuda::attention_wgmma_available();

    layout_.num_layers = config.num_hidden_layers;
    layout_.num_pages = num_pages;
    layout_.page_size = page_size;
    layout_.num_kv_heads = config.num_key_value_heads;
    layout_.head_dim = config.head_dim;
    // Shared levels without a causal cut take the wide form where it runs (attention.h).
    wide_ok_ = options_.wide && cuda::attention_wide_usable(config.head_dim, page_size);

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

    // The lm_head's greedy argmax (the GEMV at 1-2 logit rows, the skinny GEMM at 3-64):
    // fixed-size buffers, so graphs may bake in their addresses. The GEMV's counter starts at
    // zero and each call leaves it zero; the skinny GEMM's keys start at zero and the final norm
    // before each lm_head zeroes them again.
    const int parts = cuda::gemv_argmax_parts(cuda::kGemvMaxM, gemm_->sm_count());
    argmax_v_.resize(parts);
    argmax_i_.resize(parts);
    // Two sets of ids/keys (ids_of/keys_of, by the parity that alternates per forward): a step
    // writes one while the previous step's set is copied out or fed from.
    argmax_out_.resize(2 * cuda::kGemvMaxM);
    argmax_keys_.resize(2 * cuda::kSkinnyMaxM);
    argmax_counter_.resize(1);
    CUDA_TRY(cudaMemsetAsync(argmax_counter_.get(), 0, argmax_counter_.bytes(), stream_));
    CUDA_TRY(cudaMemsetAsync(argmax_keys_.get(), 0, argmax_keys_.bytes(), stream_));
    CUDA_TRY(cudaEventCreateWithFlags(&fwd_stage_.copied, cudaEventDisableTiming));
    CUDA_TRY(cudaEventCreateWithFlags(&sample_stage_.copied, cudaEventDisableTiming));
    CUDA_TRY(cudaEventCreateWithFlags(&drawn_stage_.copied, cudaEventDisableTiming));
    CUDA_TRY(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking));
    CUDA_TRY(cudaStreamCreateWithFlags(&ids_stream_, cudaStreamNonBlocking));
    for (cudaEvent_t* e : {&step_done_, &staged_ev_, &ids_copied_[0], &ids_copied_[1]}) {
      CUDA_TRY(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
    }
  }

  ~CudaRunner() override {
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    if (copy_stream_ != nullptr) cudaStreamSynchronize(copy_stream_);
    if (ids_stream_ != nullptr) cudaStreamSynchronize(ids_stream_);
    for (cudaEvent_t e : {step_done_, staged_ev_, ids_copied_[0], ids_copied_[1]}) {
      if (e != nullptr) cudaEventDestroy(e);
    }
    for (auto& [key, e] : bucket_free_) cudaEventDestroy(e);
    if (copy_stream_ != nullptr) cudaStreamDestroy(copy_stream_);
    if (ids_stream_ != nullptr) cudaStreamDestroy(ids_stream_);
    drop_graphs();
    for (HostStage* h : {&fwd_stage_, &sample_stage_, &drawn_stage_}) {
      if (h->ptr != nullptr) cudaFreeHost(h->ptr);
      if (h->copied != nullptr) cudaEventDestroy(h->copied);
    }
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  const ModelConfig& config() const override { return config_; }
  const KvLayout& kv_layout() const override { return layout_; }
  const char* device_name() const override { return device_name_.c_str(); }

  void forward(const StepBatch& batch) override {
    // A forward that throws leaves nothing to sample (not the previous step's ids).
    num_logit_rows_ = 0;
    argmax_ready_ = false;
    logits_skipped_ = false;
    const bool could_feed = can_feed_;  // only this forward may feed on them, even if it throws
    can_feed_ = false;
    const int n = batch.num_rows();
    validate_batch(batch);
    // Fed rows (StepBatch::feed) as the embedding kernel reads them: k >= 0 the skinny lm_head's
    // key k, -2 - k the GEMV's id k, -1 the row's own token. Only the forward right after a
    // feedable sample_async() may feed: the next lm_head overwrites those ids.
    std::vector<std::int32_t> feed;
    if (!batch.feed.empty()) {
      if (!could_feed || static_cast<int>(batch.feed.size()) != n) {
        throw_error(ErrorCode::kInvalidArgument, "cuda runner: a fed step needs a feedable sample_async() just "
                    "before it and one feed entry per row ({} for {} rows)", batch.feed.size(), n);
      }
      feed.resize(n);
      for (int r = 0; r < n; ++r) {
        const std::int32_t f = batch.feed[r];
        if (f < -1 || f >= drawn_.rows) {
          throw_error(ErrorCode::kInvalidArgument, "cuda runner: row {} feeds on logit row {} of {}", r, f, drawn_.rows);
        }
        feed[r] = f < 0 ? -1 : drawn_.keys ? f : -2 - f;
      }
    }
    const CascadePlan& plan = *batch.plan;
    cuda::PlanPack pack;
    const char* why = "";
    // The step's KV slots tell the attention kernels which keys they may read ahead (kv_fresh).
    // Only small batches read ahead (enqueue: after the qkv GEMV, 1-2 rows); at batch 256 the
    // search cost ~0.1 ms of host time per step for nothing, so larger ones skip it.
    const bool small = n <= cuda::kGemvMaxM;
    const int plan_sms = options_.num_sms > 0 ? options_.num_sms : num_sms_;
    if (!cuda::pack_plan(plan, config_.num_attention_heads, config_.num_key_value_heads, plan_sms,
                         kMaxStateSlices, &pack, &why, small ? &batch.slot_mapping : nullptr,
                         layout_.page_size, wide_ok_)) {
      throw_error(ErrorCode::kInvalidArgument, "cuda runner: invalid cascade plan: {}", why);
    }
    const int R = static_cast<int>(batch.logit_rows.size());
    if (std::any_of(pack.levels.begin(), pack.levels.end(),
                    [](const cuda::LevelPack& lp) { return lp.warps == cuda::kWideWarps && lp.num_items > 0; })) {
      ++stats_.wide;
    }
    if (cuda::resolve_direct_out(&pack, options_.direct_out)) ++stats_.direct_out;
    // q/k RMSNorm + RoPE inside a lone decode level where that measured faster (qk_rope_pays),
    // or wherever it can (options_.qk_rope, for tests); never with a qkv bias, and only where
    // each row writes its group's last key (the level writes it just before reading it).
    const bool take_rope =
        !config_.attention_bias &&
        (options_.qk_rope > 0 ||
         (options_.qk_rope < 0 && cuda::qk_rope_pays(pack, config_.num_key_value_heads, plan_sms))) &&
        cuda::qk_rope_slots_match(plan, pack, batch.slot_mapping, layout_.page_size);
    if (cuda::resolve_qk_rope(&pack, take_rope)) ++stats_.qk_rope;
    // Leaving the logits out matters only where the skinny lm_head takes the argmax (3-64 rows):
    // elsewhere keep them, so that no graph is captured twice for nothing.
    const bool keep_logits = batch.keep_logits || !skinny_argmax_ || R < cuda::kSkinnyMinM || R > cuda::kSkinnyMaxM;
    // This step writes the ids/keys of parity `cur` (and feeds from the other, the last
    // step's): it waits for a copy of them still queued from the step before last.
    const int cur = 1 - last_parity_;
    if (ids_copy_pending_[cur]) {
      CUDA_TRY(cudaStreamWaitEvent(stream_, ids_copied_[cur], 0));
      ids_copy_pending_[cur] = false;
    }
    if (R == n && n > 0 && n <= options_.max_graph_rows) {
      argmax_ready_ = forward_bucketed(batch, feed, plan, pack, keep_logits, cur);
    } else {
      argmax_ready_ = forward_eager(batch, feed, pack, keep_logits, cur);
    }
    last_parity_ = cur;
    num_logit_rows_ = R;
    logits_skipped_ = argmax_ready_ && !keep_logits;
    // Where the lm_head took the greedy argmax (1-64 rows), the step is left enqueued:
    // a greedy sample() then costs one copy and one wait (and an error of the step's kernels is
    // reported by sample() or copy_logits(), not here). Elsewhere waiting here measured faster:
    // letting sample() queue its copy and kernel behind the running step made batch 16 and 64
    // steps 3-4% slower (cause not established; bench/NOTES_cuda.md v7). So at 3-64 rows the step
    // is left enqueued only while the last sample() was greedy (a running batch tends to keep its
    // sampling from step to step). Either way, host staging buffers and device buffers that
    // queued work may still read are waited for before they are rewritten or freed (acquire(),
    // quiesce()).
    if (argmax_ready_) ++stats_.lm_head_argmax;
    const bool leave_queued = argmax_ready_ && (R <= cuda::kGemvMaxM || last_sample_greedy_);
    if (!leave_queued) CUDA_TRY(cudaStreamSynchronize(stream_));
  }

  CudaGraphStats stats() const { return stats_; }

  std::vector<std::int32_t> sample(const std::vector<RowSampling>& params) override {
    if (drawn_.pending) throw_error(ErrorCode::kInvalidArgument, "cuda runner: sample() before collect()");
    can_feed_ = false;
    const int R = static_cast<int>(params.size());
    if (R != num_logit_rows_) {
      throw_error(ErrorCode::kInvalidArgument,
                  "cuda runner: sample() got {} parameter rows for {} logit rows", R, num_logit_rows_);
    }
    if (R == 0) return {};
    const bool greedy = std::all_of(params.begin(), params.end(),
                                    [](const RowSampling& p) { return !(p.temperature > 0.0f); });
    if (!greedy && logits_skipped_) {
      throw_error(ErrorCode::kInvalidArgument,
                  "cuda runner: sample() with a sampled row after a forward without logits (StepBatch::keep_logits)");
    }
    last_sample_greedy_ = greedy;
    if (greedy && argmax_ready_) {
      // The lm_head already took each row's argmax (the sampler's greedy rule): the GEMV as ids
      // (1-2 rows), the skinny GEMM as keys (3-64 rows).
      std::vector<std::int32_t> out(R);
      if (R <= cuda::kGemvMaxM) {
        CUDA_TRY(cudaMemcpyAsync(out.data(), ids_of(last_parity_), R * 4, cudaMemcpyDeviceToHost, stream_));
        CUDA_TRY(cudaStreamSynchronize(stream_));
      } else {
        std::vector<unsigned long long> keys(R);
        CUDA_TRY(cudaMemcpyAsync(keys.data(), keys_of(last_parity_), R * 8, cudaMemcpyDeviceToHost, stream_));
        CUDA_TRY(cudaStreamSynchronize(stream_));
        std::transform(keys.begin(), keys.end(), out.begin(), cuda::skinny_argmax_id);
      }
      check_sampled(out);
      return out;
    }
    // Packed as 8-byte lanes: temperature, top_k, top_p, min_p (4 bytes each, padded), seed, step.
    const std::size_t bytes = static_cast<std::size_t>(R) * 6 * 8 + static_cast<std::size_t>(R) * 4;
    auto* base = static_cast<unsigned char*>(acquire(sample_stage_, bytes));
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
    grow(sample_dev_, bytes);
    CUDA_TRY(cudaMemcpyAsync(sample_dev_.get(), base, R * 48, cudaMemcpyHostToDevice, stream_));
    staged(sample_stage_);
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
    sp.scan_blocks = cuda::sample_scan_blocks(R, num_sms_);
    if (sp.scan_blocks > 1) {
      const std::size_t parts = static_cast<std::size_t>(R) * sp.scan_blocks;
      grow(scan_v_, parts);
      grow(scan_i_, parts);
      if (static_cast<std::size_t>(R) > scan_counters_.size()) {
        quiesce();
        scan_counters_.resize(R);
        // On stream_ (a non-blocking stream does not wait for the legacy default stream).
        CUDA_TRY(cudaMemsetAsync(scan_counters_.get(), 0, scan_counters_.bytes(), stream_));
      }
      sp.scan_v = scan_v_.get();
      sp.scan_i = scan_i_.get();
      sp.scan_counters = scan_counters_.get();
    }
    CUDA_TRY(cuda::launch_sample(sp, stream_));
    std::vector<std::int32_t> out(R);
    CUDA_TRY(cudaMemcpyAsync(out.data(), sp.out, R * 4, cudaMemcpyDeviceToHost, stream_));
    CUDA_TRY(cudaStreamSynchronize(stream_));
    check_sampled(out);
    return out;
  }

  // Where the lm_head took every row's greedy id, only queues their copy into pinned memory: the
  // next forward may then feed on the ids still on the device (its embedding reads them), and
  // collect() waits for the copy alone. Elsewhere draws at once (sample()), not feedable.
  void sample_async(const std::vector<RowSampling>& params) override {
    if (drawn_.pending) throw_error(ErrorCode::kInvalidArgument, "cuda runner: sample_async() before collect()");
    const int R = static_cast<int>(params.size());
    const bool greedy = std::all_of(params.begin(), params.end(),
                                    [](const RowSampling& p) { return !(p.temperature > 0.0f); });
    if (!(greedy && argmax_ready_ && R == num_logit_rows_ && R > 0)) {
      drawn_.ids = sample(params);
      drawn_.pending = true;
      drawn_.on_device = false;
      return;
    }
    last_sample_greedy_ = true;
    const bool keys = R > cuda::kGemvMaxM;
    void* h = acquire(drawn_stage_, static_cast<std::size_t>(R) * 8);
    // On the ids stream once the step is done, so that the next step (enqueued before
    // collect()) need not wait for the copy: it writes the other parity's ids. The step after it
    // (this parity again) waits for the copy before its lm_head rewrites them (forward(),
    // ids_copied_).
    const int p = last_parity_;
    CUDA_TRY(cudaEventRecord(step_done_, stream_));
    CUDA_TRY(cudaStreamWaitEvent(ids_stream_, step_done_, 0));
    if (keys) {
      CUDA_TRY(cudaMemcpyAsync(h, keys_of(p), R * 8, cudaMemcpyDeviceToHost, ids_stream_));
    } else {
      CUDA_TRY(cudaMemcpyAsync(h, ids_of(p), R * 4, cudaMemcpyDeviceToHost, ids_stream_));
    }
    staged(drawn_stage_, ids_stream_);
    CUDA_TRY(cudaEventRecord(ids_copied_[p], ids_stream_));
    ids_copy_pending_[p] = true;
    drawn_ = {{}, R, keys, true, true};
    can_feed_ = true;
  }

  std::vector<std::int32_t> collect() override {
    if (!drawn_.pending) throw_error(ErrorCode::kInvalidArgument, "cuda runner: collect() without sample_async()");
    drawn_.pending = false;
    if (!drawn_.on_device) return std::move(drawn_.ids);
    CUDA_TRY(cudaEventSynchronize(drawn_stage_.copied));  // a failure of the step's kernels shows here
    drawn_stage_.pending = false;
    std::vector<std::int32_t> out(drawn_.rows);
    if (drawn_.keys) {
      const auto* k = static_cast<const unsigned long long*>(drawn_stage_.ptr);
      std::transform(k, k + drawn_.rows, out.begin(), cuda::skinny_argmax_id);
    } else {
      std::memcpy(out.data(), drawn_stage_.ptr, drawn_.rows * 4);
    }
    check_sampled(out);
    return out;
  }

  bool can_feed() const override { return can_feed_; }

  std::vector<float> copy_logits() override {
    if (logits_skipped_) {
      throw_error(ErrorCode::kInvalidArgument,
                  "cuda runner: copy_logits() after a forward without logits (StepBatch::keep_logits)");
    }
    std::vector<float> out(static_cast<std::size_t>(num_logit_rows_) * config_.vocab_size);
    if (out.empty()) return out;
    CUDA_TRY(cudaMemcpyAsync(out.data(), logits_.get(), out.size() * 4, cudaMemcpyDeviceToHost, stream_));
    CUDA_TRY(cudaStreamSynchronize(stream_));
    return out;
  }

 private:

  static void check_sampled(const std::vector<std::int32_t>& out) {
    for (std::size_t r = 0; r < out.size(); ++r) {
      if (out[r] < 0) {
        throw_error(ErrorCode::kInvalidArgument,
                    "cuda runner: logit row {} is all -inf or NaN; no token can be sampled", r);
      }
    }
  }

  // A pinned host buffer whose contents a queued H2D copy reads: rewritten only after that copy.
  struct HostStage {
    void* ptr = nullptr;
    std::size_t bytes = 0;
    cudaEvent_t copied = nullptr;
    bool pending = false;  // `copied` recorded after a copy not yet known complete
  };
  void* acquire(HostStage& h, std::size_t bytes) {
    if (h.pending) {
      CUDA_TRY(cudaEventSynchronize(h.copied));
      h.pending = false;
    }
    if (bytes > h.bytes) {
      if (h.ptr != nullptr) CUDA_TRY(cudaFreeHost(h.ptr));
      h.ptr = nullptr;
      h.bytes = 0;
      CUDA_TRY(cudaMallocHost(&h.ptr, bytes));
      h.bytes = bytes;
    }
    return h.ptr;
  }
  void staged(HostStage& h, cudaStream_t on = nullptr) {
    CUDA_TRY(cudaEventRecord(h.copied, on != nullptr ? on : stream_));
    h.pending = true;
  }
  // The lm_head's greedy ids (GEMV) and keys (skinny GEMM) of parity p.
  std::int32_t* ids_of(int p) { return argmax_out_.get() + p * cuda::kGemvMaxM; }
  unsigned long long* keys_of(int p) { return argmax_keys_.get() + p * cuda::kSkinnyMaxM; }
  // Waits for the queued work, before a buffer or graph that it may use is freed.
  void quiesce() {  // the side stream too: a failed step may have left levels there unjoined
    CUDA_TRY(cudaStreamSynchronize(stream_));
    CUDA_TRY(cudaStreamSynchronize(copy_stream_));
    CUDA_TRY(cudaStreamSynchronize(ids_stream_));
    CUDA_TRY(level_fork_.synchronize());
  }
  template <typename T>
  void grow(DeviceBuffer<T>& b, std::size_t size) {
    if (size <= b.size()) return;
    quiesce();
    b.resize(size);
  }

  // Everything one step enqueues, with device pointers resolved; shared by the eager, padded and
  // graph paths so they launch exactly the same work.
  struct LevelLaunch {
    cuda::LevelArrays arrays;
    int slice_base = 0, grid_items = 0, grid_splits = 0, warps = 1;
    const std::int32_t* kv_fresh = nullptr;
    bool short_tiles = false;
    bool direct_out = false;  // writes the output rows itself: no fill, no merge (LevelPack)
    bool qk_rope = false;     // forms q and writes K/V itself: no qk_norm_rope (LevelPack)
  };
  struct StepLaunch {
    int rows = 0;        // rows of the GEMMs / row kernels (padded in the bucketed path)
    int logit_rows = 0;  // rows of the final norm + lm_head
    int slices = 1;      // state slices filled and merged
    bool keep_logits = true;  // false: a skinny lm_head taking the argmax leaves the logits unwritten
    const std::int32_t *tok = nullptr, *pos = nullptr, *slot = nullptr, *logit = nullptr,
                       *row_order = nullptr, *q_pos = nullptr;
    const std::int32_t* feed = nullptr;  // EmbeddingParams::feed (nullptr: no row fed)
    int parity = 0;  // writes ids_of/keys_of(parity), feeds from the other
    std::vector<LevelLaunch> levels;
  };

  // Grows a work buffer; any growth moves buffers that captured graphs point at, so drop them.
  template <typename T>
  void reserve_work(DeviceBuffer<T>& b, std::size_t size) {
    if (size <= b.size()) return;
    grow(b, size);
    drop_graphs();  // their kernels have the old address baked in
  }
  void drop_graphs() {  // callers quiesce() first (the destructor cannot throw)
    for (auto& e : graphs_) {
      if (e.exec != nullptr) cudaGraphExecDestroy(e.exec);
    }
    graphs_.clear();
  }

  void reserve_step(int rows, int logit_rows, int slices) {
    const int H = config_.num_attention_heads, D = config_.head_dim, hidden = config_.hidden_size,
              inter = config_.intermediate_size, KVH = config_.num_key_value_heads;
    const std::size_t r = static_cast<std::size_t>(rows);
    reserve_work(residual_, r * hidden);
    reserve_work(residual_alt_, r * hidden);
    const std::size_t xb_had = xb_.size();
    reserve_work(xb_, r * std::max(hidden, H * D));
    // Zeroed when (re)allocated: a lone direct_out level leaves padding rows as they were.
    if (xb_.size() != xb_had) CUDA_TRY(cudaMemsetAsync(xb_.get(), 0, xb_.bytes(), stream_));
    reserve_work(tmp_, r * std::max({(H + 2 * KVH) * D, 2 * inter, hidden}));
    reserve_work(q_, r * H * D);
    reserve_work(act_, r * std::max(inter, hidden));
    reserve_work(ssq_, r * ((hidden + 63) / 64));
    reserve_work(states_o_, static_cast<std::size_t>(slices) * r * H * D);
    reserve_work(states_lse_, static_cast<std::size_t>(slices) * r * H);
    reserve_work(logits_, static_cast<std::size_t>(std::max(logit_rows, 1)) * config_.vocab_size);
  }

  bool forward_eager(const StepBatch& batch, const std::vector<std::int32_t>& feed, const cuda::PlanPack& pack,
                     bool keep_logits, int parity) {
    ++stats_.eager;
    const int n = batch.num_rows();
    const int R = static_cast<int>(batch.logit_rows.size());
    // One H2D copy: tokens | positions | slots | logit rows | plan | feed (if any).
    const std::size_t off_pos = n, off_slot = 2 * n, off_logit = 3 * n, off_plan = 3 * n + R;
    const std::size_t off_feed = off_plan + pack.data.size();
    const std::size_t total = off_feed + feed.size();
    auto* h = static_cast<std::int32_t*>(acquire(fwd_stage_, total * sizeof(std::int32_t)));
    std::memcpy(h, batch.token_ids.data(), n * 4);
    std::memcpy(h + off_pos, batch.positions.data(), n * 4);
    std::memcpy(h + off_slot, batch.slot_mapping.data(), n * 4);
    std::memcpy(h + off_logit, batch.logit_rows.data(), R * 4);
    std::memcpy(h + off_plan, pack.data.data(), pack.data.size() * 4);
    if (!feed.empty()) std::memcpy(h + off_feed, feed.data(), feed.size() * 4);
    grow(batch_dev_, total);  // graphs never read batch_dev_
    CUDA_TRY(cudaMemcpyAsync(batch_dev_.get(), h, total * 4, cudaMemcpyHostToDevice, stream_));
    staged(fwd_stage_);
    const std::int32_t* d = batch_dev_.get();
    StepLaunch s;
    s.rows = n;
    s.keep_logits = keep_logits;
    s.logit_rows = R;
    s.slices = std::max(1, pack.num_slices);
    s.tok = d;
    s.pos = d + off_pos;
    s.slot = d + off_slot;
    s.logit = d + off_logit;
    if (!feed.empty()) s.feed = d + off_feed;
    s.parity = parity;
    const std::int32_t* d_plan = d + off_plan;
    s.row_order = d_plan + pack.row_order;
    s.q_pos = d_plan + pack.q_pos;
    for (int l = 0; l < static_cast<int>(pack.levels.size()); ++l) {
      const cuda::LevelPack& lp = pack.levels[l];
      s.levels.push_back({cuda::level_arrays(pack, l, d_plan), lp.slice_base, lp.num_items,
                          lp.num_splits, lp.warps, cuda::level_kv_fresh(lp, d_plan), lp.short_tiles,
                          lp.direct_out, lp.qk_rope});
    }
    reserve_step(n, R, s.slices);
    return enqueue(s);
  }

  // Capacities of one bucketed layout: rows padded to `rows`, per level the item/group/page
  // capacities and the split count its state slices are reserved for.
  struct LevelCaps {
    int warps = 1, items = 0, groups = 0, pages = 0, splits = 1;
    bool short_tiles = false;  // with warps, picks the kernel form: a graph fits only its own
    bool direct_out = false;  // no merge kernel in the graph (LevelPack::direct_out)
    bool qk_rope = false;     // no qk_norm_rope kernel in the graph (LevelPack::qk_rope)
    bool operator==(const LevelCaps&) const = default;
  };
  struct Layout {
    int rows = 0, slices = 0;
    bool keep_logits = true;  // lm_head writes the logits (else only the argmax keys)
    int parity = 0;           // StepLaunch::parity (and which of the bucket's two device buffers)
    std::vector<LevelCaps> levels;
    // Offsets (int32 elements) of the fixed arrays; level arrays follow in LevelPack form.
    int tok = 0, pos = 0, slot = 0, logit = 0, row_order = 0, q_pos = 0, feed = 0, total = 0;
    std::vector<cuda::LevelPack> offs;
  };
  struct GraphEntry {
    Layout layout;
    std::uint64_t generation = 0;
    cudaGraphExec_t exec = nullptr;
    bool argmax = false;  // the captured step takes the greedy argmax in the lm_head (GEMV or skinny GEMM)
  };

  static int pow2_at_least(int v) {
    int p = 1;
    while (p < v) p <<= 1;
    return p;
  }

  static bool fits(const Layout& lay, int rows, bool keep_logits, int parity, const std::vector<LevelCaps>& need) {
    if (lay.rows != rows || lay.keep_logits != keep_logits || lay.parity != parity || lay.levels.size() != need.size()) {
      return false;
    }
    for (std::size_t l = 0; l < need.size(); ++l) {
      const LevelCaps &c = lay.levels[l], &q = need[l];
      if (c.warps != q.warps || c.short_tiles != q.short_tiles || c.direct_out != q.direct_out ||
          c.qk_rope != q.qk_rope || q.items > c.items || q.groups > c.groups || q.pages > c.pages ||
          (c.direct_out ? q.splits != c.splits : q.splits > c.splits)) {
        return false;
      }
    }
    return true;
  }

  // A layout for `need` with headroom (powers of two) so that a growing context rarely forces a
  // recapture; returns false if the state slices would exceed kMaxStateSlices.
  static Layout make_layout(int rows, const std::vector<LevelCaps>& need) {
    Layout lay;
    lay.rows = rows;
    lay.levels = need;
    int slices = 0;
    for (LevelCaps& c : lay.levels) {
      c.items = pow2_at_least(std::max(1, c.items));
      c.groups = pow2_at_least(std::max(1, c.groups));
      c.pages = pow2_at_least(std::max(16, c.pages + c.pages / 2));
      slices += c.splits;
    }
    // Spare slices go to the levels in order, doubling their splits while they fit; not to a
    // level writing its rows itself: its splits are a CTA's warps, spare ones would hold SM room;
    // nor to a wide level (attention.h): each spare CTA would wait for a whole SM to exit.
    for (LevelCaps& c : lay.levels) {
      if (c.direct_out || c.warps == cuda::kWideWarps) continue;
      const int want = std::min(2 * c.splits, pow2_at_least(c.splits));
      if (slices - c.splits + want <= kMaxStateSlices) {
        slices += want - c.splits;
        c.splits = want;
      }
    }
    lay.slices = std::max(1, slices);
    int off = 0;
    auto take = [&](int count) {
      const int o = off;
      off += std::max(count, 1);
      return o;
    };
    lay.tok = take(rows);
    lay.pos = take(rows);
    lay.slot = take(rows);
    lay.logit = take(rows);
    lay.row_order = take(rows);
    lay.q_pos = take(rows);
    lay.feed = take(rows);
    int base = 0;
    for (const LevelCaps& c : lay.levels) {
      cuda::LevelPack o;
      o.items = take(2 * c.items);
      o.q_indptr = take(c.groups + 1);
      o.page_indptr = take(c.groups + 1);
      o.page_ids = take(c.pages);
      o.page_start = take(c.pages);
      o.kv_len = take(c.groups);
      o.kv_start_pos = take(c.groups);
      o.kv_fresh = take(c.groups);
      o.counts = take(3);
      o.num_items = c.items;
      o.num_splits = c.splits;
      o.warps = c.warps;
      o.short_tiles = c.short_tiles;
      o.direct_out = c.direct_out;
      o.qk_rope = c.qk_rope;
      o.slice_base = base;
      base += c.splits;
      lay.offs.push_back(o);
    }
    lay.total = off;
    return lay;
  }

  bool forward_bucketed(const StepBatch& batch, const std::vector<std::int32_t>& feed, const CascadePlan& plan,
                        const cuda::PlanPack& pack, bool keep_logits, int parity) {
    const int n = batch.num_rows();
    const int rows = pow2_at_least(n);
    std::vector<LevelCaps> need(pack.levels.size());
    for (std::size_t l = 0; l < need.size(); ++l) {
      const cuda::LevelPack& lp = pack.levels[l];
      need[l] = {lp.warps, lp.num_items, plan.levels[l].num_groups(),
                 static_cast<int>(plan.levels[l].page_ids.size()), lp.num_splits, lp.short_tiles,
                 lp.direct_out, lp.qk_rope};
    }
    GraphEntry* entry = nullptr;
    for (GraphEntry& e : graphs_) {
      if (fits(e.layout, rows, keep_logits, parity, need)) {
        entry = &e;
        break;
      }
    }
    if (entry == nullptr) {
      // Replace an entry of this bucket and plan shape whose capacities were outgrown, or add one.
      auto same_shape = [&](const GraphEntry& e) {
        if (e.layout.rows != rows || e.layout.keep_logits != keep_logits || e.layout.parity != parity ||
            e.layout.levels.size() != need.size()) {
          return false;
        }
        for (std::size_t l = 0; l < need.size(); ++l) {
          if (e.layout.levels[l].warps != need[l].warps || e.layout.levels[l].short_tiles != need[l].short_tiles ||
              e.layout.levels[l].direct_out != need[l].direct_out ||
              e.layout.levels[l].qk_rope != need[l].qk_rope ||
              (need[l].direct_out && e.layout.levels[l].splits != need[l].splits)) {
            return false;  // (a direct level's split count, 1..kMaxCtaSplits, keeps a graph of its own)
          }
        }
        return true;
      };
      auto it = std::find_if(graphs_.begin(), graphs_.end(), same_shape);
      if (it != graphs_.end()) {
        quiesce();
        if (it->exec != nullptr) cudaGraphExecDestroy(it->exec);
        graphs_.erase(it);
      }
      GraphEntry e;
      e.layout = make_layout(rows, need);
      e.layout.keep_logits = keep_logits;
      e.layout.parity = parity;
      graphs_.push_back(std::move(e));
      entry = &graphs_.back();
    }
    const Layout lay = entry->layout;  // a copy: buffer growth below may drop the entry

    // Stage the fixed layout: padded rows get token 0, position 0, no KV write (slot -1), logit
    // row 0 and no feed (-1, as every row of a step not fed); plan arrays are copied into their
    // capacity-sized places.
    auto* h = static_cast<std::int32_t*>(acquire(fwd_stage_, static_cast<std::size_t>(lay.total) * 4));
    std::fill(h, h + lay.total, 0);
    std::memcpy(h + lay.tok, batch.token_ids.data(), n * 4);
    std::memcpy(h + lay.pos, batch.positions.data(), n * 4);
    std::memcpy(h + lay.slot, batch.slot_mapping.data(), n * 4);
    std::fill(h + lay.slot + n, h + lay.slot + rows, -1);
    std::memcpy(h + lay.logit, batch.logit_rows.data(), n * 4);
    std::memcpy(h + lay.row_order, pack.data.data() + pack.row_order, n * 4);
    std::memcpy(h + lay.q_pos, pack.data.data() + pack.q_pos, n * 4);
    std::fill(h + lay.feed, h + lay.feed + rows, -1);
    if (!feed.empty()) std::memcpy(h + lay.feed, feed.data(), n * 4);
    for (std::size_t l = 0; l < need.size(); ++l) {
      const cuda::LevelPack& src = pack.levels[l];
      const cuda::LevelPack& dst = lay.offs[l];
      const int groups = need[l].groups, pages = need[l].pages;
      auto copy = [&](int to, int from, int count) {
        if (count > 0) std::memcpy(h + to, pack.data.data() + from, count * 4);
      };
      copy(dst.items, src.items, 2 * src.num_items);
      copy(dst.q_indptr, src.q_indptr, groups + 1);
      copy(dst.page_indptr, src.page_indptr, groups + 1);
      copy(dst.page_ids, src.page_ids, pages);
      copy(dst.page_start, src.page_start, pages);
      copy(dst.kv_len, src.kv_len, groups);
      copy(dst.kv_start_pos, src.kv_start_pos, groups);
      copy(dst.kv_fresh, src.kv_fresh, groups);
      copy(dst.counts, src.counts, 3);
    }
    // Per-bucket device buffer, one per parity: its address is baked into the graph. Uploaded on
    // the copy stream once the step before last (the buffer's last reader) is done, so that the
    // copy runs beside the last step instead of between it and this one.
    const int key = 2 * rows + parity;
    DeviceBuffer<std::int32_t>& dev = bucket_dev_[key];
    if (static_cast<std::size_t>(lay.total) > dev.size()) {
      grow(dev, static_cast<std::size_t>(lay.total) * 2);
      drop_graphs_of(rows);
    }
    cudaEvent_t& free_ev = bucket_free_[key];
    if (free_ev == nullptr) {
      CUDA_TRY(cudaEventCreateWithFlags(&free_ev, cudaEventDisableTiming));
    } else {
      CUDA_TRY(cudaStreamWaitEvent(copy_stream_, free_ev, 0));
    }
    CUDA_TRY(cudaMemcpyAsync(dev.get(), h, static_cast<std::size_t>(lay.total) * 4,
                             cudaMemcpyHostToDevice, copy_stream_));
    staged(fwd_stage_, copy_stream_);
    CUDA_TRY(cudaEventRecord(staged_ev_, copy_stream_));
    CUDA_TRY(cudaStreamWaitEvent(stream_, staged_ev_, 0));
    const std::int32_t* d = dev.get();
    StepLaunch s;
    s.rows = rows;
    s.logit_rows = rows;
    s.slices = lay.slices;
    s.tok = d + lay.tok;
    s.pos = d + lay.pos;
    s.slot = d + lay.slot;
    s.logit = d + lay.logit;
    s.row_order = d + lay.row_order;
    s.q_pos = d + lay.q_pos;
    s.feed = d + lay.feed;  // baked into the graph: every replay reads it
    s.parity = parity;
    s.keep_logits = keep_logits;
    for (const cuda::LevelPack& o : lay.offs) {
      s.levels.push_back({cuda::level_arrays(o, d), o.slice_base, o.num_items, o.num_splits, o.warps,
                          cuda::level_kv_fresh(o, d), o.short_tiles, o.direct_out, o.qk_rope});
    }
    reserve_step(rows, rows, lay.slices);  // may drop graphs (buffers moved)
    entry = find_entry(lay);
    if (!options_.cuda_graphs) {
      ++stats_.padded_eager;
      const bool argmax = enqueue(s);
      CUDA_TRY(cudaEventRecord(bucket_free_[key], stream_));
      return argmax;
    }
    if (entry == nullptr) {
      GraphEntry e;
      e.layout = lay;
      graphs_.push_back(std::move(e));
      entry = &graphs_.back();
    }
    if (entry->exec == nullptr) {
      entry->argmax = capture(s, entry);
      ++stats_.captures;
    }
    CUDA_TRY(cudaGraphLaunch(entry->exec, stream_));
    CUDA_TRY(cudaEventRecord(bucket_free_[key], stream_));
    ++stats_.replays;
    return entry->argmax;
  }

  GraphEntry* find_entry(const Layout& lay) {
    for (GraphEntry& e : graphs_) {
      if (e.layout.rows == lay.rows && e.layout.keep_logits == lay.keep_logits && e.layout.parity == lay.parity &&
          e.layout.levels == lay.levels) {
        return &e;
      }
    }
    return nullptr;
  }
  void drop_graphs_of(int rows) {  // callers quiesce() first, as for drop_graphs()
    for (GraphEntry& e : graphs_) {
      if (e.layout.rows == rows && e.exec != nullptr) {
        cudaGraphExecDestroy(e.exec);
        e.exec = nullptr;
      }
    }
  }

  // Returns enqueue()'s result for the captured step.
  bool capture(const StepLaunch& s, GraphEntry* entry) {
    CUDA_TRY(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
    cudaGraph_t graph = nullptr;
    bool argmax = false;
    try {
      argmax = enqueue(s);
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      if (graph != nullptr) cudaGraphDestroy(graph);
      throw;
    }
    CUDA_TRY(cudaStreamEndCapture(stream_, &graph));
    const cudaError_t err = cudaGraphInstantiate(&entry->exec, graph, 0);
    cudaGraphDestroy(graph);
    CUDA_TRY(err);
    return argmax;
  }

  // Enqueues the step; returns true when the lm_head (GEMV or skinny GEMM) also took the greedy
  // argmax of every logit row (argmax_out_ from the GEMV, argmax_keys_ from the skinny GEMM).
  bool enqueue(const StepLaunch& s) {
    const int n = s.rows, R = s.logit_rows;
    const int H = config_.num_attention_heads, KVH = config_.num_key_value_heads,
              D = config_.head_dim, hidden = config_.hidden_size, inter = config_.intermediate_size;
    const int qkv_n = (H + 2 * KVH) * D;
    const float eps = static_cast<float>(config_.rms_norm_eps);
    // Rows a level does not cover keep the empty state; the kernels rewrite the covered ones. A
    // lone level writing its output directly (LevelPack::direct_out) writes no states.
    const bool direct = std::any_of(s.levels.begin(), s.levels.end(),
                                    [](const LevelLaunch& lv) { return lv.grid_items > 0 && lv.direct_out; });
    // A lone decode level forming q/k RMSNorm + RoPE and writing K/V itself (LevelPack::qk_rope)
    // replaces qk_norm_rope: one kernel fewer per layer.
    const bool level_rope = std::any_of(s.levels.begin(), s.levels.end(),
                                        [](const LevelLaunch& lv) { return lv.grid_items > 0 && lv.qk_rope; });
    if (!direct) {
      CUDA_TRY(cuda::launch_fill_f32(states_lse_.get(), static_cast<std::int64_t>(s.slices) * n * H,
                                     -INFINITY, stream_));
    }
    CUDA_TRY(cuda::launch_embedding(
        {embed_.get(), s.tok, residual_.get(), n, hidden, s.feed, ids_of(1 - s.parity), keys_of(1 - s.parity)}, stream_));
    const std::int64_t layer_elems = layout_.layer_elems();
    bf16* mlp_out = nullptr;
    // The residual stream starts the step in residual_. Each residual add + RMSNorm reads it and
    // writes the new residual into the other buffer, which then takes its place: small batches
    // form the norm inside the GEMV that follows it, whose other blocks still read the old
    // residual while block 0 writes the new one.
    float* res = residual_.get();
    float* res_other = residual_alt_.get();
    auto residual_norm = [&](const bf16* delta, const bf16* gamma) {
      cuda::ResidualNorm nm;
      nm.delta = delta;
      nm.residual = res;
      nm.residual_out = res_other;
      nm.gamma = gamma;
      nm.eps = eps;
      std::swap(res, res_other);
      return nm;
    };
    // launch.cuh's early release for qk_norm_rope, merge and the down GEMV
    // (CASCADE_PDL_NO_EARLY_RELEASE=1: off).
    static const bool early_release = !cuda::ab_switch_on("CASCADE_PDL_NO_EARLY_RELEASE");
    // Batches of 3-64 rows on sm_90a (Gemm::fused_takes): the residual adds, RMSNorms and SiLU
    // ride in the skinny GEMMs (skinny_gemm.h's SkinnyFusion), three kernels fewer per layer.
    // o_proj and down add their output to the residual and leave bf16(h * gamma) of the next
    // norm in act_ and the rows' per-tile sums of squares in ssq_; gate_up and the next qkv scale
    // their rows by the norm (folded), and gate_up writes silu(gate) * up. Layer 0's input norm
    // and the final norm keep the norm kernel.
    const bool fused = gemm_->fused_takes(n, {hidden, H * D, inter});
    // Levels that launch a grid: with two or more, LevelFork runs them side by side.
    const int busy_levels = static_cast<int>(
        std::count_if(s.levels.begin(), s.levels.end(), [](const LevelLaunch& lv) { return lv.grid_items > 0; }));
    // Chained (LevelFork::begin) where every busy level after the first may run beside, over the
    // launches (a bucket's graph launches a grid for a level with no items, so the pack's lone
    // level, which may take direct_out or qk_rope, can come second here), and not read ahead
    // (per layer, below).
    const bool levels_may_chain =
        cuda::levels_may_chain(s.levels, [](const LevelLaunch& lv) { return lv.grid_items > 0; });
    const int ssq_tiles = (hidden + 63) / 64;
    auto residual_fusion = [&](const bf16* gamma) {  // the same residual ping-pong as the norms
      const cuda::ResidualNorm nm = residual_norm(nullptr, gamma);
      cuda::SkinnyFusion f;
      f.residual = nm.residual;
      f.residual_out = nm.residual_out;
      f.gamma = nm.gamma;
      f.x_out = act_.get();
      f.ssq_out = ssq_.get();
      return f;
    };
    auto norm_fusion = [&](bool gated) {
      cuda::SkinnyFusion f;
      f.ssq_in = ssq_.get();
      f.ssq_tiles = ssq_tiles;
      f.eps = eps;
      f.gated = gated;
      return f;
    };
    for (int li = 0; li < config_.num_hidden_layers; ++li) {
      const LayerDev& L = layers_[li];
      // act_ and ssq_ hold this layer's input norm, written by the previous layer's fused down.
      const bool folded = fused && li > 0;
      // Early release (launch.cuh) only where the qkv projection ran as our GEMV, which releases
      // after its wait; when and whether a cuBLASLt GEMM (batches of 3+) releases its dependents
      // is not ours to know. With it, attention reads its first KV tiles ahead (read_ahead).
      bool early = false;
      if (folded) {
        gemm_->run_fused(act_.get(), L.qkv.get(), tmp_.get(), n, qkv_n, hidden, norm_fusion(false), stream_);
      } else {
        early = norm_gemm(residual_norm(mlp_out, L.in_ln.get()), n, L.qkv.get(), tmp_.get(), false, qkv_n) &&
                early_release;
      }
      bf16* kc = k_pool_.get() + li * layer_elems;
      bf16* vc = v_pool_.get() + li * layer_elems;
      cuda::QkNormRopeParams qp;
      qp.qkv = tmp_.get();
      qp.bias = config_.attention_bias ? L.qkv_bias.get() : nullptr;
      qp.q_norm = L.q_norm.get();
      qp.k_norm = L.k_norm.get();
      qp.inv_freq = inv_freq_.get();
      qp.positions = s.pos;
      qp.slot_mapping = s.slot;
      qp.q_out = q_.get();
      qp.k_cache = kc;
      qp.v_cache = vc;
      qp.eps = eps;
      qp.rows = n;
      qp.num_heads = H;
      qp.num_kv_heads = KVH;
      qp.head_dim = D;
      qp.early_release = early;
      if (!level_rope) CUDA_TRY(cuda::launch_qk_norm_rope_kv_write(qp, stream_));
      CUDA_TRY(level_fork_.begin(busy_levels, stream_, levels_may_chain && !early));  // read-ahead levels fork
      cudaError_t level_err = cudaSuccess;  // joined before it is thrown (LevelFork::end)
      for (const LevelLaunch& lv : s.levels) {
        if (lv.grid_items <= 0 || level_err != cudaSuccess) continue;  // nothing to launch
        cuda::AttentionLevelParams ap;
        ap.q = q_.get();
        ap.k_cache = kc;
        ap.v_cache = vc;
        ap.row_order = s.row_order;
        ap.q_pos = s.q_pos;
        ap.level = lv.arrays;
        ap.o = states_o_.get();
        ap.lse = states_lse_.get();
        ap.slice_base = lv.slice_base;
        ap.rows = n;
        ap.num_heads = H;
        ap.num_kv_heads = KVH;
        ap.head_dim = D;
        ap.page_size = layout_.page_size;
        ap.sm_scale = 1.0f / std::sqrt(static_cast<float>(D));
        ap.grid_items = lv.grid_items;
        ap.grid_splits = lv.grid_splits;
        ap.warps = lv.warps;
        ap.read_ahead = early;  // after an early-released qk_norm_rope (measured no gain without)
        ap.kv_fresh = lv.kv_fresh;
        ap.short_tiles = lv.short_tiles;
        ap.num_slots = layout_.num_pages * layout_.page_size;
        // Rows outside the level (a bucket's padding rows) then keep what xb_ held: zero when it
        // was allocated (reserve_step), bf16 results of earlier kernels since; rows are
        // independent from o_proj to the logits, and padding rows' logits are never read.
        if (lv.direct_out) ap.direct_out = xb_.get();
        if (lv.qk_rope) ap.rope = qp;  // the level does qk_norm_rope's work (LevelPack::qk_rope)
        const cudaStream_t level_stream = level_fork_.next(&ap);
        level_err = cuda::launch_attention_level(ap, level_stream);
      }
      const cudaError_t joined = level_fork_.end();
      CUDA_TRY(level_err);
      CUDA_TRY(joined);
      if (!direct) {  // the lone level wrote xb_ itself
        cuda::MergeStatesParams mp;
        mp.o = states_o_.get();
        mp.lse = states_lse_.get();
        mp.out = xb_.get();
        mp.num_states = s.slices;
        mp.rows = n;
        mp.heads = H;
        mp.head_dim = D;
        mp.early_release = early;
        CUDA_TRY(cuda::launch_merge_states(mp, stream_));
      }
      if (fused) {
        gemm_->run_fused(xb_.get(), L.o_proj.get(), nullptr, n, hidden, H * D, residual_fusion(L.post_ln.get()),
                         stream_);
        gemm_->run_fused(act_.get(), L.gate_up.get(), tmp_.get(), n, inter, hidden, norm_fusion(true), stream_);
        if (li + 1 < config_.num_hidden_layers) {
          gemm_->run_fused(tmp_.get(), L.down.get(), nullptr, n, hidden, inter,
                           residual_fusion(layers_[li + 1].in_ln.get()), stream_);
          mlp_out = nullptr;  // added to the residual already
        } else {
          gemm_->run(tmp_.get(), L.down.get(), act_.get(), false, n, hidden, inter, stream_);
          mlp_out = act_.get();  // the final norm adds it
        }
        continue;
      }
      // o_proj writes act_ (free until the down projection), so a fused norm + gate_up GEMV reads
      // it while writing tmp_.
      gemm_->run(xb_.get(), L.o_proj.get(), act_.get(), false, n, hidden, H * D, stream_);
      norm_gemm(residual_norm(act_.get(), L.post_ln.get()), n, L.gate_up.get(), tmp_.get(), false, 2 * inter);
      // Small batches: silu(gate) * up is formed while the down GEMV stages its input (one kernel
      // less per layer); its output goes to act_ (reserve_step sizes it for [n, hidden] too).
      // The down GEMV releases early as well (its successor, the next qkv GEMV, streams its first
      // columns of w meanwhile): -17 to -34 us at batch 1; gate_up instead was +14 to +31 us (v7).
      if (gemm_->run_silu_gemv(tmp_.get(), L.down.get(), act_.get(), n, hidden, inter, stream_, early)) {
        mlp_out = act_.get();
      } else {
        CUDA_TRY(cuda::launch_silu_mul({tmp_.get(), act_.get(), n, inter}, stream_));
        gemm_->run(act_.get(), L.down.get(), tmp_.get(), false, n, hidden, inter, stream_);
        mlp_out = tmp_.get();
      }
    }
    // Final norm only for the rows whose logits are wanted (the residual is not needed after).
    // One or two rows: the norm is formed in the lm_head GEMV, which also takes the greedy argmax
    // of each row (sample() then needs no kernel for greedy rows); 3-64 rows: the skinny GEMM
    // after the norm kernel takes it (CASCADE_GEMM_NO_ARGMAX=1 leaves it to the sampler, A/B).
    cuda::ResidualNorm fn;
    fn.delta = mlp_out;
    fn.residual = res;
    fn.gamma = final_norm_.get();
    fn.eps = eps;
    fn.row_index = s.logit;
    fn.src_rows = n;
    const cuda::GemvArgmax am{argmax_v_.get(), argmax_i_.get(), argmax_counter_.get(), ids_of(s.parity)};
    static_assert(cuda::kSkinnyMinM > cuda::kGemvMaxM, "sample() tells the GEMV's ids from the keys by R");
    const cuda::SkinnyArgmax sam{keys_of(s.parity)};
    return norm_gemm(fn, R, lm_head_, logits_.get(), true, config_.vocab_size, &am,
                     skinny_argmax_ && R <= cuda::kSkinnyMaxM ? &sam : nullptr, s.keep_logits) &&
           R > 0;
  }

  // y = norm(nm) · wᵀ over `rows` rows: one GEMV that forms the norm itself where the GEMV path
  // takes the call (1-2 rows; returns true, and with argmax also each row's greedy argmax), else
  // the norm kernel into xb_, then run() (with skinny_argmax, fp32 y and at most kSkinnyMaxM rows:
  // run_argmax, true where the skinny GEMM took the argmax, which leaves y unwritten without
  // keep_y). Either way nm.residual_out receives the new residual.
  bool norm_gemm(const cuda::ResidualNorm& nm, int rows, const bf16* w, void* y, bool y_f32, int N,
                 const cuda::GemvArgmax* argmax = nullptr, const cuda::SkinnyArgmax* skinny_argmax = nullptr,
                 bool keep_y = true) {
    const int hidden = config_.hidden_size;
    if (gemm_->run_norm_gemv(nm, w, y, y_f32, rows, N, hidden, stream_, argmax)) return true;
    cuda::AddRmsNormParams p;
    p.norm = nm;
    p.out = xb_.get();
    p.rows = rows;
    p.dim = hidden;
    const bool argmax_keys = skinny_argmax != nullptr && y_f32 && rows <= cuda::kSkinnyMaxM;
    if (argmax_keys) {
      p.clear = skinny_argmax->keys;  // the keys start at zero (SkinnyArgmax)
      p.clear_n = rows;
    }
    CUDA_TRY(cuda::launch_add_rms_norm(p, stream_));
    if (argmax_keys) {
      return gemm_->run_argmax(xb_.get(), w, static_cast<float*>(y), rows, N, hidden, *skinny_argmax, stream_,
                               keep_y);
    }
    gemm_->run(xb_.get(), w, y, y_f32, rows, N, hidden, stream_);
    return false;
  }
  void validate_config(int num_pages, int page_size) const {
    if (const std::string why = cuda_unsupported_reason(config_); !why.empty()) {
      throw_error(ErrorCode::kUnsupported, "cuda runner: {}", why);
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
  cuda::LevelFork level_fork_;  // levels after the first beside it (attention.h)
  std::unique_ptr<cuda::Gemm> gemm_;

  DeviceBuffer<bf16> embed_, final_norm_, lm_head_buf_;
  const bf16* lm_head_ = nullptr;
  std::vector<LayerDev> layers_;
  DeviceBuffer<bf16> k_pool_, v_pool_;
  bool wide_ok_ = false;  // pack_plan may pick the wide form (attention_wide_usable)
  DeviceBuffer<float> inv_freq_;

  DeviceBuffer<std::int32_t> batch_dev_;
  DeviceBuffer<float> residual_, residual_alt_, states_o_, states_lse_, logits_;
  DeviceBuffer<float> ssq_;  // the fused path's per-tile sums of squares (SkinnyFusion::ssq_out)
  DeviceBuffer<bf16> xb_, tmp_, q_, act_;
  DeviceBuffer<float> scan_v_;  // the sampler's split argmax scan (SampleParams::scan_blocks)
  DeviceBuffer<int> scan_i_;
  DeviceBuffer<unsigned> scan_counters_;
  DeviceBuffer<unsigned char> sample_dev_;
  DeviceBuffer<float> argmax_v_;  // the lm_head GEMV's greedy argmax (GemvArgmax)
  DeviceBuffer<std::int32_t> argmax_i_, argmax_out_;
  DeviceBuffer<unsigned> argmax_counter_;
  DeviceBuffer<unsigned long long> argmax_keys_;  // the skinny lm_head's greedy argmax (SkinnyArgmax)
  HostStage fwd_stage_, sample_stage_;
  int num_logit_rows_ = 0;
  // The last sample_async(): its tokens (drawn at once), or where they come from (the lm_head's
  // ids, copied into drawn_stage_).
  struct Drawn {
    std::vector<std::int32_t> ids;
    int rows = 0;
    bool keys = false;       // SkinnyArgmax keys (else int32 ids)
    bool on_device = false;  // copy queued into drawn_stage_
    bool pending = false;    // not collected yet
  };
  Drawn drawn_;
  HostStage drawn_stage_;
  bool can_feed_ = false;  // the next forward may feed on drawn_ (its ids still on the device)
  bool argmax_ready_ = false;  // argmax_out_ / argmax_keys_ hold the last forward's greedy argmax
  bool last_sample_greedy_ = true;  // the last sample() had greedy rows only (forward's wait)
  bool logits_skipped_ = false;     // the last forward left the logits unwritten (keep_logits)
  // The skinny lm_head takes the greedy argmax at 3-64 rows (sm_90a; CASCADE_GEMM_NO_ARGMAX=1
  // leaves it to the sampler, A/B).
  bool skinny_argmax_ = false;

  CudaRunnerOptions options_;
  CudaGraphStats stats_;
  std::deque<GraphEntry> graphs_;  // deque: entries keep their address while others are added
  std::map<int, DeviceBuffer<std::int32_t>> bucket_dev_;  // per 2 * rows + parity
  std::map<int, cudaEvent_t> bucket_free_;                 // recorded after the buffer's last reader
  // Uploads of staged steps (the bucketed path) and downloads of greedy ids (sample_async()),
  // beside the running step; two streams, so that an upload does not queue behind a download
  // that waits for the running step.
  cudaStream_t copy_stream_ = nullptr, ids_stream_ = nullptr;
  cudaEvent_t step_done_ = nullptr, staged_ev_ = nullptr;
  cudaEvent_t ids_copied_[2] = {nullptr, nullptr};
  bool ids_copy_pending_[2] = {false, false};
  int last_parity_ = 1;  // parity of the last forward (the first one writes parity 0)
};

}  // namespace

std::string cuda_unsupported_reason(const ModelConfig& c) {
  if (c.head_dim != 64 && c.head_dim != 128) {
    return fmt::format("head_dim {} is not supported (the attention kernels take 64 or 128)", c.head_dim);
  }
  if (c.num_key_value_heads <= 0 || c.num_attention_heads % c.num_key_value_heads != 0 ||
      c.num_attention_heads / c.num_key_value_heads > 8) {
    return fmt::format("{} query heads over {} KV heads is not supported (GQA group 1..8)",
                       c.num_attention_heads, c.num_key_value_heads);
  }
  return {};
}

std::unique_ptr<ModelRunner> make_cuda_runner(const ModelConfig& config, const Qwen3Weights& weights,
                                              int num_pages, int page_size) {
  if (!cuda_device_available()) {
    throw_error(ErrorCode::kCuda, "cuda runner: no CUDA device or driver is available");
  }
  CudaRunnerOptions options;
  const char* env = std::getenv("CASCADE_CUDA_GRAPHS");
  if (env != nullptr && std::string(env) == "0") options.cuda_graphs = false;
  return make_cuda_runner(config, weights, num_pages, page_size, options);
}

std::unique_ptr<ModelRunner> make_cuda_runner(const ModelConfig& config, const Qwen3Weights& weights,
                                              int num_pages, int page_size,
                                              const CudaRunnerOptions& options) {
  if (!cuda_device_available()) {
    throw_error(ErrorCode::kCuda, "cuda runner: no CUDA device or driver is available");
  }
  if (options.max_graph_rows < 0) {
    throw_error(ErrorCode::kInvalidArgument, "cuda runner: max_graph_rows {} must be >= 0",
                options.max_graph_rows);
  }
  return std::make_unique<CudaRunner>(config, weights, num_pages, page_size, options);
}

CudaGraphStats cuda_graph_stats(const ModelRunner& runner) {
  const auto* r = dynamic_cast<const CudaRunner*>(&runner);
  return r != nullptr ? r->stats() : CudaGraphStats{};
}

}  // namespace cascade

// Entry points of the CUDA backend that engine code may call without CUDA headers; guard calls
// with `#if CASCADE_HAVE_CUDA`.
#pragma once

#include <memory>
#include <string>

#include "engine/model_runner.h"
#include "model/model_config.h"
#include "model/weights.h"

namespace cascade {

// True when a CUDA driver and at least one device are present. Never throws or aborts (CI machines
// have no driver).
bool cuda_device_available();

// Why the CUDA runner cannot take this model (head_dim other than 64/128, a GQA group over 8), or
// "" when it can. `--device auto` falls back to the CPU on a non-empty reason.
std::string cuda_unsupported_reason(const ModelConfig& config);

// A ModelRunner on the current CUDA device: weights converted to bf16 on upload, K/V pools of
// `num_pages` pages of `page_size` slots per layer (bf16). head_dim must be 64 or 128 and
// num_attention_heads / num_key_value_heads in 1..8. Throws cascade::Error (kCuda, kUnsupported).
std::unique_ptr<ModelRunner> make_cuda_runner(const ModelConfig& config, const Qwen3Weights& weights,
                                              int num_pages, int page_size);

// Knobs of the CUDA runner. Decode-like steps (every row wants logits, at most max_graph_rows
// rows) run padded to a power-of-two row bucket with fixed-capacity device arrays; with
// cuda_graphs they replay a CUDA graph captured per bucket and plan shape (recaptured when a plan
// outgrows the captured capacities), otherwise the same padded launches run eagerly, so both
// modes give bit-identical results.
struct CudaRunnerOptions {
  bool cuda_graphs = true;   // the default factory turns this off when CASCADE_CUDA_GRAPHS=0
  int max_graph_rows = 512;  // larger decode steps take the unpadded eager path
  // Decode steps whose lone level may form q/k RMSNorm + RoPE itself (LevelPack::qk_rope): -1
  // where cuda::qk_rope_pays, 1 wherever it may (tests), 0 never.
  int qk_rope = -1;
  // Tests: the SM count the attention plans are split for (0: the device's; a few split small
  // batches), and false to keep every level on states + the merge kernel (no LevelPack::direct_out).
  int num_sms = 0;
  bool direct_out = true;
  // false: shared levels never take the wide form (attention.h), for A/B tests; true: where
  // cuda::attention_wide_usable holds.
  bool wide = true;
};

// Counters of the decode path, for tests and benchmarks.
struct CudaGraphStats {
  long captures = 0;        // graphs captured (each bucket/shape once, plus recaptures)
  long replays = 0;         // steps run by replaying a graph
  long padded_eager = 0;    // decode-like steps run padded without a graph
  long eager = 0;           // other steps (prefill, mixed, oversized)
  long direct_out = 0;      // steps whose lone attention level wrote its rows itself (no merge)
  long qk_rope = 0;         // steps whose lone attention level formed q and wrote K/V (no qk_norm_rope)
  long lm_head_argmax = 0;  // steps whose lm_head (GEMV or skinny GEMM) took every row's greedy id
  long wide = 0;            // steps with a level in the wide form
};

// make_cuda_runner with explicit options.
std::unique_ptr<ModelRunner> make_cuda_runner(const ModelConfig& config, const Qwen3Weights& weights,
                                              int num_pages, int page_size,
                                              const CudaRunnerOptions& options);

// The counters of a runner made by make_cuda_runner; all zero for any other runner.
CudaGraphStats cuda_graph_stats(const ModelRunner& runner);

}  // namespace cascade

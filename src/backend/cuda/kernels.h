// Element-wise and row-wise kernels of the CUDA backend (bf16 storage, fp32 math). Each has a CPU
// reference in src/backend/cpu/ops.h and a test in tests/cuda/kernels_test.cpp.
// Launchers return the launch's cudaError_t and never abort.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace cascade::cuda {

using bf16 = __nv_bfloat16;

// out[i] = bf16(in[i]) (round to nearest even).
struct ConvertParams {
  const float* in = nullptr;
  bf16* out = nullptr;
  std::int64_t n = 0;
};
/// \brief fp32 -> bf16 conversion (weight upload).
cudaError_t launch_convert_f32_to_bf16(const ConvertParams& p, cudaStream_t stream);

// out[i] = value for i < n.
/// \brief Fills an fp32 buffer with one value (e.g. -inf for empty attention states).
cudaError_t launch_fill_f32(float* out, std::int64_t n, float value, cudaStream_t stream);

// residual[r, :] = float(table[id_r, :]), id_r = ids[r] unless feed says otherwise: feed[r] >= 0
// takes the greedy id of fed_keys[feed[r]] (a SkinnyArgmax key), feed[r] <= -2 takes
// fed_ids[-2 - feed[r]], -1 keeps ids[r]. A fed id of -1 (a row without a greedy id) becomes 0:
// the step that drew it reports the error and the fed step is dropped.
struct EmbeddingParams {
  const bf16* table = nullptr;     // [vocab, dim]
  const std::int32_t* ids = nullptr;  // [rows]
  float* residual = nullptr;       // [rows, dim] fp32 residual stream
  int rows = 0, dim = 0;
  const std::int32_t* feed = nullptr;  // [rows] or nullptr (no row fed)
  const std::int32_t* fed_ids = nullptr;
  const unsigned long long* fed_keys = nullptr;
};
/// \brief Embedding gather into the fp32 residual stream.
cudaError_t launch_embedding(const EmbeddingParams& p, cudaStream_t stream);

// A residual add + RMSNorm, as the norm kernels below and the GEMV that forms its own input
// (gemv.h) both take it. For each output row j with source row r = row_index ? row_index[j] : j:
//   h = residual[r] + (delta ? float(delta[r]) : 0);  if (residual_out) residual_out[r] = h;
//   out[j] = bf16(float(gamma) * float(bf16(h * rsqrt(mean(h^2) + eps))))
// The residual stream stays fp32 (more accurate than HF's bf16 residual at the cost of 4 bytes per
// hidden value); the normalised value is rounded to bf16 before the weight multiply, as HF's
// Qwen3RMSNorm does in bf16.
struct ResidualNorm {
  const bf16* delta = nullptr;              // [*, dim] or nullptr (plain RMSNorm)
  const float* residual = nullptr;          // [*, dim], read
  float* residual_out = nullptr;            // [*, dim] h, or nullptr; the norm kernels allow
                                            // residual itself, the GEMV does not
  const bf16* gamma = nullptr;              // [dim]
  float eps = 1e-6f;
  const std::int32_t* row_index = nullptr;  // [rows] source rows, or nullptr: row j
  int src_rows = 0;                         // rows of residual/delta when row_index is set
};
struct AddRmsNormParams {
  ResidualNorm norm;
  bf16* out = nullptr;  // [rows, dim]
  int rows = 0, dim = 0;
  // Zeroed by the kernel's first block (at most kNormClearMax): the lm_head's argmax keys, which
  // the skinny GEMM after the final norm needs zero (skinny_gemm.h's SkinnyArgmax).
  unsigned long long* clear = nullptr;
  int clear_n = 0;
};
inline constexpr int kNormClearMax = 256;
/// \brief Fused residual add + RMSNorm (one block per row).
cudaError_t launch_add_rms_norm(const AddRmsNormParams& p, cudaStream_t stream);

// Per row of the fused QKV projection output [rows, (H + 2 * KVH) * D]:
//   q heads: RMSNorm over D with q_norm, rotary embedding (rotate-half) -> q_out[row, h, :];
//   k heads: RMSNorm with k_norm, rotary -> k_cache at slot_mapping[row];
//   v heads: copied -> v_cache at slot_mapping[row].
// Optional bias (attention_bias) is added first. cos/sin are computed in fp32 from
// angle = float(position) * inv_freq[i] as the CPU reference does.
struct QkNormRopeParams {
  const bf16* qkv = nullptr;
  const bf16* bias = nullptr;      // [(H + 2 KVH) * D] or nullptr
  const bf16* q_norm = nullptr;    // [D]
  const bf16* k_norm = nullptr;    // [D]
  const float* inv_freq = nullptr; // [D / 2]
  const std::int32_t* positions = nullptr;     // [rows]
  const std::int32_t* slot_mapping = nullptr;  // [rows]; < 0 skips the KV write
  bf16* q_out = nullptr;           // [rows, H, D]
  bf16* k_cache = nullptr;         // layer pool: [slots, KVH, D]
  bf16* v_cache = nullptr;
  float eps = 1e-6f;
  int rows = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  bool early_release = false;  // launch.cuh's early release (the next kernel's prologue overlaps)
};
/// \brief q/k per-head RMSNorm + RoPE + KV page write. head_dim must be 64 or 128.
cudaError_t launch_qk_norm_rope_kv_write(const QkNormRopeParams& p, cudaStream_t stream);

// out[r, i] = bf16(silu(gate_up[r, i]) * gate_up[r, inter + i]), fp32 math.
struct SiluMulParams {
  const bf16* gate_up = nullptr;  // [rows, 2 * inter]
  bf16* out = nullptr;            // [rows, inter]
  int rows = 0, inter = 0;
};
/// \brief SiLU-and-multiply of the fused gate/up projection.
cudaError_t launch_silu_mul(const SiluMulParams& p, cudaStream_t stream);

// Merges num_states attention states per (row, head): state s is o[s][row][head][:] (normalised
// output, fp32) with lse[s][row][head] (natural log of the softmax denominator, -inf = empty).
// Writes the merged output as bf16 [rows, heads * head_dim] and, if given, fp32 o/lse.
struct MergeStatesParams {
  const float* o = nullptr;    // [num_states, rows, heads, head_dim]
  const float* lse = nullptr;  // [num_states, rows, heads]
  bf16* out = nullptr;         // [rows, heads * head_dim] or nullptr
  float* out_o = nullptr;      // [rows, heads, head_dim] or nullptr
  float* out_lse = nullptr;    // [rows, heads] or nullptr
  int num_states = 0, rows = 0, heads = 0, head_dim = 0;
  const int* num_states_dev = nullptr;  // if set, overrides num_states (CUDA-graph replays)
  bool early_release = false;  // launch.cuh's early release (the next kernel's prologue overlaps)
};
/// \brief Exact merge of attention states (log-sum-exp weighted). head_dim at most 1024
/// (cudaErrorInvalidValue otherwise). head_dim 64 and 128 with 16-byte aligned o, out and out_o
/// take one warp per (row, head); other shapes a block per (row, head).
cudaError_t launch_merge_states(const MergeStatesParams& p, cudaStream_t stream);

// Per logit row: the sampling parameters of engine/model_runner.h RowSampling, as device arrays.
struct SampleParams {
  const float* logits = nullptr;  // [rows, vocab]
  const float* temperature = nullptr;
  const int* top_k = nullptr;
  const float* top_p = nullptr;
  const float* min_p = nullptr;
  const unsigned long long* seed = nullptr;
  const unsigned long long* step = nullptr;
  std::int32_t* out = nullptr;    // [rows]; -1 when a row has no finite or +inf logit
  int rows = 0, vocab = 0;
  // The argmax scan of a row is split over this many blocks (1..kSampleMaxScanBlocks): each
  // writes its (max, id) to scan_v / scan_i [rows * scan_blocks], and the last to finish (counter
  // per row in scan_counters [rows], zero at rest, reset by it) combines them and goes on with the
  // row. A batch-1 step otherwise waits on one block streaming 600 KB of logits.
  int scan_blocks = 1;
  float* scan_v = nullptr;
  int* scan_i = nullptr;
  unsigned* scan_counters = nullptr;
};
inline constexpr int kSampleMaxScanBlocks = 16;
/// \brief Blocks per row for the argmax scan at this batch: enough rows x blocks to cover the SMs.
inline int sample_scan_blocks(int rows, int sm_count) {
  const int b = rows > 0 ? sm_count / rows : 1;
  return b < 1 ? 1 : (b > kSampleMaxScanBlocks ? kSampleMaxScanBlocks : b);
}
/// \brief Samples one token per row, following the CPU sampler's pipeline (engine/sampler.h):
/// greedy argmax, or min-p, top-k (ties kept), top-p, then the inverse CDF of uniform_draw(seed,
/// step) in walk order (probability descending, ties by lower id). One block per row.
cudaError_t launch_sample(const SampleParams& p, cudaStream_t stream);

}  // namespace cascade::cuda

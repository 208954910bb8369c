// The backend interface the engine's step loop drives: one forward over a batch of new tokens, with
// their KV written into pages first and attention following the step's CascadePlan, then sampling.
// Implemented by the CPU reference (src/backend/cpu) and the CUDA backend (src/backend/cuda).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "cache/kv_layout.h"
#include "model/model_config.h"
#include "sched/cascade_plan.h"

namespace cascade {

// One step's input. Rows are the step's new tokens in batch order; a sequence's rows are
// consecutive. The plan's row ids index these rows.
struct StepBatch {
  std::vector<std::int32_t> token_ids;     // [num_rows]
  std::vector<std::int32_t> positions;     // [num_rows]
  std::vector<std::int32_t> slot_mapping;  // [num_rows]: page * page_size + slot for the row's K/V
  std::vector<std::int32_t> logit_rows;    // rows whose next-token logits are needed, in order
  const CascadePlan* plan = nullptr;       // attention plan (must cover every row)
  // false: the caller takes only greedy samples of this step and no logits, so a backend may
  // leave the logits unwritten (the CUDA runner does where its skinny lm_head takes the greedy
  // argmax: 3-64 rows, and then copy_logits() or a sampled row throws).
  bool keep_logits = true;
  // Overlapped decode: feed[r] >= 0 makes row r's token the one that sample_async() drew for logit
  // row feed[r] of the previous forward, not yet collected; -1 keeps token_ids[r] (which must be a
  // valid id either way). Empty: no row is fed. Allowed only while can_feed() is true.
  std::vector<std::int32_t> feed;

  int num_rows() const { return static_cast<int>(token_ids.size()); }
};

// Per logit row: how to pick the next token. Counter-based randomness: the uniform draw for a row is
// a pure function of (seed, step), so sampling is reproducible and backend-independent in its draws.
struct RowSampling {
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;             // <= 0: off
  float top_p = 1.0f;        // >= 1: off
  float min_p = 0.0f;        // <= 0: off
  std::uint64_t seed = 0;
  std::uint64_t step = 0;    // index of the token being generated within its request
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  virtual const ModelConfig& config() const = 0;
  virtual const KvLayout& kv_layout() const = 0;
  virtual const char* device_name() const = 0;

  // Runs the model over batch.token_ids, writing their K/V into batch.slot_mapping and keeping the
  // logits of batch.logit_rows for sample()/copy_logits(). Throws cascade::Error. A backend may
  // return with the work still queued (the CUDA runner does where its lm_head takes the greedy
  // argmax: 1-2 logit rows, and 3-64 while the last sample() was greedy): then a failure of
  // that work is thrown by the next sample(), copy_logits() or forward().
  virtual void forward(const StepBatch& batch) = 0;
  // Samples one token per logit row of the last forward (params.size() == logit_rows.size()).
  virtual std::vector<std::int32_t> sample(const std::vector<RowSampling>& params) = 0;
  // sample() in two halves, so that the next step can be enqueued before this one's tokens are
  // known: sample_async() starts the draw (the CUDA runner only queues the copy of the greedy ids
  // its lm_head took), collect() returns the tokens (waiting for them) and must follow before the
  // next sample_async() or sample(). In between, one forward() may feed them to its rows
  // (StepBatch::feed) where can_feed() is true: then it is enqueued behind this step on the device.
  virtual void sample_async(const std::vector<RowSampling>& params) = 0;
  virtual std::vector<std::int32_t> collect() = 0;
  // True from a sample_async() until the next forward() when that forward may feed on its tokens.
  virtual bool can_feed() const = 0;
  // Copies the last forward's logits to the host: [logit_rows.size(), vocab] fp32.
  virtual std::vector<float> copy_logits() = 0;
};

}  // namespace cascade

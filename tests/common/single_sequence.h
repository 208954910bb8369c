// Test helper: one sequence's whole prompt as one step, every row wanting logits, over pages
// 0, 1, ... of a runner's pool (the flat plan from the scheduler's own make_flat_plan).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model_runner.h"
#include "sched/cascade_scheduler.h"

namespace cascade::test {

struct SingleSequenceStep {
  StepBatch batch;
  CascadePlan plan;
};

inline SingleSequenceStep single_sequence_prefill(const std::vector<std::int32_t>& ids, int page_size) {
  SingleSequenceStep s;
  const int L = static_cast<int>(ids.size());
  SeqAttnInput in;
  in.num_rows = L;
  in.first_row_pos = 0;
  KvBlock own;
  for (int p = 0; p * page_size < L; ++p) {
    own.kv.pages.push_back(p);
    own.kv.lens.push_back(std::min(page_size, L - p * page_size));
  }
  in.blocks.push_back(own);
  s.plan = make_flat_plan({in});
  for (int i = 0; i < L; ++i) {
    s.batch.token_ids.push_back(ids[i]);
    s.batch.positions.push_back(i);
    s.batch.slot_mapping.push_back(i);
    s.batch.logit_rows.push_back(i);
  }
  return s;
}

}  // namespace cascade::test

// The cascade attention plan: built on the host once per step by CascadeScheduler, consumed as-is
// by every layer's attention (CPU reference and CUDA kernels alike).
//
// Query rows are the new tokens of the step (one per decoding sequence, many per prefilling one),
// in the batch order given to the planner. Each level partitions (a subset of) the query rows into
// groups; every group attends to one KvPageList, and rows of one group are contiguous in
// `row_order`. A row's final output is the exact merge of its states over all levels (an empty
// level contributes the identity state). Flat attention is the one-level plan where every
// sequence is its own group with all its pages.
//
// Causal masking: key at position kp is visible to a query at position qp iff kp <= qp. Shared
// levels hold only tokens before every query of the group, so the mask matters only in the last
// level of a prefill.
//
// Rows a level does not cover: CSR ranges cannot skip rows, so a level may contain groups with no
// pages (page_indptr[g] == page_indptr[g+1]); their rows get the empty state at that level. Rows
// after the last group (q_indptr.back() < num_rows) are likewise not covered. A level with no
// groups at all is allowed and contributes nothing.
#pragma once

#include <cstdint>
#include <vector>

namespace cascade {

struct CascadeLevel {
  // Groups of this level, CSR style: group g covers rows row_order[q_indptr[g] .. q_indptr[g+1])
  // and pages page_ids[page_indptr[g] .. page_indptr[g+1]) with valid lengths page_lens[...].
  std::vector<std::int32_t> q_indptr;     // num_groups + 1
  std::vector<std::int32_t> page_indptr;  // num_groups + 1
  std::vector<std::int32_t> page_ids;
  std::vector<std::int32_t> page_lens;
  std::vector<std::int32_t> kv_start_pos;  // num_groups: position of each group's first key

  int num_groups() const { return q_indptr.empty() ? 0 : static_cast<int>(q_indptr.size()) - 1; }
  int group_rows(int g) const { return q_indptr[g + 1] - q_indptr[g]; }
  // Keys (valid tokens) of group g.
  std::int32_t group_kv_len(int g) const {
    std::int32_t n = 0;
    for (std::int32_t i = page_indptr[g]; i < page_indptr[g + 1]; ++i) n += page_lens[i];
    return n;
  }
};

struct CascadePlan {
  int num_rows = 0;                     // query rows of the step
  std::vector<std::int32_t> row_order;  // permutation of [0, num_rows): rows grouped contiguously
  std::vector<std::int32_t> q_pos;      // position of each row (indexed by original row id)
  std::vector<CascadeLevel> levels;     // levels[0] is the most shared
  bool uses_shared_levels = false;      // true if any level other than the last has a group of >1 sequence
};

}  // namespace cascade

// CascadeScheduler: turns the running batch's KV chains into the step's CascadePlan, once per step.
//
// Each sequence hands in its KV as a chain of blocks in position order. Blocks with a key are
// shared chunks: two sequences with the same key at the same place of their chains hold the same
// pages (keys are chained hashes, so equal keys imply equal prefixes: the chains form a trie). The
// sequence's own tokens (including this step's, whose KV is already written) come last, unkeyed.
//
// The plan follows the trie. Compress it so every node is a run of blocks shared by one set of
// sequences; a node shared by >= 2 sequences may become a group of a shared level, at level =
// number of shared groups above it. So levels[0] holds the run shared by all sequences when there
// is one (the system prompt), levels[1] the runs shared by subsets (one group per document), and
// the last level holds, per sequence, every block not placed in a shared level (its unique tokens;
// causal). A node not worth a level passes its blocks down: they join the first shared group below
// it, or the sequence's own list. Sharing deeper than max_cascade_levels - 1 shared levels is
// folded into the last level. Rows are ordered by a DFS of the trie (children and sequences in
// order of first appearance in the batch), so every group's rows are contiguous; where a level does
// not cover a row between two groups, a group with no pages steps over it (see cascade_plan.h).
//
// Cost heuristic (CascadeMode::kAuto): a shared group of n sequences over t keys saves (n - 1) * t
// KV token reads per step over flat attention (each sequence would read the t keys itself), and
// costs an extra pass and a merge. It is used when n >= 2 and (n - 1) * t >= min_saved_kv_tokens
// (default 256). kOn uses every run shared by >= 2 sequences; kOff always plans flat.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cache/kv_layout.h"
#include "cascade/config.h"
#include "sched/cascade_plan.h"

namespace cascade {

// A run of KV in a sequence's chain. key: the chunk id (hex) of a shared chunk; empty = the
// sequence's own tokens.
struct KvBlock {
  std::string key;
  KvPageList kv;
};

// One sequence of the step, in batch order. Its rows are consecutive in the batch and sit at
// positions first_row_pos + i; blocks are in position order and contiguous (each block starts
// where the previous ends), and cover every row's position.
struct SeqAttnInput {
  int num_rows = 0;
  std::int32_t first_row_pos = 0;
  std::vector<KvBlock> blocks;
};

// The one-level plan where every sequence (with rows) is one group over all of its blocks; rows in
// batch order. Throws cascade::Error on malformed input (see SeqAttnInput).
CascadePlan make_flat_plan(const std::vector<SeqAttnInput>& batch);

struct CascadeSchedulerOptions {
  CascadeMode mode = CascadeMode::kAuto;
  int max_cascade_levels = 3;             // levels of a plan, counting the last (per-sequence) one
  std::int64_t min_saved_kv_tokens = 256; // kAuto: KV token reads a shared group must save
};

// The scheduler's options from the engine config (enable_cascade_attention = false means kOff).
CascadeSchedulerOptions cascade_scheduler_options(const Config& config);

// What one plan does (last step) and running totals.
struct CascadePlanStats {
  int levels = 0;                  // levels in the plan (1 = flat)
  bool uses_shared_levels = false;
  int shared_groups = 0;           // groups of >= 2 sequences in shared levels
  std::int64_t kv_tokens_flat = 0;  // KV tokens read by flat attention (sum over sequences)
  std::int64_t kv_tokens_plan = 0;  // KV tokens read by the plan (sum over groups)
};
struct CascadeSchedulerCounters {
  std::int64_t plans = 0;
  std::int64_t plans_with_shared_levels = 0;
  std::int64_t kv_tokens_flat = 0;
  std::int64_t kv_tokens_plan = 0;
};

class CascadeScheduler {
 public:
  // Throws cascade::Error if max_cascade_levels < 1 or min_saved_kv_tokens < 0.
  explicit CascadeScheduler(const CascadeSchedulerOptions& options = {});

  // The step's plan for `batch` (sequences in batch order; those with no rows are ignored).
  // Throws cascade::Error on malformed input, e.g. one key with two different page lists.
  CascadePlan plan(const std::vector<SeqAttnInput>& batch);

  const CascadeSchedulerOptions& options() const { return options_; }
  const CascadePlanStats& last_stats() const { return last_stats_; }
  const CascadeSchedulerCounters& counters() const { return counters_; }

 private:
  void record(const CascadePlanStats& stats);

  CascadeSchedulerOptions options_;
  CascadePlanStats last_stats_;
  CascadeSchedulerCounters counters_;
};

}  // namespace cascade

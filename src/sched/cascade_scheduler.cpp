#include "sched/cascade_scheduler.h"

#include <algorithm>
#include <numeric>
#include <unordered_map>

#include "core/error.h"

namespace cascade {
namespace {

// Checks the contract of SeqAttnInput and returns, per sequence, how many leading blocks are keyed
// (a keyed block after an unkeyed one cannot be shared: the trie needs equal prefixes).
std::vector<int> validate_batch(const std::vector<SeqAttnInput>& batch) {
  std::vector<int> keyed(batch.size(), 0);
  for (std::size_t s = 0; s < batch.size(); ++s) {
    const SeqAttnInput& seq = batch[s];
    if (seq.num_rows < 0) {
      throw_error(ErrorCode::kInvalidArgument, "cascade plan: sequence {} of the batch has {} rows",
                  s, seq.num_rows);
    }
    if (seq.num_rows == 0) continue;
    std::int32_t end = 0;
    bool in_keyed_prefix = true;
    for (std::size_t b = 0; b < seq.blocks.size(); ++b) {
      const KvBlock& block = seq.blocks[b];
      if (block.kv.pages.size() != block.kv.lens.size()) {
        throw_error(ErrorCode::kInvalidArgument,
                    "cascade plan: sequence {} block {} ('{}') has {} pages but {} page lengths", s,
                    b, block.key, block.kv.pages.size(), block.kv.lens.size());
      }
      for (std::int32_t len : block.kv.lens) {
        if (len < 1) {
          throw_error(ErrorCode::kInvalidArgument,
                      "cascade plan: sequence {} block {} ('{}') has a page of length {}", s, b,
                      block.key, len);
        }
      }
      if (b > 0 && block.kv.start_pos != end) {
        throw_error(ErrorCode::kInvalidArgument,
                    "cascade plan: sequence {} block {} ('{}') starts at position {}, but the "
                    "previous block ends at {}: blocks must be contiguous",
                    s, b, block.key, block.kv.start_pos, end);
      }
      end = block.kv.start_pos + block.kv.num_tokens();
      if (block.key.empty()) in_keyed_prefix = false;
      if (in_keyed_prefix) keyed[s] = static_cast<int>(b) + 1;
    }
    if (seq.blocks.empty() || seq.first_row_pos < 0 || seq.first_row_pos + seq.num_rows > end) {
      throw_error(ErrorCode::kInvalidArgument,
                  "cascade plan: sequence {} has rows at positions [{}, {}) but its KV blocks end "
                  "at {}: every row's own key must be written before attention",
                  s, seq.first_row_pos, seq.first_row_pos + seq.num_rows, end);
    }
  }
  return keyed;
}

// Appends blocks [first, last) of `seq` to a level's page arrays.
void append_blocks(const SeqAttnInput& seq, int first, int last, CascadeLevel& lv) {
  for (int b = first; b < last; ++b) {
    const KvPageList& kv = seq.blocks[b].kv;
    lv.page_ids.insert(lv.page_ids.end(), kv.pages.begin(), kv.pages.end());
    lv.page_lens.insert(lv.page_lens.end(), kv.lens.begin(), kv.lens.end());
  }
}

std::int32_t blocks_start(const SeqAttnInput& seq, int first) {
  if (first < static_cast<int>(seq.blocks.size())) return seq.blocks[first].kv.start_pos;
  const KvPageList& last = seq.blocks.back().kv;
  return last.start_pos + last.num_tokens();
}

std::int64_t blocks_tokens(const SeqAttnInput& seq, int first, int last) {
  std::int64_t n = 0;
  for (int b = first; b < last; ++b) n += seq.blocks[b].kv.num_tokens();
  return n;
}

// Closes group g of `lv`: q range ends at row_end, pages end at the current page count.
void close_group(CascadeLevel& lv, std::int32_t row_end, std::int32_t kv_start) {
  lv.q_indptr.push_back(row_end);
  lv.page_indptr.push_back(static_cast<std::int32_t>(lv.page_ids.size()));
  lv.kv_start_pos.push_back(kv_start);
}

// Builds the shared-level trie walk; see the header comment for the rules.
class TriePlanner {
 public:
  TriePlanner(const std::vector<SeqAttnInput>& batch, const std::vector<int>& keyed,
              const CascadeSchedulerOptions& options)
      : batch_(batch), keyed_(keyed), options_(options) {}

  // Walks the trie of the sequences with rows. Returns false when no shared group was used.
  bool run() {
    std::vector<int> all;
    for (std::size_t s = 0; s < batch_.size(); ++s) {
      if (batch_[s].num_rows > 0) all.push_back(static_cast<int>(s));
    }
    own_first_block_.assign(batch_.size(), 0);
    visit(all, 0, 0, 0);
    return !groups_.empty();
  }

  CascadePlan build() const {
    CascadePlan plan;
    std::vector<std::int32_t> row_base(batch_.size() + 1, 0);  // first row id of each sequence
    for (std::size_t s = 0; s < batch_.size(); ++s) row_base[s + 1] = row_base[s] + batch_[s].num_rows;
    plan.num_rows = row_base.back();
    plan.q_pos.resize(plan.num_rows);
    for (std::size_t s = 0; s < batch_.size(); ++s) {
      for (int i = 0; i < batch_[s].num_rows; ++i) plan.q_pos[row_base[s] + i] = batch_[s].first_row_pos + i;
    }
    // Rows in DFS order; order_row[k] = index into row_order of the k-th sequence in DFS order.
    std::vector<std::int32_t> order_row(seq_order_.size() + 1, 0);
    for (std::size_t k = 0; k < seq_order_.size(); ++k) {
      const int s = seq_order_[k];
      for (int i = 0; i < batch_[s].num_rows; ++i) plan.row_order.push_back(row_base[s] + i);
      order_row[k + 1] = order_row[k] + batch_[s].num_rows;
    }
    int shared_levels = 0;
    for (const Group& g : groups_) shared_levels = std::max(shared_levels, g.level + 1);
    plan.levels.resize(shared_levels + 1);
    for (CascadeLevel& lv : plan.levels) {
      lv.q_indptr.push_back(0);
      lv.page_indptr.push_back(0);
    }
    // Shared groups were emitted in DFS preorder, so within one level they come in row order.
    for (const Group& g : groups_) {
      CascadeLevel& lv = plan.levels[g.level];
      const std::int32_t row_begin = order_row[g.order_begin];
      if (row_begin > lv.q_indptr.back()) close_group(lv, row_begin, 0);  // step over uncovered rows
      const SeqAttnInput& seq = batch_[g.seq];
      append_blocks(seq, g.first_block, g.last_block, lv);
      close_group(lv, order_row[g.order_end], blocks_start(seq, g.first_block));
    }
    CascadeLevel& last = plan.levels.back();
    for (std::size_t k = 0; k < seq_order_.size(); ++k) {
      const int s = seq_order_[k];
      const int first = own_first_block_[s];
      append_blocks(batch_[s], first, static_cast<int>(batch_[s].blocks.size()), last);
      close_group(last, order_row[k + 1], blocks_start(batch_[s], first));
    }
    plan.uses_shared_levels = true;
    return plan;
  }

 private:
  struct Group {
    int level = 0;
    int seq = 0;                     // a member sequence whose blocks hold the group's pages
    int first_block = 0, last_block = 0;
    int order_begin = 0, order_end = 0;  // range of seq_order_
  };

  // S: sequences (batch order) sharing keyed blocks [0, k); blocks [pending, k) of them are not
  // placed in a level yet; `depth` shared groups lie above.
  void visit(const std::vector<int>& S, int k, int pending, int depth) {
    if (S.empty()) return;
    const int s0 = S.front();
    const SeqAttnInput& ref = batch_[s0];
    // Extend the run while every sequence of S has the same keyed block at m.
    int m = k;
    while (true) {
      bool all_share = true;
      for (int s : S) {
        if (m >= keyed_[s] || batch_[s].blocks[m].key != ref.blocks[m].key) {
          all_share = false;
          break;
        }
      }
      if (!all_share) break;
      for (int s : S) check_same_pages(s0, s, m);
      ++m;
    }
    const std::int64_t tokens = blocks_tokens(ref, pending, m);
    const int n = static_cast<int>(S.size());
    const bool level_left = depth < options_.max_cascade_levels - 1;
    const bool worth = options_.mode == CascadeMode::kOn ||
                       static_cast<std::int64_t>(n - 1) * tokens >= options_.min_saved_kv_tokens;
    int group = -1;
    if (n >= 2 && tokens > 0 && level_left && worth) {
      group = static_cast<int>(groups_.size());
      Group g;
      g.level = depth;
      g.seq = s0;
      g.first_block = pending;
      g.last_block = m;
      g.order_begin = static_cast<int>(seq_order_.size());
      groups_.push_back(g);
      pending = m;
      ++depth;
    }
    // Children by the key at m, and sequences whose keyed chain ends here, in order of first
    // appearance in the batch.
    std::vector<std::vector<int>> units;
    std::unordered_map<std::string, std::size_t> unit_of_key;
    for (int s : S) {
      if (m >= keyed_[s]) {
        units.push_back({s});  // its keyed chain ends here
        continue;
      }
      const std::string& key = batch_[s].blocks[m].key;
      auto [it, inserted] = unit_of_key.emplace(key, units.size());
      if (inserted) units.emplace_back();
      units[it->second].push_back(s);
    }
    for (const std::vector<int>& unit : units) {
      const int s = unit.front();
      if (unit.size() == 1 && m >= keyed_[s]) {
        seq_order_.push_back(s);
        own_first_block_[s] = pending;
      } else {
        visit(unit, m, pending, depth);
      }
    }
    if (group >= 0) groups_[group].order_end = static_cast<int>(seq_order_.size());
  }

  void check_same_pages(int a, int b, int block) const {
    const KvPageList& x = batch_[a].blocks[block].kv;
    const KvPageList& y = batch_[b].blocks[block].kv;
    if (x.pages != y.pages || x.lens != y.lens || x.start_pos != y.start_pos) {
      throw_error(ErrorCode::kInvalidArgument,
                  "cascade plan: chunk '{}' has different pages in sequences {} and {} of the "
                  "batch ({} pages from position {} vs {} pages from position {})",
                  batch_[a].blocks[block].key, a, b, x.pages.size(), x.start_pos, y.pages.size(),
                  y.start_pos);
    }
  }

  const std::vector<SeqAttnInput>& batch_;
  const std::vector<int>& keyed_;
  const CascadeSchedulerOptions& options_;
  std::vector<Group> groups_;
  std::vector<int> seq_order_;         // sequences in DFS order
  std::vector<int> own_first_block_;   // per sequence: first block of its last-level list
};

CascadePlanStats plan_stats(const CascadePlan& plan, const std::vector<SeqAttnInput>& batch) {
  CascadePlanStats st;
  st.levels = static_cast<int>(plan.levels.size());
  st.uses_shared_levels = plan.uses_shared_levels;
  for (const SeqAttnInput& seq : batch) {
    if (seq.num_rows > 0) st.kv_tokens_flat += blocks_tokens(seq, 0, static_cast<int>(seq.blocks.size()));
  }
  for (std::size_t l = 0; l < plan.levels.size(); ++l) {
    const CascadeLevel& lv = plan.levels[l];
    for (int g = 0; g < lv.num_groups(); ++g) {
      const std::int32_t keys = lv.group_kv_len(g);
      st.kv_tokens_plan += keys;
      if (l + 1 < plan.levels.size() && keys > 0) ++st.shared_groups;
    }
  }
  return st;
}

}  // namespace

CascadePlan make_flat_plan(const std::vector<SeqAttnInput>& batch) {
  validate_batch(batch);
  CascadePlan plan;
  CascadeLevel lv;
  lv.q_indptr.push_back(0);
  lv.page_indptr.push_back(0);
  for (const SeqAttnInput& seq : batch) {
    if (seq.num_rows == 0) continue;
    for (int i = 0; i < seq.num_rows; ++i) {
      plan.row_order.push_back(plan.num_rows + i);
      plan.q_pos.push_back(seq.first_row_pos + i);
    }
    plan.num_rows += seq.num_rows;
    append_blocks(seq, 0, static_cast<int>(seq.blocks.size()), lv);
    close_group(lv, plan.num_rows, seq.blocks.front().kv.start_pos);
  }
  plan.levels.push_back(std::move(lv));
  return plan;
}

CascadeSchedulerOptions cascade_scheduler_options(const Config& config) {
  CascadeSchedulerOptions o;
  o.mode = config.enable_cascade_attention ? config.cascade_mode : CascadeMode::kOff;
  o.max_cascade_levels = config.max_cascade_levels;
  return o;
}

CascadeScheduler::CascadeScheduler(const CascadeSchedulerOptions& options) : options_(options) {
  if (options_.max_cascade_levels < 1) {
    throw_error(ErrorCode::kInvalidArgument, "max_cascade_levels must be at least 1, got {}",
                options_.max_cascade_levels);
  }
  if (options_.min_saved_kv_tokens < 0) {
    throw_error(ErrorCode::kInvalidArgument,
                "cascade min_saved_kv_tokens must not be negative, got {}",
                options_.min_saved_kv_tokens);
  }
}

CascadePlan CascadeScheduler::plan(const std::vector<SeqAttnInput>& batch) {
  CascadePlan plan;
  if (options_.mode == CascadeMode::kOff || options_.max_cascade_levels < 2) {
    plan = make_flat_plan(batch);
  } else {
    const std::vector<int> keyed = validate_batch(batch);
    TriePlanner planner(batch, keyed, options_);
    plan = planner.run() ? planner.build() : make_flat_plan(batch);
  }
  record(plan_stats(plan, batch));
  return plan;
}

void CascadeScheduler::record(const CascadePlanStats& stats) {
  last_stats_ = stats;
  ++counters_.plans;
  if (stats.uses_shared_levels) ++counters_.plans_with_shared_levels;
  counters_.kv_tokens_flat += stats.kv_tokens_flat;
  counters_.kv_tokens_plan += stats.kv_tokens_plan;
}

}  // namespace cascade

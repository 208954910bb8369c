#include "backend/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"

namespace cascade::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int kDotLanes = 8;  // partial sums per dot product; fixed so every row reduces identically

// q . k with a fixed lane split and reduction tree (vectorizable, yet the same bits everywhere).
inline float dot(const float* a, const float* b, int n) {
  float acc[kDotLanes] = {};
  const int nmain = n - n % kDotLanes;
  for (int k = 0; k < nmain; k += kDotLanes) {
    for (int l = 0; l < kDotLanes; ++l) acc[l] += a[k + l] * b[k + l];
  }
  for (int k = nmain; k < n; ++k) acc[k - nmain] += a[k] * b[k];
  const float s0 = acc[0] + acc[4], s1 = acc[1] + acc[5], s2 = acc[2] + acc[6], s3 = acc[3] + acc[7];
  return (s0 + s2) + (s1 + s3);
}

void check_level(const CascadePlan& plan, int level, const KvLayerView<const float>& kv,
                 int num_q_heads) {
  const int rows = plan.num_rows;
  if (level < 0 || level >= static_cast<int>(plan.levels.size())) {
    throw_error(ErrorCode::kInvalidArgument, "cascade plan: level {} requested, plan has {} levels",
                level, plan.levels.size());
  }
  if (kv.num_kv_heads <= 0 || kv.head_dim <= 0 || kv.page_size <= 0 || num_q_heads <= 0 ||
      num_q_heads % kv.num_kv_heads != 0) {
    throw_error(ErrorCode::kInvalidArgument,
                "attention: {} query heads cannot share {} KV heads (head_dim {}, page_size {}): "
                "query heads must be a positive multiple of KV heads",
                num_q_heads, kv.num_kv_heads, kv.head_dim, kv.page_size);
  }
  if (static_cast<int>(plan.row_order.size()) != rows || static_cast<int>(plan.q_pos.size()) != rows) {
    throw_error(ErrorCode::kInvalidArgument,
                "cascade plan: num_rows is {} but row_order has {} and q_pos {} entries", rows,
                plan.row_order.size(), plan.q_pos.size());
  }
  for (std::int32_t r : plan.row_order) {
    if (r < 0 || r >= rows) {
      throw_error(ErrorCode::kInvalidArgument, "cascade plan: row_order holds row {} outside [0, {})",
                  r, rows);
    }
  }
  const CascadeLevel& lv = plan.levels[level];
  const int groups = lv.num_groups();
  if (groups == 0) return;
  const bool sizes_ok = static_cast<int>(lv.page_indptr.size()) == groups + 1 &&
                        static_cast<int>(lv.kv_start_pos.size()) == groups &&
                        lv.page_ids.size() == lv.page_lens.size() && lv.q_indptr.front() == 0 &&
                        lv.page_indptr.front() == 0 &&
                        lv.page_indptr.back() == static_cast<std::int32_t>(lv.page_ids.size()) &&
                        lv.q_indptr.back() <= rows;
  if (!sizes_ok) {
    throw_error(ErrorCode::kInvalidArgument,
                "cascade plan level {}: inconsistent CSR arrays ({} groups: q_indptr {}, "
                "page_indptr {}, page_ids {}, page_lens {}, kv_start_pos {}, rows {})",
                level, groups, lv.q_indptr.size(), lv.page_indptr.size(), lv.page_ids.size(),
                lv.page_lens.size(), lv.kv_start_pos.size(), rows);
  }
  for (int g = 0; g < groups; ++g) {
    if (lv.q_indptr[g + 1] < lv.q_indptr[g] || lv.page_indptr[g + 1] < lv.page_indptr[g]) {
      throw_error(ErrorCode::kInvalidArgument, "cascade plan level {}: indptr decreases at group {}",
                  level, g);
    }
  }
  for (std::size_t i = 0; i < lv.page_ids.size(); ++i) {
    if (lv.page_lens[i] < 1 || lv.page_lens[i] > kv.page_size) {
      throw_error(ErrorCode::kInvalidArgument,
                  "cascade plan level {}: page {} has length {}, expected 1..{}", level,
                  lv.page_ids[i], lv.page_lens[i], kv.page_size);
    }
    if (lv.page_ids[i] < 0 || (kv.num_pages > 0 && lv.page_ids[i] >= kv.num_pages)) {
      throw_error(ErrorCode::kInvalidArgument,
                  "cascade plan level {}: page {} is outside the pool of {} pages", level,
                  lv.page_ids[i], kv.num_pages);
    }
  }
}

}  // namespace

float merge_state(const float* o_a, float s_a, const float* o_b, float s_b, int head_dim,
                  float* o_out) {
  // An empty side is skipped outright (not weighted by exp(-inf) = 0) so that its o is never read
  // and merging with it returns the other state bit for bit.
  const bool a_empty = !(s_a > kNegInf);
  const bool b_empty = !(s_b > kNegInf);
  if (a_empty && b_empty) {
    std::fill(o_out, o_out + head_dim, 0.0f);
    return kNegInf;
  }
  if (a_empty || b_empty) {
    const float* src = a_empty ? o_b : o_a;
    if (src != o_out) std::copy(src, src + head_dim, o_out);
    return a_empty ? s_b : s_a;
  }
  // Shift by the max so one weight is exactly 1 and the other is in (0, 1]: no overflow.
  const float m = std::max(s_a, s_b);
  const float w_a = std::exp(s_a - m);
  const float w_b = std::exp(s_b - m);
  const float den = w_a + w_b;
  for (int d = 0; d < head_dim; ++d) o_out[d] = (w_a * o_a[d] + w_b * o_b[d]) / den;
  // den = 1 + w with w = the smaller weight; log1p keeps w's digits when it is tiny.
  return m + std::log1p(std::min(w_a, w_b));
}

void merge_states_into(float* acc_o, float* acc_lse, const float* other_o, const float* other_lse,
                       std::int64_t num_states, int head_dim) {
#pragma omp parallel for schedule(static) if (num_states * head_dim > 16384)
  for (std::int64_t i = 0; i < num_states; ++i) {
    float* o = acc_o + i * head_dim;
    acc_lse[i] = merge_state(o, acc_lse[i], other_o + i * head_dim, other_lse[i], head_dim, o);
  }
}

void attend_level(const float* q, const CascadePlan& plan, int level,
                  const KvLayerView<const float>& kv, int num_q_heads, float scale, float* o_out,
                  float* lse_out) {
  check_level(plan, level, kv, num_q_heads);
  const int rows = plan.num_rows;
  const int H = num_q_heads;
  const int D = kv.head_dim;
  const int group_size = H / kv.num_kv_heads;
  const std::int64_t states = static_cast<std::int64_t>(rows) * H;
  std::fill(o_out, o_out + states * D, 0.0f);
  std::fill(lse_out, lse_out + states, kNegInf);

  const CascadeLevel& lv = plan.levels[level];
  const int groups = lv.num_groups();
  // Element offset of every key of every group, in position order (slot (page * page_size + s)),
  // built once per call so the hot loop is a plain walk over keys.
  std::vector<std::int64_t> key_base(groups + 1, 0);
  for (int g = 0; g < groups; ++g) key_base[g + 1] = key_base[g] + lv.group_kv_len(g);
  std::vector<std::int64_t> key_off(key_base[groups]);
  std::int32_t max_keys = 0;
  for (int g = 0; g < groups; ++g) {
    std::int64_t j = key_base[g];
    for (std::int32_t i = lv.page_indptr[g]; i < lv.page_indptr[g + 1]; ++i) {
      const std::int64_t first_slot = static_cast<std::int64_t>(lv.page_ids[i]) * kv.page_size;
      for (std::int32_t s = 0; s < lv.page_lens[i]; ++s) key_off[j++] = (first_slot + s) * kv.slot_elems();
    }
    max_keys = std::max<std::int32_t>(max_keys, static_cast<std::int32_t>(key_base[g + 1] - key_base[g]));
  }
  // (row, group) work items; each expands to H (row, head) pairs.
  std::vector<std::pair<std::int32_t, std::int32_t>> items;
  items.reserve(groups == 0 ? 0 : lv.q_indptr.back());
  for (int g = 0; g < groups; ++g) {
    if (key_base[g + 1] == key_base[g]) continue;  // no keys: the empty state already written
    for (std::int32_t i = lv.q_indptr[g]; i < lv.q_indptr[g + 1]; ++i) items.emplace_back(plan.row_order[i], g);
  }
  const std::int64_t num_work = static_cast<std::int64_t>(items.size()) * H;

  // Parallel only when there is real work: a region costs tens of microseconds to wake, more than a
  // small decode step's whole attention.
  const bool parallel = num_work > 1 && num_work * static_cast<std::int64_t>(max_keys) * D > (1 << 18);
#pragma omp parallel if (parallel)
  {
    std::vector<float> scores(max_keys);
    std::vector<float> acc(D);
#pragma omp for schedule(dynamic, 4)
    for (std::int64_t w = 0; w < num_work; ++w) {
      const auto [row, g] = items[w / H];
      const int h = static_cast<int>(w % H);
      const std::int64_t n_keys = key_base[g + 1] - key_base[g];
      // Keys are at consecutive positions kv_start_pos + j, so the visible ones form a prefix.
      const std::int64_t visible =
          std::min<std::int64_t>(n_keys, static_cast<std::int64_t>(plan.q_pos[row]) - lv.kv_start_pos[g] + 1);
      if (visible <= 0) continue;  // fully masked: empty state
      const std::int64_t* offs = key_off.data() + key_base[g];
      const std::int64_t head_off = static_cast<std::int64_t>(h / group_size) * D;
      const float* qv = q + (static_cast<std::int64_t>(row) * H + h) * D;

      float m = kNegInf;
      for (std::int64_t j = 0; j < visible; ++j) {
        const float s = dot(qv, kv.k + offs[j] + head_off, D) * scale;
        scores[j] = s;
        m = std::max(m, s);
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      float l = 0.0f;
      for (std::int64_t j = 0; j < visible; ++j) {
        const float p = std::exp(scores[j] - m);
        l += p;
        const float* v = kv.v + offs[j] + head_off;
        for (int d = 0; d < D; ++d) acc[d] += p * v[d];
      }
      float* o = o_out + (static_cast<std::int64_t>(row) * H + h) * D;
      for (int d = 0; d < D; ++d) o[d] = acc[d] / l;
      lse_out[static_cast<std::int64_t>(row) * H + h] = m + std::log(l);
    }
  }
}

void cascade_attention(const float* q, const CascadePlan& plan, const KvLayerView<const float>& kv,
                       int num_q_heads, float scale, float* out, float* lse) {
  const std::int64_t states = static_cast<std::int64_t>(plan.num_rows) * num_q_heads;
  const int D = kv.head_dim;
  std::vector<float> own_lse;
  if (lse == nullptr) {
    own_lse.resize(states);
    lse = own_lse.data();
  }
  if (plan.levels.empty()) {
    std::fill(out, out + states * D, 0.0f);
    std::fill(lse, lse + states, kNegInf);
    return;
  }
  attend_level(q, plan, 0, kv, num_q_heads, scale, out, lse);
  if (plan.levels.size() == 1) return;
  std::vector<float> lvl_o(states * D), lvl_lse(states);
  for (int l = 1; l < static_cast<int>(plan.levels.size()); ++l) {
    attend_level(q, plan, l, kv, num_q_heads, scale, lvl_o.data(), lvl_lse.data());
    merge_states_into(out, lse, lvl_o.data(), lvl_lse.data(), states, D);
  }
}

}  // namespace cascade::cpu

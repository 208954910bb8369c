// fp32 reference attention over a paged KV cache, driven by a CascadePlan. The CUDA kernels are
// checked against it, and the CPU runner uses it for every layer.
//
// Attention state. Attending one query row and head to a set of keys K gives a state (o, s):
//   o = sum_j softmax_j * v_j   (the partial output, head_dim values)
//   s = log(sum_j exp(scale * q.k_j))   (log-sum-exp of the scaled scores)
// S is in NATURAL log. The CUDA backend keeps its states in natural log too (it computes in base 2
// internally for ex2.approx and converts on store), so states of both backends compare and merge
// directly, and on the CPU exp/log are the plain library functions; base 2 would buy nothing here.
// The empty state (no visible key) is s = -inf, o = 0; it is the identity of merge_state, and the
// o of an empty state is never read, so garbage there cannot leak into a result.
//
// Batch invariance. A row's state depends only on its query, its position and the keys it sees,
// never on other rows or on how its keys are split into pages: keys are visited in position order
// with a fixed sequence of fp32 operations, and threads split work by (row, head) only. So under
// the flat plan (make_flat_plan) a token gets the same bits alone, in a batch, or after a cached
// prefix held in other pages. A plan with shared levels merges several states and so rounds
// differently from the flat plan (tests bound it at 1e-5 relative).
#pragma once

#include <cstdint>

#include "cache/kv_layout.h"
#include "sched/cascade_plan.h"

namespace cascade::cpu {

// Merges the states (o_a, s_a) and (o_b, s_b) of two disjoint key sets into the state of their
// union; writes o_out (may alias o_a or o_b) and returns its log-sum-exp. Exact up to fp32
// rounding, commutative bit for bit, and merge(empty, x) == x bit for bit.
float merge_state(const float* o_a, float s_a, const float* o_b, float s_b, int head_dim,
                  float* o_out);

// acc[i] = merge(acc[i], other[i]) for num_states states of head_dim values (o: [n, head_dim],
// lse: [n]); OpenMP-parallel over states.
void merge_states_into(float* acc_o, float* acc_lse, const float* other_o, const float* other_lse,
                       std::int64_t num_states, int head_dim);

// The state of every (row, head) at one plan level: the rows of each group attend to the group's
// keys, causally (key position kv_start_pos + offset <= q_pos[row]). q, o_out: [num_rows,
// num_q_heads, head_dim], lse_out: [num_rows, num_q_heads], all indexed by original row id. Query
// head h reads KV head h / (num_q_heads / kv.num_kv_heads). Rows outside every group, and rows that
// see no key, get the empty state. Throws cascade::Error if the plan or head layout is malformed.
void attend_level(const float* q, const CascadePlan& plan, int level,
                  const KvLayerView<const float>& kv, int num_q_heads, float scale, float* o_out,
                  float* lse_out);

// Attention through all levels of the plan, merged in order 0..L-1: out [num_rows, num_q_heads,
// head_dim], lse (optional, may be null) [num_rows, num_q_heads]. Rows with no visible key get
// out = 0, lse = -inf.
void cascade_attention(const float* q, const CascadePlan& plan, const KvLayerView<const float>& kv,
                       int num_q_heads, float scale, float* out, float* lse);

}  // namespace cascade::cpu

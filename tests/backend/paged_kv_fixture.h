// Test helpers for attention over paged KV: a page pool filled from unpaged "truth" K/V, and a
// float64 attention reference computed from the truth directly (no pages involved).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "cache/kv_layout.h"

namespace cascade::test {

inline std::vector<float> random_values(std::mt19937_64& rng, std::size_t n, float stddev) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Unpaged K and V of a run of tokens: [num_tokens, num_kv_heads, head_dim] each.
struct KvTruth {
  std::vector<float> k, v;
  std::int32_t start_pos = 0;
  int num_tokens(int slot_elems) const { return static_cast<int>(k.size()) / slot_elems; }
};

// One layer's K/V pool whose pages are handed out in a shuffled order, so page lists are not
// contiguous runs of page ids. Unused slots hold NaN: reading one poisons the result.
class PagedKvPool {
 public:
  PagedKvPool(int page_size, int num_kv_heads, int head_dim, int num_pages, std::uint64_t seed)
      : page_size_(page_size), num_kv_heads_(num_kv_heads), head_dim_(head_dim),
        num_pages_(num_pages) {
    const std::size_t n = static_cast<std::size_t>(num_pages) * page_size * slot_elems();
    k_.assign(n, std::numeric_limits<float>::quiet_NaN());
    v_.assign(n, std::numeric_limits<float>::quiet_NaN());
    free_.resize(num_pages);
    std::iota(free_.begin(), free_.end(), 0);
    std::mt19937_64 rng(seed);
    std::shuffle(free_.begin(), free_.end(), rng);
  }

  int slot_elems() const { return num_kv_heads_ * head_dim_; }
  int page_size() const { return page_size_; }

  KvLayerView<const float> view() const {
    KvLayerView<const float> view;
    view.k = k_.data();
    view.v = v_.data();
    view.page_size = page_size_;
    view.num_kv_heads = num_kv_heads_;
    view.head_dim = head_dim_;
    view.num_pages = num_pages_;
    return view;
  }

  // Copies tokens [first, last) of `truth` into fresh pages (the last one possibly partial).
  KvPageList write(const KvTruth& truth, int first, int last) {
    KvPageList list;
    list.start_pos = truth.start_pos + first;
    for (int t = first; t < last;) {
      if (next_ >= free_.size()) throw std::runtime_error("test KV pool exhausted");
      const int page = free_[next_++];
      const int len = std::min(page_size_, last - t);
      for (int s = 0; s < len; ++s, ++t) {
        const std::size_t dst = (static_cast<std::size_t>(page) * page_size_ + s) * slot_elems();
        const std::size_t src = static_cast<std::size_t>(t) * slot_elems();
        std::copy_n(truth.k.begin() + src, slot_elems(), k_.begin() + dst);
        std::copy_n(truth.v.begin() + src, slot_elems(), v_.begin() + dst);
      }
      list.pages.push_back(page);
      list.lens.push_back(len);
    }
    return list;
  }
  KvPageList write(const KvTruth& truth) { return write(truth, 0, truth.num_tokens(slot_elems())); }

 private:
  int page_size_, num_kv_heads_, head_dim_, num_pages_;
  std::vector<float> k_, v_;
  std::vector<int> free_;
  std::size_t next_ = 0;
};

// float64 attention of one query row (all heads) to the keys of `truth` at positions <= q_pos.
// o: [num_q_heads, head_dim]; lse: [num_q_heads] (natural log; -inf when no key is visible).
inline void reference_attention(const float* q, int num_q_heads, int num_kv_heads, int head_dim,
                                const KvTruth& truth, std::int32_t q_pos, double scale, double* o,
                                double* lse) {
  const int slot = num_kv_heads * head_dim;
  const int n = truth.num_tokens(slot);
  const int visible = std::clamp<int>(q_pos - truth.start_pos + 1, 0, n);
  const int group = num_q_heads / num_kv_heads;
  std::vector<double> score(visible);
  for (int h = 0; h < num_q_heads; ++h) {
    const int kh = h / group;
    double m = -std::numeric_limits<double>::infinity();
    for (int j = 0; j < visible; ++j) {
      double s = 0.0;
      for (int d = 0; d < head_dim; ++d) {
        s += static_cast<double>(q[h * head_dim + d]) * truth.k[j * slot + kh * head_dim + d];
      }
      score[j] = s * scale;
      m = std::max(m, score[j]);
    }
    double den = 0.0;
    for (int d = 0; d < head_dim; ++d) o[h * head_dim + d] = 0.0;
    for (int j = 0; j < visible; ++j) {
      const double p = std::exp(score[j] - m);
      den += p;
      for (int d = 0; d < head_dim; ++d) o[h * head_dim + d] += p * truth.v[j * slot + kh * head_dim + d];
    }
    if (visible == 0) {
      lse[h] = -std::numeric_limits<double>::infinity();
      continue;
    }
    for (int d = 0; d < head_dim; ++d) o[h * head_dim + d] /= den;
    lse[h] = m + std::log(den);
  }
}

// max |a - b| / max |b| over one head's vector (0 when both are all zero).
template <typename A, typename B>
double rel_error(const A* a, const B* b, int n) {
  double err = 0.0, mag = 0.0;
  for (int i = 0; i < n; ++i) {
    err = std::max(err, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    mag = std::max(mag, std::abs(static_cast<double>(b[i])));
  }
  return mag > 0.0 ? err / mag : err;
}

}  // namespace cascade::test

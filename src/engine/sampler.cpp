#include "engine/sampler.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>

#include "core/error.h"
#include "engine/model_runner.h"

namespace cascade {
namespace {

// A surviving token and its unnormalised weight exp((logit - max) / T), in (0, 1].
struct Candidate {
  double w;
  std::int32_t id;
  std::int32_t bucket;  // see bucket_of
};

// The fixed walk order: probability descending, ties by lower id.
bool walks_before(const Candidate& a, const Candidate& b) {
  return a.w > b.w || (a.w == b.w && a.id < b.id);
}

// Candidates are grouped by binary exponent of w (bucket b holds w in [2^-b, 2^(1-b)), the last
// bucket everything smaller), so walking buckets in order walks the global sort order, and a bucket
// needs sorting only when a cumulative target falls inside it. With peaked LLM distributions that
// leaves a few hundred tokens to sort instead of the whole vocabulary.
constexpr int kNumBuckets = 64;

int bucket_of(double w) {
  // -ilogb(w) for normal w in (0, 1], read from the exponent bits (ilogb is a slow libm call).
  const int biased_exponent = static_cast<int>((std::bit_cast<std::uint64_t>(w) >> 52) & 0x7ff);
  const int b = 1023 - biased_exponent;
  return b < kNumBuckets - 1 ? b : kNumBuckets - 1;
}

class BucketedCandidates {
 public:
  // Indexes `cands` (kept alive by the caller); the per-bucket mass is summed in their order.
  void build(std::span<const Candidate> cands) {
    cands_ = cands;
    count_.fill(0);
    mass_.fill(0.0);
    ready_.fill(false);
    for (const Candidate& c : cands) {
      ++count_[c.bucket];
      mass_[c.bucket] += c.w;
    }
  }

  int size(int b) const { return count_[b]; }
  double mass(int b) const { return mass_[b]; }
  double total_mass() const {
    double z = 0.0;
    for (int b = 0; b < kNumBuckets; ++b) z += mass_[b];
    return z;
  }
  // Bucket b in walk order, gathered and sorted on first use (a walk needs one or two buckets).
  const Candidate* sorted_bucket(int b) {
    std::vector<Candidate>& items = items_[b];
    if (!ready_[b]) {
      items.clear();
      items.reserve(count_[b]);
      for (const Candidate& c : cands_) {
        if (c.bucket == b) items.push_back(c);
      }
      std::sort(items.begin(), items.end(), walks_before);
      ready_[b] = true;
    }
    return items.data();
  }

 private:
  std::span<const Candidate> cands_;
  std::array<int, kNumBuckets> count_{};
  std::array<double, kNumBuckets> mass_{};
  std::array<bool, kNumBuckets> ready_{};
  std::array<std::vector<Candidate>, kNumBuckets> items_;
};

// A position in walk order: the item `index` of bucket `bucket`, and the cumulative weight of all
// items up to and including it.
struct WalkPos {
  int bucket = -1;
  int index = -1;
  double cum = 0.0;
};

// Walks candidates in order up to `limit` (inclusive; bucket kNumBuckets = no limit) and returns the
// first item whose cumulative weight reaches `target` (cum >= target when `reach`, cum > target
// otherwise), or the limit's last item when rounding leaves the target unmet. Whole buckets that
// cannot contain the crossing are skipped by their mass without sorting.
WalkPos walk_to(BucketedCandidates& cands, double target, bool reach, WalkPos limit) {
  auto crossed = [&](double cum) { return reach ? cum >= target : cum > target; };
  double cum = 0.0;
  WalkPos last;
  for (int b = 0; b < kNumBuckets && b <= limit.bucket; ++b) {
    const bool partial = b == limit.bucket;
    const int n = partial ? limit.index + 1 : cands.size(b);
    if (n == 0) continue;
    if (!partial && !crossed(cum + cands.mass(b))) {
      cum += cands.mass(b);
      last = {b, -1, cum};  // index resolved below if this ends up being the last bucket
      continue;
    }
    const Candidate* items = cands.sorted_bucket(b);
    for (int i = 0; i < n; ++i) {
      cum += items[i].w;
      if (crossed(cum)) return {b, i, cum};
    }
    last = {b, n - 1, cum};
  }
  CASCADE_CHECK(last.bucket >= 0, "sampler walk over an empty candidate set");
  if (last.index < 0) {
    cands.sorted_bucket(last.bucket);
    last.index = cands.size(last.bucket) - 1;
  }
  return last;
}

// Per-thread scratch so a 152k-vocabulary row allocates nothing after the first call.
struct Scratch {
  std::vector<float> values;
  std::vector<Candidate> cands;
  BucketedCandidates buckets;
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// Above this k, selection beats a bounded heap.
constexpr int kHeapTopKLimit = 2048;

// The k-th largest logit, NaN ignored (-inf when fewer than k logits are comparable).
float kth_largest(std::span<const float> logits, int k, std::vector<float>& scratch) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  scratch.clear();
  if (k <= kHeapTopKLimit) {
    // Min-heap of the k largest so far: one compare per logit once it is full.
    const std::greater<float> min_heap;
    for (float x : logits) {
      if (std::isnan(x)) continue;
      if (static_cast<int>(scratch.size()) < k) {
        scratch.push_back(x);
        std::push_heap(scratch.begin(), scratch.end(), min_heap);
      } else if (x > scratch.front()) {
        std::pop_heap(scratch.begin(), scratch.end(), min_heap);
        scratch.back() = x;
        std::push_heap(scratch.begin(), scratch.end(), min_heap);
      }
    }
    return static_cast<int>(scratch.size()) < k ? kNegInf : scratch.front();
  }
  for (float x : logits) scratch.push_back(std::isnan(x) ? kNegInf : x);
  const auto kth = scratch.begin() + (k - 1);
  std::nth_element(scratch.begin(), kth, scratch.end(), std::greater<float>());
  return *kth;
}

}  // namespace

std::int32_t sample_token(std::span<const float> logits, const RowSampling& p) {
  const std::size_t vocab = logits.size();
  if (vocab == 0) throw_error(ErrorCode::kInvalidArgument, "sample_token: empty logits row");
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  // Argmax; NaN compares false so it is skipped, and strict '>' keeps the lowest id on ties.
  float max_logit = kNegInf;
  std::size_t argmax = vocab;
  for (std::size_t i = 0; i < vocab; ++i) {
    if (logits[i] > max_logit) {
      max_logit = logits[i];
      argmax = i;
    }
  }
  if (argmax == vocab) {
    throw_error(ErrorCode::kInvalidArgument,
                "sample_token: all {} logits are -inf or NaN; no token can be sampled", vocab);
  }
  if (!(p.temperature > 0.0f)) return static_cast<std::int32_t>(argmax);

  Scratch& s = scratch();
  const double temperature = p.temperature;
  const bool max_is_inf = std::isinf(max_logit);
  // exp((x - max) / T); with +inf logits present those share the mass equally.
  auto weight = [&](float x) -> double {
    if (max_is_inf) return x == max_logit ? 1.0 : 0.0;
    if (!(x > kNegInf)) return 0.0;
    return std::exp((static_cast<double>(x) - static_cast<double>(max_logit)) / temperature);
  };
  // min-p: p >= min_p * p_max  <=>  w >= min_p, since the argmax has w == 1.
  const double min_weight = p.min_p > 0.0f ? std::min(static_cast<double>(p.min_p), 1.0) : 0.0;
  // Written through a raw pointer into pre-sized storage: push_back on the thread_local vector
  // made this loop reload the TLS address and stall on store forwarding.
  s.cands.resize(vocab);
  Candidate* out = s.cands.data();
  std::size_t kept = 0;
  auto keep = [&](std::size_t id) {
    const double w = weight(logits[id]);
    if (w > 0.0 && w >= min_weight) {
      Candidate& c = out[kept++];
      c.w = w;
      c.id = static_cast<std::int32_t>(id);
      c.bucket = bucket_of(w);
    }
  };
  if (p.top_k > 0 && static_cast<std::size_t>(p.top_k) < vocab) {
    // top-k: threshold at the k-th largest logit.
    const float threshold = kth_largest(logits, p.top_k, s.values);
    for (std::size_t i = 0; i < vocab; ++i) {
      if (logits[i] >= threshold) keep(i);
    }
  } else {
    for (std::size_t i = 0; i < vocab; ++i) keep(i);
  }
  CASCADE_CHECK(kept > 0, "argmax token {} was filtered out", argmax);

  BucketedCandidates& buckets = s.buckets;
  buckets.build(std::span<const Candidate>(out, kept));
  const WalkPos all{kNumBuckets, 0, 0.0};

  // top-p over the min-p/top-k survivors: the nucleus ends at the first token whose cumulative
  // probability reaches top_p.
  WalkPos nucleus_end = all;
  double nucleus_mass = buckets.total_mass();
  if (p.top_p < 1.0f) {
    const double target = static_cast<double>(p.top_p) * nucleus_mass;
    nucleus_end = walk_to(buckets, target, /*reach=*/true, all);
    nucleus_mass = nucleus_end.cum;
  }

  // Inverse CDF: the first token whose cumulative weight exceeds u * Z.
  const double u = uniform_draw(p.seed, p.step);
  const WalkPos pick = walk_to(buckets, u * nucleus_mass, /*reach=*/false, nucleus_end);
  return buckets.sorted_bucket(pick.bucket)[pick.index].id;
}

std::vector<std::int32_t> sample_tokens(std::span<const float> logits, int vocab_size,
                                        std::span<const RowSampling> params) {
  const std::size_t rows = params.size();
  if (vocab_size <= 0 || logits.size() != rows * static_cast<std::size_t>(vocab_size)) {
    throw_error(ErrorCode::kInvalidArgument,
                "sample_tokens: {} logits do not form {} rows of vocab_size {}", logits.size(),
                rows, vocab_size);
  }
  std::vector<std::int32_t> out(rows);
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic) if (rows > 1)
  for (std::size_t r = 0; r < rows; ++r) {
    try {
      out[r] = sample_token(logits.subspan(r * vocab_size, vocab_size), params[r]);
    } catch (...) {
#pragma omp critical(cascade_sampler_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
  return out;
}

void validate_sampling_params(const SamplingParams& params) {
  if (!std::isfinite(params.temperature) || params.temperature < 0.0f) {
    throw_error(ErrorCode::kInvalidArgument,
                "sampling: temperature must be a finite number >= 0 (0 = greedy), got {}",
                params.temperature);
  }
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
    throw_error(ErrorCode::kInvalidArgument,
                "sampling: top_p must be in (0, 1] (1 = off), got {}", params.top_p);
  }
  if (!(params.min_p >= 0.0f && params.min_p <= 1.0f)) {
    throw_error(ErrorCode::kInvalidArgument,
                "sampling: min_p must be in [0, 1] (0 = off), got {}", params.min_p);
  }
  if (params.top_k < -1) {
    throw_error(ErrorCode::kInvalidArgument,
                "sampling: top_k must be >= 1, or 0 or -1 for off, got {}", params.top_k);
  }
  if (params.max_tokens < 1 || params.max_tokens > kMaxRequestTokens) {
    throw_error(ErrorCode::kInvalidArgument, "sampling: max_tokens must be in [1, {}], got {}",
                kMaxRequestTokens, params.max_tokens);
  }
  for (std::size_t i = 0; i < params.stop_token_ids.size(); ++i) {
    if (params.stop_token_ids[i] < 0) {
      throw_error(ErrorCode::kInvalidArgument,
                  "sampling: stop_token_ids[{}] is {}; token ids must be >= 0", i,
                  params.stop_token_ids[i]);
    }
  }
  for (std::size_t i = 0; i < params.stop.size(); ++i) {
    if (params.stop[i].empty()) {
      throw_error(ErrorCode::kInvalidArgument,
                  "sampling: stop[{}] is an empty string; stop strings must be non-empty", i);
    }
  }
}

}  // namespace cascade

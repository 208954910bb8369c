#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <unordered_set>
#include <vector>

#include "core/error.h"
#include "engine/model_runner.h"

namespace cascade {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Independent float64 reference of the documented pipeline, written the plain way: full softmax,
// masks, full sorts. Returns the final probability of every token.
std::vector<double> reference_probs(const std::vector<float>& logits, const RowSampling& p) {
  const int n = static_cast<int>(logits.size());
  std::vector<double> probs(n, 0.0);
  if (p.temperature <= 0.0f) {
    int best = 0;
    for (int i = 1; i < n; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    probs[best] = 1.0;
    return probs;
  }
  std::vector<double> z(n);
  for (int i = 0; i < n; ++i) z[i] = static_cast<double>(logits[i]) / p.temperature;
  const double zmax = *std::max_element(z.begin(), z.end());
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += std::exp(z[i] - zmax);
  for (int i = 0; i < n; ++i) probs[i] = std::exp(z[i] - zmax) / sum;
  std::vector<bool> kept(n, true);
  // min-p against the most likely token.
  if (p.min_p > 0.0f) {
    const double pmax = *std::max_element(probs.begin(), probs.end());
    for (int i = 0; i < n; ++i) kept[i] = probs[i] >= p.min_p * pmax;
  }
  // top-k among the survivors, ties at the k-th value kept.
  if (p.top_k > 0) {
    std::vector<double> survivors;
    for (int i = 0; i < n; ++i) {
      if (kept[i]) survivors.push_back(probs[i]);
    }
    if (p.top_k < static_cast<int>(survivors.size())) {
      std::sort(survivors.begin(), survivors.end(), std::greater<double>());
      const double kth = survivors[p.top_k - 1];
      for (int i = 0; i < n; ++i) kept[i] = kept[i] && probs[i] >= kth;
    }
  }
  auto renormalise = [&] {
    double total = 0.0;
    for (int i = 0; i < n; ++i) total += kept[i] ? probs[i] : 0.0;
    for (int i = 0; i < n; ++i) probs[i] = kept[i] ? probs[i] / total : 0.0;
  };
  renormalise();
  // top-p: keep a token while the mass strictly before it is below top_p.
  if (p.top_p < 1.0f) {
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return probs[a] > probs[b]; });
    double before = 0.0;
    for (int id : order) {
      if (!kept[id]) continue;
      if (before >= p.top_p) kept[id] = false;
      before += probs[id];
    }
    renormalise();
  }
  return probs;
}

// The documented walk order: probability descending, ties by lower id.
std::vector<int> walk_order(const std::vector<double>& probs) {
  std::vector<int> order(probs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return probs[a] > probs[b]; });
  return order;
}

// The token the inverse-CDF walk in `order` picks for draw u.
int reference_pick(const std::vector<double>& probs, const std::vector<int>& order, double u) {
  double cum = 0.0;
  int last = order[0];
  for (int id : order) {
    if (probs[id] <= 0.0) break;
    cum += probs[id];
    last = id;
    if (u < cum) return id;
  }
  return last;
}

std::vector<float> random_logits(std::mt19937_64& rng, int n, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> logits(n);
  for (float& x : logits) x = normal(rng);
  return logits;
}

RowSampling row(float temperature, int top_k, float top_p, float min_p, std::uint64_t seed = 0,
                std::uint64_t step = 0) {
  RowSampling p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  p.seed = seed;
  p.step = step;
  return p;
}

// Pearson chi-square of `counts` against `probs`, with tokens of expected count < 5 pooled into one
// bin. Fails the test if a zero-probability token was drawn. Returns {statistic, degrees of freedom}.
std::pair<double, int> chi_square(const std::vector<int>& counts, const std::vector<double>& probs,
                                  int draws) {
  double stat = 0.0;
  int bins = 0;
  double pooled_expected = 0.0;
  double pooled_observed = 0.0;
  for (std::size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] == 0.0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has probability 0 but was sampled";
      continue;
    }
    const double expected = probs[i] * draws;
    if (expected < 5.0) {
      pooled_expected += expected;
      pooled_observed += counts[i];
      continue;
    }
    stat += (counts[i] - expected) * (counts[i] - expected) / expected;
    ++bins;
  }
  if (pooled_expected >= 5.0) {
    stat += (pooled_observed - pooled_expected) * (pooled_observed - pooled_expected) /
            pooled_expected;
    ++bins;
  }
  return {stat, std::max(bins - 1, 0)};
}

// A chi-square critical value far in the tail (p ~ 1e-7) via Wilson-Hilferty, so the many
// parameter combinations below do not produce false alarms, while a wrong filter (shifting mass by
// a few percent) still fails by a wide margin.
double chi_square_limit(int dof) {
  if (dof == 0) return 1e-9;
  const double z = 5.3;
  const double k = dof;
  const double t = 1.0 - 2.0 / (9.0 * k) + z * std::sqrt(2.0 / (9.0 * k));
  return k * t * t * t;
}

TEST(UniformDraw, InUnitIntervalWithUniformMoments) {
  const int n = 1 << 20;
  double sum = 0.0, sum_sq = 0.0;
  std::vector<int> bins(100, 0);
  for (int i = 0; i < n; ++i) {
    const double u = uniform_draw(12345, static_cast<std::uint64_t>(i));
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    sum_sq += u * u;
    ++bins[static_cast<int>(u * 100)];
  }
  const double mean = sum / n;
  const double var = sum_sq / n - mean * mean;
  // Standard error of the mean is sqrt(1/12 / n) ~ 2.8e-4.
  EXPECT_NEAR(mean, 0.5, 5 * std::sqrt(1.0 / 12 / n));
  EXPECT_NEAR(var, 1.0 / 12, 5e-4);
  std::vector<int> counts(bins.begin(), bins.end());
  std::vector<double> probs(100, 0.01);
  const auto [stat, dof] = chi_square(counts, probs, n);
  EXPECT_LT(stat, chi_square_limit(dof));
}

TEST(UniformDraw, DistinctAcrossSeedsAndSteps) {
  std::unordered_set<double> seen;
  for (std::uint64_t seed = 0; seed < 1000; ++seed) {
    for (std::uint64_t step = 0; step < 1000; ++step) seen.insert(uniform_draw(seed, step));
  }
  // 10^6 draws of 53 bits collide with probability ~5e-5.
  EXPECT_GE(seen.size(), 999999u);
  EXPECT_NE(uniform_draw(3, 7), uniform_draw(7, 3));
  EXPECT_EQ(uniform_draw(3, 7), uniform_draw(3, 7));
}

TEST(UniformDraw, NeighbouringCountersAreUncorrelated) {
  // Correlation of u(s, t) with u(s, t+1) and with u(s+1, t), over a grid; sd ~ 1/sqrt(n).
  const int n = 200000;
  double sxy_step = 0.0, sxy_seed = 0.0;
  for (int i = 0; i < n; ++i) {
    const std::uint64_t seed = static_cast<std::uint64_t>(i) / 400;
    const std::uint64_t step = static_cast<std::uint64_t>(i) % 400;
    const double u = uniform_draw(seed, step) - 0.5;
    sxy_step += u * (uniform_draw(seed, step + 1) - 0.5);
    sxy_seed += u * (uniform_draw(seed + 1, step) - 0.5);
  }
  const double corr_step = sxy_step / n * 12.0;
  const double corr_seed = sxy_seed / n * 12.0;
  EXPECT_LT(std::abs(corr_step), 5.0 / std::sqrt(n));
  EXPECT_LT(std::abs(corr_seed), 5.0 / std::sqrt(n));
}

TEST(Sampler, GreedyIsArgmaxWithLowestIdOnTies) {
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> logits = random_logits(rng, 1 + trial * 7, 2.0f);
    const int expected =
        static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    EXPECT_EQ(sample_token(logits, row(0.0f, 5, 0.5f, 0.1f, trial, trial)), expected);
  }
  const std::vector<float> ties = {0.5f, 3.0f, -1.0f, 3.0f, 3.0f};
  EXPECT_EQ(sample_token(ties, row(0.0f, 0, 1.0f, 0.0f)), 1);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> with_nan = {nan, 1.0f, nan, 2.0f, nan};
  EXPECT_EQ(sample_token(with_nan, row(0.0f, 0, 1.0f, 0.0f)), 3);
}

TEST(Sampler, SameSeedAndStepGiveSameToken) {
  std::mt19937_64 rng(2);
  const std::vector<float> logits = random_logits(rng, 5000, 1.0f);
  for (std::uint64_t step = 0; step < 50; ++step) {
    const RowSampling p = row(1.0f, 0, 0.95f, 0.0f, 777, step);
    const int first = sample_token(logits, p);
    for (int again = 0; again < 3; ++again) EXPECT_EQ(sample_token(logits, p), first);
  }
  // Different steps do move: 50 steps over a flat-ish 5000-token distribution are not all equal.
  std::unordered_set<int> picks;
  for (std::uint64_t step = 0; step < 50; ++step) {
    picks.insert(sample_token(logits, row(1.0f, 0, 1.0f, 0.0f, 777, step)));
  }
  EXPECT_GT(picks.size(), 10u);
}

TEST(Sampler, EmpiricalFrequenciesMatchFilteredDistribution) {
  std::mt19937_64 rng(3);
  const float temperatures[] = {0.6f, 1.0f, 1.7f};
  const int top_ks[] = {0, 1, 3, 12};
  const float top_ps[] = {1.0f, 0.8f, 0.4f};
  const float min_ps[] = {0.0f, 0.05f, 0.3f};
  const int draws = 12000;
  int combination = 0;
  for (float temperature : temperatures) {
    for (int top_k : top_ks) {
      for (float top_p : top_ps) {
        for (float min_p : min_ps) {
          ++combination;
          const int vocab = 5 + static_cast<int>(rng() % 40);
          const std::vector<float> logits = random_logits(rng, vocab, 1.5f);
          const RowSampling base = row(temperature, top_k, top_p, min_p);
          const std::vector<double> probs = reference_probs(logits, base);
          std::vector<int> counts(vocab, 0);
          for (int d = 0; d < draws; ++d) {
            RowSampling p = base;
            p.seed = 1000 + combination;
            p.step = static_cast<std::uint64_t>(d);
            ++counts[sample_token(logits, p)];
          }
          const auto [stat, dof] = chi_square(counts, probs, draws);
          EXPECT_LT(stat, chi_square_limit(dof))
              << "T=" << temperature << " top_k=" << top_k << " top_p=" << top_p
              << " min_p=" << min_p << " vocab=" << vocab;
        }
      }
    }
  }
}

TEST(Sampler, WideDynamicRangeAndManySeeds) {
  // Logits spread over 45 nats put weights in every exponent bucket, including the last one.
  std::mt19937_64 rng(4);
  std::uniform_real_distribution<float> spread(-45.0f, 0.0f);
  std::vector<float> logits(300);
  for (float& x : logits) x = spread(rng);
  logits[17] = 0.5f;
  logits[18] = 0.5f;  // a tie at the top
  for (const RowSampling& base : {row(1.0f, 0, 1.0f, 0.0f), row(1.0f, 0, 0.999f, 0.0f),
                                  row(3.0f, 40, 0.9f, 0.0f), row(8.0f, 0, 0.7f, 1e-4f)}) {
    const std::vector<double> probs = reference_probs(logits, base);
    const int draws = 40000;
    std::vector<int> counts(logits.size(), 0);
    for (int d = 0; d < draws; ++d) {
      RowSampling p = base;
      p.seed = static_cast<std::uint64_t>(d) * 7919;  // distinct seeds, step fixed
      p.step = 3;
      ++counts[sample_token(logits, p)];
    }
    const auto [stat, dof] = chi_square(counts, probs, draws);
    EXPECT_LT(stat, chi_square_limit(dof)) << "T=" << base.temperature << " top_p=" << base.top_p;
  }
}

TEST(Sampler, LargeVocabPicksMatchReferenceInverseCdf) {
  // Qwen3-sized row: the pick for each draw must be the token the plain sorted walk picks.
  std::mt19937_64 rng(5);
  const std::vector<float> logits = random_logits(rng, 151936, 2.5f);
  for (const RowSampling& base :
       {row(1.0f, 0, 1.0f, 0.0f), row(0.7f, 0, 0.9f, 0.0f), row(1.0f, 50, 1.0f, 0.0f),
        row(1.2f, 20, 0.8f, 0.02f), row(0.9f, 0, 1.0f, 0.001f), row(1.0f, 151935, 0.95f, 0.0f)}) {
    const std::vector<double> probs = reference_probs(logits, base);
    const std::vector<int> order = walk_order(probs);
    for (std::uint64_t step = 0; step < 60; ++step) {
      RowSampling p = base;
      p.seed = 42;
      p.step = step;
      EXPECT_EQ(sample_token(logits, p), reference_pick(probs, order, uniform_draw(42, step)))
          << "T=" << base.temperature << " top_k=" << base.top_k << " top_p=" << base.top_p
          << " min_p=" << base.min_p << " step=" << step;
    }
  }
}

TEST(Sampler, TiedProbabilitiesWalkInIdOrder) {
  // Logits on a coarse grid tie often; each draw must pick what the id-ordered walk picks.
  std::mt19937_64 rng(9);
  std::vector<float> logits(3000);
  for (float& x : logits) x = 0.5f * static_cast<float>(rng() % 9);
  for (const RowSampling& base : {row(1.0f, 0, 1.0f, 0.0f), row(0.8f, 700, 0.6f, 0.0f)}) {
    const std::vector<double> probs = reference_probs(logits, base);
    const std::vector<int> order = walk_order(probs);
    for (std::uint64_t step = 0; step < 300; ++step) {
      RowSampling p = base;
      p.seed = 11;
      p.step = step;
      EXPECT_EQ(sample_token(logits, p), reference_pick(probs, order, uniform_draw(11, step)))
          << "step " << step;
    }
  }
}

TEST(Sampler, TopKKeepsAllTiesAtTheBoundary) {
  const std::vector<float> logits = {1.0f, 2.0f, 2.0f, 0.0f, 2.0f};
  std::vector<int> counts(logits.size(), 0);
  const int draws = 9000;
  for (int d = 0; d < draws; ++d) ++counts[sample_token(logits, row(1.0f, 1, 1.0f, 0.0f, 9, d))];
  EXPECT_EQ(counts[0], 0);
  EXPECT_EQ(counts[3], 0);
  for (int id : {1, 2, 4}) EXPECT_NEAR(counts[id], draws / 3.0, 5 * std::sqrt(draws * 2.0 / 9));
}

TEST(Sampler, TinyTopPIsArgmax) {
  std::mt19937_64 rng(6);
  for (int trial = 0; trial < 20; ++trial) {
    const std::vector<float> logits = random_logits(rng, 1000, 1.0f);
    const int expected =
        static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    for (std::uint64_t step = 0; step < 50; ++step) {
      EXPECT_EQ(sample_token(logits, row(2.0f, 0, 1e-6f, 0.0f, trial, step)), expected);
    }
  }
}

TEST(Sampler, MinPOneAndTopKOneAreArgmax) {
  std::mt19937_64 rng(7);
  const std::vector<float> logits = random_logits(rng, 500, 1.0f);
  const int expected =
      static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  for (std::uint64_t step = 0; step < 100; ++step) {
    EXPECT_EQ(sample_token(logits, row(1.0f, 0, 1.0f, 1.0f, 1, step)), expected);
    EXPECT_EQ(sample_token(logits, row(1.0f, 1, 1.0f, 0.0f, 1, step)), expected);
  }
}

TEST(Sampler, MaskedAndInfiniteLogits) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // -inf and NaN tokens are never drawn.
  const std::vector<float> masked = {-kInf, 0.0f, nan, 0.0f, -kInf};
  // +inf tokens share all the mass.
  const std::vector<float> infinite = {1.0f, kInf, 3.0f, kInf};
  std::vector<int> masked_counts(5, 0), inf_counts(4, 0);
  for (int d = 0; d < 4000; ++d) {
    ++masked_counts[sample_token(masked, row(1.0f, 0, 1.0f, 0.0f, 5, d))];
    ++inf_counts[sample_token(infinite, row(1.0f, 0, 1.0f, 0.0f, 5, d))];
  }
  EXPECT_EQ(masked_counts[0] + masked_counts[2] + masked_counts[4], 0);
  EXPECT_NEAR(masked_counts[1], 2000, 200);
  EXPECT_EQ(inf_counts[0] + inf_counts[2], 0);
  EXPECT_NEAR(inf_counts[1], 2000, 200);
}

TEST(Sampler, RejectsRowsWithNothingToSample) {
  const std::vector<float> empty;
  const std::vector<float> all_masked = {-kInf, std::numeric_limits<float>::quiet_NaN()};
  for (float t : {0.0f, 1.0f}) {
    try {
      sample_token(all_masked, row(t, 0, 1.0f, 0.0f));
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    }
    EXPECT_THROW(sample_token(empty, row(t, 0, 1.0f, 0.0f)), Error);
  }
}

TEST(Sampler, BatchMatchesPerRow) {
  std::mt19937_64 rng(8);
  const int vocab = 2000, rows = 37;
  const std::vector<float> logits = random_logits(rng, vocab * rows, 2.0f);
  std::vector<RowSampling> params;
  for (int r = 0; r < rows; ++r) {
    params.push_back(row(r % 4 == 0 ? 0.0f : 0.5f + 0.1f * (r % 7), r % 3 == 0 ? 0 : 10 + r,
                         r % 2 == 0 ? 1.0f : 0.9f, r % 5 == 0 ? 0.05f : 0.0f, r, 100 + r));
  }
  const std::vector<std::int32_t> batch = sample_tokens(logits, vocab, params);
  ASSERT_EQ(batch.size(), static_cast<std::size_t>(rows));
  for (int r = 0; r < rows; ++r) {
    const std::span<const float> one(logits.data() + r * vocab, vocab);
    EXPECT_EQ(batch[r], sample_token(one, params[r])) << "row " << r;
  }
  EXPECT_THROW(sample_tokens(std::span<const float>(logits).first(vocab * rows - 1), vocab, params),
               Error);
  // An error in one row surfaces from the parallel loop.
  std::vector<float> bad = logits;
  std::fill(bad.begin() + 5 * vocab, bad.begin() + 6 * vocab, -kInf);
  EXPECT_THROW(sample_tokens(bad, vocab, params), Error);
}

void expect_invalid(const SamplingParams& params, const char* field) {
  try {
    validate_sampling_params(params);
    ADD_FAILURE() << "expected " << field << " to be rejected";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
  }
}

TEST(ValidateSamplingParams, AcceptsValidRanges) {
  SamplingParams p;
  EXPECT_NO_THROW(validate_sampling_params(p));
  p.temperature = 0.0f;
  p.top_k = -1;
  p.top_p = 1.0f;
  p.min_p = 1.0f;
  p.max_tokens = kMaxRequestTokens;
  p.stop = {"\n\n", "END"};
  p.stop_token_ids = {0, 151645};
  EXPECT_NO_THROW(validate_sampling_params(p));
  p.top_k = 0;
  p.top_p = 1e-6f;
  p.min_p = 0.0f;
  p.max_tokens = 1;
  EXPECT_NO_THROW(validate_sampling_params(p));
}

TEST(ValidateSamplingParams, RejectsEachBadField) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto with = [](auto edit) {
    SamplingParams p;
    edit(p);
    return p;
  };
  for (float t : {-0.1f, nan, kInf}) {
    expect_invalid(with([&](SamplingParams& p) { p.temperature = t; }), "temperature");
  }
  for (float v : {0.0f, -0.5f, 1.0001f, nan}) {
    expect_invalid(with([&](SamplingParams& p) { p.top_p = v; }), "top_p");
  }
  for (float v : {-0.01f, 1.5f, nan}) {
    expect_invalid(with([&](SamplingParams& p) { p.min_p = v; }), "min_p");
  }
  expect_invalid(with([](SamplingParams& p) { p.top_k = -2; }), "top_k");
  for (int v : {0, -3, kMaxRequestTokens + 1}) {
    expect_invalid(with([&](SamplingParams& p) { p.max_tokens = v; }), "max_tokens");
  }
  expect_invalid(with([](SamplingParams& p) { p.stop = {"ok", ""}; }), "stop[1]");
  expect_invalid(with([](SamplingParams& p) { p.stop_token_ids = {3, -1}; }), "stop_token_ids[1]");
}

}  // namespace
}  // namespace cascade

// End to end on the GPU: logits of the repo's transformers-made checkpoints within bf16 tolerance of
// the float64 reference; greedy tokens equal to the CPU engine wherever the reference margin is
// clear; cascade on and off giving the same tokens; caching giving the same tokens as no caching.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/cuda/cuda_runner.h"
#include "cascade/llm.h"
#include "model/model_config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "common/single_sequence.h"

namespace cascade {
namespace {

namespace fs = std::filesystem;

#define SKIP_WITHOUT_GPU_E2E() \
  do {                         \
    if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

// The fixtures of the source tree this was built from, or of $CASCADE_SOURCE_DIR when set (the GPU
// machine runs binaries built elsewhere from its own copy of the repository: scripts/gpu_check.sh).
fs::path models_dir() {
  const char* env = std::getenv("CASCADE_SOURCE_DIR");
  return fs::path(env && *env ? env : CASCADE_SOURCE_DIR) / "tests" / "fixtures" / "models";
}
const fs::path kModels = models_dir();

std::vector<std::string> names() {
  std::vector<std::string> out;
  if (!fs::is_directory(kModels)) return out;
  for (const auto& e : fs::directory_iterator(kModels)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

class CudaReference : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaReference, LogitsWithinBf16ToleranceOfTransformers) {
  SKIP_WITHOUT_GPU_E2E();
  const fs::path dir = kModels / GetParam();
  const ModelConfig config = load_model_config(dir);
  if (config.head_dim != 64 && config.head_dim != 128) GTEST_SKIP() << "the CUDA backend takes head_dim 64 or 128";
  const Qwen3Weights weights = load_qwen3_weights(dir, config);
  std::ifstream in(dir / "reference.json");
  const auto ref = nlohmann::json::parse(in);
  const SafeTensorsFile ref_logits = SafeTensorsFile::open(dir / "reference.safetensors");
  for (std::size_t p = 0; p < ref["prompts"].size(); ++p) {
    const auto ids = ref["prompts"][p].get<std::vector<std::int32_t>>();
    const int page_size = 16;
    auto runner = make_cuda_runner(config, weights, static_cast<int>(ids.size()) / page_size + 2, page_size);
    test::SingleSequenceStep step = test::single_sequence_prefill(ids, page_size);
    step.batch.plan = &step.plan;
    runner->forward(step.batch);
    const std::vector<float> got = runner->copy_logits();
    const std::vector<float> want = tensor_to_f32(ref_logits.tensor("logits_" + std::to_string(p)));
    ASSERT_EQ(got.size(), want.size());
    double num = 0, den = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      ASSERT_FALSE(std::isnan(got[i])) << i;
      num += (got[i] - want[i]) * (got[i] - want[i]);
      den += want[i] * want[i];
    }
    EXPECT_LT(std::sqrt(num / den), 3e-2) << GetParam() << " prompt " << p;  // bf16 activations
  }
}

std::vector<Request> greedy_requests(const nlohmann::json& ref) {
  std::vector<Request> reqs;
  for (const auto& prompt : ref["prompts"]) {
    Request r;
    Segment s;
    s.kind = ChunkKind::kAuto;
    s.ids = prompt.get<std::vector<std::int32_t>>();
    r.segments.push_back(s);
    r.sampling.temperature = 0;
    r.sampling.max_tokens = static_cast<int>(ref["greedy"][0].size());
    r.sampling.ignore_eos = true;
    reqs.push_back(r);
  }
  return reqs;
}

TEST_P(CudaReference, GreedyTokensMatchTheCpuEngineWhereTheMarginIsClear) {
  SKIP_WITHOUT_GPU_E2E();
  const fs::path dir = kModels / GetParam();
  if (const int hd = load_model_config(dir).head_dim; hd != 64 && hd != 128) {
    GTEST_SKIP() << "the CUDA backend takes head_dim 64 or 128";
  }
  std::ifstream in(dir / "reference.json");
  const auto ref = nlohmann::json::parse(in);
  Config gpu;
  gpu.model_dir = dir.string();
  gpu.device = Device::kCuda;
  gpu.kv_cache_bytes = 16 << 20;
  Config cpu = gpu;
  cpu.device = Device::kCpu;
  const auto reqs = greedy_requests(ref);
  LLM a(gpu), b(cpu);
  const auto og = a.generate(reqs), oc = b.generate(reqs);
  for (std::size_t p = 0; p < og.size(); ++p) {
    ASSERT_EQ(og[p].error, "");
    const auto margins = ref["greedy_margins"][p].get<std::vector<double>>();
    for (std::size_t i = 0; i < margins.size() && margins[i] > 0.05; ++i) {
      // bf16 logits move by ~1e-2, so only steps whose float64 margin clearly exceeds that count.
      EXPECT_EQ(og[p].token_ids[i], oc[p].token_ids[i]) << GetParam() << " prompt " << p << " step " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, CudaReference, ::testing::ValuesIn(names()),
                         [](const auto& info) { return info.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(CudaReference);

// Compositions with sharing: cascade on/off and cache/no-cache give the same greedy tokens on the GPU.
TEST(CudaEngine, CascadeAndCacheKeepGreedyTokens) {
  SKIP_WITHOUT_GPU_E2E();
  if (const int hd = load_model_config(kModels / "gpu_hd64").head_dim; hd != 64 && hd != 128) {
    GTEST_SKIP() << "needs a fixture model with head_dim 64 or 128 (not yet generated)";
  }
  std::vector<Request> reqs;
  std::vector<std::int32_t> sys, docs[3];
  // Longest request: 48 + 40 + 3 prompt + 8 generated = 99 tokens, inside the fixture's 128 positions.
  for (int i = 0; i < 48; ++i) sys.push_back((i * 7 + 3) % 250);
  for (int d = 0; d < 3; ++d) {
    for (int i = 0; i < 24 + 8 * d; ++i) docs[d].push_back((i * 13 + 5 * d + 1) % 250);
  }
  for (int q = 0; q < 24; ++q) {
    Request r;
    Segment a, b, c;
    a.kind = ChunkKind::kSystem;
    a.ids = sys;
    b.kind = ChunkKind::kContext;
    b.ids = docs[q % 3];
    c.kind = ChunkKind::kQuery;
    c.ids = {static_cast<std::int32_t>(q), static_cast<std::int32_t>(q + 1), 7};
    r.segments = {a, b, c};
    r.sampling.temperature = 0;
    r.sampling.max_tokens = 8;
    r.sampling.ignore_eos = true;
    r.sampling.logprobs = true;
    reqs.push_back(r);
  }
  Config base;
  base.model_dir = (kModels / "gpu_hd64").string();
  base.device = Device::kCuda;
  base.kv_cache_bytes = 64 << 20;
  Config on = base, off = base, nocache = base;
  on.cascade_mode = CascadeMode::kOn;
  off.cascade_mode = CascadeMode::kOff;
  nocache.enable_prefix_cache = false;
  LLM a(on), b(off), c(nocache);
  const auto oa = a.generate(reqs), ob = b.generate(reqs), oc = c.generate(reqs);
  // Along the tokens two runs share, the chosen tokens' log-probabilities agree within bf16
  // rounding; where they first part, the two choices must be a near-tie (equal log-probabilities
  // within the same tolerance), since a real difference in the attention would show as a gap.
  // A random model of this size has many near-ties, so whole sequences may differ.
  constexpr float kTol = 0.05f;
  auto compare = [&](const std::vector<RequestOutput>& x, const std::vector<RequestOutput>& y, const char* what) {
    int identical = 0;
    for (std::size_t i = 0; i < reqs.size(); ++i) {
      ASSERT_EQ(x[i].token_ids.size(), 8u) << what << " request " << i << ": " << x[i].error;
      ASSERT_EQ(y[i].token_ids.size(), 8u) << what << " request " << i << ": " << y[i].error;
      ASSERT_EQ(x[i].token_logprobs.size(), 8u);
      ASSERT_EQ(y[i].token_logprobs.size(), 8u);
      for (std::size_t j = 0; j < 8; ++j) {
        EXPECT_NEAR(x[i].token_logprobs[j], y[i].token_logprobs[j], kTol)
            << what << " request " << i << " token " << j << " (" << x[i].token_ids[j] << " vs "
            << y[i].token_ids[j] << ")";
        if (x[i].token_ids[j] != y[i].token_ids[j]) break;
      }
      identical += x[i].token_ids == y[i].token_ids;
    }
    std::printf("  %s: %d of %zu requests token for token identical\n", what, identical, reqs.size());
  };
  compare(oa, ob, "cascade on vs off");
  compare(oa, oc, "prefix cache on vs off");
  EXPECT_GT(a.stats().cascade_steps, 0);
  EXPECT_EQ(a.stats().max_levels_used, 3);
}

}  // namespace
}  // namespace cascade

// The CPU forward pass against transformers: logits and greedy continuations recorded in float64 by
// scripts/make_reference_models.py on small random Qwen3 checkpoints (tests/fixtures/models/).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_runner.h"
#include "cascade/llm.h"
#include "model/model_config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "common/single_sequence.h"

namespace cascade {
namespace {

namespace fs = std::filesystem;

fs::path fixtures_dir() { return fs::path(CASCADE_SOURCE_DIR) / "tests" / "fixtures" / "models"; }

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  if (!fs::is_directory(fixtures_dir())) return names;
  for (const auto& e : fs::directory_iterator(fixtures_dir())) {
    if (fs::exists(e.path() / "reference.json")) names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<float> forward_all_logits(ModelRunner& runner, const std::vector<std::int32_t>& ids, int page_size) {
  test::SingleSequenceStep step = test::single_sequence_prefill(ids, page_size);
  step.batch.plan = &step.plan;
  runner.forward(step.batch);
  return runner.copy_logits();
}

class Qwen3Reference : public ::testing::TestWithParam<std::string> {};

TEST_P(Qwen3Reference, LogitsMatchTransformersFloat64) {
  const fs::path dir = fixtures_dir() / GetParam();
  const ModelConfig config = load_model_config(dir);
  auto weights = std::make_shared<Qwen3Weights>(load_qwen3_weights(dir, config));
  std::ifstream in(dir / "reference.json");
  const auto ref = nlohmann::json::parse(in);
  const SafeTensorsFile ref_logits = SafeTensorsFile::open(dir / "reference.safetensors");
  const auto& prompts = ref.at("prompts");
  ASSERT_GE(prompts.size(), 1u);
  for (std::size_t p = 0; p < prompts.size(); ++p) {
    const auto ids = prompts[p].get<std::vector<std::int32_t>>();
    for (int page_size : {1, 16}) {
      auto runner = make_cpu_runner(config, weights, (static_cast<int>(ids.size()) + page_size - 1) / page_size + 1, page_size);
      const std::vector<float> got = forward_all_logits(*runner, ids, page_size);
      const std::vector<float> want = tensor_to_f32(ref_logits.tensor("logits_" + std::to_string(p)));
      ASSERT_EQ(got.size(), want.size());
      for (std::size_t row = 0; row < ids.size(); ++row) {
        double num = 0, den = 0;
        for (int v = 0; v < config.vocab_size; ++v) {
          const double g = got[row * config.vocab_size + v], w = want[row * config.vocab_size + v];
          ASSERT_FALSE(std::isnan(g));
          num += (g - w) * (g - w);
          den += w * w;
        }
        const double rel = std::sqrt(num / den);
        EXPECT_LT(rel, 1e-4) << GetParam() << " prompt " << p << " position " << row << " page " << page_size;
      }
    }
  }
}

TEST_P(Qwen3Reference, GreedyContinuationMatchesWhereMarginIsClear) {
  const fs::path dir = fixtures_dir() / GetParam();
  std::ifstream in(dir / "reference.json");
  const auto ref = nlohmann::json::parse(in);
  Config cfg;
  cfg.model_dir = dir.string();
  cfg.device = Device::kCpu;
  cfg.kv_cache_bytes = 8 << 20;
  LLM llm(cfg);
  std::vector<Request> reqs;
  for (const auto& prompt : ref.at("prompts")) {
    Request r;
    Segment s;
    s.kind = ChunkKind::kAuto;
    s.ids = prompt.get<std::vector<std::int32_t>>();
    r.segments.push_back(s);
    r.sampling.temperature = 0;
    r.sampling.max_tokens = static_cast<int>(ref.at("greedy")[0].size());
    r.sampling.ignore_eos = true;
    reqs.push_back(r);
  }
  const auto outs = llm.generate(reqs);
  int compared = 0;
  for (std::size_t p = 0; p < outs.size(); ++p) {
    const auto want = ref.at("greedy")[p].get<std::vector<std::int32_t>>();
    const auto margins = ref.at("greedy_margins")[p].get<std::vector<double>>();
    ASSERT_EQ(outs[p].error, "");
    for (std::size_t i = 0; i < want.size(); ++i) {
      if (margins[i] <= 1e-3) break;  // past an ambiguous step the continuations may differ legitimately
      ASSERT_LT(i, outs[p].token_ids.size());
      EXPECT_EQ(outs[p].token_ids[i], want[i]) << GetParam() << " prompt " << p << " step " << i;
      ++compared;
    }
  }
  EXPECT_GT(compared, 0);
}

INSTANTIATE_TEST_SUITE_P(Models, Qwen3Reference, ::testing::ValuesIn(model_names()),
                         [](const auto& info) { return info.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(Qwen3Reference);

TEST(Qwen3Fixtures, Present) {
  // The fixtures are committed; their absence is a packaging bug, not a skip.
  EXPECT_GE(model_names().size(), 6u) << "expected reference models under " << fixtures_dir();
}

}  // namespace
}  // namespace cascade

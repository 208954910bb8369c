// Loads every transformers-made checkpoint under tests/fixtures/models (written by
// scripts/make_reference_models.py): config.json as transformers 5.x writes it, weights as
// save_pretrained writes them, and the reference logits file. Comparing outputs is the forward-pass
// test's job; this one makes sure real HF files get that far.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/model_config.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace cascade {
namespace {

std::vector<std::filesystem::path> fixture_model_dirs() {
  const std::filesystem::path root = std::filesystem::path(CASCADE_SOURCE_DIR) / "tests/fixtures/models";
  std::vector<std::filesystem::path> dirs;
  std::error_code ec;
  if (!std::filesystem::is_directory(root, ec)) return dirs;
  for (const auto& entry : std::filesystem::directory_iterator(root)) {
    if (std::filesystem::exists(entry.path() / "config.json")) dirs.push_back(entry.path());
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

TEST(FixtureModelsTest, TransformersCheckpointsLoad) {
  const auto dirs = fixture_model_dirs();
  if (dirs.empty()) GTEST_SKIP() << "no tests/fixtures/models: run scripts/make_reference_models.py";
  for (const auto& dir : dirs) {
    SCOPED_TRACE(dir.string());
    const ModelConfig c = load_model_config(dir);
    std::ifstream in(dir / "reference.json");
    ASSERT_TRUE(in.good());
    const nlohmann::json ref = nlohmann::json::parse(in);
    const auto& shape = ref.at("shape");
    EXPECT_EQ(c.vocab_size, shape.at("vocab_size").get<int>());
    EXPECT_EQ(c.hidden_size, shape.at("hidden_size").get<int>());
    EXPECT_EQ(c.intermediate_size, shape.at("intermediate_size").get<int>());
    EXPECT_EQ(c.num_hidden_layers, shape.at("num_hidden_layers").get<int>());
    EXPECT_EQ(c.num_attention_heads, shape.at("num_attention_heads").get<int>());
    EXPECT_EQ(c.num_key_value_heads, shape.at("num_key_value_heads").get<int>());
    EXPECT_EQ(c.head_dim, shape.at("head_dim").get<int>());
    EXPECT_EQ(c.tie_word_embeddings, shape.at("tie_word_embeddings").get<bool>());
    EXPECT_EQ(c.rope.theta, shape.at("rope_theta").get<double>());
    if (shape.at("rope_linear_factor").is_null()) {
      EXPECT_EQ(c.rope.type, "default");
    } else {
      EXPECT_EQ(c.rope.type, "linear");
      EXPECT_EQ(c.rope.factor, shape.at("rope_linear_factor").get<double>());
    }

    const Qwen3Weights w = load_qwen3_weights(dir, c);
    EXPECT_EQ(w.layers.size(), static_cast<std::size_t>(c.num_hidden_layers));
    EXPECT_EQ(w.lm_head.data.empty(), c.tie_word_embeddings);
    // The loader's tensor list is exactly what transformers saved.
    std::vector<std::string> want;
    for (const TensorSpec& s : qwen3_tensor_specs(c)) want.push_back(s.name);
    std::sort(want.begin(), want.end());
    EXPECT_EQ(want, ref.at("tensors").get<std::vector<std::string>>());

    const SafeTensorsFile logits = SafeTensorsFile::open(dir / "reference.safetensors");
    const auto& prompts = ref.at("prompts");
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      const TensorInfo& t = logits.tensor("logits_" + std::to_string(i));
      EXPECT_EQ(t.dtype, DType::kF32);
      EXPECT_EQ(t.shape, (std::vector<std::int64_t>{static_cast<std::int64_t>(prompts[i].size()), c.vocab_size}));
    }
  }
}

}  // namespace
}  // namespace cascade

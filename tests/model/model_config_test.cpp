#include "model/model_config.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "model/model_test_util.h"

namespace cascade {
namespace {

using nlohmann::json;
using testing::TempDir;

// As transformers 4.51 writes a Qwen3 config (top-level rope_theta, rope_scaling null, torch_dtype).
const char* kV4Config = R"({
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 1024,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "max_position_embeddings": 40960,
  "max_window_layers": 28,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// As transformers 5.x writes one (rope_parameters, dtype, eos list).
const char* kV5Config = R"({
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": true,
  "dtype": "float32",
  "eos_token_id": [2, 7],
  "head_dim": 32,
  "hidden_size": 64,
  "intermediate_size": 160,
  "layer_types": ["full_attention", "full_attention"],
  "max_position_embeddings": 512,
  "model_type": "qwen3",
  "num_attention_heads": 4,
  "num_hidden_layers": 2,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-05,
  "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
  "transformers_version": "5.17.0",
  "vocab_size": 317
})";

const char* kSource = "models/tiny/config.json";

ModelConfig parse(const json& j) { return parse_model_config(j.dump(), kSource); }

TEST(ModelConfigTest, ParsesTransformers4Style) {
  ModelConfig c = parse_model_config(kV4Config, kSource);
  EXPECT_EQ(c.architecture, "Qwen3ForCausalLM");
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_EQ(c.hidden_size, 1024);
  EXPECT_EQ(c.intermediate_size, 3072);
  EXPECT_EQ(c.num_hidden_layers, 28);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.q_size(), 2048);
  EXPECT_EQ(c.kv_size(), 1024);
  EXPECT_EQ(c.max_position_embeddings, 40960);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_DOUBLE_EQ(c.rope.factor, 1.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.eos_token_ids, std::vector<std::int32_t>{151645});
  EXPECT_EQ(c.bos_token_id, 151643);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(ModelConfigTest, ParsesTransformers5Style) {
  ModelConfig c = parse_model_config(kV5Config, kSource);
  EXPECT_EQ(c.vocab_size, 317);
  EXPECT_EQ(c.head_dim, 32);  // differs from hidden / heads = 16
  EXPECT_EQ(c.q_size(), 128);
  EXPECT_EQ(c.kv_size(), 64);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.tie_word_embeddings);  // Qwen3Config's default
  EXPECT_EQ(c.eos_token_ids, (std::vector<std::int32_t>{2, 7}));
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_EQ(c.torch_dtype, "float32");
}

TEST(ModelConfigTest, DefaultsForAbsentFields) {
  json j = {{"model_type", "qwen3"}, {"vocab_size", 300}, {"hidden_size", 96}, {"intermediate_size", 200},
            {"num_hidden_layers", 3}, {"num_attention_heads", 6}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.num_key_value_heads, 6);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);  // transformers' default_theta
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);

  j["eos_token_id"] = nullptr;
  j["rope_scaling"] = nullptr;
  j["rope_parameters"] = nullptr;
  EXPECT_TRUE(parse(j).eos_token_ids.empty());
}

TEST(ModelConfigTest, LinearRopeInEveryStyle) {
  json base = json::parse(kV4Config);
  json j = base;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.rope.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope.factor, 4.0);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);  // top-level theta still applies

  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2}};
  c = parse(j);
  EXPECT_EQ(c.rope.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope.factor, 2.0);

  j = base;
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 8.0}, {"rope_theta", 20000.0}};
  c = parse(j);
  EXPECT_EQ(c.rope.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope.theta, 20000.0);

  // 5.x may nest the parameters by layer type.
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 123.0}}}};
  c = parse(j);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_DOUBLE_EQ(c.rope.theta, 123.0);
}

TEST(ModelConfigTest, JsonRoundTrip) {
  for (const char* text : {kV4Config, kV5Config}) {
    ModelConfig c = parse_model_config(text, kSource);
    c.rope.type = "linear";
    c.rope.factor = 2.5;
    ModelConfig back = parse_model_config(model_config_to_json(c), "roundtrip.json");
    EXPECT_EQ(back.vocab_size, c.vocab_size);
    EXPECT_EQ(back.hidden_size, c.hidden_size);
    EXPECT_EQ(back.intermediate_size, c.intermediate_size);
    EXPECT_EQ(back.num_hidden_layers, c.num_hidden_layers);
    EXPECT_EQ(back.num_attention_heads, c.num_attention_heads);
    EXPECT_EQ(back.num_key_value_heads, c.num_key_value_heads);
    EXPECT_EQ(back.head_dim, c.head_dim);
    EXPECT_EQ(back.max_position_embeddings, c.max_position_embeddings);
    EXPECT_EQ(back.rms_norm_eps, c.rms_norm_eps);
    EXPECT_EQ(back.rope.theta, c.rope.theta);
    EXPECT_EQ(back.rope.type, c.rope.type);
    EXPECT_EQ(back.rope.factor, c.rope.factor);
    EXPECT_EQ(back.tie_word_embeddings, c.tie_word_embeddings);
    EXPECT_EQ(back.attention_bias, c.attention_bias);
    EXPECT_EQ(back.eos_token_ids, c.eos_token_ids);
    EXPECT_EQ(back.bos_token_id, c.bos_token_id);
    EXPECT_EQ(back.torch_dtype, c.torch_dtype);
    // The serialised form is transformers 5.x style.
    json j = json::parse(model_config_to_json(c));
    EXPECT_TRUE(j.contains("rope_parameters"));
    EXPECT_FALSE(j.contains("rope_theta"));
  }
}

TEST(ModelConfigTest, LoadsFromDirectoryAndNamesMissingFile) {
  TempDir dir;
  testing::write_file(dir / "config.json", kV5Config);
  EXPECT_EQ(load_model_config(dir.path()).vocab_size, 317);

  TempDir empty;
  EXPECT_CASCADE_ERROR(load_model_config(empty.path()), (empty / "config.json").string());
  try {
    load_model_config(empty.path());
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
  }

  testing::write_file(dir / "config.json", "{\"model_type\": \"qwen3\", ");
  EXPECT_CASCADE_ERROR(load_model_config(dir.path()), (dir / "config.json").string(), "malformed JSON");
}

struct BadCase {
  const char* what;
  std::function<void(json&)> mutate;
  std::string field;  // must appear in the message
  ErrorCode code;
};

TEST(ModelConfigTest, EveryErrorNamesFileAndField) {
  const std::vector<BadCase> cases = {
      {"missing vocab_size", [](json& j) { j.erase("vocab_size"); }, "vocab_size", ErrorCode::kParse},
      {"missing hidden_size", [](json& j) { j.erase("hidden_size"); }, "hidden_size", ErrorCode::kParse},
      {"missing intermediate_size", [](json& j) { j.erase("intermediate_size"); }, "intermediate_size",
       ErrorCode::kParse},
      {"missing num_hidden_layers", [](json& j) { j.erase("num_hidden_layers"); }, "num_hidden_layers",
       ErrorCode::kParse},
      {"missing num_attention_heads", [](json& j) { j.erase("num_attention_heads"); }, "num_attention_heads",
       ErrorCode::kParse},
      {"null hidden_size", [](json& j) { j["hidden_size"] = nullptr; }, "hidden_size", ErrorCode::kParse},
      {"missing architecture", [](json& j) { j.erase("architectures"); j.erase("model_type"); },
       "architectures", ErrorCode::kParse},
      {"string size", [](json& j) { j["hidden_size"] = "64"; }, "hidden_size", ErrorCode::kParse},
      {"fractional heads", [](json& j) { j["num_key_value_heads"] = 2.5; }, "num_key_value_heads",
       ErrorCode::kParse},
      {"huge size", [](json& j) { j["intermediate_size"] = 1ll << 40; }, "intermediate_size",
       ErrorCode::kUnsupported},
      {"string bool", [](json& j) { j["tie_word_embeddings"] = "yes"; }, "tie_word_embeddings",
       ErrorCode::kParse},
      {"int bool", [](json& j) { j["attention_bias"] = 1; }, "attention_bias", ErrorCode::kParse},
      {"string theta", [](json& j) { j["rope_theta"] = "1e6"; }, "rope_theta", ErrorCode::kParse},
      {"string eps", [](json& j) { j["rms_norm_eps"] = "tiny"; }, "rms_norm_eps", ErrorCode::kParse},
      {"string eos", [](json& j) { j["eos_token_id"] = "</s>"; }, "eos_token_id", ErrorCode::kParse},
      {"bad eos list", [](json& j) { j["eos_token_id"] = {1, "x"}; }, "eos_token_id[1]", ErrorCode::kParse},
      {"negative eos", [](json& j) { j["eos_token_id"] = -3; }, "eos_token_id", ErrorCode::kParse},
      {"architectures not list", [](json& j) { j["architectures"] = "Qwen3ForCausalLM"; }, "architectures",
       ErrorCode::kParse},
      {"llama architecture", [](json& j) { j["architectures"] = {"LlamaForCausalLM"}; }, "LlamaForCausalLM",
       ErrorCode::kUnsupported},
      {"qwen2 model_type", [](json& j) { j["model_type"] = "qwen2"; }, "model_type", ErrorCode::kUnsupported},
      {"moe model_type", [](json& j) { j.erase("architectures"); j["model_type"] = "qwen3_moe"; }, "model_type",
       ErrorCode::kUnsupported},
      {"yarn rope_scaling", [](json& j) { j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; },
       "yarn", ErrorCode::kUnsupported},
      {"dynamic rope_scaling", [](json& j) { j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}}; },
       "rope_scaling", ErrorCode::kUnsupported},
      {"llama3 rope_parameters",
       [](json& j) { j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 1e4}}; }, "rope_parameters",
       ErrorCode::kUnsupported},
      {"linear without factor", [](json& j) { j["rope_scaling"] = {{"type", "linear"}}; }, "rope_scaling.factor",
       ErrorCode::kParse},
      {"rope_scaling not object", [](json& j) { j["rope_scaling"] = 2.0; }, "rope_scaling", ErrorCode::kParse},
      {"partial rotary", [](json& j) { j["rope_parameters"] = {{"rope_type", "default"}, {"partial_rotary_factor", 0.5}}; },
       "partial_rotary_factor", ErrorCode::kUnsupported},
      {"zero theta", [](json& j) { j["rope_theta"] = 0; }, "theta", ErrorCode::kUnsupported},
      {"zero vocab", [](json& j) { j["vocab_size"] = 0; }, "vocab_size", ErrorCode::kUnsupported},
      {"zero hidden", [](json& j) { j["hidden_size"] = 0; }, "hidden_size", ErrorCode::kUnsupported},
      {"negative intermediate", [](json& j) { j["intermediate_size"] = -1; }, "intermediate_size",
       ErrorCode::kUnsupported},
      {"zero layers", [](json& j) { j["num_hidden_layers"] = 0; }, "num_hidden_layers", ErrorCode::kUnsupported},
      {"zero heads", [](json& j) { j["num_attention_heads"] = 0; }, "num_attention_heads",
       ErrorCode::kUnsupported},
      {"zero kv heads", [](json& j) { j["num_key_value_heads"] = 0; }, "num_key_value_heads",
       ErrorCode::kUnsupported},
      {"zero head_dim", [](json& j) { j["head_dim"] = 0; }, "head_dim", ErrorCode::kUnsupported},
      {"odd head_dim", [](json& j) { j["head_dim"] = 15; }, "head_dim", ErrorCode::kUnsupported},
      {"zero positions", [](json& j) { j["max_position_embeddings"] = 0; }, "max_position_embeddings",
       ErrorCode::kUnsupported},
      {"negative eps", [](json& j) { j["rms_norm_eps"] = -1e-6; }, "rms_norm_eps", ErrorCode::kUnsupported},
      {"heads not divisible", [](json& j) { j["num_key_value_heads"] = 3; }, "num_key_value_heads",
       ErrorCode::kUnsupported},
      {"no head_dim, indivisible hidden",
       [](json& j) { j.erase("head_dim"); j["hidden_size"] = 1000; j["num_attention_heads"] = 16; }, "head_dim",
       ErrorCode::kParse},
      {"gelu", [](json& j) { j["hidden_act"] = "gelu"; }, "hidden_act", ErrorCode::kUnsupported},
      {"sliding window", [](json& j) { j["use_sliding_window"] = true; }, "use_sliding_window",
       ErrorCode::kUnsupported},
  };
  for (const BadCase& bc : cases) {
    SCOPED_TRACE(bc.what);
    json j = json::parse(kV4Config);
    bc.mutate(j);
    const std::string text = j.dump();
    EXPECT_CASCADE_ERROR(parse_model_config(text, kSource), kSource, bc.field);
    try {
      parse_model_config(text, kSource);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), bc.code) << e.what();
    }
  }
}

TEST(ModelConfigTest, MalformedJsonIsAnError) {
  for (const char* text : {"", "{", "[1, 2]", "null", "{\"vocab_size\": 12,}", "\x01\x02garbage"}) {
    SCOPED_TRACE(text);
    EXPECT_CASCADE_ERROR(parse_model_config(text, kSource), kSource);
  }
}

}  // namespace
}  // namespace cascade

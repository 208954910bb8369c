#include "model/weights.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "model/model_test_util.h"
#include "model/safetensors.h"

namespace cascade {
namespace {

using nlohmann::json;
using testing::TempDir;
using testing::write_file;

// Small, but with q_size (32) != hidden (16) and kv heads < heads, so transposed or swapped
// projections cannot pass a shape check by accident.
ModelConfig tiny_config(bool tied, bool bias) {
  ModelConfig c;
  c.vocab_size = 37;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = tied;
  c.attention_bias = bias;
  return c;
}

// Every tensor of `w` by HF name, written out by hand (independently of the loader's own table).
std::vector<std::pair<std::string, const HostTensor*>> named_tensors(const Qwen3Weights& w) {
  std::vector<std::pair<std::string, const HostTensor*>> out = {{"model.embed_tokens.weight", &w.embed_tokens},
                                                                {"model.norm.weight", &w.norm}};
  if (!w.lm_head.data.empty()) out.emplace_back("lm_head.weight", &w.lm_head);
  for (std::size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& l = w.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.emplace_back(p + "input_layernorm.weight", &l.input_layernorm);
    out.emplace_back(p + "post_attention_layernorm.weight", &l.post_attention_layernorm);
    out.emplace_back(p + "self_attn.q_proj.weight", &l.q_proj);
    out.emplace_back(p + "self_attn.k_proj.weight", &l.k_proj);
    out.emplace_back(p + "self_attn.v_proj.weight", &l.v_proj);
    out.emplace_back(p + "self_attn.o_proj.weight", &l.o_proj);
    out.emplace_back(p + "self_attn.q_norm.weight", &l.q_norm);
    out.emplace_back(p + "self_attn.k_norm.weight", &l.k_norm);
    out.emplace_back(p + "mlp.gate_proj.weight", &l.gate_proj);
    out.emplace_back(p + "mlp.up_proj.weight", &l.up_proj);
    out.emplace_back(p + "mlp.down_proj.weight", &l.down_proj);
    if (!l.q_bias.data.empty()) {
      out.emplace_back(p + "self_attn.q_proj.bias", &l.q_bias);
      out.emplace_back(p + "self_attn.k_proj.bias", &l.k_bias);
      out.emplace_back(p + "self_attn.v_proj.bias", &l.v_bias);
      out.emplace_back(p + "self_attn.o_proj.bias", &l.o_bias);
    }
  }
  return out;
}

std::vector<TensorToWrite> to_write(const Qwen3Weights& w) {
  std::vector<TensorToWrite> out;
  for (const auto& [name, t] : named_tensors(w)) out.push_back({name, t->shape, t->data});
  return out;
}

TEST(HostTensorTest, Numel) {
  HostTensor t;
  EXPECT_EQ(t.numel(), 0);
  t.shape = {3, 5};
  EXPECT_EQ(t.numel(), 15);
  t.shape = {7};
  EXPECT_EQ(t.numel(), 7);
  t.shape = {4, 0};
  EXPECT_EQ(t.numel(), 0);
}

TEST(WeightsTest, SpecsListEveryCheckpointTensor) {
  for (bool tied : {true, false}) {
    for (bool bias : {true, false}) {
      const ModelConfig c = tiny_config(tied, bias);
      const auto specs = qwen3_tensor_specs(c);
      EXPECT_EQ(specs.size(), 2u + (tied ? 0u : 1u) + 2u * (11u + (bias ? 4u : 0u)));
      const Qwen3Weights w = random_qwen3_weights(c, 1);
      auto named = named_tensors(w);
      ASSERT_EQ(named.size(), specs.size());
      for (const TensorSpec& s : specs) {
        auto it = std::find_if(named.begin(), named.end(), [&](const auto& p) { return p.first == s.name; });
        ASSERT_NE(it, named.end()) << s.name;
        EXPECT_EQ(it->second->shape, s.shape) << s.name;
        EXPECT_EQ(static_cast<std::int64_t>(it->second->data.size()), it->second->numel()) << s.name;
      }
    }
  }
  const auto specs = qwen3_tensor_specs(tiny_config(false, false));
  auto shape_of = [&](const std::string& n) {
    return std::find_if(specs.begin(), specs.end(), [&](const TensorSpec& s) { return s.name == n; })->shape;
  };
  EXPECT_EQ(shape_of("model.layers.1.self_attn.q_proj.weight"), (std::vector<std::int64_t>{32, 16}));
  EXPECT_EQ(shape_of("model.layers.1.self_attn.k_proj.weight"), (std::vector<std::int64_t>{16, 16}));
  EXPECT_EQ(shape_of("model.layers.1.self_attn.o_proj.weight"), (std::vector<std::int64_t>{16, 32}));
  EXPECT_EQ(shape_of("model.layers.0.self_attn.q_norm.weight"), (std::vector<std::int64_t>{8}));
  EXPECT_EQ(shape_of("model.layers.0.mlp.down_proj.weight"), (std::vector<std::int64_t>{16, 24}));
  EXPECT_EQ(shape_of("lm_head.weight"), (std::vector<std::int64_t>{37, 16}));
}

TEST(WeightsTest, RandomWeightsAreDeterministicAndWellScaled) {
  ModelConfig c = tiny_config(false, true);
  c.hidden_size = 64;
  c.intermediate_size = 256;
  c.head_dim = 16;
  const Qwen3Weights a = random_qwen3_weights(c, 99), b = random_qwen3_weights(c, 99), d = random_qwen3_weights(c, 100);
  auto na = named_tensors(a), nb = named_tensors(b), nd = named_tensors(d);
  ASSERT_EQ(na.size(), nb.size());
  for (std::size_t i = 0; i < na.size(); ++i) {
    EXPECT_EQ(na[i].second->data, nb[i].second->data) << na[i].first;
    EXPECT_NE(na[i].second->data, nd[i].second->data) << na[i].first;
  }
  // Different tensors of one model are not copies of each other.
  EXPECT_NE(a.layers[0].gate_proj.data, a.layers[0].up_proj.data);
  EXPECT_NE(a.layers[0].q_norm.data, a.layers[0].k_norm.data);

  auto stats = [](const HostTensor& t) {
    double s = 0, s2 = 0;
    for (float v : t.data) {
      s += v;
      s2 += static_cast<double>(v) * v;
    }
    const double n = static_cast<double>(t.data.size());
    return std::pair{s / n, std::sqrt(s2 / n - (s / n) * (s / n))};
  };
  auto [mean_up, std_up] = stats(a.layers[1].up_proj);  // [256, 64]: fan-in 64
  EXPECT_NEAR(mean_up, 0.0, 0.01);
  EXPECT_NEAR(std_up, 1.0 / 8.0, 0.01);
  auto [mean_down, std_down] = stats(a.layers[1].down_proj);  // fan-in 256
  EXPECT_NEAR(std_down, 1.0 / 16.0, 0.005);
  auto [mean_norm, std_norm] = stats(a.layers[0].input_layernorm);
  EXPECT_NEAR(mean_norm, 1.0, 0.05);
  EXPECT_GT(std_norm, 0.03);
  EXPECT_LT(std_norm, 0.2);
  for (float v : a.norm.data) EXPECT_GT(v, 0.4f);
  EXPECT_FALSE(a.lm_head.data.empty());

  const Qwen3Weights tied = random_qwen3_weights(tiny_config(true, false), 5);
  EXPECT_TRUE(tied.lm_head.data.empty());
  EXPECT_EQ(&tied.output_weight(), &tied.embed_tokens);
  EXPECT_TRUE(tied.layers[0].q_bias.data.empty());
}

TEST(WeightsTest, SaveLoadRoundTripInEveryDtype) {
  for (bool tied : {true, false}) {
    for (bool bias : {true, false}) {
      const ModelConfig c = tiny_config(tied, bias);
      const Qwen3Weights w = random_qwen3_weights(c, 2024);
      for (const char* dtype : {"F32", "BF16", "F16"}) {
        SCOPED_TRACE(::testing::Message() << dtype << " tied=" << tied << " bias=" << bias);
        TempDir dir;
        save_qwen3_weights(dir.path(), c, w, dtype);
        SafeTensorsFile file = SafeTensorsFile::open(dir / "model.safetensors");
        EXPECT_EQ(file.find("lm_head.weight") != nullptr, !tied);
        EXPECT_EQ(std::string(dtype_name(file.tensors()[0].dtype)), dtype);

        const Qwen3Weights back = load_qwen3_weights(dir.path(), c);
        auto want = named_tensors(w), got = named_tensors(back);
        ASSERT_EQ(want.size(), got.size());
        for (std::size_t i = 0; i < want.size(); ++i) {
          ASSERT_EQ(got[i].first, want[i].first);
          const HostTensor& g = *got[i].second;
          const HostTensor& x = *want[i].second;
          ASSERT_EQ(g.shape, x.shape) << want[i].first;
          ASSERT_EQ(g.data.size(), x.data.size());
          for (std::size_t k = 0; k < x.data.size(); ++k) {
            const float v = x.data[k];
            const float expect = std::string(dtype) == "F32"    ? v
                                 : std::string(dtype) == "BF16" ? bf16_to_f32(f32_to_bf16(v))
                                                                 : f16_to_f32(f32_to_f16(v));
            ASSERT_EQ(g.data[k], expect) << want[i].first << "[" << k << "]";
            // Relative error within half an ulp of the format (all values here are normal halves
            // or below 2^-14 in magnitude, where the absolute bound applies).
            const double rel = std::string(dtype) == "F32" ? 0.0 : std::string(dtype) == "BF16" ? 0x1p-8 : 0x1p-11;
            ASSERT_LE(std::fabs(static_cast<double>(g.data[k]) - v), rel * std::fabs(v) + 0x1p-25);
          }
        }
      }
    }
  }
}

// Writes a checkpoint of `w` with `edit` applied to the tensor list first.
void write_edited(const std::filesystem::path& dir, const Qwen3Weights& w,
                  const std::function<void(std::vector<TensorToWrite>&)>& edit) {
  std::vector<TensorToWrite> tensors = to_write(w);
  edit(tensors);
  write_safetensors(dir / "model.safetensors", tensors, DType::kF32);
}

void erase_named(std::vector<TensorToWrite>& t, const std::string& name) {
  auto it = std::find_if(t.begin(), t.end(), [&](const TensorToWrite& x) { return x.name == name; });
  ASSERT_NE(it, t.end()) << name;
  t.erase(it);
}

TEST(WeightsTest, TiedLmHeadAndRotaryBuffersAreTolerated) {
  const ModelConfig c = tiny_config(true, false);
  const Qwen3Weights w = random_qwen3_weights(c, 3);
  const Qwen3Weights untied = random_qwen3_weights(tiny_config(false, false), 4);
  const std::vector<float> inv_freq(4, 0.5f);
  TempDir dir;
  write_edited(dir.path(), w, [&](std::vector<TensorToWrite>& t) {
    t.push_back({"lm_head.weight", untied.lm_head.shape, untied.lm_head.data});
    t.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", {4}, inv_freq});
  });
  const Qwen3Weights back = load_qwen3_weights(dir.path(), c);
  EXPECT_TRUE(back.lm_head.data.empty());  // tied: HF ignores a stored lm_head, so do we
  EXPECT_EQ(back.output_weight().data, w.embed_tokens.data);
}

TEST(WeightsTest, ErrorsNameFileAndTensor) {
  const ModelConfig c = tiny_config(false, false);
  const Qwen3Weights w = random_qwen3_weights(c, 11);
  const std::vector<float> wrong(20 * 16, 0.0f), extra(16, 1.0f);
  struct Case {
    const char* what;
    std::function<void(std::vector<TensorToWrite>&)> edit;
    std::vector<std::string> expect;
    ErrorCode code;
  };
  const std::vector<Case> cases = {
      {"missing layer tensor", [](auto& t) { erase_named(t, "model.layers.1.self_attn.k_norm.weight"); },
       {"'model.layers.1.self_attn.k_norm.weight'", "missing", "[8]"}, ErrorCode::kNotFound},
      {"missing untied lm_head", [](auto& t) { erase_named(t, "lm_head.weight"); }, {"'lm_head.weight'", "missing"},
       ErrorCode::kNotFound},
      {"wrong shape",
       [&](auto& t) {
         erase_named(t, "model.layers.1.mlp.up_proj.weight");
         t.push_back({"model.layers.1.mlp.up_proj.weight", {20, 16}, wrong});
       },
       {"model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' has shape [20, 16], expected [24, 16]"},
       ErrorCode::kUnsupported},
      {"transposed", [&](auto& t) {
         erase_named(t, "model.layers.0.self_attn.o_proj.weight");
         t.push_back({"model.layers.0.self_attn.o_proj.weight", {32, 16}, w.layers[0].o_proj.data});
       },
       {"'model.layers.0.self_attn.o_proj.weight' has shape [32, 16], expected [16, 32]"}, ErrorCode::kUnsupported},
      {"unexpected layer", [&](auto& t) { t.push_back({"model.layers.2.input_layernorm.weight", {16}, extra}); },
       {"unexpected tensor 'model.layers.2.input_layernorm.weight'"}, ErrorCode::kUnsupported},
      {"bias without attention_bias",
       [&](auto& t) { t.push_back({"model.layers.0.self_attn.q_proj.bias", {16}, extra}); },
       {"unexpected tensor 'model.layers.0.self_attn.q_proj.bias'", "attention_bias false"}, ErrorCode::kUnsupported},
  };
  for (const Case& cs : cases) {
    SCOPED_TRACE(cs.what);
    TempDir dir;
    write_edited(dir.path(), w, cs.edit);
    const std::string file = (dir / "model.safetensors").string();
    const std::string msg = testing::error_message([&] { load_qwen3_weights(dir.path(), c); });
    EXPECT_NE(msg.find(file), std::string::npos) << msg;
    for (const std::string& part : cs.expect) EXPECT_NE(msg.find(part), std::string::npos) << msg << "\n" << part;
    try {
      load_qwen3_weights(dir.path(), c);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), cs.code);
    }
  }

  // A config with more layers than the file: the first missing tensor is named.
  {
    TempDir dir;
    save_qwen3_weights(dir.path(), c, w, "BF16");
    ModelConfig deeper = c;
    deeper.num_hidden_layers = 3;
    EXPECT_CASCADE_ERROR(load_qwen3_weights(dir.path(), deeper), "model.safetensors", "model.layers.2.");
    // And a truncated file names itself.
    const auto path = dir / "model.safetensors";
    const std::string bytes = testing::read_file(path);
    write_file(path, bytes.substr(0, bytes.size() - 3));
    EXPECT_CASCADE_ERROR(load_qwen3_weights(dir.path(), c), path.string());
  }
  TempDir empty;
  EXPECT_CASCADE_ERROR(load_qwen3_weights(empty.path(), c), empty.path().string(), "model.safetensors");
}

TEST(WeightsTest, UnsupportedDtypeNamesTensor) {
  const ModelConfig c = tiny_config(true, false);
  const Qwen3Weights w = random_qwen3_weights(c, 12);
  // Everything F32 except model.norm.weight stored as F64: built by hand.
  json header = json::object();
  std::string data;
  for (const auto& [name, t] : named_tensors(w)) {
    const bool f64 = name == "model.norm.weight";
    const std::size_t begin = data.size();
    for (float v : t->data) {
      if (f64) {
        double d = v;
        data.append(reinterpret_cast<const char*>(&d), 8);
      } else {
        data.append(reinterpret_cast<const char*>(&v), 4);
      }
    }
    header[name] = {{"dtype", f64 ? "F64" : "F32"}, {"shape", t->shape}, {"data_offsets", {begin, data.size()}}};
  }
  TempDir dir;
  write_file(dir / "model.safetensors", testing::raw_safetensors(header.dump(), data));
  EXPECT_CASCADE_ERROR(load_qwen3_weights(dir.path(), c), (dir / "model.safetensors").string(),
                       "'model.norm.weight'", "F64");
}

TEST(WeightsTest, ShardedCheckpointLoadsLikeSingleFile) {
  const ModelConfig c = tiny_config(false, true);
  const Qwen3Weights w = random_qwen3_weights(c, 77);
  std::vector<TensorToWrite> all = to_write(w);
  TempDir dir;
  // Three shards in mixed dtypes, round-robin, like a real multi-file checkpoint.
  std::vector<std::vector<TensorToWrite>> shards(3);
  json weight_map = json::object();
  for (std::size_t i = 0; i < all.size(); ++i) {
    shards[i % 3].push_back(all[i]);
    weight_map[all[i].name] = "model-0000" + std::to_string(i % 3 + 1) + "-of-00003.safetensors";
  }
  for (int s = 0; s < 3; ++s) {
    write_safetensors(dir / ("model-0000" + std::to_string(s + 1) + "-of-00003.safetensors"), shards[s],
                      s == 1 ? DType::kBF16 : DType::kF32);
  }
  write_file(dir / "model.safetensors.index.json", json{{"metadata", json::object()}, {"weight_map", weight_map}}.dump(2));
  const Qwen3Weights back = load_qwen3_weights(dir.path(), c);
  auto want = named_tensors(w), got = named_tensors(back);
  ASSERT_EQ(want.size(), got.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    const bool bf16 = i % 3 == 1;
    for (std::size_t k = 0; k < want[i].second->data.size(); ++k) {
      const float v = want[i].second->data[k];
      ASSERT_EQ(got[i].second->data[k], bf16 ? bf16_to_f32(f32_to_bf16(v)) : v) << want[i].first;
    }
  }

  // A wrong shape inside a shard names that shard.
  const std::vector<float> wrong(3, 0.0f);
  shards[2][0] = {shards[2][0].name, {3}, wrong};
  write_safetensors(dir / "model-00003-of-00003.safetensors", shards[2], DType::kF32);
  EXPECT_CASCADE_ERROR(load_qwen3_weights(dir.path(), c), "model-00003-of-00003.safetensors",
                       "'" + shards[2][0].name + "' has shape [3]");

  std::filesystem::remove(dir / "model-00002-of-00003.safetensors");
  EXPECT_CASCADE_ERROR(load_qwen3_weights(dir.path(), c), "model.safetensors.index.json",
                       "model-00002-of-00003.safetensors", "missing");
}

TEST(WeightsTest, SaveRejectsMismatchedWeights) {
  const ModelConfig c = tiny_config(false, false);
  Qwen3Weights w = random_qwen3_weights(c, 1);
  TempDir dir;
  EXPECT_CASCADE_ERROR(save_qwen3_weights(dir.path(), c, w, "F8_E4M3"), "F8_E4M3");
  w.layers[1].v_proj.shape = {16, 15};
  EXPECT_CASCADE_ERROR(save_qwen3_weights(dir.path(), c, w, "F32"), "'model.layers.1.self_attn.v_proj.weight'");
  w.layers.pop_back();
  EXPECT_CASCADE_ERROR(save_qwen3_weights(dir.path(), c, w, "F32"), "1 layers");
}

}  // namespace
}  // namespace cascade

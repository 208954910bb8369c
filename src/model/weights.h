// Qwen3 weights as fp32 host tensors: what the CPU reference runs on and what the CUDA backend
// converts to bf16. Loading validates every tensor name, shape and dtype against the config.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/model_config.h"

namespace cascade {

// A dense row-major fp32 tensor owned on the host.
struct HostTensor {
  std::vector<std::int64_t> shape;
  std::vector<float> data;

  std::int64_t numel() const;  // product of shape; 0 for an empty (absent) tensor
  const float* ptr() const { return data.data(); }
  float* ptr() { return data.data(); }
};

struct LayerWeights {
  HostTensor input_layernorm;           // [hidden]
  HostTensor q_proj, k_proj, v_proj;    // [q_size, hidden], [kv_size, hidden], [kv_size, hidden]
  HostTensor q_bias, k_bias, v_bias;    // empty unless attention_bias
  HostTensor o_proj;                    // [hidden, q_size]
  HostTensor o_bias;                    // [hidden]; empty unless attention_bias (HF Qwen3 gives
                                        // o_proj a bias too when attention_bias is set)
  HostTensor q_norm, k_norm;            // [head_dim]
  HostTensor post_attention_layernorm;  // [hidden]
  HostTensor gate_proj, up_proj;        // [intermediate, hidden]
  HostTensor down_proj;                 // [hidden, intermediate]
};

struct Qwen3Weights {
  HostTensor embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  HostTensor norm;     // [hidden]
  HostTensor lm_head;  // [vocab, hidden]; empty when tie_word_embeddings (use embed_tokens)

  const HostTensor& output_weight() const { return lm_head.data.empty() ? embed_tokens : lm_head; }
};

// One expected checkpoint tensor: its Hugging Face name and shape.
struct TensorSpec {
  std::string name;
  std::vector<std::int64_t> shape;
};

// Every tensor a Qwen3ForCausalLM checkpoint for `config` holds, in HF names (lm_head.weight only
// when untied; q/k/v/o_proj.bias only when attention_bias).
std::vector<TensorSpec> qwen3_tensor_specs(const ModelConfig& config);

// Loads DIR/model.safetensors or the shards named by DIR/model.safetensors.index.json, converting
// F32/BF16/F16 to fp32. Throws cascade::Error naming the file and tensor on any problem.
Qwen3Weights load_qwen3_weights(const std::filesystem::path& model_dir, const ModelConfig& config);

// Random weights for tests and the embedded default model (deterministic in `seed`, independent of
// thread count). Matrices and embeddings ~ normal(0, 1/sqrt(fan_in)) (about 0.02 at real sizes, and
// logits of O(1) spread even for tiny models), norm weights 1 + normal(0, 0.1), biases normal(0, 0.02).
Qwen3Weights random_qwen3_weights(const ModelConfig& config, std::uint64_t seed);

// Writes weights to DIR/model.safetensors in `dtype` ("F32", "BF16" or "F16"), with HF tensor names.
void save_qwen3_weights(const std::filesystem::path& model_dir, const ModelConfig& config,
                        const Qwen3Weights& weights, const std::string& dtype);

}  // namespace cascade

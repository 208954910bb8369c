// Qwen3ForCausalLM configuration, parsed from a Hugging Face config.json as written by
// transformers 4.51+ (top-level rope_theta / rope_scaling) and 5.x (rope_parameters).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace cascade {

struct RopeConfig {
  double theta = 1000000.0;
  std::string type = "default";  // "default" or "linear" (others are refused at load)
  double factor = 1.0;           // linear scaling factor
};

struct ModelConfig {
  std::string architecture = "Qwen3ForCausalLM";
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int head_dim = 0;  // may differ from hidden_size / num_attention_heads
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  std::vector<std::int32_t> eos_token_ids;  // from eos_token_id (int or list); may be empty
  std::int32_t bos_token_id = -1;
  std::string torch_dtype;  // informational

  int q_size() const { return num_attention_heads * head_dim; }
  int kv_size() const { return num_key_value_heads * head_dim; }
};

// Parses config.json text. `source` names the file in error messages. Throws cascade::Error.
ModelConfig parse_model_config(const std::string& json_text, const std::string& source);
// Reads DIR/config.json.
ModelConfig load_model_config(const std::filesystem::path& model_dir);
// Serialises to config.json (transformers 5.x style, with rope_parameters) for tests and tools.
std::string model_config_to_json(const ModelConfig& config);

}  // namespace cascade

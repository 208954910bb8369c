#include "engine/default_model.h"

#include <filesystem>
#include <string>

#include "backend/cpu/cpu_runner.h"
#include "core/error.h"
#include "core/logging.h"

#if CASCADE_HAVE_CUDA
#include "backend/cuda/cuda_runner.h"
#endif

namespace cascade {

ModelConfig default_model_config() {
  ModelConfig c;
  c.vocab_size = 259;
  c.hidden_size = 128;
  c.intermediate_size = 384;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-6;
  c.rope.theta = 1000000.0;
  c.tie_word_embeddings = true;
  c.eos_token_ids = {256};  // <|endoftext|> of the byte-level tokenizer
  c.torch_dtype = "float32";
  return c;
}

LoadedModel load_model_or_default(const Config& config) {
  LoadedModel m;
  if (config.model_dir.empty()) {
    m.config = default_model_config();
    m.weights = std::make_shared<Qwen3Weights>(random_qwen3_weights(m.config, config.default_model_seed));
    m.tokenizer = Tokenizer::byte_level_default();
    return m;
  }
  const std::filesystem::path dir(config.model_dir);
  if (!std::filesystem::is_directory(dir)) {
    throw_error(ErrorCode::kNotFound, "{}: model folder not found", config.model_dir);
  }
  m.config = load_model_config(dir);
  m.weights = std::make_shared<Qwen3Weights>(load_qwen3_weights(dir, m.config));
  if (std::filesystem::exists(dir / "tokenizer.json")) {
    m.tokenizer = Tokenizer::from_file(dir / "tokenizer.json");
  }
  return m;
}

Device resolve_device(Device requested, const ModelConfig& config) {
#if CASCADE_HAVE_CUDA
  const bool gpu = cuda_device_available();
#else
  const bool gpu = false;
#endif
  if (requested == Device::kCuda && !gpu) {
#if CASCADE_HAVE_CUDA
    throw_error(ErrorCode::kUnsupported, "--device cuda: no CUDA GPU is available");
#else
    throw_error(ErrorCode::kUnsupported, "--device cuda: this build has no CUDA backend (nvcc was not found)");
#endif
  }
  if (requested != Device::kAuto) return requested;
  if (!gpu) return Device::kCpu;
#if CASCADE_HAVE_CUDA
  if (const std::string why = cuda_unsupported_reason(config); !why.empty()) {
    CASCADE_LOG_WARN("device auto: the CUDA backend cannot run this model ({}); using the CPU", why);
    return Device::kCpu;
  }
#else
  (void)config;
#endif
  return Device::kCuda;
}

std::unique_ptr<ModelRunner> make_runner(Device device, const ModelConfig& config,
                                         std::shared_ptr<const Qwen3Weights> weights, int num_pages,
                                         int page_size) {
  if (resolve_device(device, config) == Device::kCuda) {
#if CASCADE_HAVE_CUDA
    return make_cuda_runner(config, *weights, num_pages, page_size);
#endif
  }
  return make_cpu_runner(config, std::move(weights), num_pages, page_size);
}

}  // namespace cascade

// Where the engine's model comes from: a Hugging Face folder, or the embedded default (a small
// random Qwen3 with the byte-level tokenizer, so the main job runs with no download). And which
// backend runs it.
#pragma once

#include <memory>

#include "cascade/config.h"
#include "engine/model_runner.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace cascade {

struct LoadedModel {
  ModelConfig config;
  std::shared_ptr<const Qwen3Weights> weights;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the folder has no tokenizer.json
};

// The embedded default model's shape (vocab = the byte-level tokenizer's 259 ids).
ModelConfig default_model_config();

// Loads config.model_dir, or builds the embedded default when it is empty. Throws cascade::Error.
LoadedModel load_model_or_default(const Config& config);

// kAuto → kCuda when the CUDA backend is built and a GPU is present, else kCpu. Asking for kCuda
// without one is an error.
Device resolve_device(Device requested);

// The backend for `device` (resolved as above).
std::unique_ptr<ModelRunner> make_runner(Device device, const ModelConfig& config,
                                         std::shared_ptr<const Qwen3Weights> weights, int num_pages,
                                         int page_size);

}  // namespace cascade

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

// kAuto → kCuda when the CUDA backend is built, a GPU is present and the CUDA runner takes this
// model (head_dim 64 or 128, GQA group 1..8; otherwise a warning is logged and the CPU runs it),
// else kCpu. Asking for kCuda without a GPU is an error; for a model the CUDA runner does not take,
// make_runner reports why.
Device resolve_device(Device requested, const ModelConfig& config);

// The backend for `device` (resolved as above; pass the result of resolve_device to log once).
std::unique_ptr<ModelRunner> make_runner(Device device, const ModelConfig& config,
                                         std::shared_ptr<const Qwen3Weights> weights, int num_pages,
                                         int page_size);

}  // namespace cascade

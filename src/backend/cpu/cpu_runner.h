// The CPU reference backend: the Qwen3 forward pass in fp32 over a paged KV cache.
#pragma once

#include <memory>

#include "engine/model_runner.h"
#include "model/weights.h"

namespace cascade {

// Runs `weights` (shared, not copied) with a KV pool of num_pages pages of page_size tokens.
std::unique_ptr<ModelRunner> make_cpu_runner(const ModelConfig& config,
                                             std::shared_ptr<const Qwen3Weights> weights,
                                             int num_pages, int page_size);

}  // namespace cascade

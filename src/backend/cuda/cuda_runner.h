// Entry points of the CUDA backend that engine code may call without CUDA headers; guard calls
// with `#if CASCADE_HAVE_CUDA`.
#pragma once

#include <memory>

#include "engine/model_runner.h"
#include "model/model_config.h"
#include "model/weights.h"

namespace cascade {

// True when a CUDA driver and at least one device are present. Never throws or aborts (CI machines
// have no driver).
bool cuda_device_available();

// A ModelRunner on the current CUDA device: weights converted to bf16 on upload, K/V pools of
// `num_pages` pages of `page_size` slots per layer (bf16). head_dim must be 64 or 128 and
// num_attention_heads / num_key_value_heads in 1..8. Throws cascade::Error (kCuda, kUnsupported).
std::unique_ptr<ModelRunner> make_cuda_runner(const ModelConfig& config, const Qwen3Weights& weights,
                                              int num_pages, int page_size);

}  // namespace cascade

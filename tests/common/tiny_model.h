// Test helper: the small Qwen3 shape the CPU engine and runner tests use (2 layers, hidden 64,
// 4 q / 2 KV heads of 16, vocab 300 with EOS 299), fast enough for many full runs on the CPU.
#pragma once

#include "model/model_config.h"

namespace cascade::test {

inline ModelConfig tiny_qwen3_config() {
  ModelConfig c;
  c.vocab_size = 300;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 2048;
  c.tie_word_embeddings = true;
  c.eos_token_ids = {299};
  return c;
}

}  // namespace cascade::test

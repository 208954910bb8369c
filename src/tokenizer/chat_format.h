// Qwen3 ChatML prompt formatting: the text the model's jinja chat template (tokenizer_config.json)
// renders for system / user / assistant / tool messages without tool definitions.
#pragma once

#include <string>
#include <vector>

namespace cascade {

struct ChatMessage {
  std::string role;     // "system", "user", "assistant" or "tool"
  std::string content;
};

// `<|im_start|>role\ncontent<|im_end|>\n` per message, as Qwen3's template does: assistant turns
// after the last real user query keep their <think> reasoning (the last one always gets a block),
// earlier ones lose it; consecutive tool messages become one user turn of <tool_response> blocks.
// add_generation_prompt appends `<|im_start|>assistant\n`, plus an empty think block when
// enable_thinking is false. Throws cascade::Error(kInvalidArgument) for no messages or an unknown role.
std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt, bool enable_thinking);

}  // namespace cascade

#include "tokenizer/chat_format.h"

#include "core/error.h"

namespace cascade {

namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";

// Python's str.lstrip / rstrip / strip with a '\n' argument, as the template uses them.
std::string_view lstrip_newlines(std::string_view s) {
  while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  return s;
}
std::string_view rstrip_newlines(std::string_view s) {
  while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}

bool is_tool_response(std::string_view s) {
  return s.starts_with("<tool_response>") && s.ends_with("</tool_response>");
}

}  // namespace

std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt, bool enable_thinking) {
  if (messages.empty()) {
    throw_error(ErrorCode::kInvalidArgument, "chat template: the conversation has no messages");
  }
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant" && role != "tool") {
      throw_error(ErrorCode::kInvalidArgument,
                  "chat template: message {} has role '{}' (expected system, user, assistant or "
                  "tool)",
                  i, role);
    }
  }
  // The last user message that is a real query (not a wrapped tool response); assistant turns
  // after it belong to the current multi-step answer and keep their reasoning.
  std::size_t last_query = messages.size() - 1;
  for (std::size_t k = messages.size(); k-- > 0;) {
    if (messages[k].role == "user" && !is_tool_response(messages[k].content)) {
      last_query = k;
      break;
    }
  }

  std::string out;
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool last = i + 1 == messages.size();
    if (m.role == "user" || m.role == "system") {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string_view content = m.content;
      std::string_view reasoning;
      if (const std::size_t close = content.find(kThinkClose); close != std::string_view::npos) {
        // content.split('</think>')[-1].lstrip('\n')
        const std::size_t last_close = content.rfind(kThinkClose);
        std::string_view before = rstrip_newlines(content.substr(0, close));
        // ...split('<think>')[-1].lstrip('\n') of the part before the first </think>
        if (const std::size_t open = before.rfind(kThinkOpen); open != std::string_view::npos) {
          before = before.substr(open + kThinkOpen.size());
        }
        reasoning = lstrip_newlines(before);
        content = lstrip_newlines(content.substr(last_close + kThinkClose.size()));
      }
      out += "<|im_start|>assistant\n";
      if (i > last_query && (last || !reasoning.empty())) {
        out += "<think>\n";
        out += rstrip_newlines(lstrip_newlines(reasoning));
        out += "\n</think>\n\n";
        out += lstrip_newlines(content);
      } else {
        out += content;
      }
      out += "<|im_end|>\n";
    } else {  // tool: consecutive results share one user turn
      if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
      out += "\n<tool_response>\n" + m.content + "\n</tool_response>";
      if (last || messages[i + 1].role != "tool") out += "<|im_end|>\n";
    }
  }
  if (add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (!enable_thinking) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

}  // namespace cascade

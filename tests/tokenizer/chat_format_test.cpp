// apply_chat_template against Qwen3's jinja template rendered by jinja2
// (tests/fixtures/tokenizer/chat_template.json, from scripts/make_tokenizer_fixtures.py).
#include "tokenizer/chat_format.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "tokenizer_test_util.h"

namespace cascade {
namespace {

using nlohmann::json;

TEST(ChatFormat, MatchesJinjaRenderingOfTheQwen3Template) {
  const json fixture = testing::read_json(testing::tokenizer_fixture("chat_template.json"));
  ASSERT_GE(fixture["cases"].size(), 20u);
  for (const json& c : fixture["cases"]) {
    std::vector<ChatMessage> messages;
    for (const json& m : c["messages"]) {
      messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    const std::string got = apply_chat_template(messages, c["add_generation_prompt"].get<bool>(),
                                                c["enable_thinking"].get<bool>());
    EXPECT_EQ(got, c["text"].get<std::string>()) << "messages: " << c["messages"].dump();
  }
}

TEST(ChatFormat, RenderedPromptTokenizesLikeHf) {
  CASCADE_REQUIRE_QWEN3_TOKENIZER(tok);
  const json fixture = testing::read_json(testing::tokenizer_fixture("chat_template.json"));
  for (const json& c : fixture["cases"]) {
    EXPECT_EQ(tok->encode(c["text"].get<std::string>()), c["ids"].get<std::vector<int32_t>>());
  }
}

TEST(ChatFormat, RejectsEmptyConversationsAndUnknownRoles) {
  EXPECT_THROW(apply_chat_template({}, true, true), Error);
  try {
    apply_chat_template({{"user", "hi"}, {"narrator", "x"}}, true, true);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("narrator"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace cascade

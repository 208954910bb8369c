// Runs the Python client tests (official `openai` package) and the load test against the built
// `cascade` binary. Skips when python3, the openai package or the binary is missing.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace {

const std::string kBinary = CASCADE_BINARY_DIR "/cascade";
const std::string kScripts = CASCADE_SOURCE_DIR "/tests/server";

bool have(const std::string& shell_test) { return std::system((shell_test + " >/dev/null 2>&1").c_str()) == 0; }

void require_tools() {
  if (!have("command -v python3")) GTEST_SKIP() << "python3 not found";
  if (!std::filesystem::exists(kBinary)) GTEST_SKIP() << kBinary << " not built (build the cascade_cli target)";
}

int run_script(const std::string& script, const std::string& args) {
  const std::string cmd = "cd '" + kScripts + "' && python3 " + script + " --binary '" + kBinary + "' " + args;
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(ServerPython, OpenAIClient) {
  require_tools();
  if (!have("python3 -c 'import openai'")) GTEST_SKIP() << "the openai package is missing (scripts/install_deps.sh)";
  EXPECT_EQ(run_script("test_openai_client.py", ""), 0);
}

TEST(ServerPython, LoadTestWithHangUps) {
  require_tools();
  EXPECT_EQ(run_script("load_test.py", "--clients 32 --requests 4 --max-tokens 32 --time-limit 240"), 0);
}

}  // namespace

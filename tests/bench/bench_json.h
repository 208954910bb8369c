// Helpers of the tests of bench/*.py: JSON fixtures in and out, output lookups, and a skip without
// python3.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "common/run_command.h"

namespace cascade::test {

inline nlohmann::json load_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

// Writes `j` to a temporary file of this test process (process_temp_file(prefix, name)).
inline std::filesystem::path write_temp_json(const nlohmann::json& j, const std::string& prefix,
                                             const std::string& name) {
  const std::filesystem::path p = process_temp_file(prefix, name);
  std::ofstream(p) << j.dump();
  return p;
}

// Runs bench/<script> (a path under the source tree) with python3 and `args`, stderr folded into
// the output.
inline CommandResult run_bench_script(const std::string& script, const std::string& args) {
  return run_command("python3 " + (std::filesystem::path(CASCADE_SOURCE_DIR) / "bench" / script).string() + " " +
                     args + " 2>&1");
}

// Whether a script's output holds `text` (a table row, a warning).
inline bool contains(const std::string& out, const std::string& text) { return out.find(text) != std::string::npos; }

}  // namespace cascade::test

// A macro, so that GTEST_SKIP leaves the test body itself.
#define CASCADE_REQUIRE_PYTHON()                                       \
  do {                                                                 \
    if (std::system("command -v python3 >/dev/null 2>&1") != 0) {      \
      GTEST_SKIP() << "python3 not found";                             \
    }                                                                  \
  } while (0)

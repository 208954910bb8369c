// Test helper: runs a shell command and returns its exit status and standard output; temporary
// file names unique to the test process (ctest runs tests as separate processes, several at once).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

namespace cascade::test {

struct CommandResult {
  int status = -1;  // the exit status, -1 if the command did not exit normally
  std::string out;  // standard output
};

inline CommandResult run_command(const std::string& cmd) {
  CommandResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf{};
  std::size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// <temp dir>/<prefix>_<pid>_<name>.
inline std::filesystem::path process_temp_file(const std::string& prefix, const std::string& name) {
  return std::filesystem::temp_directory_path() / (prefix + "_" + std::to_string(::getpid()) + "_" + name);
}

}  // namespace cascade::test

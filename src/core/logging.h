// Quiet-by-default structured logging to stderr: `[info] kv: req=12 reused=96/128 pages`.
// Level from CASCADE_LOG_LEVEL (debug|info|warn|error|off); default warn. Never per token above debug.
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace cascade {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };

LogLevel log_level();
void set_log_level(LogLevel level);
void log_write(LogLevel level, std::string_view message);

template <typename... Args>
void log(LogLevel level, fmt::format_string<Args...> f, Args&&... args) {
  if (level < log_level()) return;
  log_write(level, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace cascade

#define CASCADE_LOG_DEBUG(...) ::cascade::log(::cascade::LogLevel::kDebug, __VA_ARGS__)
#define CASCADE_LOG_INFO(...) ::cascade::log(::cascade::LogLevel::kInfo, __VA_ARGS__)
#define CASCADE_LOG_WARN(...) ::cascade::log(::cascade::LogLevel::kWarn, __VA_ARGS__)
#define CASCADE_LOG_ERROR(...) ::cascade::log(::cascade::LogLevel::kError, __VA_ARGS__)

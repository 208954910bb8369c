// Errors: one documented exception type, cascade::Error, thrown by loading and request handling and
// caught at the API edge (CLI, server). Messages name the file/tensor/request and the problem, so a
// user can act on them. CASCADE_CHECK is for internal invariants only.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace cascade {

enum class ErrorCode {
  kInvalidArgument,    // bad request or option
  kNotFound,           // missing file, tensor, chunk id
  kParse,              // malformed JSON / safetensors header
  kUnsupported,        // architecture, dtype, shape we do not handle
  kIo,                 // read/mmap failure, truncated file
  kOutOfMemory,        // KV pool cannot hold the request, ever
  kResourceExhausted,  // temporarily full (queue, pages)
  kFailedPrecondition, // e.g. deleting a chunk that is in use
  kEvicted,            // chunk id known once but evicted since
  kCuda,               // CUDA runtime / cuBLAS failure
  kInternal,           // invariant broken: a bug
};

const char* error_code_name(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, std::string message)
      : std::runtime_error(std::move(message)), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

template <typename... Args>
[[noreturn]] void throw_error(ErrorCode code, fmt::format_string<Args...> f, Args&&... args) {
  throw Error(code, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace cascade

// Internal invariant: throws ErrorCode::kInternal with file:line (never aborts library users).
#define CASCADE_CHECK(cond, ...)                                                            \
  do {                                                                                      \
    if (!(cond)) [[unlikely]] {                                                             \
      throw ::cascade::Error(::cascade::ErrorCode::kInternal,                               \
                             fmt::format("{}:{}: check failed: {}: {}", __FILE__, __LINE__, \
                                         #cond, fmt::format(__VA_ARGS__)));                 \
    }                                                                                       \
  } while (0)

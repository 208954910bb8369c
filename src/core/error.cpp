#include "core/error.h"

namespace cascade {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid_argument";
    case ErrorCode::kNotFound: return "not_found";
    case ErrorCode::kParse: return "parse_error";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kIo: return "io_error";
    case ErrorCode::kOutOfMemory: return "out_of_memory";
    case ErrorCode::kResourceExhausted: return "resource_exhausted";
    case ErrorCode::kFailedPrecondition: return "failed_precondition";
    case ErrorCode::kEvicted: return "evicted";
    case ErrorCode::kCuda: return "cuda_error";
    case ErrorCode::kInternal: return "internal";
  }
  return "unknown";
}

}  // namespace cascade

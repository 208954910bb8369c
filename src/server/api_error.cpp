#include "server/api_error.h"

namespace cascade {

ApiError bad_request(std::string message, std::string param, std::string code) {
  ApiError e;
  e.status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

ApiError rate_limited(std::string message, std::string code) {
  ApiError e;
  e.status = 429;
  e.type = "rate_limit_error";
  e.message = std::move(message);
  e.code = std::move(code);
  return e;
}

ApiError api_error_from(const Error& err) {
  ApiError e;
  e.message = err.what();
  switch (err.code()) {
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kParse:
    case ErrorCode::kUnsupported:
      e.status = 400;
      break;
    case ErrorCode::kOutOfMemory:  // the request can never fit the KV cache: the client must shrink it
      e.status = 400;
      e.code = "context_too_large";
      break;
    case ErrorCode::kNotFound:
      e.status = 404;
      e.type = "not_found_error";
      e.code = "not_found";
      break;
    case ErrorCode::kEvicted:
      e.status = 404;
      e.type = "not_found_error";
      e.code = "chunk_evicted";
      break;
    case ErrorCode::kFailedPrecondition:
      e.status = 409;
      e.type = "conflict_error";
      e.code = "in_use";
      break;
    case ErrorCode::kResourceExhausted:
      return rate_limited(err.what(), "queue_full");
    default:
      e.status = 500;
      e.type = "server_error";
      e.code = error_code_name(err.code());
      break;
  }
  return e;
}

nlohmann::json api_error_json(const ApiError& e) {
  using nlohmann::json;
  return json{{"error",
               {{"message", e.message},
                {"type", e.type},
                {"param", e.param.empty() ? json(nullptr) : json(e.param)},
                {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

std::string dump_json(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace cascade

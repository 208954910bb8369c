// Errors as the OpenAI API shapes them: an HTTP status plus
// {"error": {"message", "type", "param", "code"}}. Every failure the server reports goes through here.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"

namespace cascade {

struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the offending request field, or empty (JSON null)
  std::string code;   // a short machine-readable code, or empty (JSON null)
};

// A 400 invalid_request_error naming `param`.
ApiError bad_request(std::string message, std::string param = "", std::string code = "");

// A 429 rate_limit_error: the server is full for now and the client should retry.
ApiError rate_limited(std::string message, std::string code);

// Maps the engine's error codes to HTTP: invalid input 400, unknown/evicted ids 404, in-use 409,
// temporarily full 429, the rest 500.
ApiError api_error_from(const Error& e);

// {"error": {...}}; param and code are null when empty.
nlohmann::json api_error_json(const ApiError& e);

// JSON text that never throws on invalid UTF-8 (replaced by U+FFFD): generated text may hold any bytes.
std::string dump_json(const nlohmann::json& j);

}  // namespace cascade

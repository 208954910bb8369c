// Subcommands of the `cascade` program beyond generate/tokenize.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "cascade/config.h"

namespace cascade {

// `cascade chunks --script FILE`: runs chunk-API operations, one JSON object per line:
// {"op":"register","kind":"system","text"|"ids":...,"metadata":{...}} → {"id": ...}
// {"op":"list"} {"op":"get","id":...} {"op":"delete","id":...} {"op":"clear","kind":...}
// {"op":"stats"} {"op":"preview", <request>} {"op":"generate","requests":[<request>...]}
// Each prints one JSON line; a failing op prints {"error": {"code":..., "message":...}} and the
// session goes on. Exit status 1 if any op failed.
int run_chunk_session(const Config& config, const std::string& script_path);

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string api_key;
  std::string served_model_name;
  int max_queue = 256;
  std::size_t max_body_bytes = 8u << 20;
  int http_threads = 64;  // each open stream holds one HTTP thread
};
void add_serve_options(CLI::App* app, ServeOptions& o);
// `cascade serve`: blocks until SIGINT/SIGTERM.
int run_serve(const Config& config, const ServeOptions& options);

}  // namespace cascade

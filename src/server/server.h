// `cascade serve`: an OpenAI-compatible HTTP server over one Engine. HTTP threads parse and validate;
// one engine thread (EngineLoop) owns the Engine; streams are server-sent events. A class so that
// tests run it in-process on an ephemeral port.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <thread>

#include "cascade/config.h"

namespace httplib {
class Server;
}

namespace cascade {

class EngineLoop;
class ServerMetrics;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                        // 0: an ephemeral port (start() returns it)
  std::string api_key;                    // non-empty: every endpoint but /health needs Bearer <key>
  std::string served_model_name;          // empty: the model folder's name, or "cascade-default"
  int max_queue = 256;                    // requests waiting beyond the running batch; more → 429
  std::size_t max_body_bytes = 8u << 20;  // larger bodies → 413
  // Silence after which an open response probes its client (an SSE comment in a stream, a space
  // before the JSON of a non-streamed answer that has not finished): a gone client is noticed and
  // its request cancelled. Non-streamed answers that finish sooner are sent whole.
  int keep_alive_ms = 1000;
  int http_threads = 64;                  // each open generation call holds one; a few are kept
                                          // for /health, /metrics and refusals (generation calls
                                          // beyond the rest get a 429 at once)
};

class Server {
 public:
  // Loads the model (throws cascade::Error); serves nothing until start().
  Server(const Config& config, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds, starts the engine and HTTP threads, and returns the bound port. Throws kIo when the
  // address cannot be bound.
  int start();
  // Stops accepting, fails unfinished requests, joins every thread. Idempotent.
  void stop();

  const std::string& model_name() const { return model_name_; }
  int port() const { return port_; }

 private:
  void install_routes();

  Config config_;
  ServerOptions options_;
  std::string model_name_;
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<EngineLoop> loop_;
  std::unique_ptr<httplib::Server> http_;
  std::thread listener_;
  std::atomic<std::uint64_t> next_id_{1};
  std::shared_ptr<std::atomic<int>> open_calls_ = std::make_shared<std::atomic<int>>(0);  // generation calls holding an HTTP thread
  int max_open_calls_ = 1;
  std::string id_prefix_;
  int port_ = 0;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace cascade

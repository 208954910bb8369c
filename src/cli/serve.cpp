// `cascade serve`: options, signal handling, and the Server's lifetime.
#include <pthread.h>
#include <signal.h>

#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "server/server.h"

namespace cascade {

void add_serve_options(CLI::App* app, ServeOptions& o) {
  app->add_option("--host", o.host, "address to bind (default 127.0.0.1: this machine only)");
  app->add_option("--port", o.port, "TCP port (0: any free port; the chosen one is printed)")->check(CLI::Range(0, 65535));
  app->add_option("--api-key", o.api_key, "require 'Authorization: Bearer KEY' on every endpoint but /health");
  app->add_option("--served-model-name", o.served_model_name, "model id clients send (default: the model folder's name)");
  app->add_option("--max-queue", o.max_queue, "requests waiting beyond the running batch; more get 429")->check(CLI::NonNegativeNumber);
  app->add_option_function<double>(
         "--max-body-mb", [&o](double mb) { o.max_body_bytes = static_cast<std::size_t>(mb * 1024.0 * 1024.0); },
         "largest request body in MiB (default 8); larger gets 413")
      ->check(CLI::PositiveNumber);
  app->add_option("--http-threads", o.http_threads, "HTTP worker threads; each open stream holds one")->check(CLI::Range(2, 4096));
}

int run_serve(const Config& config, const ServeOptions& o) {
  // Block SIGINT/SIGTERM before any thread starts so that every thread inherits the mask and this
  // one receives them in sigwait, outside any lock.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  ServerOptions so;
  so.host = o.host;
  so.port = o.port;
  so.api_key = o.api_key;
  so.served_model_name = o.served_model_name;
  so.max_queue = o.max_queue;
  so.max_body_bytes = o.max_body_bytes;
  so.http_threads = o.http_threads;
  Server server(config, so);
  const int port = server.start();
  std::printf("cascade serve: model '%s' listening on http://%s:%d\n", server.model_name().c_str(), o.host.c_str(), port);
  std::fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "cascade serve: %s received, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  server.stop();
  return 0;
}

}  // namespace cascade

#include "server/server.h"

#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <random>

#include "core/error.h"
#include "core/logging.h"
#include "engine/engine.h"
#include "engine/request_json.h"
#include "server/api_error.h"
#include "server/engine_loop.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/openai_api.h"

namespace cascade {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr auto kPollInterval = 50ms;  // how often a waiting stream checks its client

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump_json(body), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status, api_error_json(e)); }

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Runs a handler body, turning every failure into an OpenAI-shaped error (never a crash).
template <typename F>
void guarded(httplib::Response& res, F&& body) {
  try {
    body();
  } catch (const ApiException& e) {
    send_error(res, e.error);
  } catch (const Error& e) {
    send_error(res, api_error_from(e));
  } catch (const std::exception& e) {
    ApiError err;
    err.status = 500;
    err.type = "server_error";
    err.message = fmt::format("internal error: {}", e.what());
    send_error(res, err);
  }
}

bool constant_time_equal(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::string default_model_name(const Config& config) {
  if (config.model_dir.empty()) return "cascade-default";
  std::filesystem::path p(config.model_dir);
  if (!p.has_filename()) p = p.parent_path();
  return p.filename().string().empty() ? config.model_dir : p.filename().string();
}

// The state one streamed response shares between its content provider and its releaser.
struct StreamState {
  GenerationCall call;
  std::string id;
  std::int64_t created = 0;
  std::shared_ptr<Channel> channel;
  std::vector<std::uint64_t> engine_ids;
  std::vector<ChoiceResult> results;
  int unfinished = 0;
  bool head_sent = false;
  bool done = false;
  std::chrono::steady_clock::time_point last_write;
  std::shared_ptr<void> call_slot;  // the HTTP-thread slot; let go once the answer is complete

  // Non-streamed calls: applies the events that arrive within one poll interval.
  void absorb_events();
  // The first choice that failed in the engine, or nullptr.
  const ChoiceResult* first_failure() const {
    for (const ChoiceResult& r : results) {
      if (!r.error.empty()) return &r;
    }
    return nullptr;
  }
};

void apply_event(std::vector<ChoiceResult>& results, const ChoiceEvent& ev) {
  ChoiceResult& r = results[static_cast<std::size_t>(ev.index)];
  r.text += ev.text;
  r.token_ids.insert(r.token_ids.end(), ev.token_ids.begin(), ev.token_ids.end());
  if (ev.finished) {
    r.finished = true;
    r.finish_reason = ev.finish_reason;
    r.error = ev.error;
    r.prompt_tokens = ev.prompt_tokens;
    r.cached_tokens = ev.cached_tokens;
    r.completion_tokens = ev.completion_tokens;
  }
}

void StreamState::absorb_events() {
  for (const ChoiceEvent& ev : channel->wait_take(kPollInterval)) {
    apply_event(results, ev);
    if (ev.finished) --unfinished;
  }
}

ApiError engine_failure(const std::string& message) {
  ApiError e;
  e.status = 503;
  e.type = "server_error";
  e.code = "engine_error";
  e.message = message;
  return e;
}

}  // namespace

Server::Server(const Config& config, ServerOptions options)
    : config_(config), options_(std::move(options)), metrics_(std::make_unique<ServerMetrics>()) {
  if (options_.max_queue < 0) throw_error(ErrorCode::kInvalidArgument, "--max-queue must be >= 0, got {}", options_.max_queue);
  if (options_.keep_alive_ms < 1) {
    throw_error(ErrorCode::kInvalidArgument, "keep_alive_ms must be >= 1, got {}", options_.keep_alive_ms);
  }
  if (options_.max_body_bytes < 1024) {
    throw_error(ErrorCode::kInvalidArgument, "--max-body-mb gives {} bytes; at least 1 KiB is needed", options_.max_body_bytes);
  }
  model_name_ = options_.served_model_name.empty() ? default_model_name(config_) : options_.served_model_name;
  loop_ = std::make_unique<EngineLoop>(config_, config_.max_num_seqs + options_.max_queue, metrics_.get());
  std::random_device rd;
  id_prefix_ = fmt::format("{:08x}", rd());
}

Server::~Server() { stop(); }

int Server::start() {
  if (started_) return port_;
  http_ = std::make_unique<httplib::Server>();
  const int threads = std::max(2, options_.http_threads);
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<std::size_t>(threads)); };
  // A generation call holds its HTTP thread until its response ends, and httplib queues new
  // connections without limit once every thread is busy: keep some threads for /health, /metrics,
  // chunk calls and the 429s, so a full server answers instead of hanging.
  const int reserved = std::min(4, threads / 2);
  max_open_calls_ = std::max(1, threads - reserved);
  http_->set_payload_max_length(options_.max_body_bytes);
  install_routes();
  if (options_.port == 0) {
    port_ = http_->bind_to_any_port(options_.host);
    if (port_ <= 0) throw_error(ErrorCode::kIo, "cannot bind an ephemeral port on {}", options_.host);
  } else {
    if (!http_->bind_to_port(options_.host, options_.port)) {
      throw_error(ErrorCode::kIo, "cannot bind {}:{} (in use, or not an address of this machine)", options_.host, options_.port);
    }
    port_ = options_.port;
  }
  loop_->start();
  auto listener_done = std::make_shared<std::atomic<bool>>(false);
  listener_ = std::thread([this, listener_done] {
    http_->listen_after_bind();
    *listener_done = true;
  });
  // httplib's stop() does nothing until listen has begun: wait for it, so that stop() always works.
  while (!http_->is_running() && !*listener_done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  started_ = true;
  CASCADE_LOG_INFO("server: model={} listening on {}:{}", model_name_, options_.host, port_);
  return port_;
}

void Server::stop() {
  if (!started_ || stopped_) return;
  stopped_ = true;
  // The engine first: open streams receive their final error event and finish writing.
  loop_->stop();
  http_->stop();
  if (listener_.joinable()) listener_.join();
}

void Server::install_routes() {
  httplib::Server& http = *http_;
  const ModelInfo model{model_name_, loop_->tokenizer(), loop_->max_model_len(), loop_->vocab_size()};

  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (options_.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    if (constant_time_equal(auth, "Bearer " + options_.api_key)) return httplib::Server::HandlerResponse::Unhandled;
    ApiError e;
    e.status = 401;
    e.type = "authentication_error";
    e.code = "invalid_api_key";
    e.message = auth.empty() ? "missing API key: send 'Authorization: Bearer <key>'" : "incorrect API key";
    send_error(res, e);
    return httplib::Server::HandlerResponse::Handled;
  });

  // httplib's own refusals (unknown route, body over the limit) get an OpenAI-shaped body too.
  http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty() || res.is_chunked_content_provider_) return httplib::Server::HandlerResponse::Unhandled;
    ApiError e;
    e.status = res.status;
    if (res.status == 404) {
      e.type = "not_found_error";
      e.message = fmt::format("no route for {} {}", req.method, req.path);
    } else if (res.status == 413) {
      e.code = "request_too_large";
      e.message = fmt::format("the request body is larger than the server's limit of {} bytes (--max-body-mb)",
                              options_.max_body_bytes);
    } else {
      e.type = res.status >= 500 ? "server_error" : "invalid_request_error";
      e.message = fmt::format("HTTP {} for {} {}", res.status, req.method, req.path);
    }
    send_error(res, e);
    return httplib::Server::HandlerResponse::Handled;
  }));

  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    ApiError e;
    e.status = 500;
    e.type = "server_error";
    e.message = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& ex) {
      e.message = fmt::format("internal error: {}", ex.what());
    } catch (...) {
    }
    send_error(res, e);
  });

  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    if (req.path.rfind("/v1/", 0) == 0) metrics_->count_response(res.status);
    CASCADE_LOG_DEBUG("http: {} {} -> {}", req.method, req.path, res.status);
  });

  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const EngineSnapshot s = loop_->snapshot();
    send_json(res, 200, json{{"status", "ok"}, {"model", model_name_}, {"running", s.stats.running},
                             {"waiting", s.stats.waiting + s.inbox}});
  });

  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.status = 200;
    res.set_content(metrics_->render(loop_->snapshot(), model_name_), "text/plain; version=0.0.4");
  });

  auto model_card = [this]() {
    return json{{"id", model_name_},
                {"object", "model"},
                {"created", 0},
                {"owned_by", "cascade"},
                {"max_model_len", loop_->max_model_len()}};
  };
  http.Get("/v1/models", [model_card](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, json{{"object", "list"}, {"data", json::array({model_card()})}});
  });
  http.Get(R"(/v1/models/(.+))", [this, model_card](const httplib::Request& req, httplib::Response& res) {
    if (req.matches[1] != model_name_) {
      ApiError e;
      e.status = 404;
      e.type = "not_found_error";
      e.code = "model_not_found";
      e.message = fmt::format("The model '{}' does not exist; this server serves '{}'", req.matches[1].str(), model_name_);
      send_error(res, e);
      return;
    }
    send_json(res, 200, model_card());
  });

  // ---- generation ------------------------------------------------------------------------------
  auto generate = [this](const httplib::Request& req, httplib::Response& res, GenerationCall call) {
    const int n = static_cast<int>(call.requests.size());
    // The call's HTTP-thread slot, released when the last holder (this handler, or the response's
    // content provider) lets go.
    if (open_calls_->fetch_add(1) >= max_open_calls_) {
      open_calls_->fetch_sub(1);
      send_error(res, rate_limited(fmt::format("the server is serving {} generation calls, its limit for {} "
                                               "HTTP threads; retry later",
                                               max_open_calls_, std::max(2, options_.http_threads)),
                                   "too_many_connections"));
      return;
    }
    const std::shared_ptr<void> call_slot(nullptr, [open = open_calls_](void*) { open->fetch_sub(1); });
    if (!loop_->try_reserve(n)) {
      send_error(res, rate_limited(fmt::format("the server's queue is full ({} waiting beyond {} running); retry later",
                                               options_.max_queue, config_.max_num_seqs),
                                   "queue_full"));
      return;
    }
    auto state = std::make_shared<StreamState>();
    state->id = fmt::format("{}-{}{:x}", call.chat ? "chatcmpl" : "cmpl", id_prefix_, next_id_.fetch_add(1));
    state->created = unix_now();
    state->channel = std::make_shared<Channel>();
    state->results.resize(static_cast<std::size_t>(n));
    state->unfinished = n;
    state->engine_ids = loop_->submit(call.requests, state->channel);  // throws: 400/404 ...
    state->call = std::move(call);
    state->call_slot = call_slot;

    if (!state->call.stream) {
      // Short calls: wait here and answer with the right status.
      const std::chrono::milliseconds keep_alive(options_.keep_alive_ms);
      const auto wait_until = std::chrono::steady_clock::now() + keep_alive;
      while (state->unfinished > 0 && std::chrono::steady_clock::now() < wait_until) state->absorb_events();
      if (state->unfinished == 0) {
        if (const ChoiceResult* failed = state->first_failure()) throw ApiException(engine_failure(failed->error));
        send_json(res, 200, completion_response(state->call, state->id, state->created, model_name_, state->results));
        return;
      }
      // Longer calls answer through a chunked body, so that a client that goes away is noticed
      // (a write fails) and its request cancelled, as for streams. Whitespace before a JSON value
      // is insignificant, so a space after each second of silence probes the connection without
      // changing the document. An engine failure from here on arrives as a 200 carrying an
      // OpenAI error object (the status line has gone out).
      state->last_write = std::chrono::steady_clock::now();
      res.set_header("Cache-Control", "no-cache");
      EngineLoop* loop = loop_.get();
      const std::string model = model_name_;
      res.set_chunked_content_provider(
          "application/json",
          [state, model, keep_alive](std::size_t, httplib::DataSink& sink) {
            state->absorb_events();
            if (state->unfinished == 0) {
              const ChoiceResult* failed = state->first_failure();
              const std::string body =
                  failed != nullptr
                      ? dump_json(api_error_json(engine_failure(failed->error)))
                      : dump_json(completion_response(state->call, state->id, state->created, model, state->results));
              state->done = true;  // nothing is left to cancel, whether or not the client reads it
              state->call_slot.reset();
              if (!sink.write(body.data(), body.size())) return false;
              sink.done();
              return true;
            }
            if (std::chrono::steady_clock::now() - state->last_write > keep_alive) {
              state->last_write = std::chrono::steady_clock::now();
              if (!sink.write(" ", 1)) return false;
            }
            return sink.is_writable();
          },
          [state, loop](bool) {
            state->call_slot.reset();
            if (!state->done) loop->cancel(state->engine_ids);
          });
      return;
    }

    res.set_header("Cache-Control", "no-cache");
    state->last_write = std::chrono::steady_clock::now();
    EngineLoop* loop = loop_.get();
    const std::string model = model_name_;
    res.set_chunked_content_provider(
        "text/event-stream",
        [state, model, keep_alive = std::chrono::milliseconds(options_.keep_alive_ms)](
            std::size_t, httplib::DataSink& sink) {
          auto write = [&](const std::string& s) {
            state->last_write = std::chrono::steady_clock::now();
            return sink.write(s.data(), s.size());
          };
          auto event = [&](const json& j) { return write("data: " + dump_json(j) + "\n\n"); };
          if (!state->head_sent) {
            state->head_sent = true;
            if (state->call.chat) {
              for (std::size_t i = 0; i < state->results.size(); ++i) {
                if (!event(stream_role_chunk(state->id, state->created, model, static_cast<int>(i)))) return false;
              }
            }
          }
          for (const ChoiceEvent& ev : state->channel->wait_take(kPollInterval)) {
            apply_event(state->results, ev);
            if (ev.finished) --state->unfinished;
            if (ev.finished && !ev.error.empty()) {
              if (!event(api_error_json(engine_failure(ev.error)))) return false;
              continue;
            }
            if (!event(stream_chunk(state->call, state->id, state->created, model, ev))) return false;
          }
          if (state->unfinished == 0) {
            state->call_slot.reset();
            if (state->call.include_usage &&
                !event(stream_usage_chunk(state->call, state->id, state->created, model, state->results))) {
              return false;
            }
            if (!write("data: [DONE]\n\n")) return false;
            state->done = true;
            sink.done();
            return true;
          }
          // Nothing to say for a while: a comment line (ignored by SSE clients) finds a gone client.
          if (std::chrono::steady_clock::now() - state->last_write > keep_alive && !write(": keep-alive\n\n")) {
            return false;
          }
          return sink.is_writable();
        },
        [state, loop](bool) {
          // Runs when the response ends, however it ends: a client gone mid-stream leaves work behind.
          state->call_slot.reset();
          if (!state->done) loop->cancel(state->engine_ids);
        });
  };

  http.Post("/v1/completions", [this, model, generate](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] { generate(req, res, parse_completion_request(parse_body(req.body), model)); });
  });
  http.Post("/v1/chat/completions", [this, model, generate](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] { generate(req, res, parse_chat_request(parse_body(req.body), model)); });
  });

  // ---- chunks ----------------------------------------------------------------------------------
  http.Post("/v1/chunks", [this, model](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] {
      ChunkRegistration reg = parse_chunk_registration(parse_body(req.body), model);
      ChunkInfo info = loop_->call([&reg](Engine& e) {
        const std::string id = e.register_chunk(reg.kind, reg.ids, reg.metadata);
        return e.get_chunk(id);
      });
      json j = chunk_info_to_json(info);
      j["object"] = "chunk";
      send_json(res, 200, j);
    });
  });
  http.Get("/v1/chunks", [this](const httplib::Request&, httplib::Response& res) {
    guarded(res, [&] {
      json data = json::array();
      for (const ChunkInfo& c : loop_->call([](Engine& e) { return e.list_chunks(); })) {
        json j = chunk_info_to_json(c);
        j["object"] = "chunk";
        data.push_back(std::move(j));
      }
      send_json(res, 200, json{{"object", "list"}, {"data", std::move(data)}});
    });
  });
  http.Get(R"(/v1/chunks/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] {
      const std::string id = req.matches[1];
      require_chunk_id_form(id);
      json j = chunk_info_to_json(loop_->call([&id](Engine& e) { return e.get_chunk(id); }));
      j["object"] = "chunk";
      send_json(res, 200, j);
    });
  });
  http.Delete(R"(/v1/chunks/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] {
      const std::string id = req.matches[1];
      require_chunk_id_form(id);
      loop_->call([&id](Engine& e) {
        e.delete_chunk(id);
        return 0;
      });
      send_json(res, 200, json{{"id", id}, {"object", "chunk"}, {"deleted", true}});
    });
  });
  // Extension: drops every unreferenced cached chunk (of ?kind= when given); chunks in use stay.
  http.Delete("/v1/chunks", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] {
      std::optional<ChunkKind> kind;
      if (req.has_param("kind")) {
        kind = parse_chunk_kind(req.get_param_value("kind"));
        if (!kind) throw ApiException(bad_request("unknown chunk kind (system, context, query, auto)", "kind"));
      }
      const int removed = loop_->call([kind](Engine& e) { return e.clear_chunks(kind); });
      send_json(res, 200, json{{"object", "list"}, {"deleted", removed}});
    });
  });
}

}  // namespace cascade

// The HTTP server over real loopback sockets: each test starts a Server in-process on an ephemeral
// port with the embedded default model and talks to it with httplib::Client. Expected generations
// come from the in-process LLM API (a separate path: no HTTP, no engine thread).
#include "server/server.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>

#include "cascade/llm.h"
#include "engine/engine.h"
#include "server/engine_loop.h"
#include "server/http.h"
#include "tokenizer/chat_format.h"
#include "tokenizer/tokenizer.h"

namespace cascade {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

Config test_config() {
  Config c;
  c.device = Device::kCpu;
  c.kv_cache_bytes = 4u << 20;  // 128 pages of 16 tokens for the default model
  c.max_model_len = 512;
  c.num_threads = 1;
  return c;
}

struct Reply {
  int status = 0;
  json body;
};

class Running {
 public:
  explicit Running(Config config = test_config(), ServerOptions options = {}) {
    options.port = 0;
    server_ = std::make_unique<Server>(config, options);
    port_ = server_->start();
  }
  ~Running() { server_->stop(); }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(60, 0);
    return c;
  }
  Reply post_raw(const std::string& path, const std::string& body, const httplib::Headers& headers = {}) const {
    auto c = client();
    auto r = c.Post(path.c_str(), headers, body, "application/json");
    if (!r) return Reply{-1, json()};
    return Reply{r->status, json::parse(r->body, nullptr, false)};
  }
  Reply post(const std::string& path, const json& body) const { return post_raw(path, body.dump()); }
  Reply post(const std::string& path, const char* raw_body) const { return post_raw(path, raw_body); }
  Reply get(const std::string& path, const httplib::Headers& headers = {}) const {
    auto c = client();
    auto r = c.Get(path.c_str(), headers);
    if (!r) return Reply{-1, json()};
    return Reply{r->status, json::parse(r->body, nullptr, false)};
  }
  Reply del(const std::string& path) const {
    auto c = client();
    auto r = c.Delete(path.c_str());
    if (!r) return Reply{-1, json()};
    return Reply{r->status, json::parse(r->body, nullptr, false)};
  }
  // The value of an unlabelled metric line `name value`.
  double metric(const std::string& name) const {
    auto c = client();
    auto r = c.Get("/metrics");
    EXPECT_TRUE(r);
    const std::string& text = r->body;
    std::size_t pos = 0;
    while ((pos = text.find(name + " ", pos)) != std::string::npos) {
      if (pos == 0 || text[pos - 1] == '\n') return std::stod(text.substr(pos + name.size() + 1));
      ++pos;
    }
    ADD_FAILURE() << "metric " << name << " missing";
    return -1;
  }
  // Polls until metric `name` equals `value` (true) or `timeout` passes (false).
  // Every metric of one /metrics answer (the engine publishes them together after a step, so
  // they describe one moment).
  std::map<std::string, double> metrics() const {
    auto c = client();
    auto r = c.Get("/metrics");
    EXPECT_TRUE(r);
    std::map<std::string, double> out;
    std::istringstream in(r ? r->body : std::string());
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      const std::size_t sp = line.find(' ');
      if (sp != std::string::npos) out[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
    }
    return out;
  }

  bool wait_metric(const std::string& name, double value, std::chrono::seconds timeout = 15s) const {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (metric(name) == value) return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }
  const Server& server() const { return *server_; }
  int port() const { return port_; }

 private:
  std::unique_ptr<Server> server_;
  int port_ = 0;
};

// The `data:` payloads of an SSE body, in order.
std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < body.size()) {
    std::size_t end = body.find('\n', pos);
    if (end == std::string::npos) end = body.size();
    const std::string line = body.substr(pos, end - pos);
    if (line.rfind("data: ", 0) == 0) out.push_back(line.substr(6));
    pos = end + 1;
  }
  return out;
}

void expect_error_shape(const Reply& r, int status, const std::string& type) {
  EXPECT_EQ(r.status, status) << r.body.dump();
  ASSERT_TRUE(r.body.is_object() && r.body.contains("error")) << r.body.dump();
  const json& e = r.body["error"];
  EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty());
  EXPECT_EQ(e["type"], type);
  EXPECT_TRUE(e.contains("param") && e.contains("code"));
}

RequestOutput reference(const Config& config, const std::vector<std::int32_t>& prompt, int max_tokens) {
  LLM llm(config);
  Request r;
  Segment s;
  s.kind = ChunkKind::kAuto;
  s.ids = prompt;
  r.segments.push_back(s);
  r.sampling.temperature = 0.0f;
  r.sampling.max_tokens = max_tokens;
  return llm.generate({r})[0];
}

// POSTs `body` to /v1/completions and hands every piece of the response body to `receive`;
// returning false from it hangs up.
void post_completion_receiving(const Running& srv, const json& body,
                               const std::function<bool(const char*, std::size_t)>& receive) {
  auto c = srv.client();
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.set_header("Content-Type", "application/json");
  req.body = body.dump();
  req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) { return receive(data, n); };
  c.send(req);
}

// Streams a long completion until `release` is set (the call holds its sequence and HTTP thread).
void hold_stream(const Running& srv, const std::atomic<bool>& release) {
  post_completion_receiving(srv, json{{"prompt", "hold"}, {"max_tokens", 4000}, {"ignore_eos", true}, {"stream", true}},
                            [&](const char*, std::size_t) { return !release.load(); });
}

TEST(Server, CompletionMatchesTheLibraryAndStreamingMatchesNonStreaming) {
  Running srv;
  const std::string prompt = "The cascade of pages";
  const auto ids = Tokenizer::byte_level_default()->encode(prompt);
  const RequestOutput want = reference(test_config(), ids, 12);

  json req{{"model", srv.server().model_name()}, {"prompt", prompt}, {"max_tokens", 12},
           {"temperature", 0}, {"return_token_ids", true}};
  Reply r = srv.post("/v1/completions", req);
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["object"], "text_completion");
  const json& choice = r.body["choices"][0];
  EXPECT_EQ(choice["token_ids"].get<std::vector<std::int32_t>>(), want.token_ids);
  EXPECT_EQ(choice["text"], want.text);
  EXPECT_EQ(choice["finish_reason"], finish_reason_name(want.finish_reason));
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], ids.size());
  EXPECT_EQ(r.body["usage"]["completion_tokens"], want.token_ids.size());
  EXPECT_EQ(r.body["usage"]["total_tokens"], ids.size() + want.token_ids.size());
  EXPECT_TRUE(r.body["usage"]["prompt_tokens_details"]["cached_tokens"].is_number_integer());

  // The same prompt as token ids.
  json by_ids = req;
  by_ids["prompt"] = ids;
  Reply r2 = srv.post("/v1/completions", by_ids);
  ASSERT_EQ(r2.status, 200);
  EXPECT_EQ(r2.body["choices"][0]["token_ids"], choice["token_ids"]);

  // Streamed: the pieces concatenate to the same text, then usage, then [DONE].
  json sreq = req;
  sreq["stream"] = true;
  sreq["stream_options"] = {{"include_usage", true}};
  auto c = srv.client();
  auto res = c.Post("/v1/completions", sreq.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  EXPECT_NE(res->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  auto events = sse_data(res->body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::vector<std::int32_t> toks;
  std::string finish;
  for (std::size_t i = 0; i + 2 < events.size(); ++i) {
    json e = json::parse(events[i]);
    text += e["choices"][0]["text"].get<std::string>();
    for (auto t : e["choices"][0]["token_ids"]) toks.push_back(t.get<std::int32_t>());
    if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, want.text);
  EXPECT_EQ(toks, want.token_ids);
  EXPECT_EQ(finish, finish_reason_name(want.finish_reason));
  json usage = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], want.token_ids.size());
}

TEST(Server, ChatUsesTheTemplateAndTheThinkingSwitch) {
  Running srv;
  const std::vector<ChatMessage> msgs = {{"system", "Be brief."}, {"user", "Hi there"}};
  json messages = json::array({{{"role", "system"}, {"content", "Be brief."}},
                               {{"role", "user"}, {"content", "Hi there"}}});
  auto tok = Tokenizer::byte_level_default();
  for (bool thinking : {true, false}) {
    const auto ids = tok->encode(apply_chat_template(msgs, true, thinking));
    const RequestOutput want = reference(test_config(), ids, 6);
    json req{{"messages", messages}, {"max_tokens", 6}, {"temperature", 0}};
    if (!thinking) req["chat_template_kwargs"] = {{"enable_thinking", false}};
    Reply r = srv.post("/v1/chat/completions", req);
    ASSERT_EQ(r.status, 200) << r.body.dump();
    EXPECT_EQ(r.body["object"], "chat.completion");
    EXPECT_EQ(r.body["usage"]["prompt_tokens"], ids.size());
    EXPECT_EQ(r.body["choices"][0]["message"]["role"], "assistant");
    EXPECT_EQ(r.body["choices"][0]["message"]["content"], want.text);
    if (!thinking) {  // the top-level switch is the same as the kwargs one
      json top{{"messages", messages}, {"max_tokens", 6}, {"temperature", 0}, {"enable_thinking", false}};
      Reply r2 = srv.post("/v1/chat/completions", top);
      EXPECT_EQ(r2.body["usage"]["prompt_tokens"], ids.size());
    }
  }
  // Streaming chat: a role delta first, content deltas, a finish chunk.
  auto c = srv.client();
  json sreq{{"messages", messages}, {"max_tokens", 5}, {"temperature", 0}, {"stream", true}, {"ignore_eos", true}};
  auto res = c.Post("/v1/chat/completions", sreq.dump(), "application/json");
  ASSERT_TRUE(res);
  auto events = sse_data(res->body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(json::parse(events[0])["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(json::parse(events[events.size() - 2])["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(events.back(), "[DONE]");
}

TEST(Server, SeveralChoicesAndCachedTokens) {
  Running srv;
  std::string prompt(40, 'a');
  for (int i = 0; i < 40; ++i) prompt[static_cast<std::size_t>(i)] = static_cast<char>('a' + i % 26);
  json req{{"prompt", prompt}, {"max_tokens", 4}, {"n", 3}, {"seed", 7}, {"temperature", 1.0}};
  Reply r = srv.post("/v1/completions", req);
  ASSERT_EQ(r.status, 200) << r.body.dump();
  ASSERT_EQ(r.body["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(r.body["choices"][i]["index"], i);
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], 40);
  EXPECT_EQ(r.body["usage"]["completion_tokens"], 12);
  // Asked again, the prompt's full pages come from the cache.
  Reply again = srv.post("/v1/completions", json{{"prompt", prompt}, {"max_tokens", 2}});
  ASSERT_EQ(again.status, 200);
  const int cached = again.body["usage"]["prompt_tokens_details"]["cached_tokens"];
  EXPECT_GE(cached, 16);
  EXPECT_LT(cached, 40);
  EXPECT_GT(srv.metric("cascade_chunk_hits_total"), 0);
}

TEST(Server, ChunkEndpointsAndComposition) {
  Running srv;
  Reply reg = srv.post("/v1/chunks", json{{"kind", "system"}, {"text", "You are a helpful assistant."},
                                          {"metadata", {{"name", "sys"}}}});
  ASSERT_EQ(reg.status, 200) << reg.body.dump();
  const std::string id = reg.body["id"];
  EXPECT_EQ(reg.body["kind"], "system");
  EXPECT_EQ(reg.body["num_tokens"], 28);
  EXPECT_EQ(reg.body["metadata"]["name"], "sys");

  Reply got = srv.get("/v1/chunks/" + id);
  ASSERT_EQ(got.status, 200);
  EXPECT_EQ(got.body["id"], id);
  Reply list = srv.get("/v1/chunks");
  ASSERT_EQ(list.status, 200);
  bool found = false;
  for (const json& c : list.body["data"]) found |= c["id"] == id;
  EXPECT_TRUE(found);

  json composed{{"segments", json::array({{{"kind", "system"}, {"chunk_id", id}},
                                          {{"kind", "context"}, {"text", "Doc: pages are shared."}},
                                          {{"kind", "query"}, {"text", "What is shared?"}}})},
                {"max_tokens", 4}, {"temperature", 0}};
  Reply a = srv.post("/v1/completions", composed);
  ASSERT_EQ(a.status, 200) << a.body.dump();
  EXPECT_EQ(a.body["usage"]["prompt_tokens"], 28 + 22 + 15);
  Reply b = srv.post("/v1/completions", composed);
  ASSERT_EQ(b.status, 200);
  EXPECT_GE(b.body["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), 28);

  // Unknown ids are 404s naming the id.
  const std::string unknown(64, 'f');
  Reply missing = srv.get("/v1/chunks/" + unknown);
  expect_error_shape(missing, 404, "not_found_error");
  EXPECT_NE(missing.body["error"]["message"].get<std::string>().find("ffff"), std::string::npos);
  json bad_compose = composed;
  bad_compose["segments"][0]["chunk_id"] = unknown;
  Reply bad = srv.post("/v1/completions", bad_compose);
  expect_error_shape(bad, 404, "not_found_error");
  EXPECT_NE(bad.body["error"]["message"].get<std::string>().find("ffff"), std::string::npos);

  // Ids that could not name a chunk (not 64 hex digits) are unknown too: 404s naming the id.
  for (const std::string& odd : {std::string("doesnotexist"), std::string("abc")}) {
    Reply g = srv.get("/v1/chunks/" + odd);
    expect_error_shape(g, 404, "not_found_error");
    EXPECT_NE(g.body["error"]["message"].get<std::string>().find(odd), std::string::npos);
    expect_error_shape(srv.del("/v1/chunks/" + odd), 404, "not_found_error");
    json odd_compose = composed;
    odd_compose["segments"][0]["chunk_id"] = odd;
    Reply c = srv.post("/v1/completions", odd_compose);
    expect_error_shape(c, 404, "not_found_error");
    EXPECT_NE(c.body["error"]["message"].get<std::string>().find(odd), std::string::npos);
  }

  // Deleting: 200, then the id is gone.
  Reply d = srv.del("/v1/chunks/" + id);
  ASSERT_EQ(d.status, 200) << d.body.dump();
  EXPECT_EQ(d.body["deleted"], true);
  expect_error_shape(srv.get("/v1/chunks/" + id), 404, "not_found_error");
  expect_error_shape(srv.post("/v1/completions", composed), 404, "not_found_error");
}

// A chunk evicted by the registry's size limit is a 404 naming its id, by id and in a composition.
TEST(Server, EvictedChunkIdsAre404s) {
  Config config = test_config();
  config.chunk_registry_size = 1;  // registering a second chunk evicts the first (idle) one
  Running srv(config);
  Reply a = srv.post("/v1/chunks", json{{"kind", "system"}, {"text", "First system prompt."}});
  ASSERT_EQ(a.status, 200) << a.body.dump();
  const std::string first = a.body["id"];
  Reply b = srv.post("/v1/chunks", json{{"kind", "system"}, {"text", "Second system prompt."}});
  ASSERT_EQ(b.status, 200) << b.body.dump();
  EXPECT_TRUE(srv.wait_metric("cascade_chunk_evictions_total", 1));  // metrics are published after the step
  Reply g = srv.get("/v1/chunks/" + first);
  expect_error_shape(g, 404, "not_found_error");
  EXPECT_NE(g.body["error"]["message"].get<std::string>().find(first), std::string::npos);
  json composed{{"segments", json::array({{{"kind", "system"}, {"chunk_id", first}},
                                          {{"kind", "query"}, {"text", "Hello?"}}})},
                {"max_tokens", 2}};
  Reply c = srv.post("/v1/completions", composed);
  expect_error_shape(c, 404, "not_found_error");
  EXPECT_NE(c.body["error"]["message"].get<std::string>().find(first), std::string::npos);
  EXPECT_EQ(srv.get("/v1/chunks/" + b.body["id"].get<std::string>()).status, 200);
}

TEST(Server, DeletingAChunkInUseIsAConflict) {
  Config config = test_config();
  config.max_model_len = 4096;
  // Room for a held stream's whole context (4096 positions): with test_config's 2048 tokens of
  // KV the engine ends a 4000-token stream itself ("out of KV memory") after a few seconds,
  // which a loaded machine can reach before the test releases it.
  config.kv_cache_bytes = 16u << 20;
  Running srv(config);
  Reply reg = srv.post("/v1/chunks", json{{"kind", "system"}, {"text", "System prompt held by a stream."}});
  ASSERT_EQ(reg.status, 200);
  const std::string id = reg.body["id"];
  std::atomic<bool> streaming{false}, release{false};
  std::thread t([&] {
    post_completion_receiving(srv,
                              json{{"segments", json::array({{{"kind", "system"}, {"chunk_id", id}},
                                                            {{"kind", "query"}, {"text", "go"}}})},
                                   {"max_tokens", 4000}, {"ignore_eos", true}, {"stream", true}},
                              [&](const char*, std::size_t) {
                                streaming = true;
                                return !release.load();
                              });
  });
  while (!streaming) std::this_thread::sleep_for(5ms);
  expect_error_shape(srv.del("/v1/chunks/" + id), 409, "conflict_error");
  release = true;
  t.join();
  ASSERT_TRUE(srv.wait_metric("cascade_running_sequences", 0));
  EXPECT_EQ(srv.del("/v1/chunks/" + id).status, 200);
}

TEST(Server, BadInputsAreOpenAIErrorsNeverCrashes) {
  ServerOptions opts;
  opts.max_body_bytes = 64 << 10;
  Running srv(test_config(), opts);
  const std::string name = srv.server().model_name();
  auto bad = [&](const std::string& body, const std::string& param = "") {
    Reply r = srv.post_raw("/v1/completions", body);
    expect_error_shape(r, 400, "invalid_request_error");
    if (!param.empty()) {
      EXPECT_EQ(r.body["error"]["param"], param) << body;
    }
    return r;
  };
  bad("{\"prompt\": \"hi\", ");                                         // malformed JSON
  bad("[1, 2, 3]");                                                     // not an object
  bad(R"({"prompt": "hi", "max_tokens": "ten"})", "max_tokens");        // wrong type
  bad(R"({"prompt": "hi", "max_tokens": 2.5})", "max_tokens");
  bad(R"({"prompt": "hi", "max_tokens": 0})", "max_tokens");            // out of range
  bad(R"({"prompt": "hi", "max_tokens": 513})", "max_tokens");
  bad(R"({"prompt": "hi", "max_tokens": 99999999999999999999})", "max_tokens");
  bad(R"({"prompt": "hi", "temperature": -1})");
  bad(R"({"prompt": "hi", "top_p": 0})");
  bad(R"({"prompt": "hi", "stream": "yes"})", "stream");
  bad(R"({"prompt": 5})", "prompt");
  bad(R"({"prompt": ""})", "prompt");
  bad(R"({"prompt": [1, 300]})", "prompt");                             // outside the vocabulary
  bad(R"({"prompt": ["a", "b"]})", "prompt");                           // batches unsupported
  bad(R"({"max_tokens": 3})", "prompt");                                // no prompt
  bad(R"({"prompt": "hi", "n": 0})", "n");
  bad(R"({"segments": [{"kind": "nope", "text": "x"}]})", "segments");
  Reply tl = bad(json{{"prompt", std::string(600, 'x')}}.dump(), "prompt");  // over the context
  EXPECT_EQ(tl.body["error"]["code"], "context_length_exceeded");
  Reply sum = bad(json{{"prompt", std::string(500, 'x')}, {"max_tokens", 100}}.dump(), "max_tokens");
  EXPECT_EQ(sum.body["error"]["code"], "context_length_exceeded");
  Reply utf = bad(std::string("{\"prompt\": \"bad \xff\xfe bytes\"}"));  // invalid UTF-8
  EXPECT_EQ(utf.body["error"]["code"], "invalid_utf8");
  // Chat.
  expect_error_shape(srv.post("/v1/chat/completions", R"({"messages": []})"), 400, "invalid_request_error");
  expect_error_shape(srv.post("/v1/chat/completions", R"({"messages": [{"role": "wizard", "content": "x"}]})"), 400,
                     "invalid_request_error");
  expect_error_shape(srv.post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": 3}]})"), 400,
                     "invalid_request_error");
  // Unknown model, route, chunk kind; body over the limit.
  expect_error_shape(srv.post("/v1/completions", R"({"model": "gpt-9", "prompt": "hi"})"), 404, "not_found_error");
  expect_error_shape(srv.post("/v1/nothing", "{}"), 404, "not_found_error");
  expect_error_shape(srv.post("/v1/chunks", R"({"kind": "poem", "text": "x"})"), 400, "invalid_request_error");
  expect_error_shape(srv.post("/v1/chunks", R"({"text": "x", "metadata": {"a": 1}})"), 400, "invalid_request_error");
  Reply big = srv.post("/v1/completions", json{{"prompt", std::string(100 << 10, 'x')}}.dump());
  expect_error_shape(big, 413, "invalid_request_error");
  // Unknown fields are ignored, as the OpenAI API does.
  Reply ok = srv.post("/v1/completions", json{{"model", name}, {"prompt", "hi"}, {"max_tokens", 2},
                                              {"user", "me"}, {"frequency_penalty", 0}, {"whatever", {1, 2}}});
  EXPECT_EQ(ok.status, 200) << ok.body.dump();
  // Still serving after all that.
  EXPECT_EQ(srv.get("/health").status, 200);
  // The last request's reply can reach the client before the step that finished it publishes
  // its metrics (as at the eviction check above), so wait for the count to settle at 0.
  EXPECT_TRUE(srv.wait_metric("cascade_running_sequences", 0)) << srv.metric("cascade_running_sequences");
}

TEST(Server, ApiKeyGuardsEverythingButHealth) {
  ServerOptions opts;
  opts.api_key = "sekrit";
  Running srv(test_config(), opts);
  expect_error_shape(srv.get("/v1/models"), 401, "authentication_error");
  expect_error_shape(srv.get("/v1/models", {{"Authorization", "Bearer wrong"}}), 401, "authentication_error");
  expect_error_shape(srv.get("/metrics"), 401, "authentication_error");
  expect_error_shape(srv.post("/v1/completions", R"({"prompt": "hi"})"), 401, "authentication_error");
  Reply ok = srv.get("/v1/models", {{"Authorization", "Bearer sekrit"}});
  ASSERT_EQ(ok.status, 200);
  EXPECT_EQ(ok.body["data"][0]["id"], srv.server().model_name());
  EXPECT_EQ(srv.get("/health").status, 200);
}

TEST(Server, ClientDisconnectCancelsAndFreesPages) {
  for (bool cache : {false, true}) {
    Config config = test_config();
    config.max_model_len = 4096;
    config.enable_prefix_cache = cache;
    Running srv(config);
    double used_mid = 0;
    int seen = 0;
    // On the 5th event, while the client still holds the stream (so the sequence runs), the pages
    // in use, read from the same snapshot that shows the sequence running (that snapshot may
    // trail the event); then hang up. (A probe thread racing the hang-up missed the sequence
    // about 2% of the time on a loaded machine.)
    post_completion_receiving(srv,
                              json{{"prompt", "a long story"}, {"max_tokens", 4000}, {"ignore_eos", true},
                                   {"stream", true}},
                              [&](const char*, std::size_t) {
      if (++seen < 5) return true;
      const auto end = std::chrono::steady_clock::now() + 10s;
      while (std::chrono::steady_clock::now() < end) {
        const auto m = srv.metrics();
        const auto running = m.find("cascade_running_sequences"), pages = m.find("cascade_kv_pages_used");
        if (running != m.end() && pages != m.end() && running->second > 0) {
          used_mid = pages->second;
          break;
        }
        std::this_thread::sleep_for(1ms);
      }
      return false;  // hang up
    });
    EXPECT_GT(used_mid, 0) << "cache=" << cache;
    EXPECT_TRUE(srv.wait_metric("cascade_requests_cancelled_total", 1)) << "cache=" << cache;
    EXPECT_TRUE(srv.wait_metric("cascade_running_sequences", 0));
    EXPECT_LT(srv.metric("cascade_generation_tokens_total"), 4000);
    // With caching on, idle cached chunks keep their pages until dropped: drop them, then nothing is left.
    if (cache) {
      EXPECT_EQ(srv.del("/v1/chunks").status, 200);
    }
    EXPECT_TRUE(srv.wait_metric("cascade_kv_pages_used", 0)) << "cache=" << cache;
  }
}

// A non-streamed call whose client goes away is cancelled too: past keep_alive_ms the answer goes
// out as a chunked body whose probing spaces find the closed connection. (The client here hangs
// up on the first space it receives.)
TEST(Server, NonStreamedClientDisconnectCancels) {
  Config config = test_config();
  config.max_model_len = 4096;
  config.enable_prefix_cache = false;
  ServerOptions opts;
  opts.keep_alive_ms = 100;
  Running srv(config, opts);
  {
    std::string got;
    post_completion_receiving(srv, json{{"prompt", "a long story"}, {"max_tokens", 4000}, {"ignore_eos", true}},
                              [&](const char* data, std::size_t n) {
                                got.append(data, n);
                                return false;  // hang up
                              });
    EXPECT_EQ(got.find_first_not_of(' '), std::string::npos) << "only probing spaces before the hang-up: " << got;
  }
  EXPECT_TRUE(srv.wait_metric("cascade_requests_cancelled_total", 1));
  EXPECT_TRUE(srv.wait_metric("cascade_running_sequences", 0));
  EXPECT_LT(srv.metric("cascade_generation_tokens_total"), 4000);
  EXPECT_TRUE(srv.wait_metric("cascade_kv_pages_used", 0));
}

// A non-streamed call that outlives keep_alive_ms still returns the same completion, as one JSON
// document (with insignificant leading spaces), equal to a call answered whole.
TEST(Server, LongNonStreamedAnswerIsTheSameDocument) {
  Config config = test_config();
  config.max_model_len = 4096;
  ServerOptions slow_probe, fast_probe;
  fast_probe.keep_alive_ms = 1;
  Running whole(config, slow_probe), chunked(config, fast_probe);
  const json body = {{"prompt", "tell me"}, {"max_tokens", 200}, {"ignore_eos", true}, {"temperature", 0}};
  const Reply a = whole.post("/v1/completions", body);
  const Reply b = chunked.post("/v1/completions", body);
  ASSERT_EQ(a.status, 200);
  ASSERT_EQ(b.status, 200);
  EXPECT_EQ(a.body["choices"][0]["text"], b.body["choices"][0]["text"]);
  EXPECT_EQ(b.body["usage"]["completion_tokens"], 200);
  EXPECT_EQ(b.body["object"], "text_completion");
}

// Every generation call holds an HTTP thread; once all but the reserved few are busy, further
// calls are refused at once with a 429 and /health still answers.
TEST(Server, BusyHttpThreadsGiveA429AndHealthStillAnswers) {
  Config config = test_config();
  config.max_model_len = 4096;
  // Room for both held streams' whole contexts (see DeletingAChunkInUseIsAConflict).
  config.kv_cache_bytes = 32u << 20;
  ServerOptions opts;
  opts.http_threads = 4;  // 2 reserved, 2 for generation calls
  Running srv(config, opts);
  std::atomic<bool> release{false};
  std::thread a([&] { hold_stream(srv, release); }), b([&] { hold_stream(srv, release); });
  const auto end = std::chrono::steady_clock::now() + 15s;
  while (srv.metric("cascade_running_sequences") < 2 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(2ms);
  }
  Reply r = srv.post("/v1/completions", json{{"prompt", "third"}, {"max_tokens", 2}});
  expect_error_shape(r, 429, "rate_limit_error");
  EXPECT_EQ(r.body["error"]["code"], "too_many_connections");
  EXPECT_EQ(srv.get("/health").status, 200);
  release = true;
  a.join();
  b.join();
  ASSERT_TRUE(srv.wait_metric("cascade_running_sequences", 0));
  EXPECT_EQ(srv.post("/v1/completions", json{{"prompt", "fourth"}, {"max_tokens", 2}}).status, 200);
}

TEST(Server, FullQueueIsA429) {
  Config config = test_config();
  config.max_model_len = 4096;
  config.max_num_seqs = 1;
  config.kv_cache_bytes = 16u << 20;  // the held stream's whole context (see DeletingAChunkInUseIsAConflict)
  ServerOptions opts;
  opts.max_queue = 1;  // one running + one waiting
  Running srv(config, opts);
  std::atomic<bool> release{false};
  std::thread a([&] { hold_stream(srv, release); }), b([&] { hold_stream(srv, release); });
  const auto end = std::chrono::steady_clock::now() + 15s;
  while (!(srv.metric("cascade_running_sequences") == 1 && srv.metric("cascade_queue_depth") == 1) &&
         std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(2ms);
  }
  Reply r = srv.post("/v1/completions", json{{"prompt", "third"}, {"max_tokens", 2}});
  expect_error_shape(r, 429, "rate_limit_error");
  EXPECT_EQ(r.body["error"]["code"], "queue_full");
  release = true;
  a.join();
  b.join();
  ASSERT_TRUE(srv.wait_metric("cascade_running_sequences", 0));
  ASSERT_TRUE(srv.wait_metric("cascade_queue_depth", 0));
  EXPECT_EQ(srv.post("/v1/completions", json{{"prompt", "fourth"}, {"max_tokens", 2}}).status, 200);
}

TEST(Server, MetricsAreInPrometheusFormat) {
  Running srv;
  ASSERT_EQ(srv.post("/v1/completions", json{{"prompt", "hi"}, {"max_tokens", 3}, {"ignore_eos", true}}).status, 200);
  // Responses are counted once written, which may be just after the client has read them.
  const auto end = std::chrono::steady_clock::now() + 10s;
  std::string t;
  do {
    auto c = srv.client();
    auto r = c.Get("/metrics");
    ASSERT_TRUE(r);
    t = r->body;
  } while (t.find("cascade_requests_total{status=\"200\"} 1") == std::string::npos &&
           std::chrono::steady_clock::now() < end);
  EXPECT_NE(t.find("# TYPE cascade_requests_total counter"), std::string::npos);
  EXPECT_NE(t.find("cascade_requests_total{status=\"200\"} 1"), std::string::npos);
  EXPECT_EQ(srv.metric("cascade_prompt_tokens_total"), 2);
  EXPECT_EQ(srv.metric("cascade_generation_tokens_total"), 3);
  EXPECT_EQ(srv.metric("cascade_time_to_first_token_seconds_count"), 1);
  EXPECT_EQ(srv.metric("cascade_time_per_output_token_seconds_count"), 2);
  EXPECT_NE(t.find("cascade_time_to_first_token_seconds_bucket{le=\"+Inf\"} 1"), std::string::npos);
  EXPECT_GT(srv.metric("cascade_kv_pages_free"), 0);
}

// What a call to the engine thread changed is in the published stats by the time the call returns:
// a client that reads /metrics after an answer (DELETE /v1/chunks, then pages used) never sees the
// state from before it. Each registration here counts one chunk miss.
TEST(EngineLoop, ACallsEffectIsPublishedBeforeItReturns) {
  EngineLoop loop(test_config(), 4, nullptr);
  loop.start();
  const int vocab = loop.vocab_size();
  for (int i = 0; i < 3000; ++i) {
    loop.call([i, vocab](Engine& e) {
      return e.register_chunk(ChunkKind::kContext, {i % vocab, i / vocab}, {});
    });
    ASSERT_EQ(loop.snapshot().stats.chunk_misses, static_cast<std::uint64_t>(i + 1)) << "after call " << i;
  }
  loop.call([](Engine& e) { return e.clear_chunks(std::nullopt); });
  EXPECT_EQ(loop.snapshot().stats.pages_used, 0);
}

// stop() right after start() returns: httplib's stop() does nothing until its listen loop runs, so
// start() waits for that (before, the second or first cycle hung in stop() forever).
TEST(Server, StopRightAfterStartReturns) {
  for (int i = 0; i < 20; ++i) {
    ServerOptions opts;
    opts.port = 0;
    Server server(test_config(), opts);
    ASSERT_GT(server.start(), 0);
    server.stop();
  }
}

}  // namespace
}  // namespace cascade

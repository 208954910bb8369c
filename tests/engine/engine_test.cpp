// End-to-end engine behaviour on the CPU: caching and cascade never change outputs; preemption and
// cancellation lose nothing; every user-facing error is reachable.
#include <gtest/gtest.h>

#include <bit>
#include <filesystem>
#include <fstream>
#include <map>
#include <unistd.h>
#include <random>

#include "cascade/llm.h"
#include "common/tiny_model.h"
#include "core/error.h"
#include "engine/engine.h"
#include "model/weights.h"

namespace cascade {
namespace {

namespace fs = std::filesystem;

// A small random Qwen3 saved as a Hugging Face folder (no tokenizer: requests use ids).
fs::path make_model_dir() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("cascade_engine_test_" + std::to_string(::getpid()));
    fs::create_directories(d);
    const ModelConfig c = test::tiny_qwen3_config();
    std::ofstream(d / "config.json") << model_config_to_json(c);
    save_qwen3_weights(d, c, random_qwen3_weights(c, 7), "F32");
    return d;
  }();
  return dir;
}

Config base_config() {
  Config cfg;
  cfg.model_dir = make_model_dir().string();
  cfg.device = Device::kCpu;
  cfg.kv_cache_bytes = 4 << 20;
  cfg.page_size = 16;
  return cfg;
}

std::vector<std::int32_t> random_ids(std::mt19937& rng, int n) {
  std::uniform_int_distribution<int> d(0, 298);
  std::vector<std::int32_t> ids(n);
  for (auto& x : ids) x = d(rng);
  return ids;
}

Segment seg(ChunkKind kind, std::vector<std::int32_t> ids) {
  Segment s;
  s.kind = kind;
  s.ids = std::move(ids);
  return s;
}

// Random compositions: a few systems, a few documents, many queries; each request picks one system,
// 0-2 documents and its own query. Some requests are plain prompts that share a prefix.
std::vector<Request> random_workload(std::uint32_t seed, int n, float temperature) {
  std::mt19937 rng(seed);
  std::vector<std::vector<std::int32_t>> systems, docs;
  for (int i = 0; i < 2; ++i) systems.push_back(random_ids(rng, 5 + rng() % 40));
  for (int i = 0; i < 4; ++i) docs.push_back(random_ids(rng, 3 + rng() % 60));
  std::vector<Request> reqs;
  for (int i = 0; i < n; ++i) {
    Request r;
    r.sampling.temperature = temperature;
    r.sampling.seed = 1000 + i;
    r.sampling.max_tokens = 1 + rng() % 12;
    r.sampling.ignore_eos = true;
    r.sampling.logprobs = true;
    if (rng() % 5 == 0) {
      auto ids = systems[rng() % systems.size()];
      auto tail = random_ids(rng, 1 + rng() % 30);
      ids.insert(ids.end(), tail.begin(), tail.end());
      r.segments.push_back(seg(ChunkKind::kAuto, ids));
    } else {
      r.segments.push_back(seg(ChunkKind::kSystem, systems[rng() % systems.size()]));
      const int nd = rng() % 3;
      for (int d = 0; d < nd; ++d) r.segments.push_back(seg(ChunkKind::kContext, docs[rng() % docs.size()]));
      r.segments.push_back(seg(ChunkKind::kQuery, random_ids(rng, 1 + rng() % 8)));
    }
    reqs.push_back(std::move(r));
  }
  return reqs;
}

std::vector<RequestOutput> run(Config cfg, const std::vector<Request>& reqs) {
  LLM llm(cfg);
  auto outs = llm.generate(reqs);
  for (const auto& o : outs) EXPECT_EQ(o.error, "");
  return outs;
}

TEST(Engine, CacheIsBitExactAgainstNoCache) {
  for (std::uint32_t seed : {1u, 2u, 3u}) {
    for (float temperature : {0.0f, 0.8f}) {
      const auto reqs = random_workload(seed, 24, temperature);
      Config cached = base_config();
      cached.cascade_mode = CascadeMode::kOff;
      Config plain = base_config();
      plain.enable_prefix_cache = false;
      const auto a = run(cached, reqs);
      const auto b = run(plain, reqs);
      ASSERT_EQ(a.size(), b.size());
      for (std::size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].token_ids, b[i].token_ids) << "request " << i;
        ASSERT_EQ(a[i].token_logprobs.size(), b[i].token_logprobs.size());
        for (std::size_t k = 0; k < a[i].token_logprobs.size(); ++k) {
          // Bit for bit: same float, not merely close.
          EXPECT_EQ(std::bit_cast<std::uint32_t>(a[i].token_logprobs[k]),
                    std::bit_cast<std::uint32_t>(b[i].token_logprobs[k]))
              << "request " << i << " token " << k;
        }
      }
    }
  }
}

TEST(Engine, SharingReducesStoredKv) {
  const auto reqs = random_workload(5, 24, 0.0f);
  LLM cached(base_config());
  cached.generate(reqs);
  Config pc = base_config();
  pc.enable_prefix_cache = false;
  LLM plain(pc);
  plain.generate(reqs);
  const EngineStats a = cached.stats(), b = plain.stats();
  EXPECT_EQ(a.kv_tokens_logical, b.kv_tokens_logical);
  EXPECT_EQ(b.kv_tokens_stored, b.kv_tokens_logical);
  EXPECT_LT(a.kv_tokens_stored, b.kv_tokens_stored);
  EXPECT_GT(a.chunk_hits, 0u);
}

TEST(Engine, CascadeOnAndOffGiveTheSameGreedyTokens) {
  const auto reqs = random_workload(11, 32, 0.0f);
  Config on = base_config();
  on.cascade_mode = CascadeMode::kOn;
  Config off = base_config();
  off.cascade_mode = CascadeMode::kOff;
  LLM a(on), b(off);
  const auto oa = a.generate(reqs), ob = b.generate(reqs);
  for (std::size_t i = 0; i < oa.size(); ++i) EXPECT_EQ(oa[i].token_ids, ob[i].token_ids) << "request " << i;
  EXPECT_GT(a.stats().cascade_steps, 0);
  EXPECT_EQ(b.stats().cascade_steps, 0);
  EXPECT_GE(a.stats().max_levels_used, 2);
}

TEST(Engine, PreemptedRequestsProduceTheSameTokens) {
  const auto reqs = random_workload(21, 24, 0.7f);
  Config roomy = base_config();
  Config tight = base_config();
  // A small pool forces preemption of the newest sequences while others decode.
  // 512 KV bytes per token (2 layers x 2 KV heads x 16 dims x K,V x fp32): 8 KiB pages. 24 pages
  // hold any one request but not the batch, so decoding sequences run out and get preempted.
  tight.kv_cache_bytes = 24 * 8192;
  tight.max_num_batched_tokens = 64;
  LLM a(roomy), b(tight);
  const auto oa = a.generate(reqs), ob = b.generate(reqs);
  for (std::size_t i = 0; i < oa.size(); ++i) {
    EXPECT_EQ(ob[i].error, "");
    EXPECT_EQ(oa[i].token_ids, ob[i].token_ids) << "request " << i;
  }
  EXPECT_GT(b.stats().preemptions, 0) << "the tight pool should have preempted";
}

TEST(Engine, NoPageLeakUnderRandomCancellation) {
  Config cfg = base_config();
  cfg.kv_cache_bytes = 64 * 1024 * 8;
  cfg.max_num_batched_tokens = 48;
  Engine engine(cfg);
  std::mt19937 rng(99);
  auto reqs = random_workload(31, 300, 0.9f);
  std::vector<std::uint64_t> live;
  std::size_t next = 0;
  int steps = 0;
  while (next < reqs.size() || engine.has_unfinished()) {
    while (next < reqs.size() && rng() % 3 != 0) live.push_back(engine.add_request(reqs[next++]));
    if (!live.empty() && rng() % 4 == 0) engine.abort_request(live[rng() % live.size()]);
    for (const StepUpdate& u : engine.step()) {
      if (u.finished) engine.take_output(u.request_id);
    }
    for (auto id : live) engine.take_output(id);
    ASSERT_LT(++steps, 100000);
  }
  const EngineStats s = engine.stats();
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.waiting, 0);
  // Only cached chunks hold pages now; dropping them returns every page.
  engine.clear_chunks(std::nullopt);
  EXPECT_EQ(engine.stats().pages_used, 0);
}

// Requests without logprobs (greedy, or a share sampled), as overlap_scheduling runs them: stops
// by token id make some end early (one row computed past their stop), the rest run to max_tokens.
std::vector<Request> decode_workload(std::uint32_t seed, int n, float sampled_share) {
  auto reqs = random_workload(seed, n, 0.0f);
  std::mt19937 rng(seed);
  for (Request& r : reqs) {
    r.sampling.logprobs = false;
    r.sampling.ignore_eos = false;
    r.sampling.max_tokens = 1 + rng() % 40;
    r.sampling.stop_token_ids = {3, 17, 42, 77, 101, 150, 200, 251};
    if (std::uniform_real_distribution<float>(0, 1)(rng) < sampled_share) r.sampling.temperature = 0.8f;
  }
  return reqs;
}

TEST(Engine, OverlapSchedulingGivesTheSameTokens) {
  struct Case {
    const char* name;
    float sampled_share;
    std::size_t kv_bytes;
    int max_num_seqs;
  };
  // Roomy; some or all requests sampled (the CPU runner feeds drawn tokens too, the CUDA runner
  // only greedy ids); a pool that forces preemption; fewer slots than requests (admission between
  // overlapped runs).
  const Case cases[] = {{"greedy", 0.0f, 4u << 20, 256},
                        {"some sampled", 0.2f, 4u << 20, 256},
                        {"all sampled", 1.0f, 4u << 20, 256},
                        {"tight pool", 0.0f, 24 * 8192, 256},
                        {"few slots", 0.0f, 4u << 20, 5}};
  for (const Case& k : cases) {
    const auto reqs = decode_workload(41, 24, k.sampled_share);
    Config on = base_config();
    on.kv_cache_bytes = k.kv_bytes;
    on.max_num_seqs = k.max_num_seqs;
    on.max_num_batched_tokens = 64;
    Config off = on;
    off.overlap_scheduling = false;
    LLM a(on), b(off);
    const auto oa = a.generate(reqs), ob = b.generate(reqs);
    int stopped = 0;
    for (std::size_t i = 0; i < oa.size(); ++i) {
      EXPECT_EQ(oa[i].error, "") << k.name;
      EXPECT_EQ(oa[i].token_ids, ob[i].token_ids) << k.name << " request " << i;
      EXPECT_EQ(oa[i].finish_reason, ob[i].finish_reason) << k.name << " request " << i;
      stopped += oa[i].finish_reason == FinishReason::kStop;
    }
    EXPECT_GT(stopped, 0) << k.name << ": no request stopped early";
    const EngineStats sa = a.stats(), sb = b.stats();
    EXPECT_GT(sa.overlapped_steps, 0) << k.name;
    EXPECT_EQ(sb.overlapped_steps, 0) << k.name;
    // The same KV accounts: a row computed past a stop is not counted as held, nor as a decode
    // token (the tight pool preempts at other steps, so there its recomputation differs).
    EXPECT_EQ(sa.kv_tokens_logical, sb.kv_tokens_logical) << k.name;
    if (std::string(k.name) != "tight pool") EXPECT_EQ(sa.decode_tokens, sb.decode_tokens) << k.name;
    if (std::string(k.name) == "tight pool") EXPECT_GT(sa.preemptions, 0);
    // With the batch full, requests waiting for a slot do not stop the overlap.
    if (std::string(k.name) == "few slots") EXPECT_GT(2 * sa.overlapped_steps, sa.steps) << sa.overlapped_steps;
    a.clear_chunks(std::nullopt);
    b.clear_chunks(std::nullopt);
    EXPECT_EQ(a.stats().pages_used, 0) << k.name;
    EXPECT_EQ(b.stats().pages_used, 0) << k.name;
  }
}

// Cancellation while a step's tokens are still being drawn: the aborted sequence's row is dropped,
// nothing leaks, and the survivors' tokens are those of a run without overlap.
TEST(Engine, OverlapSchedulingSurvivesCancellation) {
  for (std::uint32_t seed : {51u, 52u}) {
    Config on = base_config();
    on.max_num_batched_tokens = 48;
    Config off = on;
    off.overlap_scheduling = false;
    auto reqs = decode_workload(seed, 40, 0.0f);
    LLM ref(off);
    const auto want = ref.generate(reqs);
    Engine engine(on);
    std::mt19937 rng(seed);
    std::vector<std::uint64_t> ids;
    for (const Request& r : reqs) ids.push_back(engine.add_request(r));
    std::vector<bool> aborted(reqs.size(), false);
    std::map<std::uint64_t, RequestOutput> outs;
    int steps = 0;
    while (engine.has_unfinished()) {
      if (rng() % 5 == 0) {
        const std::size_t i = rng() % ids.size();
        aborted[i] = aborted[i] || !outs.count(ids[i]);
        engine.abort_request(ids[i]);
      }
      for (const StepUpdate& u : engine.step()) {
        if (u.finished) outs[u.request_id] = *engine.take_output(u.request_id);
      }
      ASSERT_LT(++steps, 100000);
    }
    EXPECT_GT(engine.stats().overlapped_steps, 0);
    int compared = 0;
    for (std::size_t i = 0; i < reqs.size(); ++i) {
      if (aborted[i]) continue;
      ASSERT_TRUE(outs.count(ids[i])) << "request " << i;
      EXPECT_EQ(outs[ids[i]].token_ids, want[i].token_ids) << "request " << i;
      ++compared;
    }
    EXPECT_GT(compared, 0);
    engine.clear_chunks(std::nullopt);
    EXPECT_EQ(engine.stats().pages_used, 0);
  }
}

TEST(Engine, ErrorsAreReachable) {
  LLM llm(base_config());
  Request r;
  r.sampling.max_tokens = 4;
  Segment s;
  s.kind = ChunkKind::kSystem;
  s.chunk_id = std::string(64, 'a');
  r.segments.push_back(s);
  try {
    llm.engine().add_request(r);
    FAIL() << "unknown chunk id accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_NE(std::string(e.what()).find(std::string(64, 'a')), std::string::npos);
  }
  // Too long for the model.
  Request longr;
  longr.segments.push_back(seg(ChunkKind::kAuto, std::vector<std::int32_t>(5000, 1)));
  try {
    llm.engine().add_request(longr);
    FAIL() << "over-long prompt accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  }
  // Does not fit the KV cache at all.
  Config small = base_config();
  small.kv_cache_bytes = 64 * 1024;
  small.max_model_len = 2048;
  LLM tiny(small);
  Request big;
  big.segments.push_back(seg(ChunkKind::kAuto, std::vector<std::int32_t>(1500, 1)));
  try {
    tiny.engine().add_request(big);
    FAIL() << "request larger than the KV cache accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kOutOfMemory);
  }
  // A chunk in use cannot be deleted; an evicted chunk is reported as evicted.
  Config one = base_config();
  one.chunk_registry_size = 2;
  LLM reg(one);
  const std::string id = reg.register_chunk(ChunkKind::kContext, {1, 2, 3});
  reg.register_chunk(ChunkKind::kContext, {4, 5, 6});
  reg.register_chunk(ChunkKind::kContext, {7, 8, 9});  // evicts the least recently used: `id`
  try {
    reg.get_chunk(id);
    FAIL() << "evicted chunk still listed";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kEvicted);
  }
}

TEST(Engine, ChunkApiComposesRegisteredChunks) {
  LLM llm(base_config());
  const std::string sys = llm.register_chunk(ChunkKind::kSystem, {10, 11, 12, 13, 14}, {{"name", "sys"}});
  const std::string doc = llm.register_chunk(ChunkKind::kContext, {20, 21, 22});
  auto info = llm.get_chunk(sys);
  EXPECT_EQ(info.metadata.at("name"), "sys");
  EXPECT_EQ(info.num_tokens, 5);
  std::vector<Request> reqs;
  for (int q = 0; q < 3; ++q) {
    Request r;
    r.sampling.temperature = 0;
    r.sampling.max_tokens = 3;
    Segment a, b;
    a.kind = ChunkKind::kSystem;
    a.chunk_id = sys;
    b.kind = ChunkKind::kContext;
    b.chunk_id = doc;
    r.segments = {a, b, seg(ChunkKind::kQuery, {30 + q})};
    reqs.push_back(r);
  }
  // Same prompts spelled out as ids give the same tokens.
  std::vector<Request> spelled = reqs;
  for (auto& r : spelled) {
    r.segments[0] = seg(ChunkKind::kSystem, {10, 11, 12, 13, 14});
    r.segments[1] = seg(ChunkKind::kContext, {20, 21, 22});
  }
  const auto a = llm.generate(reqs);
  Config pc = base_config();
  pc.enable_prefix_cache = false;
  LLM plain(pc);
  const auto b = plain.generate(spelled);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(a[i].token_ids, b[i].token_ids);
  const auto pv = llm.preview(reqs[0]);
  EXPECT_EQ(pv.chunk_ids.size(), 3u);
  EXPECT_EQ(pv.chunk_ids[0], sys);  // a system chunk has no parent: its chain id is its registered id
  EXPECT_TRUE(pv.chunk_cached[0]);
  EXPECT_EQ(pv.num_cached_tokens + pv.num_new_tokens, 9);
  // Deleting while idle works; the id is then unknown or evicted.
  llm.delete_chunk(doc);
  EXPECT_THROW(llm.get_chunk(doc), Error);
}

}  // namespace
}  // namespace cascade

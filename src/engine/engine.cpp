#include "engine/engine.h"

#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_runner.h"
#include "core/error.h"
#include "core/logging.h"
#include "engine/default_model.h"
#include "engine/sampler.h"

namespace cascade {
namespace {

// Requests waiting longer than this many steps are admitted before ones that share chunks with the
// running batch, so preferring sharers never starves the rest.
constexpr std::int64_t kMaxWaitSteps = 64;

std::string hex(const ChunkId& id) { return chunk_id_to_hex(id); }

}  // namespace

Engine::Engine(const Config& config) : config_(config) {
  if (config_.page_size < 1 || config_.page_size > 1024) {
    throw_error(ErrorCode::kInvalidArgument, "page_size must be in [1, 1024], got {}", config_.page_size);
  }
  if (!(config_.chunk_page_ratio >= 0.0 && config_.chunk_page_ratio <= 1.0)) {
    throw_error(ErrorCode::kInvalidArgument, "chunk_page_ratio must be in [0, 1], got {}",
                config_.chunk_page_ratio);
  }
  if (config_.max_cascade_levels < 1) {
    throw_error(ErrorCode::kInvalidArgument, "max_cascade_levels must be >= 1, got {}",
                config_.max_cascade_levels);
  }
  if (config_.max_num_seqs < 1 || config_.max_num_batched_tokens < 1) {
    throw_error(ErrorCode::kInvalidArgument, "max_num_seqs and max_num_batched_tokens must be >= 1");
  }
  LoadedModel model = load_model_or_default(config_);
  model_config_ = model.config;
  weights_ = std::move(model.weights);
  tokenizer_ = std::move(model.tokenizer);
  eos_ids_ = model_config_.eos_token_ids;

  max_model_len_ = config_.max_model_len > 0 ? config_.max_model_len : model_config_.max_position_embeddings;
  if (max_model_len_ <= 0) max_model_len_ = 32768;

  KvLayout probe;
  probe.num_layers = model_config_.num_hidden_layers;
  probe.num_kv_heads = model_config_.num_key_value_heads;
  probe.head_dim = model_config_.head_dim;
  probe.page_size = config_.page_size;
  const Device device = resolve_device(config_.device, model_config_);
  const bool use_cuda = device == Device::kCuda;
  const int elem_bytes = use_cuda ? 2 : 4;
  const std::int64_t page_bytes = probe.token_bytes(elem_bytes) * config_.page_size;
  const int num_pages = static_cast<int>(std::min<std::int64_t>(
      static_cast<std::int64_t>(config_.kv_cache_bytes) / page_bytes, 1 << 24));
  if (num_pages < 2) {
    throw_error(ErrorCode::kInvalidArgument,
                "kv_cache_bytes {} holds fewer than 2 pages of {} bytes", config_.kv_cache_bytes, page_bytes);
  }
  runner_ = make_runner(device, model_config_, weights_, num_pages, config_.page_size);
  pages_ = std::make_unique<CascadePageManager>(num_pages, config_.enable_prefix_cache ? config_.chunk_page_ratio : 0.0);
  pages_->set_eviction_hook([this] { return evict_one_chunk(); });
  ChunkRegistryOptions ropts;
  ropts.capacity = config_.chunk_registry_size;
  ropts.bytes_per_token = probe.token_bytes(elem_bytes);
  ropts.page_size = config_.page_size;
  registry_ = std::make_unique<ChunkRegistry>(ropts);
  cascade_ = std::make_unique<CascadeScheduler>(cascade_scheduler_options(config_));
  stats_.pages_total = num_pages;
  stats_.kv_token_bytes = probe.token_bytes(elem_bytes);
  CASCADE_LOG_INFO("engine: device={} pages={} page_size={} layers={} hidden={}", runner_->device_name(),
                   num_pages, config_.page_size, model_config_.num_hidden_layers, model_config_.hidden_size);
}

Engine::~Engine() = default;

// ---- requests --------------------------------------------------------------------------------

std::vector<Engine::ResolvedPart> Engine::resolve(const Request& request) const {
  std::vector<ResolvedPart> out;
  for (const Segment& seg : request.segments) {
    ResolvedPart part{seg.kind, {}};
    int sources = (!seg.ids.empty() ? 1 : 0) + (seg.text ? 1 : 0) + (seg.chunk_id ? 1 : 0);
    if (sources > 1) {
      throw_error(ErrorCode::kInvalidArgument, "a segment takes one of ids, text or chunk_id, not several");
    }
    if (seg.chunk_id) {
      const ChunkId id = parse_chunk_id(*seg.chunk_id);  // throws kInvalidArgument
      const ContextChunk chunk = registry_->lookup(id);  // throws kNotFound / kEvicted
      part.kind = chunk.kind;
      part.ids = chunk.tokens;
    } else if (seg.text) {
      if (!tokenizer_) {
        throw_error(ErrorCode::kInvalidArgument,
                    "the model has no tokenizer.json, so segments must give token ids, not text");
      }
      part.ids = tokenizer_->encode(*seg.text);
    } else {
      part.ids = seg.ids;
    }
    for (std::int32_t t : part.ids) {
      if (t < 0 || t >= model_config_.vocab_size) {
        throw_error(ErrorCode::kInvalidArgument, "token id {} is outside the vocabulary [0, {})", t,
                    model_config_.vocab_size);
      }
    }
    if (!part.ids.empty()) out.push_back(std::move(part));
  }
  return out;
}

void Engine::build_parts(Sequence& seq, const std::vector<ResolvedPart>& resolved) const {
  seq.parts.clear();
  seq.own_start = 0;
  if (!config_.enable_prefix_cache) return;
  const ChunkId* parent = nullptr;
  ChunkId prev{};
  int pos = 0;
  const bool plain = resolved.size() == 1 && resolved[0].kind == ChunkKind::kAuto;
  for (const ResolvedPart& rp : resolved) {
    if (plain) {
      // Plain prompt: page-aligned `auto` blocks chained by content, the partial tail stays own.
      const int ps = config_.page_size;
      const int n_blocks = static_cast<int>(rp.ids.size()) / ps;
      for (int b = 0; b < n_blocks; ++b) {
        Part p;
        p.start = pos;
        p.len = ps;
        p.kind = ChunkKind::kAuto;
        p.id = compute_chunk_id(parent, ChunkKind::kAuto,
                                std::span<const std::int32_t>(rp.ids.data() + b * ps, ps));
        prev = p.id;
        parent = &prev;
        seq.parts.push_back(p);
        pos += ps;
      }
      seq.own_start = pos;
      return;
    }
    Part p;
    p.start = pos;
    p.len = static_cast<int>(rp.ids.size());
    p.kind = rp.kind;
    p.id = compute_chunk_id(parent, rp.kind, rp.ids);
    prev = p.id;
    parent = &prev;
    seq.parts.push_back(p);
    pos += p.len;
  }
  seq.own_start = pos;
}

std::uint64_t Engine::add_request(const Request& request) {
  validate_sampling_params(request.sampling);
  std::vector<ResolvedPart> resolved = resolve(request);
  auto seq = std::make_unique<Sequence>();
  for (const ResolvedPart& p : resolved) seq->prompt.insert(seq->prompt.end(), p.ids.begin(), p.ids.end());
  if (seq->prompt.empty()) throw_error(ErrorCode::kInvalidArgument, "the prompt is empty");
  if (static_cast<std::int64_t>(seq->prompt.size()) >= max_model_len_) {
    throw_error(ErrorCode::kInvalidArgument,
                "the prompt has {} tokens, more than the model's context of {} allows", seq->prompt.size(),
                max_model_len_);
  }
  // Generation itself stops at the context length (finish reason "length").
  seq->id = next_id_++;
  seq->sampling = request.sampling;
  seq->seed = request.sampling.seed ? *request.sampling.seed : (0x9E3779B97F4A7C15ull * seq->id);
  seq->arrival = clock_;
  if (tokenizer_) {
    seq->decoder = std::make_unique<StreamDecoder>(*tokenizer_, /*skip_special=*/true);
    seq->stop_matcher = std::make_unique<StopMatcher>(request.sampling.stop);
  } else if (!request.sampling.stop.empty()) {
    throw_error(ErrorCode::kInvalidArgument, "stop strings need a tokenizer; this model has none");
  }
  build_parts(*seq, resolved);
  // A request that could never fit is refused now rather than waiting forever: its chunks, plus
  // its own prompt tokens and the first generated token.
  int persistent = 0;
  for (const Part& p : seq->parts) persistent += pages_for_tokens(p.len, config_.page_size);
  const int own_prompt = static_cast<int>(seq->prompt.size()) - seq->own_start;
  const int dynamic = pages_for_tokens(own_prompt + 1, config_.page_size);
  if (!pages_->can_ever_fit(persistent, dynamic)) {
    throw_error(ErrorCode::kOutOfMemory,
                "the request needs {} chunk pages and {} sequence pages, more than the KV cache holds "
                "({} pages of {} tokens); raise kv_cache_bytes or shorten the prompt",
                persistent, dynamic, pages_->num_total_pages(), config_.page_size);
  }
  Sequence* raw = seq.get();
  seqs_.emplace(raw->id, std::move(seq));
  waiting_.push_back(raw);
  return raw->id;
}

void Engine::abort_request(std::uint64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end() || it->second->state == SeqState::kFinished) return;
  Sequence& seq = *it->second;
  std::vector<StepUpdate> ignored;
  finish(seq, FinishReason::kAbort, ignored);
}

std::optional<RequestOutput> Engine::take_output(std::uint64_t id) {
  auto it = finished_.find(id);
  if (it == finished_.end()) return std::nullopt;
  RequestOutput out = std::move(it->second);
  finished_.erase(it);
  seqs_.erase(id);
  return out;
}

// ---- pages and chunks ------------------------------------------------------------------------

bool Engine::evict_one_chunk() {
  auto evicted = registry_->evict_one();
  if (!evicted) return false;
  if (!evicted->pages.empty()) pages_->free_persistent(evicted->pages);
  return true;
}

void Engine::release_chunk(ContextChunk* chunk) {
  const std::vector<PageId> freed = registry_->release(chunk);
  if (!freed.empty()) pages_->free_persistent(freed);
}

bool Engine::admit(Sequence& seq) {
  // Acquire every chunk of the chain; misses get fresh persistent pages.
  std::vector<ContextChunk*> acquired;
  const ContextChunk* parent = nullptr;
  bool ok = true;
  for (Part& p : seq.parts) {
    std::span<const std::int32_t> toks(seq.prompt.data() + p.start, p.len);
    AcquireResult r = registry_->acquire(parent, p.kind, toks);
    if (!r.freed_pages.empty()) pages_->free_persistent(r.freed_pages);
    ContextChunk* c = r.chunk;
    acquired.push_back(c);
    if (c->pages.empty()) {
      auto pages = pages_->allocate_persistent(pages_for_tokens(p.len, config_.page_size));
      if (!pages) {
        ok = false;
        break;
      }
      registry_->assign_pages(c, std::move(*pages));
    }
    p.chunk = c;
    parent = c;
  }
  if (ok) ok = ensure_dyn_pages(seq, seq.total_len() - 1);
  if (!ok) {
    for (ContextChunk* c : acquired) release_chunk(c);
    for (Part& p : seq.parts) p.chunk = nullptr;
    return false;
  }
  seq.state = SeqState::kRunning;
  seq.num_computed = 0;
  return true;
}

bool Engine::ensure_dyn_pages(Sequence& seq, int upto_pos) {
  const int own_tokens = upto_pos + 1 - seq.own_start;
  if (own_tokens <= 0) return true;
  const int need = (own_tokens + config_.page_size - 1) / config_.page_size;
  const int have = static_cast<int>(seq.dyn_pages.size());
  if (need <= have) return true;
  auto pages = pages_->allocate_dynamic(need - have);
  if (!pages) return false;
  seq.dyn_pages.insert(seq.dyn_pages.end(), pages->begin(), pages->end());
  return true;
}

void Engine::release_resources(Sequence& seq) {
  for (Part& p : seq.parts) {
    if (p.chunk != nullptr) {
      release_chunk(p.chunk);
      p.chunk = nullptr;
    }
  }
  if (!seq.dyn_pages.empty()) {
    pages_->free_dynamic(seq.dyn_pages);
    seq.dyn_pages.clear();
  }
}

void Engine::preempt(Sequence& seq) {
  // Recompute policy: drop the sequence's own KV and chunk references; it re-enters the queue at the
  // front and later recomputes what is not cached. Sampling draws depend on (seed, step) only, so the
  // tokens it produces are the same as without preemption.
  release_resources(seq);
  seq.state = SeqState::kWaiting;
  seq.num_computed = 0;
  ++seq.preemptions;
  ++stats_.preemptions;
  running_.erase(std::find(running_.begin(), running_.end(), &seq));
  waiting_.push_front(&seq);
  CASCADE_LOG_DEBUG("sched: preempt req={} len={}", seq.id, seq.total_len());
}

void Engine::finish(Sequence& seq, FinishReason reason, std::vector<StepUpdate>& updates,
                    const std::string& error) {
  if (seq.state == SeqState::kRunning) {
    running_.erase(std::find(running_.begin(), running_.end(), &seq));
  } else if (seq.state == SeqState::kWaiting) {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), &seq));
  }
  // KV this sequence used, for the logical-vs-stored report.
  stats_.kv_tokens_logical += seq.num_computed;
  stats_.kv_tokens_stored += std::max(0, seq.num_computed - seq.own_start);
  release_resources(seq);
  seq.state = SeqState::kFinished;
  seq.finish_reason = reason;
  seq.error = error;
  StepUpdate up;
  up.request_id = seq.id;
  if (seq.stop_matcher && reason != FinishReason::kStop) {
    up.new_text = seq.stop_matcher->flush();
    seq.text += up.new_text;
  }
  up.finished = true;
  up.finish_reason = reason;
  up.error = error;
  updates.push_back(std::move(up));
  RequestOutput out;
  out.request_id = seq.id;
  out.prompt_ids = seq.prompt;
  out.token_ids = seq.generated;
  out.token_logprobs = seq.logprobs;
  out.text = seq.text;
  out.finish_reason = reason;
  out.num_cached_tokens = seq.num_cached_tokens;
  out.error = error;
  finished_[seq.id] = std::move(out);
}

// ---- one step --------------------------------------------------------------------------------

std::int32_t Engine::slot_for(const Sequence& seq, int pos) const {
  const int ps = config_.page_size;
  if (pos >= seq.own_start) {
    const int i = pos - seq.own_start;
    return static_cast<std::int32_t>(seq.dyn_pages[i / ps]) * ps + i % ps;
  }
  for (const Part& p : seq.parts) {
    if (pos >= p.start && pos < p.start + p.len) {
      const int i = pos - p.start;
      return static_cast<std::int32_t>(p.chunk->pages[i / ps]) * ps + i % ps;
    }
  }
  CASCADE_CHECK(false, "position {} of request {} has no slot", pos, seq.id);
  return -1;
}

int Engine::schedule_rows(Sequence& seq, int budget, std::unordered_set<const ContextChunk*>& claimed,
                          SeqRows& out) {
  out = SeqRows{};
  out.seq = &seq;
  const int total = seq.total_len();
  // Skip what chunks already hold (computed by anyone, earlier or in this very step).
  for (Part& p : seq.parts) {
    if (seq.num_computed < p.start || seq.num_computed >= p.start + p.len) continue;
    const int have = p.start + p.chunk->num_computed;
    if (have > seq.num_computed && !claimed.count(p.chunk)) {
      seq.num_cached_tokens += have - seq.num_computed;
      seq.num_computed = have;
    }
  }
  if (seq.num_computed >= total) {
    // Whole prompt cached: recompute the last token (its K/V stays where it is) to get logits.
    seq.num_computed = total - 1;
    --seq.num_cached_tokens;
    out.first_pos = total - 1;
    out.num_rows = 1;
    out.wants_logits = true;
    out.recompute_last = true;
    return 1;
  }
  out.first_pos = seq.num_computed;
  int pos = seq.num_computed;
  while (pos < total && out.num_rows < budget) {
    // Find the chunk holding pos, if any.
    Part* part = nullptr;
    for (Part& p : seq.parts) {
      if (pos >= p.start && pos < p.start + p.len) part = &p;
    }
    if (part != nullptr) {
      ContextChunk* c = part->chunk;
      const int have = part->start + c->num_computed;
      if (have > pos) break;  // computed by another row range already: continue next step
      if (claimed.count(c) && out.num_rows == 0) return 0;  // another sequence computes it now
      if (claimed.count(c)) break;
      const int n = std::min(part->start + part->len - pos, budget - out.num_rows);
      claimed.insert(c);
      registry_->set_num_computed(c, c->num_computed + n);
      stats_.kv_tokens_stored += n;  // chunk KV is stored once, however many sequences read it
      pos += n;
      out.num_rows += n;
    } else {
      const int n = std::min(total - pos, budget - out.num_rows);
      pos += n;
      out.num_rows += n;
    }
  }
  out.wants_logits = pos == total;
  seq.num_computed = pos;
  return out.num_rows;
}

SeqAttnInput Engine::attn_input(const Sequence& seq, const SeqRows& rows) const {
  SeqAttnInput in;
  in.num_rows = rows.num_rows;
  in.first_row_pos = rows.first_pos;
  const int horizon = rows.first_pos + rows.num_rows;  // keys [0, horizon) are visible
  const int ps = config_.page_size;
  auto add_pages = [&](KvPageList& kv, const std::vector<PageId>& pages, int n) {
    for (int i = 0; i * ps < n; ++i) {
      kv.pages.push_back(static_cast<std::int32_t>(pages[i]));
      kv.lens.push_back(std::min(ps, n - i * ps));
    }
  };
  for (const Part& p : seq.parts) {
    if (p.start >= horizon) break;
    KvBlock b;
    const int n = std::min(p.len, horizon - p.start);
    b.key = n == p.len ? hex(p.id) : hex(p.id) + "#" + std::to_string(n);
    b.kv.start_pos = p.start;
    add_pages(b.kv, p.chunk->pages, n);
    in.blocks.push_back(std::move(b));
  }
  if (horizon > seq.own_start) {
    KvBlock b;
    b.kv.start_pos = seq.own_start;
    add_pages(b.kv, seq.dyn_pages, horizon - seq.own_start);
    in.blocks.push_back(std::move(b));
  }
  return in;
}

void Engine::append_token(Sequence& seq, std::int32_t token, StepUpdate& update) {
  seq.generated.push_back(token);
  update.new_token_ids.push_back(token);
  if (seq.decoder) {
    std::string piece = seq.decoder->push(token);
    auto [emit, stopped] = seq.stop_matcher->feed(piece);
    seq.text += emit;
    update.new_text += emit;
    if (stopped) update.finish_reason = FinishReason::kStop;
  }
}

void Engine::count_step(const CascadePlan& plan) {
  ++stats_.steps;
  if (plan.uses_shared_levels) ++stats_.cascade_steps;
  stats_.max_levels_used = std::max(stats_.max_levels_used, static_cast<int>(plan.levels.size()));
}

RowSampling Engine::row_sampling(const Sequence& s, std::uint64_t step) {
  RowSampling p;
  p.temperature = s.sampling.temperature;
  p.top_k = s.sampling.top_k;
  p.top_p = s.sampling.top_p;
  p.min_p = s.sampling.min_p;
  p.seed = s.seed;
  p.step = step;
  return p;
}

void Engine::apply_tokens(const std::vector<Sequence*>& seqs, const std::vector<std::int32_t>& tokens,
                          const std::vector<float>& logits, std::vector<StepUpdate>& updates) {
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    Sequence& s = *seqs[i];
    StepUpdate up;
    up.request_id = s.id;
    const std::int32_t t = tokens[i];
    if (s.sampling.logprobs) {
      const int V = model_config_.vocab_size;
      const float* row = logits.data() + i * static_cast<std::size_t>(V);
      double mx = row[0];
      for (int v = 1; v < V; ++v) mx = std::max<double>(mx, row[v]);
      double sum = 0;
      for (int v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
      s.logprobs.push_back(static_cast<float>(row[t] - mx - std::log(sum)));
    }
    append_token(s, t, up);
    FinishReason reason = up.finish_reason;
    const bool is_eos = std::find(eos_ids_.begin(), eos_ids_.end(), t) != eos_ids_.end();
    const bool is_stop_id =
        std::find(s.sampling.stop_token_ids.begin(), s.sampling.stop_token_ids.end(), t) !=
        s.sampling.stop_token_ids.end();
    if (reason == FinishReason::kNone && ((is_eos && !s.sampling.ignore_eos) || is_stop_id)) {
      reason = FinishReason::kStop;
    }
    if (reason == FinishReason::kNone &&
        (static_cast<int>(s.generated.size()) >= s.sampling.max_tokens || s.total_len() >= max_model_len_)) {
      reason = FinishReason::kLength;
    }
    updates.push_back(std::move(up));
    if (reason != FinishReason::kNone) finish(s, reason, updates);
  }
}

std::optional<Engine::Inflight> Engine::launch_fed_step(const Inflight& done) {
  if (!runner_->can_feed() || running_.empty()) return std::nullopt;
  // A waiting request may be admitted only by a normal step; with the batch full none could be
  // now (a sequence that `done` ends frees its slot for the step after the fed one).
  if (!waiting_.empty() && static_cast<int>(running_.size()) < config_.max_num_seqs) return std::nullopt;
  std::unordered_map<std::uint64_t, int> row_of;  // logit row of `done` per sequence
  for (std::size_t i = 0; i < done.seq_ids.size(); ++i) row_of[done.seq_ids[i]] = static_cast<int>(i);
  std::vector<Sequence*> seqs;
  for (Sequence* s : running_) {
    // Every running sequence draws a token in `done` (none is still in its prompt), without
    // logprobs (they need the logits on the host).
    if (!row_of.count(s->id) || s->sampling.logprobs || s->num_computed != s->total_len()) {
      return std::nullopt;
    }
    // `done`'s token is generated[g] at position total_len(); one that ends the sequence by
    // length is known now (stops by token or text only after collect(): their rows are wasted).
    const bool ends = static_cast<int>(s->generated.size()) + 1 >= s->sampling.max_tokens ||
                      s->total_len() + 1 >= max_model_len_;
    if (!ends) seqs.push_back(s);
  }
  if (seqs.empty() || static_cast<int>(seqs.size()) > config_.max_num_batched_tokens) return std::nullopt;
  for (Sequence* s : seqs) {
    if (!ensure_dyn_pages(*s, s->total_len())) return std::nullopt;  // the normal step preempts
  }
  StepBatch batch;
  std::vector<SeqAttnInput> inputs;
  Inflight next;
  for (Sequence* s : seqs) {
    const int pos = s->total_len();
    batch.token_ids.push_back(0);  // fed: row_of[s] of `done`
    batch.feed.push_back(row_of[s->id]);
    batch.positions.push_back(pos);
    batch.slot_mapping.push_back(slot_for(*s, pos));
    batch.logit_rows.push_back(batch.num_rows() - 1);
    SeqRows r;
    r.seq = s;
    r.first_pos = pos;
    r.num_rows = 1;
    r.wants_logits = true;
    inputs.push_back(attn_input(*s, r));
    next.seq_ids.push_back(s->id);
    next.params.push_back(row_sampling(*s, s->generated.size() + 1));  // the token this step draws
  }
  CascadePlan plan = cascade_->plan(inputs);
  batch.plan = &plan;
  batch.keep_logits =
      std::any_of(seqs.begin(), seqs.end(), [](const Sequence* s) { return s->sampling.temperature > 0.0f; });
  // num_computed and decode_tokens follow when `done`'s tokens are applied (step()): a row of a
  // sequence that stops at `done` counts neither as held KV nor as a decode token.
  runner_->forward(batch);
  ++clock_;
  count_step(plan);
  ++stats_.overlapped_steps;
  return next;
}

std::vector<StepUpdate> Engine::step() {
  std::vector<StepUpdate> updates;
  if (inflight_) {
    // The last step's tokens are still on the device: enqueue the next decode step on them first,
    // then wait for them.
    const Inflight done = std::move(*inflight_);
    inflight_.reset();
    // Collects `done`'s tokens and applies them to the sequences still running; then a sequence
    // of the fed step `next` that is still running has computed that step's row too.
    auto collect_and_apply = [&](const std::optional<Inflight>& next) {
      const std::vector<std::int32_t> tokens = runner_->collect();
      std::vector<Sequence*> seqs;
      std::vector<std::int32_t> live;
      for (std::size_t i = 0; i < done.seq_ids.size(); ++i) {
        auto it = seqs_.find(done.seq_ids[i]);
        if (it == seqs_.end() || it->second->state != SeqState::kRunning) continue;  // aborted meanwhile
        seqs.push_back(it->second.get());
        live.push_back(tokens[i]);
      }
      apply_tokens(seqs, live, {}, updates);
      if (!next) return;
      for (std::uint64_t id : next->seq_ids) {
        Sequence& s = *seqs_.at(id);
        if (s.state != SeqState::kRunning) continue;
        s.num_computed = s.total_len();
        ++stats_.decode_tokens;
      }
    };
    std::optional<Inflight> next;
    try {
      next = launch_fed_step(done);
    } catch (...) {
      // The fed step could not be enqueued: still take `done`'s tokens, so that the runner has
      // nothing left uncollected and the sequences keep them, then report the failure.
      try {
        collect_and_apply(std::nullopt);
      } catch (...) {
      }
      throw;
    }
    collect_and_apply(next);
    if (next) {
      runner_->sample_async(next->params);
      inflight_ = std::move(next);
      stats_.peak_pages_used = std::max(stats_.peak_pages_used, pages_->num_used_pages());
      return updates;
    }
  }
  ++clock_;
  // 1. Make room for every running sequence's next token; preempt the newest when pages run out.
  for (std::size_t i = 0; i < running_.size();) {
    Sequence* seq = running_[i];
    if (ensure_dyn_pages(*seq, seq->total_len() - 1)) {
      ++i;
      continue;
    }
    Sequence* victim = running_.back();
    preempt(*victim);
    if (victim == seq) continue;  // it was the newest itself
  }
  // 2. Admission: waiting requests, preferring those that share chunks with the running batch.
  if (!waiting_.empty() && static_cast<int>(running_.size()) < config_.max_num_seqs) {
    std::unordered_set<std::string> running_chunks;
    for (Sequence* s : running_) {
      for (const Part& p : s->parts) running_chunks.insert(hex(p.id));
    }
    std::vector<Sequence*> order(waiting_.begin(), waiting_.end());
    auto score = [&](const Sequence* s) {
      if (s->preemptions > 0 || clock_ - s->arrival > kMaxWaitSteps) return 0;  // overdue first
      for (const Part& p : s->parts) {
        if (running_chunks.count(hex(p.id))) return 1;
      }
      return 2;
    };
    std::stable_sort(order.begin(), order.end(),
                     [&](Sequence* a, Sequence* b) { return score(a) < score(b); });
    for (Sequence* s : order) {
      if (static_cast<int>(running_.size()) >= config_.max_num_seqs) break;
      if (!admit(*s)) break;  // keep FIFO fairness among equals: stop at the first that doesn't fit
      waiting_.erase(std::find(waiting_.begin(), waiting_.end(), s));
      running_.push_back(s);
    }
    if (running_.empty() && !waiting_.empty()) {
      // Nothing runs and the head cannot be admitted even with everything evictable gone.
      Sequence* s = waiting_.front();
      finish(*s, FinishReason::kAbort, updates, "out of KV memory: the request does not fit the KV cache");
    }
  }
  // 3. Rows: decodes first (one row each), then prefill chunks within the token budget.
  int budget = config_.max_num_batched_tokens;
  std::unordered_set<const ContextChunk*> claimed;
  std::vector<SeqRows> rows;
  std::vector<Sequence*> order = running_;
  std::stable_partition(order.begin(), order.end(),
                        [](Sequence* s) { return s->num_computed == s->total_len() - 1; });
  for (Sequence* s : order) {
    if (budget <= 0) break;
    SeqRows r;
    const int n = schedule_rows(*s, budget, claimed, r);
    if (n == 0) continue;
    budget -= n;
    rows.push_back(r);
  }
  if (rows.empty()) return updates;

  // 4. The step's batch and its cascade plan (built once, used by every layer).
  StepBatch batch;
  std::vector<SeqAttnInput> inputs;
  std::vector<Sequence*> logit_seqs;
  for (const SeqRows& r : rows) {
    const int row0 = batch.num_rows();
    for (int i = 0; i < r.num_rows; ++i) {
      const int pos = r.first_pos + i;
      batch.token_ids.push_back(r.seq->token_at(pos));
      batch.positions.push_back(pos);
      batch.slot_mapping.push_back(r.recompute_last ? -1 : slot_for(*r.seq, pos));
    }
    if (r.wants_logits) {
      batch.logit_rows.push_back(row0 + r.num_rows - 1);
      logit_seqs.push_back(r.seq);
    }
    inputs.push_back(attn_input(*r.seq, r));
    if (r.num_rows == 1 && !r.recompute_last && r.first_pos >= static_cast<int>(r.seq->prompt.size())) {
      ++stats_.decode_tokens;
    } else {
      stats_.prefill_tokens += r.num_rows;
    }
  }
  CascadePlan plan = cascade_->plan(inputs);
  batch.plan = &plan;
  count_step(plan);

  batch.keep_logits = std::any_of(logit_seqs.begin(), logit_seqs.end(), [](const Sequence* s) {
    return s->sampling.temperature > 0.0f || s->sampling.logprobs;
  });
  runner_->forward(batch);
  std::vector<RowSampling> params;
  for (Sequence* s : logit_seqs) params.push_back(row_sampling(*s, s->generated.size()));
  // No logprobs wanted: the tokens are collected by the next step(), which may enqueue the
  // following step on them first (launch_fed_step; the runner says whether it can feed them).
  const bool overlap = config_.overlap_scheduling && !params.empty() &&
                       std::none_of(logit_seqs.begin(), logit_seqs.end(),
                                    [](const Sequence* s) { return s->sampling.logprobs; });
  if (overlap) {
    runner_->sample_async(params);
    Inflight f;
    for (const Sequence* s : logit_seqs) f.seq_ids.push_back(s->id);
    f.params = std::move(params);
    inflight_ = std::move(f);
    stats_.peak_pages_used = std::max(stats_.peak_pages_used, pages_->num_used_pages());
    return updates;
  }
  std::vector<std::int32_t> tokens = params.empty() ? std::vector<std::int32_t>{} : runner_->sample(params);

  std::vector<float> logits;
  for (Sequence* s : logit_seqs) {
    if (s->sampling.logprobs) {
      logits = runner_->copy_logits();
      break;
    }
  }

  // 5. Append tokens and apply stop conditions.
  apply_tokens(logit_seqs, tokens, logits, updates);
  stats_.peak_pages_used = std::max(stats_.peak_pages_used, pages_->num_used_pages());
  return updates;
}

// ---- chunk API -------------------------------------------------------------------------------

std::string Engine::register_chunk(ChunkKind kind, const std::vector<std::int32_t>& ids,
                                   const std::map<std::string, std::string>& metadata) {
  if (ids.empty()) throw_error(ErrorCode::kInvalidArgument, "a chunk needs at least one token");
  for (std::int32_t t : ids) {
    if (t < 0 || t >= model_config_.vocab_size) {
      throw_error(ErrorCode::kInvalidArgument, "token id {} is outside the vocabulary [0, {})", t,
                  model_config_.vocab_size);
    }
  }
  // A registered chunk is a root chunk (no parent): cached metadata and tokens now, KV on first use.
  AcquireResult r = registry_->acquire(nullptr, kind, ids, metadata);
  if (!r.freed_pages.empty()) pages_->free_persistent(r.freed_pages);
  const std::string id = hex(r.chunk->id);
  release_chunk(r.chunk);
  return id;
}

namespace {
ChunkInfo to_info(const ChunkSummary& s) {
  ChunkInfo info;
  info.id = chunk_id_to_hex(s.id);
  info.kind = s.kind;
  info.num_tokens = s.num_tokens;
  info.num_computed = s.num_computed;
  info.ref_count = s.ref_count;
  info.metadata = s.metadata;
  return info;
}
}  // namespace

std::vector<ChunkInfo> Engine::list_chunks() const {
  std::vector<ChunkInfo> out;
  for (const ChunkSummary& s : registry_->list()) out.push_back(to_info(s));
  return out;
}

ChunkInfo Engine::get_chunk(const std::string& id) const {
  const ContextChunk c = registry_->lookup(parse_chunk_id(id));
  ChunkInfo info;
  info.id = chunk_id_to_hex(c.id);
  info.kind = c.kind;
  info.num_tokens = c.num_tokens();
  info.num_computed = c.num_computed;
  info.ref_count = c.ref_count;
  info.metadata = c.metadata;
  return info;
}

void Engine::delete_chunk(const std::string& id) {
  const std::vector<PageId> pages = registry_->erase(parse_chunk_id(id));
  if (!pages.empty()) pages_->free_persistent(pages);
}

int Engine::clear_chunks(std::optional<ChunkKind> kind) {
  const ClearResult r = registry_->clear(kind);
  if (!r.freed_pages.empty()) pages_->free_persistent(r.freed_pages);
  return r.removed;
}

ChunkStats Engine::chunk_stats() const {
  auto s = registry_->stats();
  ChunkStats out;
  out.hits = s.hits;
  out.misses = s.misses;
  out.evictions = s.evictions;
  out.tokens_saved = s.tokens_saved;
  out.bytes_saved = s.bytes_saved;
  out.num_chunks = s.num_chunks;
  return out;
}

CompositionPreview Engine::preview(const Request& request) const {
  std::vector<ResolvedPart> resolved = resolve(request);
  Sequence seq;
  for (const ResolvedPart& p : resolved) seq.prompt.insert(seq.prompt.end(), p.ids.begin(), p.ids.end());
  build_parts(seq, resolved);
  CompositionPreview out;
  out.prompt_ids = seq.prompt;
  const std::int64_t tok_bytes = stats_.kv_token_bytes;
  for (const Part& p : seq.parts) {
    out.chunk_ids.push_back(hex(p.id));
    auto snap = registry_->find(p.id);
    const bool cached = snap && snap->num_computed == p.len;
    out.chunk_cached.push_back(cached);
    if (cached) out.num_cached_tokens += p.len;
  }
  out.num_new_tokens = static_cast<int>(seq.prompt.size()) - out.num_cached_tokens;
  // In a batch of requests sharing its chunks: system prompt, then documents, then its own tokens.
  bool has_system = false, has_context = false;
  for (const Part& p : seq.parts) {
    has_system |= p.kind == ChunkKind::kSystem;
    has_context |= p.kind == ChunkKind::kContext || p.kind == ChunkKind::kAuto;
  }
  out.cascade_levels = std::min(config_.max_cascade_levels, 1 + int{has_system} + int{has_context});
  out.kv_bytes_new = static_cast<std::int64_t>(out.num_new_tokens) * tok_bytes;
  out.kv_bytes_logical = static_cast<std::int64_t>(seq.prompt.size()) * tok_bytes;
  return out;
}

EngineStats Engine::stats() const {
  EngineStats s = stats_;
  auto r = registry_->stats();
  s.chunk_hits = r.hits;
  s.chunk_misses = r.misses;
  s.chunk_evictions = r.evictions;
  s.pages_used = pages_->num_used_pages();
  s.running = static_cast<int>(running_.size());
  s.waiting = static_cast<int>(waiting_.size());
  return s;
}

}  // namespace cascade

// The step loop: requests in, one scheduling step at a time, tokens out. Single-threaded: the
// server drives it from one engine thread; only the ChunkRegistry is shared with other threads.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cache/cascade_page_manager.h"
#include "cache/chunk_registry.h"
#include "cache/context_chunk.h"
#include "cascade/config.h"
#include "cascade/llm.h"
#include "cascade/request.h"
#include "engine/model_runner.h"
#include "engine/stop_matcher.h"
#include "model/weights.h"
#include "sched/cascade_scheduler.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"

namespace cascade {

// Progress of one request after a step.
struct StepUpdate {
  std::uint64_t request_id = 0;
  std::vector<std::int32_t> new_token_ids;
  std::string new_text;  // newly decodable text (stop strings held back / cut)
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  std::string error;
};

class Engine {
 public:
  explicit Engine(const Config& config);
  ~Engine();

  // Validates and queues a request; returns its id. Throws cascade::Error for bad input (unknown
  // chunk id, prompt longer than the model, out-of-range sampling parameters, no tokenizer for text).
  std::uint64_t add_request(const Request& request);
  // Cancels a request; its pages return at once. Unknown or finished ids are ignored.
  void abort_request(std::uint64_t id);
  bool has_unfinished() const { return !waiting_.empty() || !running_.empty() || inflight_.has_value(); }
  // Runs one scheduling step (admission, one forward, sampling) and reports what changed. With
  // Config::overlap_scheduling, the tokens of a step that wants no logprobs are reported by the
  // next call, which first enqueues the following decode step on them where the runner can feed
  // them (launch_fed_step).
  std::vector<StepUpdate> step();
  // The final output of a finished request (then forgotten). nullopt if not finished.
  std::optional<RequestOutput> take_output(std::uint64_t id);

  // Turns a request's segments (ids, text or registered chunk ids) into token runs.
  struct ResolvedPart {
    ChunkKind kind;
    std::vector<std::int32_t> ids;
  };
  std::vector<ResolvedPart> resolve(const Request& request) const;

  // Chunk API (see LLM).
  std::string register_chunk(ChunkKind kind, const std::vector<std::int32_t>& ids,
                             const std::map<std::string, std::string>& metadata);
  std::vector<ChunkInfo> list_chunks() const;
  ChunkInfo get_chunk(const std::string& id) const;
  void delete_chunk(const std::string& id);
  int clear_chunks(std::optional<ChunkKind> kind);
  ChunkStats chunk_stats() const;
  CompositionPreview preview(const Request& request) const;

  EngineStats stats() const;
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }
  const ModelConfig& model_config() const { return model_config_; }
  const Config& config() const { return config_; }
  int max_model_len() const { return max_model_len_; }

 private:
  struct Part {  // a run of prompt tokens held by one chunk
    int start = 0;
    int len = 0;
    ChunkKind kind = ChunkKind::kAuto;
    ChunkId id{};
    ContextChunk* chunk = nullptr;  // set while the sequence holds a reference
  };
  enum class SeqState { kWaiting, kRunning, kFinished };
  struct Sequence {
    std::uint64_t id = 0;
    SamplingParams sampling;
    std::uint64_t seed = 0;
    std::vector<std::int32_t> prompt;
    std::vector<std::int32_t> generated;
    std::vector<float> logprobs;
    std::vector<Part> parts;  // the shared (chunk) prefix of the prompt
    int own_start = 0;        // first position held in the sequence's own (dynamic) pages
    std::vector<PageId> dyn_pages;
    int num_computed = 0;     // positions whose KV this sequence can attend to
    int num_cached_tokens = 0;
    SeqState state = SeqState::kWaiting;
    std::int64_t arrival = 0;
    int preemptions = 0;
    FinishReason finish_reason = FinishReason::kNone;
    std::string error;
    std::string text;
    std::unique_ptr<StreamDecoder> decoder;
    std::unique_ptr<StopMatcher> stop_matcher;

    int total_len() const { return static_cast<int>(prompt.size() + generated.size()); }
    std::int32_t token_at(int pos) const {
      return pos < static_cast<int>(prompt.size()) ? prompt[pos] : generated[pos - prompt.size()];
    }
  };
  // Rows one sequence contributes to a step.
  struct SeqRows {
    Sequence* seq = nullptr;
    int first_pos = 0;
    int num_rows = 0;
    bool wants_logits = false;
    bool recompute_last = false;  // the row's K/V already lives in a chunk page: don't write it
  };

  void build_parts(Sequence& seq, const std::vector<ResolvedPart>& parts) const;
  bool admit(Sequence& seq);
  void release_resources(Sequence& seq);
  void preempt(Sequence& seq);
  void finish(Sequence& seq, FinishReason reason, std::vector<StepUpdate>& updates,
              const std::string& error = "");
  bool ensure_dyn_pages(Sequence& seq, int upto_pos);
  int schedule_rows(Sequence& seq, int budget, std::unordered_set<const ContextChunk*>& claimed,
                    SeqRows& out);
  std::int32_t slot_for(const Sequence& seq, int pos) const;
  SeqAttnInput attn_input(const Sequence& seq, const SeqRows& rows) const;
  void append_token(Sequence& seq, std::int32_t token, StepUpdate& update);
  // Counts a forward of `plan` in the stats (steps, cascade steps, levels used).
  void count_step(const CascadePlan& plan);
  // How the runner draws the sequence's token number `step` (its sampling parameters and seed).
  static RowSampling row_sampling(const Sequence& s, std::uint64_t step);
  // Appends each logit row's token (logits: [rows, vocab] where a sequence wants logprobs) and
  // applies the stop conditions.
  void apply_tokens(const std::vector<Sequence*>& seqs, const std::vector<std::int32_t>& tokens,
                    const std::vector<float>& logits, std::vector<StepUpdate>& updates);
  // A step whose tokens the runner is still drawing (sample_async() ran, collect() not yet).
  struct Inflight {
    std::vector<std::uint64_t> seq_ids;  // per logit row
    std::vector<RowSampling> params;
  };
  // Enqueues the decode step that follows `done` with its rows fed by done's tokens (StepBatch::feed),
  // where every running sequence is a decode in `done` without logprobs, no waiting request could be
  // admitted (none waits, or the batch is full) and each sequence's next page is at hand; the
  // sequences that `done` ends by length are left out. nullopt if it does not apply.
  std::optional<Inflight> launch_fed_step(const Inflight& done);
  bool evict_one_chunk();
  void release_chunk(ContextChunk* chunk);

  Config config_;
  ModelConfig model_config_;
  std::shared_ptr<const Qwen3Weights> weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<CascadePageManager> pages_;
  std::unique_ptr<ChunkRegistry> registry_;
  std::unique_ptr<CascadeScheduler> cascade_;
  int max_model_len_ = 0;
  std::vector<std::int32_t> eos_ids_;

  std::uint64_t next_id_ = 1;
  std::int64_t clock_ = 0;
  std::unordered_map<std::uint64_t, std::unique_ptr<Sequence>> seqs_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;
  std::unordered_map<std::uint64_t, RequestOutput> finished_;
  std::optional<Inflight> inflight_;
  EngineStats stats_;
};

}  // namespace cascade

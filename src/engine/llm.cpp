#include "cascade/llm.h"

#include "core/error.h"
#include "engine/engine.h"

namespace cascade {

const char* chunk_kind_name(ChunkKind kind) {
  switch (kind) {
    case ChunkKind::kSystem: return "system";
    case ChunkKind::kContext: return "context";
    case ChunkKind::kQuery: return "query";
    case ChunkKind::kAuto: return "auto";
  }
  return "auto";
}

std::optional<ChunkKind> parse_chunk_kind(const std::string& name) {
  if (name == "system") return ChunkKind::kSystem;
  if (name == "context") return ChunkKind::kContext;
  if (name == "query") return ChunkKind::kQuery;
  if (name == "auto") return ChunkKind::kAuto;
  return std::nullopt;
}

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "none";
    case FinishReason::kLength: return "length";
    case FinishReason::kStop: return "stop";
    case FinishReason::kAbort: return "abort";
  }
  return "none";
}

LLM::LLM(const Config& config) : engine_(std::make_unique<Engine>(config)) {}
LLM::~LLM() = default;

std::vector<RequestOutput> LLM::generate(const std::vector<Request>& requests,
                                         const std::function<void(int, int)>& progress) {
  std::vector<RequestOutput> outputs(requests.size());
  std::vector<std::uint64_t> ids(requests.size(), 0);
  int done = 0;
  const int total = static_cast<int>(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    try {
      ids[i] = engine_->add_request(requests[i]);
    } catch (const Error& e) {
      outputs[i].error = e.what();
      outputs[i].finish_reason = FinishReason::kAbort;
      ++done;
    }
  }
  std::unordered_map<std::uint64_t, std::size_t> index;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] != 0) index[ids[i]] = i;
  }
  auto collect = [&](std::uint64_t id) {
    auto out = engine_->take_output(id);
    if (!out) return;
    outputs[index.at(id)] = std::move(*out);
    ++done;
    if (progress) progress(done, total);
  };
  while (engine_->has_unfinished()) {
    for (const StepUpdate& u : engine_->step()) {
      if (u.finished) collect(u.request_id);
    }
  }
  return outputs;
}

std::string LLM::register_chunk(ChunkKind kind, const std::vector<std::int32_t>& ids,
                                const std::map<std::string, std::string>& metadata) {
  return engine_->register_chunk(kind, ids, metadata);
}

std::string LLM::register_chunk_text(ChunkKind kind, const std::string& text,
                                     const std::map<std::string, std::string>& metadata) {
  if (engine_->tokenizer() == nullptr) {
    throw_error(ErrorCode::kInvalidArgument, "the model has no tokenizer.json: register chunks by token ids");
  }
  return engine_->register_chunk(kind, engine_->tokenizer()->encode(text), metadata);
}

std::vector<ChunkInfo> LLM::list_chunks() const { return engine_->list_chunks(); }
ChunkInfo LLM::get_chunk(const std::string& id) const { return engine_->get_chunk(id); }
void LLM::delete_chunk(const std::string& id) { engine_->delete_chunk(id); }
int LLM::clear_chunks(std::optional<ChunkKind> kind) { return engine_->clear_chunks(kind); }
ChunkStats LLM::chunk_stats() const { return engine_->chunk_stats(); }
CompositionPreview LLM::preview(const Request& request) const { return engine_->preview(request); }
EngineStats LLM::stats() const { return engine_->stats(); }
const Tokenizer* LLM::tokenizer() const { return engine_->tokenizer(); }
Engine& LLM::engine() { return *engine_; }

}  // namespace cascade

#include "model/weights.h"

#include <chrono>
#include <cmath>
#include <numbers>
#include <string_view>
#include <unordered_set>

#include "core/error.h"
#include "core/logging.h"
#include "model/safetensors.h"

namespace cascade {
namespace {

struct Slot {
  TensorSpec spec;
  const HostTensor* tensor;
  enum Kind { kMatrix, kNorm, kBias } kind;

  // Only for slots bound to a Qwen3Weights the caller owns mutably (load, random init).
  HostTensor* dst() const { return const_cast<HostTensor*>(tensor); }
};

// Binds every checkpoint tensor of `config` to its place in `w`, whose layers must already number
// config.num_hidden_layers. The order is the checkpoint's natural one and fixes the random-init
// streams, so do not reorder casually.
std::vector<Slot> bind_slots(const ModelConfig& c, const Qwen3Weights& w) {
  const std::int64_t hidden = c.hidden_size, inter = c.intermediate_size, vocab = c.vocab_size;
  const std::int64_t q = c.q_size(), kv = c.kv_size(), hd = c.head_dim;
  std::vector<Slot> s;
  s.push_back({{"model.embed_tokens.weight", {vocab, hidden}}, &w.embed_tokens, Slot::kMatrix});
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const LayerWeights& l = w.layers.at(static_cast<std::size_t>(i));
    const std::string p = fmt::format("model.layers.{}.", i);
    s.push_back({{p + "input_layernorm.weight", {hidden}}, &l.input_layernorm, Slot::kNorm});
    s.push_back({{p + "self_attn.q_proj.weight", {q, hidden}}, &l.q_proj, Slot::kMatrix});
    s.push_back({{p + "self_attn.k_proj.weight", {kv, hidden}}, &l.k_proj, Slot::kMatrix});
    s.push_back({{p + "self_attn.v_proj.weight", {kv, hidden}}, &l.v_proj, Slot::kMatrix});
    if (c.attention_bias) {
      s.push_back({{p + "self_attn.q_proj.bias", {q}}, &l.q_bias, Slot::kBias});
      s.push_back({{p + "self_attn.k_proj.bias", {kv}}, &l.k_bias, Slot::kBias});
      s.push_back({{p + "self_attn.v_proj.bias", {kv}}, &l.v_bias, Slot::kBias});
    }
    s.push_back({{p + "self_attn.o_proj.weight", {hidden, q}}, &l.o_proj, Slot::kMatrix});
    if (c.attention_bias) s.push_back({{p + "self_attn.o_proj.bias", {hidden}}, &l.o_bias, Slot::kBias});
    s.push_back({{p + "self_attn.q_norm.weight", {hd}}, &l.q_norm, Slot::kNorm});
    s.push_back({{p + "self_attn.k_norm.weight", {hd}}, &l.k_norm, Slot::kNorm});
    s.push_back({{p + "post_attention_layernorm.weight", {hidden}}, &l.post_attention_layernorm, Slot::kNorm});
    s.push_back({{p + "mlp.gate_proj.weight", {inter, hidden}}, &l.gate_proj, Slot::kMatrix});
    s.push_back({{p + "mlp.up_proj.weight", {inter, hidden}}, &l.up_proj, Slot::kMatrix});
    s.push_back({{p + "mlp.down_proj.weight", {hidden, inter}}, &l.down_proj, Slot::kMatrix});
  }
  s.push_back({{"model.norm.weight", {hidden}}, &w.norm, Slot::kNorm});
  if (!c.tie_word_embeddings) s.push_back({{"lm_head.weight", {vocab, hidden}}, &w.lm_head, Slot::kMatrix});
  return s;
}

std::string shape_str(const std::vector<std::int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Standard normal samples from one splitmix64 stream (Box-Muller in double, both outputs used).
class NormalStream {
 public:
  explicit NormalStream(std::uint64_t seed) : state_(seed) {}
  double next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    // Uniform in (0, 1]: 53 random bits, offset so log() never sees 0.
    const double u1 = (static_cast<double>(splitmix64(state_) >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = static_cast<double>(splitmix64(state_) >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * std::numbers::pi * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  std::uint64_t state_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace

std::int64_t HostTensor::numel() const {
  if (shape.empty()) return 0;
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

std::vector<TensorSpec> qwen3_tensor_specs(const ModelConfig& config) {
  Qwen3Weights scratch;
  scratch.layers.resize(static_cast<std::size_t>(config.num_hidden_layers));
  std::vector<TensorSpec> specs;
  for (auto& slot : bind_slots(config, scratch)) specs.push_back(std::move(slot.spec));
  return specs;
}

Qwen3Weights load_qwen3_weights(const std::filesystem::path& model_dir, const ModelConfig& config) {
  const auto start = std::chrono::steady_clock::now();
  SafeTensorsArchive archive = SafeTensorsArchive::open(model_dir);
  Qwen3Weights w;
  w.layers.resize(static_cast<std::size_t>(config.num_hidden_layers));
  std::vector<Slot> slots = bind_slots(config, w);

  std::unordered_set<std::string> expected;
  for (const Slot& s : slots) expected.insert(s.spec.name);
  for (const std::string& name : archive.tensor_names()) {
    if (expected.count(name) != 0) continue;
    // HF drops a tied lm_head when loading; rotary inv_freq buffers are recomputed from the config.
    if (name == "lm_head.weight" && config.tie_word_embeddings) {
      CASCADE_LOG_DEBUG("model: ignoring lm_head.weight (tie_word_embeddings is true)");
      continue;
    }
    if (ends_with(name, "rotary_emb.inv_freq")) continue;
    const TensorInfo& t = archive.tensor(name);
    throw_error(ErrorCode::kUnsupported,
                "{}: unexpected tensor '{}' (not part of a Qwen3ForCausalLM with this config.json: "
                "{} layers, attention_bias {}, tie_word_embeddings {})",
                t.file.string(), name, config.num_hidden_layers, config.attention_bias,
                config.tie_word_embeddings);
  }

  std::size_t total_bytes = 0;
  for (const Slot& s : slots) {
    const TensorInfo* t = archive.find(s.spec.name);
    if (t == nullptr) {
      throw_error(ErrorCode::kNotFound, "{}: missing tensor '{}' (expected shape {})", archive.source().string(),
                  s.spec.name, shape_str(s.spec.shape));
    }
    if (t->shape != s.spec.shape) {
      throw_error(ErrorCode::kUnsupported, "{}: tensor '{}' has shape {}, expected {}", t->file.string(),
                  s.spec.name, shape_str(t->shape), shape_str(s.spec.shape));
    }
    if (t->dtype != DType::kF32 && t->dtype != DType::kBF16 && t->dtype != DType::kF16) {
      throw_error(ErrorCode::kUnsupported, "{}: tensor '{}' has dtype {}; only F32, BF16 and F16 are supported",
                  t->file.string(), s.spec.name, dtype_name(t->dtype));
    }
    total_bytes += t->nbytes;
  }

  CASCADE_LOG_INFO("model: loading {} tensors ({:.1f} MB) from {}", slots.size(), total_bytes / 1e6,
                   archive.source().string());
  std::size_t done = 0;
  for (const Slot& s : slots) {
    const TensorInfo& t = archive.tensor(s.spec.name);
    s.dst()->shape = s.spec.shape;
    s.dst()->data.resize(static_cast<std::size_t>(t.numel()));
    convert_to_f32(t, s.dst()->data.data());  // parallel inside for large tensors
    done += t.nbytes;
    CASCADE_LOG_DEBUG("model: {} {} {} ({:.0f}%)", s.spec.name, dtype_name(t.dtype), shape_str(t.shape),
                      100.0 * static_cast<double>(done) / static_cast<double>(std::max<std::size_t>(total_bytes, 1)));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CASCADE_LOG_INFO("model: loaded {} tensors in {:.2f} s", slots.size(), secs);
  return w;
}

Qwen3Weights random_qwen3_weights(const ModelConfig& config, std::uint64_t seed) {
  Qwen3Weights w;
  w.layers.resize(static_cast<std::size_t>(config.num_hidden_layers));
  std::vector<Slot> slots = bind_slots(config, w);
  const auto n = static_cast<std::int64_t>(slots.size());
  // One independent stream per tensor, so the result does not depend on the thread count.
#pragma omp parallel for schedule(dynamic, 1)
  for (std::int64_t i = 0; i < n; ++i) {
    Slot& s = slots[static_cast<std::size_t>(i)];
    std::uint64_t mix = seed ^ (0xD1B54A32D192ED03ull * static_cast<std::uint64_t>(i + 1));
    NormalStream rng(splitmix64(mix));
    HostTensor* dst = s.dst();
    dst->shape = s.spec.shape;
    std::int64_t count = 1;
    for (std::int64_t d : s.spec.shape) count *= d;
    dst->data.resize(static_cast<std::size_t>(count));
    double mean = 0.0, std = 0.02;
    if (s.kind == Slot::kMatrix) {
      std = 1.0 / std::sqrt(static_cast<double>(s.spec.shape.back()));
    } else if (s.kind == Slot::kNorm) {
      mean = 1.0;
      std = 0.1;
    }
    for (float& v : dst->data) v = static_cast<float>(mean + std * rng.next());
  }
  return w;
}

void save_qwen3_weights(const std::filesystem::path& model_dir, const ModelConfig& config,
                        const Qwen3Weights& weights, const std::string& dtype) {
  DType dt;
  if (!parse_dtype(dtype, &dt) || (dt != DType::kF32 && dt != DType::kBF16 && dt != DType::kF16)) {
    throw_error(ErrorCode::kUnsupported, "{}: cannot save weights as '{}' (use F32, BF16 or F16)",
                model_dir.string(), dtype);
  }
  if (weights.layers.size() != static_cast<std::size_t>(config.num_hidden_layers)) {
    throw_error(ErrorCode::kInvalidArgument, "{}: weights have {} layers but the config says {}",
                model_dir.string(), weights.layers.size(), config.num_hidden_layers);
  }
  std::vector<TensorToWrite> out;
  for (const Slot& s : bind_slots(config, weights)) {
    const HostTensor* src = s.tensor;
    if (src->shape != s.spec.shape || static_cast<std::int64_t>(src->data.size()) != src->numel()) {
      throw_error(ErrorCode::kInvalidArgument, "{}: tensor '{}' has shape {} ({} values), expected {}",
                  model_dir.string(), s.spec.name, shape_str(src->shape), src->data.size(),
                  shape_str(s.spec.shape));
    }
    out.push_back({s.spec.name, s.spec.shape, std::span<const float>(src->data)});
  }
  std::error_code ec;
  std::filesystem::create_directories(model_dir, ec);
  if (ec) throw_error(ErrorCode::kIo, "{}: cannot create directory: {}", model_dir.string(), ec.message());
  write_safetensors(model_dir / "model.safetensors", out, dt, {{"format", "pt"}});
}

}  // namespace cascade

#include "model/model_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace cascade {
namespace {

using nlohmann::json;

// transformers' RotaryEmbeddingConfigMixin.default_theta (and 4.x Qwen3Config's rope_theta default),
// used when config.json names no theta at all.
constexpr double kTransformersDefaultTheta = 10000.0;
// transformers' Qwen3Config.max_position_embeddings default.
constexpr int kTransformersDefaultMaxPositions = 32768;

const char* json_type(const json& v) { return v.type_name(); }

// Field readers: each names the source and the field in its error. `where` is the field's path
// ("rope_parameters.rope_theta").
class Reader {
 public:
  explicit Reader(const std::string& source) : source_(source) {}

  [[noreturn]] void fail(ErrorCode code, const std::string& what) const {
    throw Error(code, fmt::format("{}: {}", source_, what));
  }

  static bool present(const json& obj, const char* key) { return obj.contains(key) && !obj[key].is_null(); }

  int get_int(const json& obj, const char* key, const std::string& where) const {
    const json& v = obj[key];
    if (!v.is_number_integer()) {
      fail(ErrorCode::kParse, fmt::format("field '{}' must be an integer, got {} {}", where, json_type(v), v.dump()));
    }
    if (v.is_number_unsigned() ? v.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<int>::max())
                               : (v.get<std::int64_t>() > std::numeric_limits<int>::max() ||
                                  v.get<std::int64_t>() < std::numeric_limits<int>::min())) {
      fail(ErrorCode::kUnsupported, fmt::format("field '{}' = {} is out of range", where, v.dump()));
    }
    return static_cast<int>(v.get<std::int64_t>());
  }

  int required_int(const json& obj, const char* key) const {
    if (!present(obj, key)) fail(ErrorCode::kParse, fmt::format("missing required field '{}'", key));
    return get_int(obj, key, key);
  }

  double get_number(const json& obj, const char* key, const std::string& where) const {
    const json& v = obj[key];
    if (!v.is_number()) {
      fail(ErrorCode::kParse, fmt::format("field '{}' must be a number, got {} {}", where, json_type(v), v.dump()));
    }
    double d = v.get<double>();
    if (!std::isfinite(d)) fail(ErrorCode::kParse, fmt::format("field '{}' is not finite", where));
    return d;
  }

  bool get_bool(const json& obj, const char* key) const {
    const json& v = obj[key];
    if (!v.is_boolean()) {
      fail(ErrorCode::kParse, fmt::format("field '{}' must be true or false, got {} {}", key, json_type(v), v.dump()));
    }
    return v.get<bool>();
  }

  std::string get_string(const json& obj, const char* key, const std::string& where) const {
    const json& v = obj[key];
    if (!v.is_string()) {
      fail(ErrorCode::kParse, fmt::format("field '{}' must be a string, got {} {}", where, json_type(v), v.dump()));
    }
    return v.get<std::string>();
  }

  void require_positive(int value, const char* key) const {
    if (value <= 0) fail(ErrorCode::kUnsupported, fmt::format("field '{}' = {} must be positive", key, value));
  }

 private:
  const std::string& source_;
};

// One rope parameter dict (4.x rope_scaling or 5.x rope_parameters) into `rope`. `where` names it.
void read_rope_dict(const Reader& r, const json& dict, const std::string& where, RopeConfig* rope) {
  if (!dict.is_object()) {
    r.fail(ErrorCode::kParse, fmt::format("field '{}' must be an object or null, got {}", where, json_type(dict)));
  }
  std::string type = "default";
  if (Reader::present(dict, "rope_type")) {
    type = r.get_string(dict, "rope_type", where + ".rope_type");
  } else if (Reader::present(dict, "type")) {
    type = r.get_string(dict, "type", where + ".type");
  }
  if (type != "default" && type != "linear") {
    r.fail(ErrorCode::kUnsupported,
           fmt::format("field '{}' has rope type '{}', which is not supported (supported: default, linear)",
                       where, type));
  }
  rope->type = type;
  if (Reader::present(dict, "rope_theta")) rope->theta = r.get_number(dict, "rope_theta", where + ".rope_theta");
  if (type == "linear") {
    if (!Reader::present(dict, "factor")) {
      r.fail(ErrorCode::kParse, fmt::format("missing required field '{}.factor' for linear rope", where));
    }
    rope->factor = r.get_number(dict, "factor", where + ".factor");
    if (!(rope->factor > 0.0)) {
      r.fail(ErrorCode::kUnsupported, fmt::format("field '{}.factor' = {} must be positive", where, rope->factor));
    }
  } else {
    rope->factor = 1.0;
  }
  if (Reader::present(dict, "partial_rotary_factor")) {
    double f = r.get_number(dict, "partial_rotary_factor", where + ".partial_rotary_factor");
    if (f != 1.0) {
      r.fail(ErrorCode::kUnsupported,
             fmt::format("field '{}.partial_rotary_factor' = {} is not supported (only 1.0)", where, f));
    }
  }
}

void read_rope(const Reader& r, const json& j, RopeConfig* rope) {
  rope->theta = kTransformersDefaultTheta;
  rope->type = "default";
  rope->factor = 1.0;
  // A top-level rope_theta (4.x) is the fallback for a dict that names none, as in transformers.
  if (Reader::present(j, "rope_theta")) rope->theta = r.get_number(j, "rope_theta", "rope_theta");
  if (Reader::present(j, "rope_parameters")) {
    const json& params = j["rope_parameters"];
    if (!params.is_object()) {
      r.fail(ErrorCode::kParse,
             fmt::format("field 'rope_parameters' must be an object or null, got {}", json_type(params)));
    }
    // 5.x may nest the dict by layer type; Qwen3 without sliding window uses only full_attention.
    if (params.contains("full_attention") || params.contains("sliding_attention")) {
      if (!params.contains("full_attention")) {
        r.fail(ErrorCode::kUnsupported, "field 'rope_parameters' has no 'full_attention' entry");
      }
      read_rope_dict(r, params["full_attention"], "rope_parameters.full_attention", rope);
    } else {
      read_rope_dict(r, params, "rope_parameters", rope);
    }
  } else if (Reader::present(j, "rope_scaling")) {
    read_rope_dict(r, j["rope_scaling"], "rope_scaling", rope);
  }
  if (!(rope->theta > 0.0)) {
    r.fail(ErrorCode::kUnsupported, fmt::format("rope theta {} must be positive", rope->theta));
  }
}

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw_error(ErrorCode::kParse, "{}: malformed JSON: {}", source, e.what());
  }
  Reader r(source);
  if (!j.is_object()) r.fail(ErrorCode::kParse, "top level is not a JSON object");

  ModelConfig c;
  // Architecture: architectures (list) and/or model_type must say Qwen3.
  bool named = false;
  if (Reader::present(j, "architectures")) {
    const json& archs = j["architectures"];
    if (!archs.is_array()) {
      r.fail(ErrorCode::kParse, fmt::format("field 'architectures' must be a list, got {}", json_type(archs)));
    }
    bool found = false;
    for (const json& a : archs) {
      if (!a.is_string()) r.fail(ErrorCode::kParse, "field 'architectures' must be a list of strings");
      if (a.get<std::string>() == "Qwen3ForCausalLM") found = true;
    }
    if (!found) {
      r.fail(ErrorCode::kUnsupported,
             fmt::format("field 'architectures' = {} is not supported (only Qwen3ForCausalLM)", archs.dump()));
    }
    named = true;
  }
  if (Reader::present(j, "model_type")) {
    std::string mt = r.get_string(j, "model_type", "model_type");
    if (mt != "qwen3") {
      r.fail(ErrorCode::kUnsupported, fmt::format("field 'model_type' = '{}' is not supported (only qwen3)", mt));
    }
    named = true;
  }
  if (!named) r.fail(ErrorCode::kParse, "missing required field 'architectures' (or 'model_type')");
  c.architecture = "Qwen3ForCausalLM";

  c.vocab_size = r.required_int(j, "vocab_size");
  c.hidden_size = r.required_int(j, "hidden_size");
  c.intermediate_size = r.required_int(j, "intermediate_size");
  c.num_hidden_layers = r.required_int(j, "num_hidden_layers");
  c.num_attention_heads = r.required_int(j, "num_attention_heads");
  r.require_positive(c.vocab_size, "vocab_size");
  r.require_positive(c.hidden_size, "hidden_size");
  r.require_positive(c.intermediate_size, "intermediate_size");
  r.require_positive(c.num_hidden_layers, "num_hidden_layers");
  r.require_positive(c.num_attention_heads, "num_attention_heads");

  c.num_key_value_heads = Reader::present(j, "num_key_value_heads")
                              ? r.get_int(j, "num_key_value_heads", "num_key_value_heads")
                              : c.num_attention_heads;
  r.require_positive(c.num_key_value_heads, "num_key_value_heads");
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    r.fail(ErrorCode::kUnsupported,
           fmt::format("field 'num_attention_heads' = {} is not divisible by 'num_key_value_heads' = {}",
                       c.num_attention_heads, c.num_key_value_heads));
  }
  if (Reader::present(j, "head_dim")) {
    c.head_dim = r.get_int(j, "head_dim", "head_dim");
    r.require_positive(c.head_dim, "head_dim");
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      r.fail(ErrorCode::kParse,
             fmt::format("field 'head_dim' is absent and 'hidden_size' = {} is not divisible by "
                         "'num_attention_heads' = {}",
                         c.hidden_size, c.num_attention_heads));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0) {
    r.fail(ErrorCode::kUnsupported, fmt::format("field 'head_dim' = {} must be even for rotary embeddings", c.head_dim));
  }
  c.max_position_embeddings = Reader::present(j, "max_position_embeddings")
                                  ? r.get_int(j, "max_position_embeddings", "max_position_embeddings")
                                  : kTransformersDefaultMaxPositions;
  r.require_positive(c.max_position_embeddings, "max_position_embeddings");
  if (Reader::present(j, "rms_norm_eps")) {
    c.rms_norm_eps = r.get_number(j, "rms_norm_eps", "rms_norm_eps");
    if (!(c.rms_norm_eps > 0.0)) {
      r.fail(ErrorCode::kUnsupported, fmt::format("field 'rms_norm_eps' = {} must be positive", c.rms_norm_eps));
    }
  }
  read_rope(r, j, &c.rope);

  // Qwen3Config defaults tie_word_embeddings to false (transformers 4.51 and 5.x).
  c.tie_word_embeddings = Reader::present(j, "tie_word_embeddings") && r.get_bool(j, "tie_word_embeddings");
  c.attention_bias = Reader::present(j, "attention_bias") && r.get_bool(j, "attention_bias");

  if (Reader::present(j, "hidden_act")) {
    std::string act = r.get_string(j, "hidden_act", "hidden_act");
    if (act != "silu") {
      r.fail(ErrorCode::kUnsupported, fmt::format("field 'hidden_act' = '{}' is not supported (only silu)", act));
    }
  }
  if (Reader::present(j, "use_sliding_window") && r.get_bool(j, "use_sliding_window")) {
    r.fail(ErrorCode::kUnsupported, "field 'use_sliding_window' = true is not supported");
  }

  if (Reader::present(j, "eos_token_id")) {
    const json& eos = j["eos_token_id"];
    if (eos.is_array()) {
      for (std::size_t i = 0; i < eos.size(); ++i) {
        json one = {{"id", eos[i]}};
        c.eos_token_ids.push_back(r.get_int(one, "id", fmt::format("eos_token_id[{}]", i)));
      }
    } else {
      c.eos_token_ids.push_back(r.get_int(j, "eos_token_id", "eos_token_id"));
    }
    for (std::int32_t id : c.eos_token_ids) {
      if (id < 0) r.fail(ErrorCode::kParse, fmt::format("field 'eos_token_id' has negative id {}", id));
    }
  }
  if (Reader::present(j, "bos_token_id")) {
    c.bos_token_id = r.get_int(j, "bos_token_id", "bos_token_id");
    if (c.bos_token_id < 0) r.fail(ErrorCode::kParse, fmt::format("field 'bos_token_id' = {} is negative", c.bos_token_id));
  }
  // 5.x writes "dtype", 4.x "torch_dtype".
  for (const char* key : {"dtype", "torch_dtype"}) {
    if (Reader::present(j, key) && j[key].is_string()) {
      c.torch_dtype = j[key].get<std::string>();
      break;
    }
  }
  return c;
}

ModelConfig load_model_config(const std::filesystem::path& model_dir) {
  const std::filesystem::path path = model_dir / "config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) throw_error(ErrorCode::kNotFound, "{}: no such file", path.string());
    throw_error(ErrorCode::kIo, "{}: cannot open", path.string());
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw_error(ErrorCode::kIo, "{}: read failed", path.string());
  return parse_model_config(text.str(), path.string());
}

std::string model_config_to_json(const ModelConfig& config) {
  json j;
  j["architectures"] = {config.architecture};
  j["model_type"] = "qwen3";
  j["vocab_size"] = config.vocab_size;
  j["hidden_size"] = config.hidden_size;
  j["intermediate_size"] = config.intermediate_size;
  j["num_hidden_layers"] = config.num_hidden_layers;
  j["num_attention_heads"] = config.num_attention_heads;
  j["num_key_value_heads"] = config.num_key_value_heads;
  j["head_dim"] = config.head_dim;
  j["max_position_embeddings"] = config.max_position_embeddings;
  j["rms_norm_eps"] = config.rms_norm_eps;
  j["hidden_act"] = "silu";
  json rope = {{"rope_type", config.rope.type}, {"rope_theta", config.rope.theta}};
  if (config.rope.type == "linear") rope["factor"] = config.rope.factor;
  j["rope_parameters"] = rope;
  j["tie_word_embeddings"] = config.tie_word_embeddings;
  j["attention_bias"] = config.attention_bias;
  if (config.eos_token_ids.size() == 1) {
    j["eos_token_id"] = config.eos_token_ids[0];
  } else if (!config.eos_token_ids.empty()) {
    j["eos_token_id"] = config.eos_token_ids;
  }
  if (config.bos_token_id >= 0) j["bos_token_id"] = config.bos_token_id;
  if (!config.torch_dtype.empty()) j["dtype"] = config.torch_dtype;
  return j.dump(2) + "\n";
}

}  // namespace cascade

#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"

namespace cascade {
namespace {

using nlohmann::json;

// Hugging Face refuses headers above 100 MB; so do we, so a corrupt length cannot make us read GBs.
constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;

// Safetensors data is little-endian; F32 tensors are copied as-is.
static_assert(std::endian::native == std::endian::little, "big-endian hosts are not supported");

struct DTypeEntry {
  DType dtype;
  const char* name;
  std::size_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kBool, "BOOL", 1},  {DType::kU8, "U8", 1},        {DType::kI8, "I8", 1},
    {DType::kI16, "I16", 2},    {DType::kU16, "U16", 2},      {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},  {DType::kI32, "I32", 4},      {DType::kU32, "U32", 4},
    {DType::kF32, "F32", 4},    {DType::kI64, "I64", 8},      {DType::kU64, "U64", 8},
    {DType::kF64, "F64", 8},    {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1},
};

std::string shape_str(const std::vector<std::int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

std::string errno_str() { return std::strerror(errno); }

// Reads a non-negative integer from a JSON value; false if it is not one.
bool json_to_u64(const json& v, std::uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<std::uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    std::int64_t s = v.get<std::int64_t>();
    if (s < 0) return false;
    *out = static_cast<std::uint64_t>(s);
    return true;
  }
  return false;
}

}  // namespace

const char* dtype_name(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.name;
  }
  return "?";
}

std::size_t dtype_size(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.size;
  }
  return 0;
}

bool parse_dtype(const std::string& name, DType* out) {
  for (const auto& e : kDTypes) {
    if (name == e.name) {
      *out = e.dtype;
      return true;
    }
  }
  return false;
}

std::int64_t TensorInfo::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

// ---- SafeTensorsFile ---------------------------------------------------------------------------

SafeTensorsFile::SafeTensorsFile(SafeTensorsFile&& other) noexcept { *this = std::move(other); }

SafeTensorsFile& SafeTensorsFile::operator=(SafeTensorsFile&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    map_size_ = std::exchange(other.map_size_, 0);
    tensors_ = std::move(other.tensors_);
    index_ = std::move(other.index_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafeTensorsFile::~SafeTensorsFile() { unmap(); }

void SafeTensorsFile::unmap() {
  if (map_ != nullptr) munmap(map_, map_size_);
  map_ = nullptr;
  map_size_ = 0;
}

SafeTensorsFile SafeTensorsFile::open(const std::filesystem::path& path) {
  const std::string p = path.string();
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    ErrorCode code = errno == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo;
    throw_error(code, "{}: cannot open: {}", p, errno_str());
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    std::string why = errno_str();
    ::close(fd);
    throw_error(ErrorCode::kIo, "{}: cannot stat: {}", p, why);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw_error(ErrorCode::kIo, "{}: not a regular file", p);
  }
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw_error(ErrorCode::kIo, "{}: file is {} bytes, too short for a safetensors header (truncated?)",
                p, file_size);
  }
  void* map = mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  std::string map_error = map == MAP_FAILED ? errno_str() : "";
  ::close(fd);
  if (map == MAP_FAILED) throw_error(ErrorCode::kIo, "{}: mmap failed: {}", p, map_error);

  SafeTensorsFile file;
  file.path_ = path;
  file.map_ = map;
  file.map_size_ = file_size;  // from here on the destructor unmaps, also when we throw
  const auto* bytes = static_cast<const std::byte*>(map);

  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | std::to_integer<std::uint64_t>(bytes[i]);
  if (header_len > file_size - 8) {
    throw_error(ErrorCode::kIo,
                "{}: header length {} runs past the end of the file ({} bytes): truncated or not a "
                "safetensors file",
                p, header_len, file_size);
  }
  if (header_len > kMaxHeaderBytes) {
    throw_error(ErrorCode::kParse, "{}: header length {} exceeds the {} byte limit", p, header_len,
                kMaxHeaderBytes);
  }
  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(bytes + 8),
                         reinterpret_cast<const char*>(bytes + 8 + header_len));
  } catch (const json::exception& e) {
    throw_error(ErrorCode::kParse, "{}: malformed JSON header: {}", p, e.what());
  }
  if (!header.is_object()) {
    throw_error(ErrorCode::kParse, "{}: header is not a JSON object", p);
  }

  const std::uint64_t data_start = 8 + header_len;
  const std::uint64_t data_size = file_size - data_start;
  struct Range {
    std::uint64_t begin, end;
    std::size_t tensor;
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw_error(ErrorCode::kParse, "{}: __metadata__ is not an object", p);
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) {
          throw_error(ErrorCode::kParse, "{}: __metadata__ value '{}' is not a string", p, k);
        }
        file.metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) throw_error(ErrorCode::kParse, "{}: tensor '{}': entry is not an object", p, name);
    for (const char* key : {"dtype", "shape", "data_offsets"}) {
      if (!entry.contains(key)) {
        throw_error(ErrorCode::kParse, "{}: tensor '{}': missing '{}'", p, name, key);
      }
    }
    TensorInfo info;
    info.name = name;
    info.file = path;
    const json& dt = entry["dtype"];
    if (!dt.is_string()) throw_error(ErrorCode::kParse, "{}: tensor '{}': dtype is not a string", p, name);
    if (!parse_dtype(dt.get<std::string>(), &info.dtype)) {
      throw_error(ErrorCode::kUnsupported, "{}: tensor '{}' has unknown dtype '{}'", p, name,
                  dt.get<std::string>());
    }
    const json& shape = entry["shape"];
    if (!shape.is_array()) throw_error(ErrorCode::kParse, "{}: tensor '{}': shape is not an array", p, name);
    // Element count, bounded by the file size so that the products below cannot overflow.
    std::uint64_t numel = 1;
    bool huge = false;
    for (const json& d : shape) {
      std::uint64_t dim = 0;
      if (!json_to_u64(d, &dim) || dim > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        throw_error(ErrorCode::kParse, "{}: tensor '{}': shape {} has an entry that is not a non-negative integer",
                    p, name, shape.dump());
      }
      info.shape.push_back(static_cast<std::int64_t>(dim));
      if (dim == 0) {
        numel = 0;
      } else if (numel != 0 && !huge) {
        if (numel > file_size / dim) huge = true;
        else numel *= dim;
      }
    }
    if (huge && numel != 0) {
      throw_error(ErrorCode::kIo, "{}: tensor '{}' with shape {} is larger than the file ({} bytes)", p,
                  name, shape_str(info.shape), file_size);
    }
    const json& offs = entry["data_offsets"];
    std::uint64_t begin = 0, end = 0;
    if (!offs.is_array() || offs.size() != 2 || !json_to_u64(offs[0], &begin) || !json_to_u64(offs[1], &end)) {
      throw_error(ErrorCode::kParse, "{}: tensor '{}': data_offsets {} is not [begin, end]", p, name,
                  offs.dump());
    }
    if (end < begin) {
      throw_error(ErrorCode::kParse, "{}: tensor '{}': data_offsets [{}, {}] end before they begin", p,
                  name, begin, end);
    }
    const std::uint64_t expected = numel * dtype_size(info.dtype);
    if (end - begin != expected) {
      throw_error(ErrorCode::kParse,
                  "{}: tensor '{}': data_offsets [{}, {}] span {} bytes but {} {} needs {} bytes", p,
                  name, begin, end, end - begin, dt.get<std::string>(), shape_str(info.shape), expected);
    }
    if (end > data_size) {
      throw_error(ErrorCode::kIo,
                  "{}: tensor '{}': data ends at byte {} of the data section but the file holds only {} "
                  "(truncated?)",
                  p, name, end, data_size);
    }
    info.data = bytes + data_start + begin;
    info.nbytes = static_cast<std::size_t>(expected);
    ranges.push_back({begin, end, file.tensors_.size()});
    file.tensors_.push_back(std::move(info));
  }

  // The data section must be covered exactly: no overlaps, holes, or trailing bytes (the format
  // forbids them so that a file has one interpretation).
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t pos = 0;
  const TensorInfo* prev = nullptr;
  for (const Range& r : ranges) {
    const TensorInfo& t = file.tensors_[r.tensor];
    if (r.begin < pos) {
      throw_error(ErrorCode::kParse, "{}: tensor '{}' (bytes [{}, {})) overlaps tensor '{}'", p, t.name,
                  r.begin, r.end, prev->name);
    }
    if (r.begin > pos) {
      throw_error(ErrorCode::kParse, "{}: tensor '{}' starts at byte {} leaving a hole after byte {}", p,
                  t.name, r.begin, pos);
    }
    pos = r.end;
    prev = &t;
  }
  if (pos != data_size) {
    throw_error(ErrorCode::kParse, "{}: data section has {} bytes but the tensors cover {} (trailing data)",
                p, data_size, pos);
  }

  std::vector<TensorInfo> ordered;
  ordered.reserve(ranges.size());
  for (const Range& r : ranges) ordered.push_back(std::move(file.tensors_[r.tensor]));
  file.tensors_ = std::move(ordered);
  for (std::size_t i = 0; i < file.tensors_.size(); ++i) file.index_.emplace(file.tensors_[i].name, i);
  return file;
}

std::vector<std::string> SafeTensorsFile::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& t : tensors_) names.push_back(t.name);
  return names;
}

const TensorInfo* SafeTensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafeTensorsFile::tensor(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (t == nullptr) throw_error(ErrorCode::kNotFound, "{}: no tensor '{}'", path_.string(), name);
  return *t;
}

// ---- SafeTensorsArchive ------------------------------------------------------------------------

SafeTensorsArchive SafeTensorsArchive::open(const std::filesystem::path& model_dir) {
  namespace fs = std::filesystem;
  SafeTensorsArchive archive;
  const fs::path single = model_dir / "model.safetensors";
  const fs::path index_path = model_dir / "model.safetensors.index.json";
  std::error_code ec;
  if (fs::exists(single, ec)) {
    archive.source_ = single;
    archive.files_.push_back(std::make_unique<SafeTensorsFile>(SafeTensorsFile::open(single)));
    for (const auto& t : archive.files_.back()->tensors()) archive.by_name_.emplace(t.name, &t);
    return archive;
  }
  if (!fs::exists(index_path, ec)) {
    throw_error(ErrorCode::kNotFound, "{}: no model.safetensors or model.safetensors.index.json",
                model_dir.string());
  }
  archive.source_ = index_path;
  const std::string ip = index_path.string();
  std::ifstream in(index_path, std::ios::binary);
  if (!in) throw_error(ErrorCode::kIo, "{}: cannot open: {}", ip, errno_str());
  json index;
  try {
    index = json::parse(in);
  } catch (const json::exception& e) {
    throw_error(ErrorCode::kParse, "{}: malformed JSON: {}", ip, e.what());
  }
  if (!index.is_object() || !index.contains("weight_map")) {
    throw_error(ErrorCode::kParse, "{}: missing field 'weight_map'", ip);
  }
  const json& weight_map = index["weight_map"];
  if (!weight_map.is_object()) throw_error(ErrorCode::kParse, "{}: field 'weight_map' is not an object", ip);

  std::map<std::string, std::size_t> shard_index;  // shard file name -> files_ slot
  std::vector<std::pair<std::string, std::string>> listed;
  for (const auto& [name, shard] : weight_map.items()) {
    if (!shard.is_string()) {
      throw_error(ErrorCode::kParse, "{}: weight_map entry for tensor '{}' is not a file name", ip, name);
    }
    const std::string shard_name = shard.get<std::string>();
    const fs::path rel(shard_name);
    // Shards live next to the index; anything else could read arbitrary files.
    if (shard_name.empty() || rel.is_absolute() || rel.has_parent_path() || shard_name == ".." ||
        shard_name == ".") {
      throw_error(ErrorCode::kParse, "{}: weight_map entry for tensor '{}' names '{}', not a file in {}", ip,
                  name, shard_name, model_dir.string());
    }
    listed.emplace_back(name, shard_name);
    if (shard_index.count(shard_name) == 0) {
      const fs::path shard_path = model_dir / rel;
      if (!fs::exists(shard_path, ec)) {
        throw_error(ErrorCode::kNotFound, "{}: shard '{}' (holding tensor '{}') is missing", ip, shard_name,
                    name);
      }
      shard_index[shard_name] = archive.files_.size();
      archive.files_.push_back(std::make_unique<SafeTensorsFile>(SafeTensorsFile::open(shard_path)));
    }
  }
  for (const auto& file : archive.files_) {
    for (const auto& t : file->tensors()) {
      auto [it, inserted] = archive.by_name_.emplace(t.name, &t);
      if (!inserted) {
        throw_error(ErrorCode::kParse, "{}: tensor '{}' appears in both {} and {}", ip, t.name,
                    it->second->file.filename().string(), t.file.filename().string());
      }
    }
  }
  for (const auto& [name, shard_name] : listed) {
    const auto& file = archive.files_[shard_index[shard_name]];
    if (file->find(name) == nullptr) {
      throw_error(ErrorCode::kNotFound, "{}: tensor '{}' is listed in shard '{}' but {} does not hold it", ip,
                  name, shard_name, file->path().string());
    }
  }
  return archive;
}

const TensorInfo* SafeTensorsArchive::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const TensorInfo& SafeTensorsArchive::tensor(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (t == nullptr) throw_error(ErrorCode::kNotFound, "{}: no tensor '{}'", source_.string(), name);
  return *t;
}

std::vector<std::string> SafeTensorsArchive::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(by_name_.size());
  for (const auto& [name, t] : by_name_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

// ---- conversions -------------------------------------------------------------------------------

float bf16_to_f32(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

float f16_to_f32(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  std::uint32_t exp = (bits >> 10) & 0x1Fu;
  std::uint32_t mant = bits & 0x3FFu;
  std::uint32_t out;
  if (exp == 0x1F) {
    out = sign | 0x7F800000u | (mant << 13);  // inf, or NaN keeping its payload
  } else if (exp != 0) {
    out = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  } else if (mant == 0) {
    out = sign;  // signed zero
  } else {
    // Subnormal: value = mant * 2^-24. Normalise so the leading 1 is at bit 10.
    int shift = 0;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      ++shift;
    }
    mant &= 0x3FFu;
    out = sign | (static_cast<std::uint32_t>(127 - 15 + 1 - shift) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(out);
}

std::uint16_t f32_to_bf16(float value) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(value);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  const std::uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>((u + rounding) >> 16);
}

std::uint16_t f32_to_f16(float value) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(value);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t abs = u & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));
  if (abs >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 65520 rounds to inf
  const int exp = static_cast<int>(abs >> 23) - 127;
  if (exp >= -14) {
    // Normal half: keep 10 mantissa bits, round the 13 dropped bits to nearest even. A carry out of
    // the mantissa correctly bumps the exponent.
    std::uint32_t h = ((static_cast<std::uint32_t>(exp + 15)) << 10) | ((abs >> 13) & 0x3FFu);
    const std::uint32_t rest = abs & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return static_cast<std::uint16_t>(sign | h);
  }
  if (exp < -25) return sign;  // below half the smallest subnormal: rounds to zero
  // Subnormal half: value / 2^-24 rounded to nearest even, from the 24-bit significand.
  const std::uint32_t sig = (abs & 0x7FFFFFu) | 0x800000u;  // value = sig * 2^(exp-23)
  const int shift = -exp - 1;                                // sig >> shift == value / 2^-24
  std::uint32_t h = sig >> shift;
  const std::uint32_t rest = sig & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(sign | h);
}

void convert_to_f32(const TensorInfo& tensor, float* out) {
  if (tensor.dtype != DType::kF32 && tensor.dtype != DType::kF16 && tensor.dtype != DType::kBF16) {
    throw_error(ErrorCode::kUnsupported,
                "{}: tensor '{}' has dtype {}; only F32, BF16 and F16 are supported",
                tensor.file.string(), tensor.name, dtype_name(tensor.dtype));
  }
  const std::int64_t n = static_cast<std::int64_t>(tensor.nbytes / dtype_size(tensor.dtype));
  const std::byte* src = tensor.data;
  // Small tensors are not worth waking the thread team.
  const bool parallel = n >= (1 << 16);
  if (tensor.dtype == DType::kF32) {
#pragma omp parallel for schedule(static) if (parallel)
    for (std::int64_t i = 0; i < n; ++i) std::memcpy(out + i, src + 4 * i, 4);
  } else if (tensor.dtype == DType::kBF16) {
#pragma omp parallel for schedule(static) if (parallel)
    for (std::int64_t i = 0; i < n; ++i) {
      std::uint16_t b;
      std::memcpy(&b, src + 2 * i, 2);
      out[i] = bf16_to_f32(b);
    }
  } else {
#pragma omp parallel for schedule(static) if (parallel)
    for (std::int64_t i = 0; i < n; ++i) {
      std::uint16_t b;
      std::memcpy(&b, src + 2 * i, 2);
      out[i] = f16_to_f32(b);
    }
  }
}

std::vector<float> tensor_to_f32(const TensorInfo& tensor) {
  std::vector<float> out(tensor.nbytes / std::max<std::size_t>(dtype_size(tensor.dtype), 1));
  convert_to_f32(tensor, out.data());
  return out;
}

// ---- writer ------------------------------------------------------------------------------------

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       DType dtype, const std::map<std::string, std::string>& metadata) {
  const std::string p = path.string();
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    throw_error(ErrorCode::kUnsupported, "{}: cannot write dtype {} (use F32, BF16 or F16)", p,
                dtype_name(dtype));
  }
  const std::size_t esize = dtype_size(dtype);
  // Sort by name so the file does not depend on the caller's order.
  std::vector<const TensorToWrite*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->name < b->name; });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  std::set<std::string> seen;
  for (const TensorToWrite* t : order) {
    if (t->name == "__metadata__" || !seen.insert(t->name).second) {
      throw_error(ErrorCode::kInvalidArgument, "{}: tensor name '{}' is reserved or repeated", p, t->name);
    }
    std::uint64_t numel = 1;
    for (std::int64_t d : t->shape) {
      if (d < 0) throw_error(ErrorCode::kInvalidArgument, "{}: tensor '{}' has a negative dimension", p, t->name);
      numel *= static_cast<std::uint64_t>(d);
    }
    if (numel != t->data.size()) {
      throw_error(ErrorCode::kInvalidArgument, "{}: tensor '{}' has shape {} ({} elements) but {} values", p,
                  t->name, shape_str(t->shape), numel, t->data.size());
    }
    header[t->name] = {{"dtype", dtype_name(dtype)},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + numel * esize}}};
    offset += numel * esize;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw_error(ErrorCode::kIo, "{}: cannot create: {}", tmp.string(), errno_str());
    std::uint64_t n = header_text.size();
    char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
    out.write(len, 8);
    out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
    std::vector<unsigned char> buf;
    for (const TensorToWrite* t : order) {
      buf.resize(t->data.size() * esize);
      for (std::size_t i = 0; i < t->data.size(); ++i) {
        const float v = t->data[i];
        if (dtype == DType::kF32) {
          std::uint32_t b = std::bit_cast<std::uint32_t>(v);
          for (int k = 0; k < 4; ++k) buf[4 * i + k] = static_cast<unsigned char>(b >> (8 * k));
        } else {
          std::uint16_t b = dtype == DType::kBF16 ? f32_to_bf16(v) : f32_to_f16(v);
          buf[2 * i] = static_cast<unsigned char>(b & 0xFF);
          buf[2 * i + 1] = static_cast<unsigned char>(b >> 8);
        }
      }
      out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
    }
    out.flush();
    if (!out) throw_error(ErrorCode::kIo, "{}: write failed: {}", tmp.string(), errno_str());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw_error(ErrorCode::kIo, "{}: cannot rename {} into place: {}", p, tmp.string(), ec.message());
}

}  // namespace cascade

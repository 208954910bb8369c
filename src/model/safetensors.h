// Safetensors reading and writing: a memory-mapped, fully validated reader for one file, an archive
// that joins the shards named by model.safetensors.index.json, fp32 conversion helpers and a writer.
// Format: 8-byte little-endian header length N, N bytes of JSON header, then the data section, which
// the tensors' data_offsets must cover exactly (no holes, overlaps or trailing bytes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace cascade {

// Every dtype the safetensors format defines. The reader accepts all of them (so any valid file
// opens); conversion to fp32 supports kF32, kF16 and kBF16 only.
enum class DType { kBool, kU8, kI8, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kI64, kU64, kF64,
                   kF8E4M3, kF8E5M2 };

// The format's name for a dtype ("F32", "BF16", ...).
const char* dtype_name(DType dtype);
// Bytes per element.
std::size_t dtype_size(DType dtype);
// Parses a dtype name; returns false if the name is not a safetensors dtype.
bool parse_dtype(const std::string& name, DType* out);

// One tensor inside a mapped file. `data` stays valid while the owning file/archive lives; it may be
// unaligned (use memcpy or the converters below).
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  const std::byte* data = nullptr;
  std::size_t nbytes = 0;
  std::filesystem::path file;  // the file holding the tensor, for error messages

  std::int64_t numel() const;
};

// A read-only memory-mapped .safetensors file. Move-only.
class SafeTensorsFile {
 public:
  // Maps and validates `path`. Throws cascade::Error (kNotFound, kIo, kParse, kUnsupported) naming
  // the file and, where relevant, the tensor.
  static SafeTensorsFile open(const std::filesystem::path& path);

  SafeTensorsFile(SafeTensorsFile&& other) noexcept;
  SafeTensorsFile& operator=(SafeTensorsFile&& other) noexcept;
  SafeTensorsFile(const SafeTensorsFile&) = delete;
  SafeTensorsFile& operator=(const SafeTensorsFile&) = delete;
  ~SafeTensorsFile();

  const std::filesystem::path& path() const { return path_; }
  // Tensor names in data-offset order.
  std::vector<std::string> tensor_names() const;
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorInfo* find(const std::string& name) const;
  // Throws kNotFound naming the file and tensor when absent.
  const TensorInfo& tensor(const std::string& name) const;
  // The optional "__metadata__" string map.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafeTensorsFile() = default;
  void unmap();

  std::filesystem::path path_;
  void* map_ = nullptr;
  std::size_t map_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a model directory: DIR/model.safetensors, or else every shard listed in the
// weight_map of DIR/model.safetensors.index.json, behind one name lookup.
class SafeTensorsArchive {
 public:
  // Throws cascade::Error: no weights file, malformed index, missing shard, a tensor listed in the
  // index but absent from its shard, a tensor present in two shards.
  static SafeTensorsArchive open(const std::filesystem::path& model_dir);

  // What to name in messages about the archive as a whole ("DIR/model.safetensors" or the index).
  const std::filesystem::path& source() const { return source_; }
  // nullptr when absent.
  const TensorInfo* find(const std::string& name) const;
  // Throws kNotFound naming the source and tensor when absent.
  const TensorInfo& tensor(const std::string& name) const;
  // All tensor names, sorted.
  std::vector<std::string> tensor_names() const;
  const std::vector<std::unique_ptr<SafeTensorsFile>>& files() const { return files_; }

 private:
  std::filesystem::path source_;
  std::vector<std::unique_ptr<SafeTensorsFile>> files_;
  std::unordered_map<std::string, const TensorInfo*> by_name_;
};

// IEEE half (binary16) bits to float, exact for every pattern (subnormals, inf, NaN).
float f16_to_f32(std::uint16_t bits);
// bfloat16 bits to float (exact: bf16 is the top half of an fp32).
float bf16_to_f32(std::uint16_t bits);
// Float to bfloat16 bits, round to nearest even; NaN stays NaN (quiet).
std::uint16_t f32_to_bf16(float value);
// Float to IEEE half bits, round to nearest even; overflow gives inf, NaN stays NaN (quiet).
std::uint16_t f32_to_f16(float value);

// Converts an F32/F16/BF16 tensor to fp32 into `out` (numel floats), in parallel with OpenMP.
// Throws kUnsupported naming the file and tensor for any other dtype.
void convert_to_f32(const TensorInfo& tensor, float* out);
std::vector<float> tensor_to_f32(const TensorInfo& tensor);

// A tensor to write: fp32 data converted to the file's dtype.
struct TensorToWrite {
  std::string name;
  std::vector<std::int64_t> shape;
  std::span<const float> data;  // numel(shape) floats
};

// Writes `tensors` to `path` in `dtype` (F32, F16 or BF16), with the header padded with spaces to a
// multiple of 8 bytes as Hugging Face does. Writes to a temporary file and renames it into place.
// Throws cascade::Error on bad arguments (duplicate names, size mismatch) or I/O failure.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       DType dtype, const std::map<std::string, std::string>& metadata = {});

}  // namespace cascade

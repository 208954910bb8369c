#include "model/safetensors.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "model/model_test_util.h"

namespace cascade {
namespace {

using nlohmann::json;
using testing::raw_safetensors;
using testing::read_file;
using testing::TempDir;
using testing::write_file;

// ---- conversions, against the IEEE definitions ----------------------------------------------

// binary16 value from its fields: (-1)^s * 2^(e-15) * (1 + m/1024), subnormal 2^-14 * m/1024.
double f16_reference(std::uint16_t bits) {
  const int s = bits >> 15, e = (bits >> 10) & 0x1F, m = bits & 0x3FF;
  double mag;
  if (e == 0x1F) mag = m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  else if (e == 0) mag = std::ldexp(static_cast<double>(m), -24);
  else mag = std::ldexp(static_cast<double>(1024 + m), e - 25);
  return s ? -mag : mag;
}

// bfloat16: 8 exponent bits (bias 127), 7 mantissa bits.
double bf16_reference(std::uint16_t bits) {
  const int s = bits >> 15, e = (bits >> 7) & 0xFF, m = bits & 0x7F;
  double mag;
  if (e == 0xFF) mag = m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  else if (e == 0) mag = std::ldexp(static_cast<double>(m), -133);
  else mag = std::ldexp(static_cast<double>(128 + m), e - 134);
  return s ? -mag : mag;
}

TEST(ConversionTest, KnownBitPatterns) {
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(bf16_to_f32(0x0001), std::ldexp(1.0f, -133));
  EXPECT_TRUE(std::isinf(bf16_to_f32(0x7F80)));
  EXPECT_TRUE(std::isnan(bf16_to_f32(0x7FC0)));
  EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_to_f32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7E00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7C01)));
  EXPECT_TRUE(std::signbit(f16_to_f32(0x8000)));
  EXPECT_EQ(f16_to_f32(0x8000), 0.0f);
}

TEST(ConversionTest, EveryHalfAndBfloatPatternMatchesDefinition) {
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const double want16 = f16_reference(bits);
    const float got16 = f16_to_f32(bits);
    if (std::isnan(want16)) {
      ASSERT_TRUE(std::isnan(got16)) << std::hex << b;
    } else {
      ASSERT_EQ(static_cast<double>(got16), want16) << std::hex << b;
      ASSERT_EQ(std::signbit(got16), std::signbit(want16)) << std::hex << b;
    }
    const double wantbf = bf16_reference(bits);
    const float gotbf = bf16_to_f32(bits);
    if (std::isnan(wantbf)) {
      ASSERT_TRUE(std::isnan(gotbf)) << std::hex << b;
    } else {
      ASSERT_EQ(static_cast<double>(gotbf), wantbf) << std::hex << b;
      ASSERT_EQ(std::signbit(gotbf), std::signbit(wantbf)) << std::hex << b;
    }
  }
}

// Nearest representable value among sorted non-negative finite `values` (as bit patterns 0..n-1 in
// order), ties to the even pattern; `overflow` is the value just past the largest finite one, which
// maps to the infinity pattern `inf_bits`.
std::uint16_t nearest_reference(double x, const std::vector<double>& values, double overflow,
                                std::uint16_t inf_bits) {
  const double a = std::fabs(x);
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  auto it = std::lower_bound(values.begin(), values.end(), a);
  std::uint16_t hi_bits;
  double hi;
  if (it == values.end()) {
    hi = overflow;
    hi_bits = inf_bits;
  } else {
    hi = *it;
    hi_bits = static_cast<std::uint16_t>(it - values.begin());
  }
  if (hi == a || it == values.begin()) return sign | hi_bits;
  const double lo = *(it - 1);
  const auto lo_bits = static_cast<std::uint16_t>(hi_bits - 1);
  if (a >= overflow) return sign | inf_bits;
  const double dlo = a - lo, dhi = hi - a;
  if (dlo < dhi) return sign | lo_bits;
  if (dhi < dlo) return sign | hi_bits;
  return sign | ((lo_bits & 1) ? hi_bits : lo_bits);
}

std::vector<float> probe_floats() {
  std::mt19937_64 rng(42);
  std::vector<float> xs;
  // Random bit patterns cover every exponent, including f32 subnormals.
  for (int i = 0; i < 200000; ++i) xs.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(rng())));
  // Concentrate on the half range, its subnormals and the overflow edge.
  std::uniform_real_distribution<double> exp_dist(-27.0, 17.0);
  for (int i = 0; i < 200000; ++i) {
    double v = std::exp2(exp_dist(rng)) * ((rng() & 1) ? -1.0 : 1.0);
    xs.push_back(static_cast<float>(v));
  }
  // Exact ties between neighbouring halves and bfloats, and the edges.
  for (std::uint32_t b = 0; b < 0x7C00; b += 7) {
    double lo = f16_reference(static_cast<std::uint16_t>(b)), hi = f16_reference(static_cast<std::uint16_t>(b + 1));
    xs.push_back(static_cast<float>((lo + hi) / 2));
  }
  for (std::uint32_t b = 0; b < 0x7F80; b += 5) {
    double lo = bf16_reference(static_cast<std::uint16_t>(b)), hi = bf16_reference(static_cast<std::uint16_t>(b + 1));
    xs.push_back(static_cast<float>((lo + hi) / 2));
  }
  for (float v : {65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e30f, std::numeric_limits<float>::max(),
                  std::ldexp(1.0f, -25), std::nextafter(std::ldexp(1.0f, -25), 1.0f), std::ldexp(1.0f, -26),
                  0.0f, -0.0f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()}) {
    xs.push_back(v);
    xs.push_back(-v);
  }
  return xs;
}

TEST(ConversionTest, FloatToHalfRoundsToNearestEven) {
  std::vector<double> halves;
  for (std::uint32_t b = 0; b < 0x7C00; ++b) halves.push_back(f16_reference(static_cast<std::uint16_t>(b)));
  for (float x : probe_floats()) {
    if (std::isnan(x)) continue;
    ASSERT_EQ(f32_to_f16(x), nearest_reference(x, halves, 65536.0, 0x7C00)) << x;
  }
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::bit_cast<float>(0x7F800001u)))));  // low-payload NaN
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    if (std::isnan(f16_to_f32(bits))) continue;
    ASSERT_EQ(f32_to_f16(f16_to_f32(bits)), bits) << std::hex << b;
  }
}

TEST(ConversionTest, FloatToBfloatRoundsToNearestEven) {
  std::vector<double> bfs;
  for (std::uint32_t b = 0; b < 0x7F80; ++b) bfs.push_back(bf16_reference(static_cast<std::uint16_t>(b)));
  const double overflow = std::ldexp(1.0, 128);
  for (float x : probe_floats()) {
    if (std::isnan(x)) continue;
    ASSERT_EQ(f32_to_bf16(x), nearest_reference(x, bfs, overflow, 0x7F80)) << x;
  }
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::bit_cast<float>(0x7F800001u)))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::bit_cast<float>(0xFFC00000u)))));
}

// ---- writer and reader -----------------------------------------------------------------------

std::vector<float> ramp(std::size_t n, float scale) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = scale * (static_cast<float>(i) - static_cast<float>(n) / 3.0f);
  return v;
}

TEST(SafeTensorsTest, RoundTripInEveryDtype) {
  TempDir dir;
  const std::vector<float> a = ramp(12, 0.37f), b = ramp(5, -1.5f), scalar = {3.25f};
  const std::vector<float> none;
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(dtype_name(dt));
    const auto path = dir / (std::string(dtype_name(dt)) + ".safetensors");
    write_safetensors(path,
                      {{"w.b", {5}, b}, {"w.a", {3, 4}, a}, {"s", {}, scalar}, {"empty", {0, 3}, none}}, dt,
                      {{"format", "pt"}});
    const std::string bytes = read_file(path);
    std::uint64_t header_len = 0;
    std::memcpy(&header_len, bytes.data(), 8);
    EXPECT_EQ(header_len % 8, 0u) << "header is padded to 8 bytes";
    EXPECT_FALSE(std::filesystem::exists(path.string() + ".tmp"));

    SafeTensorsFile f = SafeTensorsFile::open(path);
    EXPECT_EQ(f.metadata().at("format"), "pt");
    EXPECT_EQ(f.tensors().size(), 4u);
    const TensorInfo& ta = f.tensor("w.a");
    EXPECT_EQ(ta.dtype, dt);
    EXPECT_EQ(ta.shape, (std::vector<std::int64_t>{3, 4}));
    EXPECT_EQ(ta.nbytes, 12 * dtype_size(dt));
    EXPECT_EQ(ta.file, path);
    EXPECT_EQ(f.tensor("s").numel(), 1);
    EXPECT_EQ(f.tensor("empty").nbytes, 0u);
    const std::vector<float> got_a = tensor_to_f32(ta), got_b = tensor_to_f32(f.tensor("w.b"));
    ASSERT_EQ(got_a.size(), a.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      const float want = dt == DType::kF32 ? a[i] : dt == DType::kBF16 ? bf16_to_f32(f32_to_bf16(a[i]))
                                                                        : f16_to_f32(f32_to_f16(a[i]));
      EXPECT_EQ(got_a[i], want) << i;
    }
    EXPECT_EQ(tensor_to_f32(f.tensor("s"))[0], 3.25f);  // exact in every dtype
    EXPECT_EQ(got_b.size(), 5u);
    EXPECT_EQ(f.find("missing"), nullptr);
    EXPECT_CASCADE_ERROR(f.tensor("missing"), path.string(), "missing");
  }
}

TEST(SafeTensorsTest, MovedFileKeepsItsMapping) {
  TempDir dir;
  const std::vector<float> a = ramp(8, 1.0f);
  write_safetensors(dir / "m.safetensors", {{"a", {8}, a}}, DType::kF32);
  std::vector<SafeTensorsFile> files;
  files.push_back(SafeTensorsFile::open(dir / "m.safetensors"));
  SafeTensorsFile moved = std::move(files[0]);
  files.clear();
  EXPECT_EQ(tensor_to_f32(moved.tensor("a")), a);
}

TEST(SafeTensorsTest, WriterRejectsBadInput) {
  TempDir dir;
  const std::vector<float> a = ramp(6, 1.0f);
  EXPECT_CASCADE_ERROR(write_safetensors(dir / "x.safetensors", {{"a", {2, 4}, a}}, DType::kF32), "'a'", "[2, 4]");
  EXPECT_CASCADE_ERROR(write_safetensors(dir / "x.safetensors", {{"a", {6}, a}, {"a", {6}, a}}, DType::kF32), "'a'");
  EXPECT_CASCADE_ERROR(write_safetensors(dir / "x.safetensors", {{"a", {6}, a}}, DType::kI32), "I32");
  EXPECT_CASCADE_ERROR(write_safetensors(dir / "no/such/dir/x.safetensors", {{"a", {6}, a}}, DType::kF32),
                       "no/such/dir");
}

// A valid two-tensor F32 file to corrupt: "a" [2] at [0, 8), "b" [1] at [8, 12).
std::string valid_file_bytes() {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
  return raw_safetensors(header, std::string(12, '\x11'));
}

struct BadFile {
  const char* what;
  std::string bytes;
  std::string expect;  // besides the file name
  ErrorCode code;
};

TEST(SafeTensorsTest, EveryMalformedFileIsANamedError) {
  auto hdr = [](const std::string& h, std::size_t data) { return raw_safetensors(h, std::string(data, '\0')); };
  std::string huge_len = valid_file_bytes();
  huge_len[5] = '\x01';  // header length ~ 2^40
  std::string just_past = valid_file_bytes();
  just_past[0] = static_cast<char>(just_past[0] + 13);  // header length 1 byte past the end
  const std::vector<BadFile> cases = {
      {"empty file", "", "too short", ErrorCode::kIo},
      {"7 bytes", std::string("\x08\0\0\0\0\0\0", 7), "too short", ErrorCode::kIo},
      {"header length past end", huge_len, "past the end", ErrorCode::kIo},
      {"header length just past end", just_past, "past the end", ErrorCode::kIo},
      {"malformed JSON", hdr(R"({"a": {"dtype": "F32",)", 0), "malformed JSON", ErrorCode::kParse},
      {"header not object", hdr("[1, 2, 3]", 0), "not a JSON object", ErrorCode::kParse},
      {"entry not object", hdr(R"({"a": 5})", 0), "'a'", ErrorCode::kParse},
      {"missing dtype", hdr(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4), "dtype", ErrorCode::kParse},
      {"missing shape", hdr(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", 4), "shape", ErrorCode::kParse},
      {"missing offsets", hdr(R"({"a":{"dtype":"F32","shape":[1]}})", 4), "data_offsets", ErrorCode::kParse},
      {"unknown dtype", hdr(R"({"a":{"dtype":"Q4_K","shape":[1],"data_offsets":[0,4]}})", 4), "Q4_K",
       ErrorCode::kUnsupported},
      {"dtype not string", hdr(R"({"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4), "dtype",
       ErrorCode::kParse},
      {"negative dim", hdr(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "shape",
       ErrorCode::kParse},
      {"fractional dim", hdr(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4), "shape",
       ErrorCode::kParse},
      {"absurd shape", hdr(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})", 4),
       "larger than the file", ErrorCode::kIo},
      {"offsets not pair", hdr(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4), "data_offsets",
       ErrorCode::kParse},
      {"offsets reversed", hdr(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", 4), "'a'",
       ErrorCode::kParse},
      {"offsets vs shape", hdr(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4),
       "needs 8 bytes", ErrorCode::kParse},
      {"offsets vs dtype", hdr(R"({"a":{"dtype":"F16","shape":[4],"data_offsets":[0,4]}})", 4), "needs 8 bytes",
       ErrorCode::kParse},
      {"truncated data", hdr(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 10), "truncated",
       ErrorCode::kIo},
      {"overlap",
       hdr(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
           12),
       "overlaps", ErrorCode::kParse},
      {"hole",
       hdr(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
           12),
       "hole", ErrorCode::kParse},
      {"trailing bytes", hdr(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 9), "trailing",
       ErrorCode::kParse},
      {"metadata not strings", hdr(R"({"__metadata__":{"format":1}})", 0), "__metadata__", ErrorCode::kParse},
  };
  TempDir dir;
  for (const BadFile& bf : cases) {
    SCOPED_TRACE(bf.what);
    const auto path = dir / "bad.safetensors";
    write_file(path, bf.bytes);
    EXPECT_CASCADE_ERROR(SafeTensorsFile::open(path), path.string(), bf.expect);
    try {
      SafeTensorsFile::open(path);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), bf.code) << e.what();
    }
  }
  write_file(dir / "ok.safetensors", valid_file_bytes());
  EXPECT_NO_THROW(SafeTensorsFile::open(dir / "ok.safetensors"));
  EXPECT_CASCADE_ERROR(SafeTensorsFile::open(dir / "nope.safetensors"), "nope.safetensors");
}

TEST(SafeTensorsTest, EveryTruncationIsAnError) {
  TempDir dir;
  const std::vector<float> a = ramp(10, 0.5f), b = ramp(3, 2.0f);
  const auto full = dir / "full.safetensors";
  write_safetensors(full, {{"a", {2, 5}, a}, {"b", {3}, b}}, DType::kBF16, {{"format", "pt"}});
  const std::string bytes = read_file(full);
  const auto cut = dir / "cut.safetensors";
  for (std::size_t len = 0; len < bytes.size(); ++len) {
    write_file(cut, bytes.substr(0, len));
    EXPECT_CASCADE_ERROR(SafeTensorsFile::open(cut), cut.string());
  }
}

TEST(SafeTensorsTest, CorruptedBytesNeverCrash) {
  TempDir dir;
  const std::vector<float> a = ramp(10, 0.5f), b = {1.0f};
  const auto full = dir / "full.safetensors";
  write_safetensors(full, {{"a", {2, 5}, a}, {"b", {1}, b}}, DType::kF16);
  const std::string bytes = read_file(full);
  std::mt19937 rng(7);
  const auto bad = dir / "bad.safetensors";
  int opened = 0;
  constexpr int kTrials = 400;
  for (int trial = 0; trial < kTrials; ++trial) {
    std::string mutated = bytes;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) {
      // Mostly the length and header, where parsing happens.
      const std::size_t pos = rng() % std::min<std::size_t>(mutated.size(), 8 + 120);
      mutated[pos] = static_cast<char>(rng() & 0xFF);
    }
    write_file(bad, mutated);
    try {
      SafeTensorsFile f = SafeTensorsFile::open(bad);
      for (const TensorInfo& t : f.tensors()) {
        if (t.dtype == DType::kF32 || t.dtype == DType::kF16 || t.dtype == DType::kBF16) tensor_to_f32(t);
      }
      ++opened;
    } catch (const Error&) {
    }
  }
  EXPECT_LT(opened, kTrials);  // the mutations did reach the parser
}

TEST(SafeTensorsTest, ConvertRejectsNonFloatDtypes) {
  TempDir dir;
  const auto path = dir / "ints.safetensors";
  write_file(path, raw_safetensors(R"({"ids":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0')));
  SafeTensorsFile f = SafeTensorsFile::open(path);
  EXPECT_EQ(f.tensor("ids").dtype, DType::kI32);
  EXPECT_CASCADE_ERROR(tensor_to_f32(f.tensor("ids")), path.string(), "'ids'", "I32");
}

TEST(SafeTensorsTest, LargeTensorConvertsInParallelCorrectly) {
  TempDir dir;
  std::vector<float> big(300000);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (float& v : big) v = nd(rng);
  write_safetensors(dir / "big.safetensors", {{"big", {300, 1000}, big}}, DType::kF16);
  SafeTensorsFile f = SafeTensorsFile::open(dir / "big.safetensors");
  std::vector<float> got = tensor_to_f32(f.tensor("big"));
  for (std::size_t i = 0; i < big.size(); ++i) ASSERT_EQ(got[i], f16_to_f32(f32_to_f16(big[i]))) << i;
}

// ---- archive ----------------------------------------------------------------------------------

TEST(SafeTensorsArchiveTest, SingleFileAndShards) {
  TempDir dir;
  const std::vector<float> a = ramp(4, 1.0f), b = ramp(6, 2.0f), c = ramp(2, 3.0f);
  write_safetensors(dir / "model.safetensors", {{"a", {4}, a}, {"b", {2, 3}, b}}, DType::kF32);
  SafeTensorsArchive single = SafeTensorsArchive::open(dir.path());
  EXPECT_EQ(single.tensor_names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(single.source(), dir / "model.safetensors");

  TempDir sharded;
  write_safetensors(sharded / "model-00001-of-00002.safetensors", {{"a", {4}, a}, {"c", {2}, c}}, DType::kF32);
  write_safetensors(sharded / "model-00002-of-00002.safetensors", {{"b", {2, 3}, b}}, DType::kBF16);
  json index = {{"metadata", {{"total_size", 40}}},
                {"weight_map",
                 {{"a", "model-00001-of-00002.safetensors"},
                  {"b", "model-00002-of-00002.safetensors"},
                  {"c", "model-00001-of-00002.safetensors"}}}};
  write_file(sharded / "model.safetensors.index.json", index.dump());
  SafeTensorsArchive arch = SafeTensorsArchive::open(sharded.path());
  EXPECT_EQ(arch.files().size(), 2u);
  EXPECT_EQ(arch.tensor_names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(tensor_to_f32(arch.tensor("c")), c);
  EXPECT_EQ(arch.tensor("b").dtype, DType::kBF16);
  EXPECT_EQ(arch.tensor("b").file.filename(), "model-00002-of-00002.safetensors");
  EXPECT_EQ(arch.find("zzz"), nullptr);
  EXPECT_CASCADE_ERROR(arch.tensor("zzz"), "model.safetensors.index.json", "zzz");
}

TEST(SafeTensorsArchiveTest, IndexErrorsNameTheShardAndTensor) {
  const std::vector<float> a = ramp(4, 1.0f);
  TempDir dir;
  const auto index_path = dir / "model.safetensors.index.json";
  write_safetensors(dir / "s1.safetensors", {{"a", {4}, a}}, DType::kF32);
  write_safetensors(dir / "s2.safetensors", {{"a", {4}, a}, {"b", {4}, a}}, DType::kF32);

  EXPECT_CASCADE_ERROR(SafeTensorsArchive::open(dir / "nothing_here"), "nothing_here", "model.safetensors");

  write_file(index_path, R"({"weight_map": {"a": "s1.safetensors", "x": "missing-shard.safetensors"}})");
  EXPECT_CASCADE_ERROR(SafeTensorsArchive::open(dir.path()), "model.safetensors.index.json",
                       "missing-shard.safetensors", "'x'");
  write_file(index_path, R"({"weight_map": {"a": "s1.safetensors")");
  EXPECT_CASCADE_ERROR(SafeTensorsArchive::open(dir.path()), "model.safetensors.index.json", "malformed JSON");
  write_file(index_path, R"({"metadata": {}})");
  EXPECT_CASCADE_ERROR(SafeTensorsArchive::open(dir.path()), "model.safetensors.index.json", "weight_map");
  write_file(index_path, R"({"weight_map": ["s1.safetensors"]})");
  EXPECT_CASCADE_ERROR(SafeTensorsArchive::open(dir.path()), "model.safetensors.index.json", "weight_map");
  write_file(index_path, R"({"weight_map": {"a": 3}})");
  EXPECT_CASCADE_ERROR(SafeTensorsArchive::open(dir.path()), "model.safetensors.index.json", "'a'");
  write_file(index_path, R"({"weight_map": {"a": "../s1.safetensors"}})");
  EXPECT_CASCADE_ERROR(SafeTensorsArchive::open(dir.path()), "model.safetensors.index.json", "../s1.safetensors");
  write_file(index_path, R"({"weight_map": {"a": "/etc/passwd"}})");
  EXPECT_CASCADE_ERROR(SafeTensorsArchive::open(dir.path()), "model.safetensors.index.json", "/etc/passwd");
  // Listed in s1 but held only by s2.
  write_file(index_path, R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}})");
  EXPECT_CASCADE_ERROR(SafeTensorsArchive::open(dir.path()), "'b'", "s1.safetensors");
  // 'a' is in both shards.
  write_file(index_path, R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  EXPECT_CASCADE_ERROR(SafeTensorsArchive::open(dir.path()), "'a'", "s1.safetensors", "s2.safetensors");
  // A corrupt shard reports the shard's own name.
  write_file(dir / "s3.safetensors", std::string("\x40\0\0\0\0\0\0\0{", 9));
  write_file(index_path, R"({"weight_map": {"c": "s3.safetensors"}})");
  EXPECT_CASCADE_ERROR(SafeTensorsArchive::open(dir.path()), "s3.safetensors", "past the end");
}

}  // namespace
}  // namespace cascade

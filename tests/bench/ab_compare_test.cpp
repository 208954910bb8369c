// bench/ab_compare.py, the table of an A/B run (bench/ab_switch.sh), on the benchmark output of a
// real H100 run (tests/fixtures/bench/*_h100.json) against edited copies of it whose times are
// scaled by known factors: each row must show both sides' ranges over the rounds and new / old of
// the medians; eager decode rows are left out; bad input exits 2.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "bench/bench_json.h"
#include "common/run_command.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using cascade::test::contains;
using cascade::test::load_json;

const fs::path kSource = CASCADE_SOURCE_DIR;

cascade::test::CommandResult compare(const std::string& args) {
  return cascade::test::run_bench_script("ab_compare.py", args);
}


std::string write_temp(const json& j, const std::string& name) {
  return cascade::test::write_temp_json(j, "cascade_ab", name).string();
}

// The fixture's decode and attention runs with every time multiplied by `f`.
json scaled_decode(double f) {
  json d = load_json(kSource / "tests/fixtures/bench/decode_h100.json");
  for (auto& r : d["results"]) r["step_us"] = r["step_us"].get<double>() * f;
  return d;
}
json scaled_attention(double f) {
  json a = load_json(kSource / "tests/fixtures/bench/attention_h100.json");
  for (auto& s : a["shapes"]) {
    s["flat_us"] = s["flat_us"].get<double>() * f;
    s["cascade_us"] = s["cascade_us"].get<double>() * f;
  }
  return a;
}

TEST(AbCompare, RangesAndRatiosOfTheMedians) {
  CASCADE_REQUIRE_PYTHON();
  const std::string d_old = (kSource / "tests/fixtures/bench/decode_h100.json").string();
  const std::string a_old = (kSource / "tests/fixtures/bench/attention_h100.json").string();
  // New: two rounds at 0.9 and 0.8 of old (median 0.85); old: the fixture and a copy at 1.1
  // (median 1.05): new / old = 0.85 / 1.05 = 0.810 everywhere.
  const std::string d1 = write_temp(scaled_decode(0.9), "d1.json"), d2 = write_temp(scaled_decode(0.8), "d2.json");
  const std::string d3 = write_temp(scaled_decode(1.1), "d3.json");
  const std::string a1 = write_temp(scaled_attention(0.9), "a1.json"), a2 = write_temp(scaled_attention(0.8), "a2.json");
  const std::string a3 = write_temp(scaled_attention(1.1), "a3.json");
  const auto r = compare("--new " + d1 + " " + d2 + " " + a1 + " " + a2 + " --old " + d_old + " " + d3 + " " +
                         a_old + " " + a3);
  ASSERT_EQ(r.status, 0) << r.out;
  // Batch 64 with graphs: 2935.0 us in the fixture.
  EXPECT_TRUE(contains(r.out, "| 512 | 64 | 2348.0-2641.5 | 2935.0-3228.5 | 0.810 |")) << r.out;
  // 4096/128/64: flat 267.55, cascade 60.93 us.
  EXPECT_TRUE(contains(r.out, "| 4096/128/64 | flat | 214.0-240.8 | 267.6-294.3 | 0.810 |")) << r.out;
  EXPECT_TRUE(contains(r.out, "| 4096/128/64 | cascade | 48.7-54.8 | 60.9-67.0 | 0.810 |")) << r.out;
  // The eager rows (batch 64 eager: 3196.9 us) are not compared.
  EXPECT_FALSE(contains(r.out, "3196.9")) << r.out;
  EXPECT_FALSE(contains(r.out, "WARNING")) << r.out;
}

TEST(AbCompare, WarnsAcrossDevicesAndRefusesBadInput) {
  CASCADE_REQUIRE_PYTHON();
  json other = scaled_decode(1.0);
  other["device"] = "NVIDIA H200";
  const std::string o = write_temp(other, "other.json");
  const std::string d = (kSource / "tests/fixtures/bench/decode_h100.json").string();
  const auto r = compare("--new " + o + " --old " + d);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "WARNING: the runs come from different devices")) << r.out;
  EXPECT_TRUE(contains(r.out, "| 512 | 64 | 2935.0 | 2935.0 | 1.000 |")) << r.out;
  EXPECT_EQ(compare("--new " + d).status, 2);                          // no old side
  EXPECT_EQ(compare("--new " + d + " --old /nonexistent.json").status, 2);
  const std::string bogus = write_temp(json{{"device", "x"}}, "bogus.json");
  EXPECT_EQ(compare("--new " + d + " --old " + bogus).status, 2);       // neither bench
  const std::string attention = (kSource / "tests/fixtures/bench/attention_h100.json").string();
  EXPECT_EQ(compare("--new " + d + " --old " + attention).status, 2);   // no case on both sides
}

}  // namespace

// bench/cuda_targets.py, the report of the CUDA backend's performance targets, on the benchmark
// output of a real H100 run (tests/fixtures/bench/*_h100.json, written by cuda_decode_bench and
// cuda_attention_bench on the card) and on edited copies of it: each target is judged from the
// right rows, and --strict fails exactly when a target is not met or the output checks failed.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_json.h"
#include "common/run_command.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using cascade::test::contains;
using cascade::test::load_json;

const fs::path kSource = CASCADE_SOURCE_DIR;

using Report = cascade::test::CommandResult;

Report run(const fs::path& decode, const fs::path& attention, bool strict) {
  return cascade::test::run_bench_script("cuda_targets.py",
                                         decode.string() + " " + attention.string() + (strict ? " --strict" : ""));
}


fs::path write_temp(const json& j, const std::string& name) {
  return cascade::test::write_temp_json(j, "cascade_targets", name);
}

// Runs the report on a decode and an attention fixture: each expected line is in it, and --strict
// exits with `strict_status`.
void expect_report(const std::string& decode, const std::string& attention, const std::vector<std::string>& lines,
                   int strict_status) {
  const fs::path d = kSource / "tests/fixtures/bench" / decode;
  const fs::path a = kSource / "tests/fixtures/bench" / attention;
  const Report r = run(d, a, false);
  ASSERT_EQ(r.status, 0) << r.out;
  for (const std::string& line : lines) EXPECT_TRUE(contains(r.out, line)) << line << "\n" << r.out;
  EXPECT_EQ(run(d, a, true).status, strict_status);
}

TEST(CudaTargets, JudgesTheH100Run) {
  CASCADE_REQUIRE_PYTHON();
  expect_report("decode_h100.json", "attention_h100.json",
                {"| 1 | 1184.2 | 418.9 | 2.83 | 844 |", "| 16384/128/256 | 3952.4 | 307.4 | 67.8 | 4.53 | 0.08 |",
                 "| decode within 1.5x of the floor at batch >= 64 | NOT MET | worst 1.77x at batch 64 |",
                 "| >= 1000 tokens/s at batch 1 | NOT MET | 844 tokens/s |",
                 "| cascade within 1.25x of the shared-read floor | NOT MET | worst 4.53x at 16384/128/256 |",
                 "| cascade at most 5% slower than flat with nothing shared | met | worst 1.01x at 0/128/64 |"},
                1);
}

TEST(CudaTargets, StrictPassesOnlyWhenEveryTargetIsMet) {
  CASCADE_REQUIRE_PYTHON();
  json d = load_json(kSource / "tests/fixtures/bench/decode_h100.json");
  json a = load_json(kSource / "tests/fixtures/bench/attention_h100.json");
  for (auto& r : d["results"]) {
    if (r["batch"].get<int>() >= 64) r["step_over_floor"] = 1.45;
    if (r["batch"].get<int>() == 1) r["tokens_per_s"] = 1200;
    if (r["batch"].get<int>() == 64) r["cuda_graphs"] = true;
  }
  // Eager rows do not count: a slow eager row must not fail the decode target.
  json eager = d["results"][0];
  eager["cuda_graphs"] = false;
  eager["batch"] = 64;
  eager["step_over_floor"] = 9.0;
  d["results"].push_back(eager);
  for (auto& s : a["shapes"]) {
    s["cascade_over_floor"] = 1.2;
    if (s["prefix"].get<int>() == 0) s["cascade_over_flat"] = 1.04;
  }
  const fs::path dp = write_temp(d, "decode.json"), ap = write_temp(a, "attention.json");
  Report r = run(dp, ap, true);
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_FALSE(contains(r.out, "NOT MET")) << r.out;
  // One shape 1% over the flat-decode allowance, or failed output checks, and --strict fails.
  a["shapes"][0]["cascade_over_flat"] = 1.06;
  write_temp(a, "attention.json");
  r = run(dp, ap, true);
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "with nothing shared | NOT MET | worst 1.06x at 0/128/64 |")) << r.out;
  a["shapes"][0]["cascade_over_flat"] = 1.0;
  a["checks_passed"] = false;
  write_temp(a, "attention.json");
  r = run(dp, ap, true);
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "output checks FAILED")) << r.out;
  fs::remove(dp);
  fs::remove(ap);
}

// The run of scripts/gpu_check.sh on the H100 after overlap scheduling landed (decode_h100_overlap.json,
// attention_h100_v23.json): both decode columns, the targets judged on the overlapped steps, and a
// ratio that would print as the limit itself printed with three decimals.
TEST(CudaTargets, JudgesTheOverlappedH100Run) {
  CASCADE_REQUIRE_PYTHON();
  expect_report("decode_h100_overlap.json", "attention_h100_v23.json",
                {"| 64 | 2490.1 | 2463.5 | 1644.0 | 1.51 | 1.50 | 25979 |",
                 "| decode within 1.5x of the floor at batch >= 64 | met | worst 1.498x at batch 64 |",
                 "| >= 1000 tokens/s at batch 1 | met | 1068 tokens/s |",
                 "| cascade within 1.25x of the shared-read floor | NOT MET | worst 2.19x at 16384/128/256 |"},
                1);
}

// Where the decode bench timed overlapped steps too (the engine's greedy decode with
// overlap_scheduling), the decode targets judge those and the table shows both.
TEST(CudaTargets, JudgesOverlappedStepsWhereTimed) {
  CASCADE_REQUIRE_PYTHON();
  json d = load_json(kSource / "tests/fixtures/bench/decode_h100.json");
  const fs::path a = kSource / "tests/fixtures/bench/attention_h100.json";
  for (auto& r : d["results"]) {
    const double fl = r["floor_us"].get<double>();
    r["step_us"] = 1.52 * fl;
    r["step_over_floor"] = 1.52;
    r["overlap_step_us"] = 1.48 * fl;
    r["overlap_over_floor"] = 1.48;
    if (r["batch"].get<int>() == 1) {  // 1000 tokens/s synchronous, 990 overlapped
      r["step_us"] = 1000.0;
      r["tokens_per_s"] = 1000;
      r["overlap_step_us"] = 1010.1;
    }
  }
  const fs::path dp = write_temp(d, "decode_overlap.json");
  const Report r = run(dp, a, false);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "| batch | step (us) | overlapped (us) | floor (us) |")) << r.out;
  EXPECT_TRUE(contains(r.out, "| decode within 1.5x of the floor at batch >= 64 | met | worst 1.48x at batch")) << r.out;
  EXPECT_TRUE(contains(r.out, "| >= 1000 tokens/s at batch 1 | NOT MET | 990 tokens/s |")) << r.out;
  fs::remove(dp);
}

}  // namespace

// bench/ncu_sass_regions.py, a kernel's warp-stall samples by region of its SASS, on a small
// export laid out as ncu's `--page source --csv --print-source sass` writes it: 4 warps, an
// early-return copy of the PDL wait that never runs, a prologue on each side of the wait, a loop
// executed 10 times a warp and an exit. Every expected share and count follows from the rows
// below; the real export of NOTES v19 (docs/data/ncu_v19) must parse too, plain or gzipped; bad
// input exits 2; --per counts instructions per unit of work.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "bench/bench_json.h"
#include "common/run_command.h"

namespace {

namespace fs = std::filesystem;
using cascade::test::contains;

const fs::path kSource = CASCADE_SOURCE_DIR;

cascade::test::CommandResult regions(const std::string& args) {
  return cascade::test::run_bench_script("ncu_sass_regions.py", args);
}

// One SASS row: source, samples (split as long_sb, wait) and executions.
std::string row(int addr, const std::string& src, int long_sb, int wait, int exec) {
  const int samples = long_sb + wait;
  return "\"0x" + std::to_string(1000 + addr) + "\",\"" + src + "\",\"" + std::to_string(samples) + "\",\"" +
         std::to_string(samples) + "\",\"" + std::to_string(samples) + "\",\"" + std::to_string(exec) + "\",\"" +
         std::to_string(long_sb) + "\",\"" + std::to_string(wait) + "\",\"0\"\n";
}

fs::path write_export() {
  const fs::path p = cascade::test::process_temp_file("cascade_sass", "layer_sass.csv");
  std::ofstream f(p);
  f << "\"Kernel Name\",\"void k(Params)\",\n";
  f << "\"Address\",\"Source\",\"Warp Stall Sampling (All Samples)\",\"Warp Stall Sampling (Not-issued "
       "Samples)\",\"# Samples\",\"Instructions Executed\",\"stall_long_sb\",\"stall_wait\",\"stall_long_sb (Not "
       "Issued)\"\n";
  f << row(0, "LDC R1, c[0x0][0x28]", 10, 0, 4);   // before the wait: 20 samples, 12 instructions
  f << row(1, "ACQBULK", 0, 0, 0);                  // the early return's wait, never executed
  f << row(2, "IMAD R2, R3, R4, RZ", 0, 5, 4);
  f << row(3, "IMAD R5, R3, R4, RZ", 0, 5, 4);
  f << row(4, "ACQBULK", 0, 0, 4);                  // after it: 20 samples, 8 instructions
  f << row(5, "LDG.E R5, desc[UR6][R2.64]", 20, 0, 4);
  for (int i = 6; i < 10; ++i) f << row(i, "HMMA.16816.F32.BF16 R8, R12, R16, R8", 0, 10, 40);  // loop: 40, 200
  f << row(10, "@P0 BRA 0x1060", 0, 0, 40);
  f << row(11, "EXIT", 0, 5, 4);                    // after the loop: 5 samples, 4 instructions
  return p;
}

TEST(NcuSassRegions, SharesAndInstructionsPerRegion) {
  CASCADE_REQUIRE_PYTHON();
  const fs::path csv = write_export();
  const auto r = regions(csv.string());
  ASSERT_EQ(r.status, 0) << r.out;
  // 85 samples in all; 4 warps (the first instruction's count).
  EXPECT_TRUE(contains(r.out, "warps 4, warp stall samples 85, instructions 12")) << r.out;
  EXPECT_TRUE(contains(r.out, "| before the PDL wait | 20 | 23.5% | 3 | ")) << r.out;
  EXPECT_TRUE(contains(r.out, "| after the wait, before the loop | 20 | 23.5% | 2 | long_sb 100% |")) << r.out;
  EXPECT_TRUE(contains(r.out, "| loop | 40 | 47.1% | 50 | wait 100% |")) << r.out;
  EXPECT_TRUE(contains(r.out, "| after the loop | 5 | 5.9% | 1 | wait 100% |")) << r.out;
  EXPECT_TRUE(contains(r.out, "loop instructions per warp by opcode: HMMA 40, BRA 10")) << r.out;
  // The same export gzipped.
  const std::string gz = csv.string() + ".gz";
  ASSERT_EQ(cascade::test::run_command("gzip -c " + csv.string() + " > " + gz).status, 0);
  const auto z = regions(gz);
  ASSERT_EQ(z.status, 0) << z.out;
  EXPECT_EQ(z.out, r.out);
}

// --per OP:N: the whole kernel's instructions per N executions of OP. The export runs HMMA 160
// times (4 a warp-iteration, 40 units of 4) among 224 executions in all: 5.6 a unit.
TEST(NcuSassRegions, InstructionsPerUnitOfWork) {
  CASCADE_REQUIRE_PYTHON();
  const fs::path csv = write_export();
  const auto r = regions(csv.string() + " --per HMMA:4");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "instructions per unit (4 x HMMA; 40 units): 6\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "HMMA 4.0, BRA 1.0, IMAD 0.2, ")) << r.out;
  EXPECT_EQ(regions(csv.string() + " --per HGMMA:16").status, 2);  // never executed
}

TEST(NcuSassRegions, ReadsTheV19ExportAndRefusesBadInput) {
  CASCADE_REQUIRE_PYTHON();
  const auto r = regions((kSource / "docs/data/ncu_v19/call1_h200_layer64_bs_sass.csv.gz").string());
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "warps 1536, warp stall samples 3756")) << r.out;
  EXPECT_TRUE(contains(r.out, "| loop | 2454 | 65.3% | 6480 |")) << r.out;
  EXPECT_EQ(regions("/nonexistent.csv").status, 2);
  EXPECT_EQ(regions((kSource / "tests/fixtures/bench/decode_h100.json").string()).status, 2);  // not an export
}

}  // namespace

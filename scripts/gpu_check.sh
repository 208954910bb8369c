#!/usr/bin/env bash
# GPU check, run on the GPU machine from the repository root:
#   scripts/gpu_check.sh                 configure + build (Release, sm_90a) and run the gpu tests
#   PREBUILT=build-cuda scripts/gpu_check.sh   run an already built build-cuda/test_cuda (built
#                                        elsewhere with the same CUDA major version) instead
# Then the benchmarks (cuda_decode_bench, cuda_attention_bench, and cuda_gemm_bench where built;
# BENCH=0 skips them) and bench/cuda_targets.py's report of the performance targets. Prints the
# check table, then the targets table, last. Logs, the gtest XML and the benchmark JSON go to $OUT (or ./out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-out}"
mkdir -p "$OUT_DIR"
BUILD="${BUILD:-build-gpu}"
export CASCADE_SOURCE_DIR="$PWD"  # fixtures for binaries built on another machine
export LD_LIBRARY_PATH="$PWD/.devlibs:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUT_DIR/gpu.txt"

if [[ -n "${PREBUILT:-}" ]]; then
  BIN="$PREBUILT/test_cuda"
  build_status="prebuilt"
else
  # CMake 3.25 does not know that nvcc 13 accepts -std=c++20; tell it.
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCASCADE_CUDA_ARCHS=90a-real \
    -DCMAKE_CUDA20_STANDARD_COMPILE_OPTION=-std=c++20 \
    -DCMAKE_CUDA20_EXTENSION_COMPILE_OPTION=-std=c++20 >"$OUT_DIR/configure.log" 2>&1 &&
    cmake --build "$BUILD" -j"$(nproc)" --target test_cuda cascade_cli cuda_decode_bench cuda_attention_bench cuda_gemm_bench \
      >"$OUT_DIR/build.log" 2>&1
  build_status=$([[ $? -eq 0 ]] && echo ok || echo FAILED)
  [[ "$build_status" == ok ]] || tail -40 "$OUT_DIR/configure.log" "$OUT_DIR/build.log"
  BIN="$BUILD/test_cuda"
fi

test_status=skipped
if [[ -x "$BIN" ]]; then
  "$BIN" --gtest_output="xml:$OUT_DIR/test_cuda.xml" 2>&1 | tee "$OUT_DIR/test_cuda.log"
  test_status=$([[ ${PIPESTATUS[0]} -eq 0 ]] && echo ok || echo FAILED)
fi

# A short end-to-end run of the CLI on the GPU under compute-sanitizer (memcheck): cascade on, a
# shared system prompt and documents, prefill and decode, with graphs.
CLI="${PREBUILT:-$BUILD}/cascade"
sanitizer_status=skipped
if [[ -x "$CLI" ]] && command -v compute-sanitizer >/dev/null; then
  python3 - "$OUT_DIR/sanitize_requests.jsonl" <<'PY'
import json, sys
sys_ids = [(i * 7 + 3) % 250 for i in range(40)]
docs = [[(i * 13 + d) % 250 for i in range(30 + 9 * d)] for d in range(2)]
with open(sys.argv[1], "w") as f:
    for q in range(6):
        segs = [{"kind": "system", "ids": sys_ids}, {"kind": "context", "ids": docs[q % 2]},
                {"kind": "query", "ids": [q, q + 1]}]
        f.write(json.dumps({"segments": segs, "max_tokens": 6, "temperature": 0, "ignore_eos": True}) + "\n")
PY
  compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
    "$CLI" generate --device cuda --model tests/fixtures/models/gpu_hd64 --requests "$OUT_DIR/sanitize_requests.jsonl" \
    --json --cascade on --kv-cache-mb 16 >"$OUT_DIR/sanitizer.log" 2>&1
  rc=$?
  sanitizer_status=$([[ $rc -eq 0 ]] && echo "ok (no errors)" || echo "FAILED (rc $rc)")
  tail -5 "$OUT_DIR/sanitizer.log"
fi

# Benchmarks (after the checks, so a broken build or kernel is reported before any timing).
DIR="${PREBUILT:-$BUILD}"
bench_status=skipped
if [[ "${BENCH:-1}" != 0 && -x "$DIR/cuda_decode_bench" && -x "$DIR/cuda_attention_bench" ]]; then
  "$DIR/cuda_decode_bench" "$OUT_DIR/decode.json" >"$OUT_DIR/decode_bench.log" 2>&1 &&
    "$DIR/cuda_attention_bench" "$OUT_DIR/attention.json" >"$OUT_DIR/attention_bench.log" 2>&1 &&
    { [[ ! -x "$DIR/cuda_gemm_bench" ]] || "$DIR/cuda_gemm_bench" "$OUT_DIR/gemm.json" >"$OUT_DIR/gemm_bench.log" 2>&1; }
  bench_status=$([[ $? -eq 0 ]] && echo ok || echo FAILED)
  [[ "$bench_status" == ok ]] || tail -20 "$OUT_DIR/decode_bench.log" "$OUT_DIR/attention_bench.log" "$OUT_DIR/gemm_bench.log" 2>/dev/null
fi

echo
echo "| step  | status |"
echo "|-------|--------|"
echo "| build | $build_status |"
# gtest names a failed or skipped test twice (where it ran and in the closing list): count names.
count_tests() { grep -oE "^\[ *$1 *\] [A-Za-z][A-Za-z0-9_/.]*" "$OUT_DIR/test_cuda.log" 2>/dev/null | awk '{print $NF}' | sort -u | wc -l; }
echo "| tests | $test_status ($(count_tests OK) passed, $(count_tests FAILED) failed, $(count_tests SKIPPED) skipped) |"
echo "| compute-sanitizer (CLI, cascade on) | $sanitizer_status |"
echo "| benchmarks | $bench_status |"
if [[ "$bench_status" == ok ]]; then
  echo
  python3 bench/cuda_targets.py "$OUT_DIR/decode.json" "$OUT_DIR/attention.json"
fi
[[ "$test_status" == ok && "$build_status" != FAILED && "$sanitizer_status" != FAILED* && "$bench_status" != FAILED ]]

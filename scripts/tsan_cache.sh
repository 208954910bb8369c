#!/usr/bin/env bash
# Builds the cache tests with ThreadSanitizer (CPU only) in their own build dir and runs them.
# The cache code uses no OpenMP; libgomp is linked into the library but runs no parallel region
# here, so a report from these tests is a real race. Usage: scripts/tsan_cache.sh [gtest args]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-cache-tsan}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCASCADE_TSAN=ON \
  -DCASCADE_WITH_CUDA=OFF -DCASCADE_BUILD_TESTS=ON >/dev/null
cmake --build "$BUILD_DIR" -j"${JOBS:-2}" --target test_cache
# halt_on_error: any race fails the run; exitcode makes it visible to CI.
TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 ${TSAN_OPTIONS:-}" \
  "$BUILD_DIR/test_cache" "$@"
echo "tsan_cache: test_cache is clean under ThreadSanitizer"

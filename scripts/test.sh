#!/usr/bin/env bash
# Builds Cascade with its tests and runs every test that needs no GPU (GPU tests are built when nvcc
# is present and skip cleanly without a GPU), then the chunk registry's tests under ThreadSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCASCADE_BUILD_TESTS=ON >/dev/null
cmake --build build -j2
ctest --test-dir build --output-on-failure -j2 --timeout 900
bash scripts/tsan_cache.sh

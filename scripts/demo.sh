#!/usr/bin/env bash
# Builds Cascade and runs the main job on the embedded default model (no download needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCASCADE_BUILD_TESTS=OFF >/dev/null
cmake --build build -j2 --target cascade_cli
build/cascade generate "$@"

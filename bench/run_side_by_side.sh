#!/usr/bin/env bash
# Regenerates every side-by-side number, table and plot on one GPU machine (an H100 here):
# decode attention kernels (Cascade vs FlashInfer) and end to end (cascade CLI vs transformers).
#
# usage: bash bench/run_side_by_side.sh [BIN_DIR]
#   BIN_DIR (default build-sbs) holds the prebuilt `cascade` CLI and libcascade_attn.so from
#   bench/build_side_by_side.sh; .devlibs/ may hold shared libraries the image lacks, .whl/ the
#   FlashInfer wheels (flashinfer-python 0.5.3, apache-tvm-ffi and friends).
# Results go to $OUT (or out/side_by_side): kernels.json, e2e.json, tables.md, PNGs, run.log.
# SKIP_E2E=1 / SKIP_KERNELS=1 run one half; QUICK=1 runs tiny shapes (smoke test).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-build-sbs}"
O="${OUT:-out/side_by_side}"
mkdir -p "$O"
LOG="$O/run.log"
export LD_LIBRARY_PATH="$PWD/.devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1 FLASHINFER_CUDA_ARCH_LIST="9.0a" MAX_JOBS="${MAX_JOBS:-12}"
Q=()
[[ "${QUICK:-0}" == 1 ]] && Q=(--quick)
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv; \
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } >>"$LOG" 2>&1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 &&
    export PYTHONPATH=/tmp/site
fi
# FlashInfer JIT-compiles its kernels on first use: do it on the CPUs while the engine runs.
WARM=""
if [[ "${SKIP_KERNELS:-0}" != 1 ]]; then
  timeout "${WARM_TIMEOUT:-420}" python3 bench/side_by_side_kernels.py --lib "$BIN/libcascade_attn.so" \
    --out "$O" --warm-only >/tmp/sbs_fi_warm.log 2>&1 &
  WARM=$!
fi
if [[ "${SKIP_E2E:-0}" != 1 ]]; then
  timeout "${E2E_TIMEOUT:-330}" python3 bench/side_by_side_e2e.py --cli "$BIN/cascade" --out "$O" "${Q[@]}" 2>&1 | tee -a "$LOG"
fi
if [[ -n "$WARM" ]]; then
  wait "$WARM"; echo "flashinfer warm-up exit $?" >>"$LOG"
  tail -30 /tmp/sbs_fi_warm.log >>"$LOG"
  timeout "${KERNEL_TIMEOUT:-240}" python3 bench/side_by_side_kernels.py --lib "$BIN/libcascade_attn.so" \
    --out "$O" "${Q[@]}" 2>&1 | tee -a "$LOG"
fi
python3 bench/side_by_side_plot.py --dir "$O" 2>&1 | tee -a "$LOG"
cat "$O/tables.md" 2>/dev/null

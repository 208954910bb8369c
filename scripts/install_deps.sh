#!/usr/bin/env bash
# Installs what Cascade needs on Debian 12 (idempotent): compilers and libraries via apt, the Python
# packages used by tests and fixture scripts via pip. Skips what is already present.
set -euo pipefail
need_apt=()
for pkg in build-essential cmake pkg-config nlohmann-json3-dev libpcre2-dev libutf8proc-dev \
           libcli11-dev libfmt-dev libcpp-httplib-dev libssl-dev libgtest-dev libomp-dev curl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
PY=${PYTHON:-python3}
missing=$($PY - <<'PY'
import importlib.util
mods = {"tokenizers": "tokenizers", "numpy": "numpy", "openai": "openai", "requests": "requests"}
print(" ".join(p for m, p in mods.items() if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  $PY -m pip install -q $missing
fi

#!/usr/bin/env bash
# CPU decode throughput of the embedded default model (4 layers, hidden 128, vocab 259) and of a
# 0.6B-layer-shaped small model, through the real `cascade generate` path.
# usage: bench/cpu_generate_bench.sh   (needs build/cascade)
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python3 - "$tmp/req.jsonl" <<'PY'
import json, random, sys
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for i in range(64):
        f.write(json.dumps({"prompt_ids": [rng.randrange(250) for _ in range(64)], "max_tokens": 64,
                            "temperature": 0, "ignore_eos": True}) + "\n")
PY
echo "| batch | prompt tokens | generated | generate() seconds | generated tokens/s | whole command seconds |"
echo "|---|---|---|---|---|---|"
for batch in 1 16 64; do
  head -n "$batch" "$tmp/req.jsonl" > "$tmp/b.jsonl"
  start=$(date +%s.%N)
  line=$(build/cascade generate --device cpu --requests "$tmp/b.jsonl" | tail -1)
  end=$(date +%s.%N)
  # "N requests, T tokens generated in S s (R tokens/s); ..."
  python3 - "$batch" "$line" "$start" "$end" <<'PY'
import re, sys
batch, line, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
m = re.search(r"(\d+) tokens generated in ([\d.]+) s \(([\d.]+) tokens/s\)", line)
print(f"| {batch} | 64 | {m.group(1)} | {float(m.group(2)):.2f} | {float(m.group(3)):.0f} | {end - start:.2f} |")
PY
done
rm -rf "$tmp"

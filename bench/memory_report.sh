#!/usr/bin/env bash
# KV memory with chunk sharing vs without, on the seed-like RAG workload, against the exact bound.
# usage: bench/memory_report.sh [extra rag_workload.py args]   (needs build/cascade)
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python3 bench/rag_workload.py "$@" > "$tmp/requests.jsonl"
bound=$(python3 bench/rag_workload.py "$@" --bound)
common=(generate --requests "$tmp/requests.jsonl" --json --kv-cache-mb 1024 --page-size 16)
build/cascade "${common[@]}" | tail -1 > "$tmp/shared.json"
build/cascade "${common[@]}" --no-cache | tail -1 > "$tmp/plain.json"
python3 - "$tmp/shared.json" "$tmp/plain.json" "$bound" <<'PY'
import json, sys
shared = json.load(open(sys.argv[1]))["stats"]
plain = json.load(open(sys.argv[2]))["stats"]
bound = json.loads(sys.argv[3])
page = 16
tb = shared["kv_bytes_logical"] // max(1, shared["kv_tokens_logical"])  # K+V bytes per token, all layers
mib = lambda n: f"{n / 2**20:.1f} MiB"
print(f"KV bytes per token: {tb} (K and V, every layer, the pool's dtype)\n")
print("| run | KV tokens stored | of logical | KV bytes stored | of logical | saving | peak pages | peak pages x page size |")
print("|---|---|---|---|---|---|---|---|")
for name, s in (("no sharing (--no-cache)", plain), ("chunk sharing", shared)):
    print(f"| {name} | {s['kv_tokens_stored']} | {s['kv_tokens_logical']} | {mib(s['kv_bytes_stored'])} | "
          f"{mib(s['kv_bytes_logical'])} | {1 - s['kv_tokens_stored'] / s['kv_tokens_logical']:.1%} | "
          f"{s['peak_pages_used']} | {s['peak_pages_used'] * page} |")
print(f"| exact bound (distinct prefix-trie tokens) | {bound['kv_tokens_bound']} | "
      f"{bound['kv_tokens_logical']} | {mib(bound['kv_tokens_bound'] * tb)} | {mib(bound['kv_tokens_logical'] * tb)} | "
      f"{1 - bound['kv_tokens_bound'] / bound['kv_tokens_logical']:.1%} | | |")
print(f"\nchunk sharing stores {shared['kv_tokens_stored'] - bound['kv_tokens_bound']:+d} tokens against the bound; "
      f"chunk hits {shared['chunk_hits']}, misses {shared['chunk_misses']}")
PY
rm -rf "$tmp"

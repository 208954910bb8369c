#!/usr/bin/env bash
# End to end through `cascade generate --device cuda`, with and without --no-overlap (overlap
# scheduling on by default): a tiny head_dim-64 model (tests/fixtures/models/gpu_hd64 with a 4096
# context) and a Qwen3-0.6B-shaped random bf16 model made here with transformers (torch on a GPU).
# Greedy requests sharing a system prompt and one of four documents; prints each run's wall time
# (model load included) and its stats line, then whether both modes gave the same tokens.
# usage: bench/overlap_e2e.sh [CASCADE_BINARY] [OUT_DIR] [ROUNDS]   (default build-gpu/cascade, out/overlap_e2e, 2)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build-gpu/cascade}
O=${2:-out/overlap_e2e}
ROUNDS=${3:-2}
M=$O/models
mkdir -p "$M"
rm -rf "$M/tiny" && cp -r tests/fixtures/models/gpu_hd64 "$M/tiny"
python3 - "$M" "$O" <<'PY'
import json, os, random, sys
m, o = sys.argv[1], sys.argv[2]
c = json.load(open(f"{m}/tiny/config.json"))
c["max_position_embeddings"] = 4096
json.dump(c, open(f"{m}/tiny/config.json", "w"), indent=2)
if not os.path.exists(f"{m}/q06/model.safetensors"):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                      tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6, eos_token_id=151645)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(f"{m}/q06")
random.seed(3)
for name, vocab, n_sys, n_doc, n_q, n_req, base in (("tiny", 256, 300, 200, 5, 48, 64),
                                                     ("q06", 150000, 1000, 500, 8, 64, 128)):
    sys_ids = [random.randrange(vocab) for _ in range(n_sys)]
    docs = [[random.randrange(vocab) for _ in range(n_doc)] for _ in range(4)]
    with open(f"{o}/req_{name}.jsonl", "w") as f:
        for q in range(n_req):
            segs = [{"kind": "system", "ids": sys_ids}, {"kind": "context", "ids": docs[q % 4]},
                    {"kind": "query", "ids": [random.randrange(vocab) for _ in range(n_q)]}]
            f.write(json.dumps({"segments": segs, "max_tokens": base + q % 16, "temperature": 0,
                                "ignore_eos": True}) + "\n")
PY
run() {
  local tag=$1 model=$2
  shift 2
  local t0
  t0=$(date +%s%N)
  "$BIN" generate --device cuda --model "$M/$model" --requests "$O/req_$model.jsonl" --json --kv-cache-mb 4096 "$@" \
    >"$O/$tag.json" 2>"$O/$tag.err"
  echo "$tag rc $? $(( ($(date +%s%N) - t0) / 1000000 )) ms $(tail -1 "$O/$tag.json")"
}
for model in tiny q06; do
  for r in $(seq "$ROUNDS"); do
    run "${model}_on_$r" "$model"
    run "${model}_off_$r" "$model" --no-overlap
  done
done
python3 - "$O" <<'PY'
import json, sys
def toks(p):
    return [json.loads(l)["token_ids"] for l in open(p) if l.strip() and "token_ids" in l]
for m in ("tiny", "q06"):
    a, b = toks(f"{sys.argv[1]}/{m}_on_1.json"), toks(f"{sys.argv[1]}/{m}_off_1.json")
    print(f"{m}: {len(a)} requests, {sum(map(len, a))} tokens, same tokens with and without overlap: {a == b}")
PY

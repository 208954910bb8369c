#!/usr/bin/env python3
"""End-to-end side by side: the `cascade` CLI (--cascade auto / off) against transformers generate().

Workloads (token ids are random, the model is a random Qwen3-0.6B-shaped checkpoint):
  gsp   SGLang generated-shared-prefix defaults: 64 groups x 16 prompts, 2048-token system prompt
        per group, 128-token question, 256 output tokens.
  rag   bench/rag_workload.py (system + 1-2 cited documents + query), 256 queries, 64 output tokens.
  nano  nano-vLLM's benchmark shape: 256 sequences, input and output lengths uniform in [100, 1024].

Throughput = generated tokens / wall time of generate() (the CLI's own timer, model load excluded).
TTFT = wall time of a separate run of the same requests with max_tokens 1 (all requests arrive at
once, so this is the time until the LAST request's first token; the CLI reports no per-request
TTFT). transformers runs a 64-request subset of each workload in one left-padded batch (it cannot
finish the full sets inside the device budget); Cascade also runs that same subset, so one row
compares identical work. The roofline is a lower bound on the workload's time on this card: each
decode step reads the weights once plus every distinct KV token of the running batch once
(prefixes shared), at the copy bandwidth measured in the same run; prefill does 2 * params FLOPs
per distinct prompt token (plus attention) at the measured bf16 matmul rate.

usage: side_by_side_e2e.py --cli build-bench/cascade --out DIR [--skip-hf] [--quick]
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = 151936
CFG = dict(vocab_size=VOCAB, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
           num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
           max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6)
MAX_SEQS = 256


def log(*a):
    print("[e2e]", *a, file=sys.stderr, flush=True)


# ---- workloads ------------------------------------------------------------------------------
def gsp_workload(scale=1.0):
    rng = random.Random(1)
    groups, per, sys_len, q_len, out = max(1, int(64 * scale)), 16, 2048, 128, 256
    reqs = []
    for g in range(groups):
        system = [rng.randrange(VOCAB - 8) for _ in range(sys_len)]
        for _ in range(per):
            q = [rng.randrange(VOCAB - 8) for _ in range(q_len)]
            reqs.append({"segments": [{"kind": "system", "ids": system}, {"kind": "query", "ids": q}],
                         "max_tokens": out, "temperature": 0, "ignore_eos": True})
    return reqs


def rag_workload(scale=1.0):
    q = max(8, int(256 * scale))
    txt = subprocess.run([sys.executable, os.path.join(HERE, "rag_workload.py"), "--queries", str(q),
                          "--max-tokens", "64"], check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in txt.splitlines() if l.strip()]


def nano_workload(scale=1.0):
    rng = random.Random(0)
    n = max(8, int(256 * scale))
    reqs = []
    for _ in range(n):
        ids = [rng.randrange(VOCAB - 8) for _ in range(rng.randint(100, 1024))]
        reqs.append({"prompt_ids": ids, "max_tokens": rng.randint(100, 1024), "temperature": 0,
                     "ignore_eos": True})
    return reqs


def prompt_of(r):
    if "prompt_ids" in r:
        return list(r["prompt_ids"])
    return [t for s in r["segments"] for t in s["ids"]]


def chunks_of(r):
    """Shareable pieces of a request's prompt as (key, length): a segment is keyed by the chain of
    segments before it (exact reuse), so equal keys are the same KV."""
    if "prompt_ids" in r:
        return [(("own", id(r)), len(r["prompt_ids"]))]
    out, key = [], 0
    for s in r["segments"]:
        key = hash((key, s["kind"], tuple(s["ids"])))
        out.append((key, len(s["ids"])))
    return out


# ---- roofline -------------------------------------------------------------------------------
def param_counts():
    h, i, L, H, K, D = 1024, 3072, 28, 16, 8, 128
    per_layer = h * (H + 2 * K) * D + H * D * h + 3 * h * i + 2 * h + 2 * D
    embed = VOCAB * h
    return per_layer * L, embed


def roofline_seconds(reqs, max_seqs, bw, flops):
    """Lower bound: FCFS batches of max_seqs; per decode step weights + distinct KV bytes once."""
    layer_params, embed = param_counts()
    weight_bytes = 2 * (layer_params + embed)  # lm_head (tied embedding) is read every step
    kv_per_tok = 2 * 8 * 128 * 28 * 2
    # prefill: distinct prompt tokens (a chunk seen before is a cache hit)
    seen, prefill_tokens, attn_flops = set(), 0, 0.0
    for r in reqs:
        pos = 0
        for key, n in chunks_of(r):
            if key not in seen:
                seen.add(key)
                prefill_tokens += n
                attn_flops += 4.0 * 28 * 16 * 128 * n * (pos + n / 2)
            pos += n
    t_prefill = (2.0 * layer_params * prefill_tokens + attn_flops) / flops
    # decode: continuous batching, a finished request's slot is refilled at once
    ch = [chunks_of(r) for r in reqs]
    t_decode, queue, running = 0.0, list(range(len(reqs))), []
    gen = [0] * len(reqs)
    shared, changed = 0, True
    while queue or running:
        while queue and len(running) < max_seqs:
            running.append(queue.pop(0))
            changed = True
        if changed:  # distinct prompt chunks of the running batch, each read once per step
            distinct = {}
            for j in running:
                for key, n in ch[j]:
                    distinct[key] = n
            shared, changed = sum(distinct.values()), False
        own = sum(gen[j] + 1 for j in running)
        t_decode += (weight_bytes + (shared + own) * kv_per_tok) / bw
        nxt = []
        for j in running:
            gen[j] += 1
            if gen[j] < reqs[j]["max_tokens"]:
                nxt.append(j)
            else:
                changed = True
        running = nxt
    return t_prefill + t_decode


# ---- engines --------------------------------------------------------------------------------
SUMMARY = re.compile(r"(\d+) requests, (\d+) tokens generated in ([0-9.]+) s .*KV tokens stored (\d+) of (\d+) logical; chunk hits (\d+), misses (\d+)")


def run_cli(cli, model, reqs, path, mode, extra, timeout):
    with open(path, "w") as f:
        for r in reqs:
            f.write(json.dumps(r) + "\n")
    cmd = [cli, "generate", "--device", "cuda", "--model", model, "--requests", path,
           "--cascade", mode] + extra
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-2000:]}")
    m = SUMMARY.search(p.stdout)
    if not m:
        raise RuntimeError(f"no summary line in the CLI output: {p.stdout[-500:]}")
    toks = [l.split("] ", 1)[1] for l in p.stdout.splitlines() if l.startswith("[")]
    return {"secs": float(m.group(3)), "tokens": int(m.group(2)), "wall_with_load": wall,
            "kv_stored": int(m.group(4)), "kv_logical": int(m.group(5)),
            "chunk_hits": int(m.group(6)), "chunk_misses": int(m.group(7))}, toks


def make_model(model_dir):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    if os.path.exists(os.path.join(model_dir, "model.safetensors")):
        return
    import transformers
    torch.manual_seed(0)
    kw = dict(CFG)
    if int(transformers.__version__.split(".")[0]) >= 5:  # 5.x keeps rope settings in rope_parameters
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": kw.pop("rope_theta")}
    cfg = Qwen3Config(**kw)
    with torch.device("cuda"):
        m = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
    m.save_pretrained(model_dir)
    del m
    torch.cuda.empty_cache()


def hf_generate(model, reqs, max_new):
    import torch
    prompts = [prompt_of(r) for r in reqs]
    L = max(len(p) for p in prompts)
    pad = 0
    ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts], device="cuda")
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new,
                         min_new_tokens=max_new, do_sample=False, pad_token_id=pad)
    torch.cuda.synchronize()
    return time.perf_counter() - t0, int(out.shape[0]) * (int(out.shape[1]) - L)


def measure_card():
    import torch
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    bw = 2 * x.numel() * 10 / (time.perf_counter() - t0)  # bytes read + written
    del x, y
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    fl = 2 * 8192 ** 3 * 10 / (time.perf_counter() - t0)
    return bw, fl, torch.cuda.get_device_name()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model-dir", default="/tmp/qwen3-0.6b-random")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny workloads (smoke test)")
    ap.add_argument("--hf-subset", type=int, default=64)
    ap.add_argument("--timeout", type=int, default=240)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    scale = 0.05 if args.quick else 1.0
    make_model(args.model_dir)
    bw, fl, card = measure_card()
    log(f"card {card}: copy {bw / 1e12:.2f} TB/s, bf16 matmul {fl / 1e12:.0f} TFLOP/s")
    res = {"card": card, "copy_bw": bw, "matmul_flops": fl, "rows": []}
    extra = ["--kv-cache-mb", "50000", "--max-num-seqs", str(MAX_SEQS)]
    workloads = {"gsp": gsp_workload(scale), "rag": rag_workload(scale), "nano": nano_workload(scale)}

    def save():
        with open(os.path.join(args.out, "e2e.json"), "w") as f:
            json.dump(res, f, indent=1)

    tmp = "/tmp/sbs_requests"
    os.makedirs(tmp, exist_ok=True)
    for name, reqs in workloads.items():
        roof = roofline_seconds(reqs, MAX_SEQS, bw, fl)
        n_out = sum(r["max_tokens"] for r in reqs)
        outs = {}
        for mode in ("auto", "off"):
            try:
                r, toks = run_cli(args.cli, args.model_dir, reqs, f"{tmp}/{name}.jsonl", mode, extra, args.timeout)
                outs[mode] = toks
                row = {"workload": name, "engine": f"cascade --cascade {mode}", "requests": len(reqs), **r,
                       "tok_s": r["tokens"] / r["secs"], "roofline_s": roof,
                       "roofline_frac": roof / r["secs"], "expected_tokens": n_out}
                if mode == "auto":
                    t1 = [dict(q, max_tokens=1) for q in reqs]
                    r1, _ = run_cli(args.cli, args.model_dir, t1, f"{tmp}/{name}_ttft.jsonl", mode, extra, args.timeout)
                    row["ttft_s"] = r1["secs"]
                res["rows"].append(row)
                log(json.dumps(row))
            except Exception as e:  # keep going: the report says what failed
                res["rows"].append({"workload": name, "engine": f"cascade --cascade {mode}", "error": str(e)[-1500:]})
                log("FAILED", name, mode, str(e)[-800:])
            save()
        if "auto" in outs and "off" in outs:
            same = sum(a == b for a, b in zip(outs["auto"], outs["off"]))
            res.setdefault("auto_vs_off_identical", {})[name] = [same, len(outs["auto"])]

    # The subset that transformers runs, on both engines (identical work).
    sub = {}
    for name, reqs in workloads.items():
        s = [dict(r) for r in reqs[: args.hf_subset]]
        mx = 256 if name != "rag" else 64
        for r in s:
            r["max_tokens"] = mx  # transformers' batch generates the same count for every row
        sub[name] = s
        roof = roofline_seconds(s, len(s), bw, fl)
        try:
            r, _ = run_cli(args.cli, args.model_dir, s, f"{tmp}/{name}_sub.jsonl", "auto", extra, args.timeout)
            t1 = [dict(q, max_tokens=1) for q in s]
            r1, _ = run_cli(args.cli, args.model_dir, t1, f"{tmp}/{name}_sub_ttft.jsonl", "auto", extra, args.timeout)
            row = {"workload": name + f"-subset{len(s)}", "engine": "cascade --cascade auto", "requests": len(s), **r,
                   "tok_s": r["tokens"] / r["secs"], "ttft_s": r1["secs"], "roofline_s": roof,
                   "roofline_frac": roof / r["secs"]}
        except Exception as e:
            row = {"workload": name + f"-subset{len(s)}", "engine": "cascade --cascade auto", "error": str(e)[-1500:]}
        res["rows"].append(row)
        log(json.dumps(row))
        save()

    if not args.skip_hf:
        import torch
        from transformers import Qwen3ForCausalLM
        model = Qwen3ForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16).cuda().eval()
        hf_generate(model, sub["nano"][:2], 4)  # warm-up
        for name, s in sub.items():
            mx = s[0]["max_tokens"]
            roof = roofline_seconds(s, len(s), bw, fl)
            try:
                with torch.inference_mode():
                    t1, _ = hf_generate(model, s, 1)
                    t, n = hf_generate(model, s, mx)
                row = {"workload": name + f"-subset{len(s)}", "engine": "transformers generate()",
                       "requests": len(s), "secs": t, "tokens": n, "tok_s": n / t, "ttft_s": t1,
                       "roofline_s": roof, "roofline_frac": roof / t}
            except Exception as e:
                row = {"workload": name + f"-subset{len(s)}", "engine": "transformers generate()", "error": str(e)[-1500:]}
            res["rows"].append(row)
            log(json.dumps(row))
            save()
            torch.cuda.empty_cache()
        res["transformers_attn"] = getattr(model.config, "_attn_implementation", "?")
    save()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Seed-like RAG workload for `cascade generate --requests`, and the exact KV bound for it.

A system prompt, a handful of long documents, many queries each citing one or two documents:
request = [system, doc_a (, doc_b), query]. Token ids are random in [0, vocab - 8), so the workload
needs no tokenizer. `--bound` prints the exact number of KV tokens any engine must hold for the
workload: the distinct nodes of the token trie of all prompts, plus each request's own generated
tokens (all but the last, whose KV is never needed).

usage: rag_workload.py [--docs 6] [--queries 64] ... > requests.jsonl
       rag_workload.py ... --bound          (prints {"kv_tokens_bound": N, "kv_tokens_logical": M})
"""
import argparse
import json
import random
import sys


def build(args):
    rng = random.Random(args.seed)
    hi = args.vocab - 8
    system = [rng.randrange(hi) for _ in range(args.system_len)]
    docs = [[rng.randrange(hi) for _ in range(rng.randint(args.doc_min, args.doc_max))]
            for _ in range(args.docs)]
    reqs = []
    for _ in range(args.queries):
        cited = rng.sample(range(args.docs), rng.choice([1, 2]) if args.docs > 1 else 1)
        query = [rng.randrange(hi) for _ in range(rng.randint(args.query_min, args.query_max))]
        segs = [{"kind": "system", "ids": system}]
        segs += [{"kind": "context", "ids": docs[d]} for d in cited]
        segs.append({"kind": "query", "ids": query})
        reqs.append({"segments": segs, "max_tokens": args.max_tokens, "temperature": 0,
                     "ignore_eos": True})
    return reqs


def trie_nodes(seqs):
    root = {}
    n = 0
    for s in seqs:
        node = root
        for t in s:
            nxt = node.get(t)
            if nxt is None:
                nxt = {}
                node[t] = nxt
                n += 1
            node = nxt
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=259)
    ap.add_argument("--system-len", type=int, default=512)
    ap.add_argument("--docs", type=int, default=6)
    ap.add_argument("--doc-min", type=int, default=600)
    ap.add_argument("--doc-max", type=int, default=1200)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--query-min", type=int, default=8)
    ap.add_argument("--query-max", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--bound", action="store_true")
    args = ap.parse_args()
    reqs = build(args)
    if args.bound:
        prompts = [[t for s in r["segments"] for t in s["ids"]] for r in reqs]
        own = sum(args.max_tokens - 1 for _ in reqs)
        print(json.dumps({"kv_tokens_bound": trie_nodes(prompts) + own,
                          "kv_tokens_logical": sum(len(p) for p in prompts) + own}))
        return
    for r in reqs:
        sys.stdout.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()

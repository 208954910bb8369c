#!/usr/bin/env python3
"""Times HF tokenizers (single thread) encoding the tokenizer fixture corpus repeated to ~1 MB.

Same input as bench/tokenizer_bench.cpp, for a like-for-like comparison:
  python3 bench/tokenizer_bench.py [TOKENIZER_JSON] [CORPUS_JSON] [TARGET_BYTES]
"""
import json
import os
import sys
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers starts its thread pool
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    tok_path = sys.argv[1] if len(sys.argv) > 1 else str(ROOT.parent / "shared/data/qwen3-tokenizer/tokenizer.json")
    corpus_path = sys.argv[2] if len(sys.argv) > 2 else str(ROOT / "tests/fixtures/tokenizer/corpus.json")
    target = int(sys.argv[3]) if len(sys.argv) > 3 else 1 << 20
    strings = json.loads(Path(corpus_path).read_text(encoding="utf-8"))
    docs, total = [], 0
    while total < target:  # whole passes over the corpus until ~target bytes
        for s in strings:
            docs.append(s)
            total += len(s.encode("utf-8"))
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(tok_path)
    print(f"load: {(time.perf_counter() - t0) * 1e3:.1f} ms")
    tok.encode(strings[1])  # warm up
    best = None
    for rep in range(5):
        t0 = time.perf_counter()
        n_tokens = sum(len(tok.encode(d).ids) for d in docs)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
        print(f"rep {rep + 1}/5: {dt * 1e3:.1f} ms")
    print(f"hf-tokenizers per-doc: {len(docs)} docs, {total} bytes, {n_tokens} tokens, best {best * 1e3:.1f} ms, "
          f"{n_tokens / best / 1e6:.2f} M tokens/s, {total / best / 1e6:.2f} MB/s")
    # One ~1 MB document: no per-call overhead.
    joined = "\n".join(docs)
    best = None
    for rep in range(3):
        t0 = time.perf_counter()
        n_tokens = len(tok.encode(joined).ids)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    size = len(joined.encode("utf-8"))
    print(f"hf-tokenizers joined: {size} bytes, {n_tokens} tokens, best {best * 1e3:.1f} ms, "
          f"{n_tokens / best / 1e6:.2f} M tokens/s, {size / best / 1e6:.2f} MB/s")


if __name__ == "__main__":
    main()

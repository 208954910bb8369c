#!/usr/bin/env python3
"""Writes chunk_id_fixture.json: chunk ids computed with Python's hashlib, independently of the C++
code, from the documented encoding: parent id (32 zero bytes for a root) || kind byte ||
token count (uint64 LE) || tokens (int32 LE). Run: python3 tests/cache/gen_chunk_id_fixture.py"""
import hashlib
import json
import os
import random
import struct

KINDS = {"system": 0, "context": 1, "query": 2, "auto": 3}


def chunk_id(parent_hex, kind, tokens):
    parent = bytes.fromhex(parent_hex) if parent_hex else bytes(32)
    data = parent + bytes([KINDS[kind]]) + struct.pack("<Q", len(tokens))
    data += b"".join(struct.pack("<i", t) for t in tokens)
    return hashlib.sha256(data).hexdigest()


def main():
    rng = random.Random(20240611)
    cases = []
    # Chains: each case may name an earlier case as its parent.
    specs = [
        (None, "system", [151644, 8948, 198]),
        (0, "context", [1, 2, 3, 4, 5]),
        (1, "query", [-1, 0, 2**31 - 1, -(2**31)]),
        (None, "context", [1, 2, 3, 4, 5]),  # same tokens as case 1, no parent
        (0, "auto", [7] * 40),
        (None, "query", [0]),
    ]
    for _ in range(6):
        parent = rng.choice([None] + list(range(len(specs))))
        kind = rng.choice(list(KINDS))
        tokens = [rng.randrange(-(2**31), 2**31) for _ in range(rng.randrange(1, 300))]
        specs.append((parent, kind, tokens))
    for parent, kind, tokens in specs:
        parent_hex = cases[parent]["id"] if parent is not None else None
        cases.append({"parent": parent, "kind": kind, "tokens": tokens,
                      "id": chunk_id(parent_hex, kind, tokens)})
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chunk_id_fixture.json")
    with open(out, "w") as f:
        json.dump({"generator": "tests/cache/gen_chunk_id_fixture.py", "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    main()

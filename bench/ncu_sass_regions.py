#!/usr/bin/env python3
"""Where a kernel's warps spend their time, by region of its SASS, from an ncu source export.

    ncu --set full --import-source no -k regex:attention_level -c 1 -o layer ...
    ncu -i layer.ncu-rep --page source --csv --print-source sass > layer_sass.csv
    python3 bench/ncu_sass_regions.py layer_sass.csv[.gz] [--loop-min N] [--top K] [--per OP:N]

Regions, in address order: the prologue before the PDL wait (the first executed ACQBULK, i.e.
griddepcontrol.wait), the prologue after it, the main loop (the run of instructions executed
at least --loop-min times per warp on average, default 4), and what follows. For each: warp
stall samples (share of all), warp instructions executed per warp, and the leading stall
reasons; then the loop's instructions per warp by opcode and its most-sampled instructions.
--per OP:N adds the whole kernel's instructions per unit of work, a unit being N executions of
opcode OP (e.g. HGMMA:16, a wide-form consumer warp's 128-key tile), by opcode.
"""
import argparse
import collections
import csv
import gzip
import sys


def read_rows(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        lines = f.read().splitlines()
    # The first line names the kernel; the second is the header.
    kernel = lines[0]
    rows = list(csv.reader(lines[1:]))
    return kernel, rows[0], rows[1:]


def opcode(src):
    t = src.split()
    if not t:
        return ""
    op = t[1] if t[0].startswith("@") and len(t) > 1 else t[0]
    return op.split(".")[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--loop-min", type=float, default=4.0)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--per", default="", help="OP:N, instructions per N executions of opcode OP")
    a = ap.parse_args()
    try:
        kernel, hdr, data = read_rows(a.csv)
    except (OSError, EOFError, UnicodeDecodeError, IndexError, csv.Error) as e:
        print(f"error: cannot read {a.csv}: {e}", file=sys.stderr)
        return 2
    ix = {h: i for i, h in enumerate(hdr)}
    needed = ("Source", "Warp Stall Sampling (All Samples)", "Instructions Executed")
    missing = [h for h in needed if h not in ix]
    if missing or not data:
        print(f"error: {a.csv} is not an ncu SASS source export (missing: {', '.join(missing) or 'rows'})",
              file=sys.stderr)
        return 2
    stall_cols = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]

    def num(r, h):
        v = r[ix[h]].replace(",", "")
        return int(float(v)) if v not in ("", "-") else 0

    recs = []
    for r in data:
        recs.append({
            "src": r[ix["Source"]].strip(),
            "samples": num(r, "Warp Stall Sampling (All Samples)"),
            "exec": num(r, "Instructions Executed"),
            "stalls": {h[6:]: num(r, h) for h in stall_cols},
        })
    if not any(x["exec"] > 0 for x in recs):
        print(f"error: {a.csv} has no executed instructions", file=sys.stderr)
        return 2
    # The kernel's first instruction runs once per warp: its count is the number of warps.
    warps = recs[0]["exec"] or min(x["exec"] for x in recs if x["exec"] > 0)
    total = sum(x["samples"] for x in recs) or 1
    wait_at = next((i for i, x in enumerate(recs) if opcode(x["src"]) == "ACQBULK" and x["exec"] > 0), None)
    # The loop: of the runs of instructions executed at least loop_min times per warp (gaps of
    # up to 64 colder instructions, such as a loop's rarely taken branches, bridged), the one
    # with the most instructions executed.
    hot = [i for i, x in enumerate(recs) if x["exec"] >= a.loop_min * warps]
    spans = []
    for i in hot:
        if spans and i - spans[-1][1] <= 64:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    best = max(spans, key=lambda sp: sum(x["exec"] for x in recs[sp[0]:sp[1] + 1]), default=None)
    loop_lo, loop_end = (best[0], best[1] + 1) if best else (len(recs), len(recs))
    regions = []
    if wait_at is not None and wait_at < loop_lo:
        regions.append(("before the PDL wait", 0, wait_at))
        regions.append(("after the wait, before the loop", wait_at, loop_lo))
    else:
        regions.append(("before the loop", 0, loop_lo))
    regions.append(("loop", loop_lo, loop_end))
    regions.append(("after the loop", loop_end, len(recs)))

    print(kernel.split(",", 1)[-1].strip('",'))
    print(f"warps {warps}, warp stall samples {total}, instructions {len(recs)}")
    print("| region | samples | share | instructions per warp | leading stalls |")
    print("| --- | --- | --- | --- | --- |")
    for name, lo, hi in regions:
        part = recs[lo:hi]
        s = sum(x["samples"] for x in part)
        ex = sum(x["exec"] for x in part) / warps
        st = collections.Counter()
        for x in part:
            st.update(x["stalls"])
        lead = ", ".join(f"{k} {100 * v / max(1, s):.0f}%" for k, v in st.most_common(3) if v)
        print(f"| {name} | {s} | {100 * s / total:.1f}% | {ex:.0f} | {lead} |")
    ops = collections.Counter()
    for x in recs[loop_lo:loop_end]:
        ops[opcode(x["src"])] += x["exec"]
    print("\nloop instructions per warp by opcode:",
          ", ".join(f"{k} {v / warps:.0f}" for k, v in ops.most_common(12)))
    print("\nmost-sampled instructions:")
    for i in sorted(range(len(recs)), key=lambda i: -recs[i]["samples"])[: a.top]:
        x = recs[i]
        lead = ", ".join(f"{k} {v}" for k, v in sorted(x["stalls"].items(), key=lambda kv: -kv[1])[:2] if v)
        print(f"  #{i} {x['samples']} samples ({lead}), executed {x['exec'] / warps:.1f}/warp: {x['src'][:70]}")
    if a.per:
        op, _, n = a.per.partition(":")
        every = collections.Counter()
        for x in recs:
            every[opcode(x["src"])] += x["exec"]
        units = every.get(op, 0) / max(1.0, float(n or 1))
        if units == 0:
            print(f"error: no {op} executed", file=sys.stderr)
            return 2
        print(f"\ninstructions per unit ({n or 1} x {op}; {units:.0f} units): {sum(every.values()) / units:.0f}")
        print(", ".join(f"{k} {v / units:.1f}" for k, v in every.most_common(16)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

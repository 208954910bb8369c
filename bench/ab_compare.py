#!/usr/bin/env python3
"""Compares benchmark runs of two builds or settings ("new" against "old") made on one card.

    python3 bench/ab_compare.py --new N1.json [N2.json ...] --old O1.json [O2.json ...]

Each file is the JSON of cuda_decode_bench or cuda_attention_bench; several files per side are
rounds of the same run. Prints, per decode batch (graph rows) and per attention case, the range
of each side over its rounds and new / old of the medians, as Markdown tables. Exits 2 on bad
input, and warns when the files come from different devices.
"""
import json
import statistics
import sys


def load(paths):
    decode, attention, devices = {}, {}, set()
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        devices.add((d.get("device", "?"), round(d.get("copy_bandwidth_GBps", 0.0))))
        if "results" in d:  # cuda_decode_bench
            for r in d["results"]:
                if r.get("cuda_graphs", True):
                    decode.setdefault((d.get("context", 0), r["batch"]), []).append(r["step_us"])
        elif "shapes" in d:  # cuda_attention_bench
            for s in d["shapes"]:
                key = f'{s["prefix"]}/{s["unique"]}/{s["batch"]}'
                attention.setdefault((key, "flat"), []).append(s["flat_us"])
                attention.setdefault((key, "cascade"), []).append(s["cascade_us"])
        else:
            raise ValueError(f"{p}: neither a decode nor an attention benchmark")
    return decode, attention, devices


def span(xs):
    lo, hi = min(xs), max(xs)
    return f"{lo:.1f}" if lo == hi else f"{lo:.1f}-{hi:.1f}"


def table(title, head, new, old, key_cells):
    keys = [k for k in new if k in old]
    if not keys:
        return []
    lines = [f"### {title}", "", "| " + " | ".join(head) + " | new (us) | old (us) | new / old |",
             "|" + " --- |" * (len(head) + 3)]
    for k in keys:
        ratio = statistics.median(new[k]) / statistics.median(old[k])
        lines.append("| " + " | ".join(key_cells(k)) + f" | {span(new[k])} | {span(old[k])} | {ratio:.3f} |")
    return lines + [""]


def main(argv):
    if "--new" not in argv or "--old" not in argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    i, j = argv.index("--new"), argv.index("--old")
    new_paths = argv[i + 1:j] if i < j else argv[i + 1:]
    old_paths = argv[j + 1:i] if j < i else argv[j + 1:]
    if not new_paths or not old_paths:
        print("ab_compare: give at least one file after --new and after --old", file=sys.stderr)
        return 2
    try:
        nd, na, ndev = load(new_paths)
        od, oa, odev = load(old_paths)
    except (OSError, ValueError, KeyError) as e:
        print(f"ab_compare: {e}", file=sys.stderr)
        return 2
    devices = ndev | odev
    print("devices: " + "; ".join(f"{name} ({bw} GB/s)" for name, bw in sorted(devices)))
    if len({name for name, _ in devices}) > 1:
        print("WARNING: the runs come from different devices; new / old compares cards too")
    bws = [bw for _, bw in devices if bw > 0]
    if bws and max(bws) > 1.01 * min(bws):
        print(f"NOTE: copy bandwidth {min(bws)}-{max(bws)} GB/s across the files: were they one card in one call?")
    print()
    out = table("Decode steps (graphs)", ["context", "batch"], nd, od, lambda k: [str(k[0]), str(k[1])])
    out += table("Attention (one layer)", ["P/U/B", "path"], na, oa, lambda k: [k[0], k[1]])
    if not out:
        print("ab_compare: no case is in both sides", file=sys.stderr)
        return 2
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

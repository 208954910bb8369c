#!/usr/bin/env python3
"""Plots and markdown tables from side_by_side_kernels.py / side_by_side_e2e.py results.

usage: side_by_side_plot.py --dir DIR   (reads DIR/kernels.json, DIR/e2e.json; writes DIR/*.png,
DIR/tables.md)
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SERIES = [("cascade_ms", "Cascade (multi-level)", "C0", "-"),
          ("fi_cascade_ms", "FlashInfer MultiLevelCascade", "C1", "-"),
          ("fi_flat_ms", "FlashInfer flat decode", "C2", "--"),
          ("fi_flat_tc_ms", "FlashInfer flat decode (tensor cores)", "C4", "--"),
          ("torch_flat_sdpa_ms", "PyTorch SDPA (flat)", "C5", ":"),
          ("torch_composed_ms", "PyTorch per-level composition", "C6", ":"),
          ("floor_ms", "shared-read floor", "k", ":")]


def fmt(v, d=3):
    return "-" if v is None else f"{v:.{d}f}"


def kernel_outputs(d, res, lines):
    rows = [r for r in res["rows"] if "cascade_ms" in r]
    lines.append(f"### Decode attention kernels ({res.get('card')}, copy bandwidth "
                 f"{res.get('copy_bw', 0) / 1e12:.2f} TB/s, FlashInfer {res.get('flashinfer', 'n/a')}"
                 f" prefill backend {res.get('fi_backend', 'n/a')})\n")
    if "flashinfer_error" in res:
        lines.append(f"FlashInfer could not run: `{res['flashinfer_error']}`\n")
    lines.append("Times in ms (median, L2 flushed). floor = distinct KV bytes / copy bandwidth. "
                 "x = that kernel's time / Cascade's time (> 1: Cascade faster).\n")
    lines.append("| model | batch | levels (groups x tokens) | Cascade | FI cascade | FI flat | FI flat TC | "
                 "floor | Cascade % of floor | FI cascade x | FI flat x | match |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lv = " / ".join(f"{g}x{t}" for g, t in r["levels"])
        best_flat = r.get("fi_flat_ms") or r.get("torch_flat_sdpa_ms")
        lines.append(
            f"| {r['model']} | {r['batch']} | {lv} | {fmt(r['cascade_ms'])} | {fmt(r.get('fi_cascade_ms'))} | "
            f"{fmt(r.get('fi_flat_ms'))} | {fmt(r.get('fi_flat_tc_ms'))} | {fmt(r['floor_ms'])} | "
            f"{100 * r['cascade_vs_floor']:.0f}% | {fmt(r.get('speedup_vs_fi_cascade'), 2)} | "
            f"{fmt((best_flat / r['cascade_ms']) if best_flat else None, 2)} | "
            f"{'yes' if r.get('outputs_match') else 'NO'} |")
    failed = [r for r in res["rows"] if "cascade_ms" not in r]
    for r in failed:
        lines.append(f"\nnot run: {r.get('model')} batch {r.get('batch')} {r.get('levels')}: {r.get('error')}")
    if any("torch_composed_ms" in r for r in rows):
        lines.append("\nPyTorch stand-ins (FlashInfer failed):\n\n| model | batch | levels | SDPA flat | composed |\n|---|---|---|---|---|")
        for r in rows:
            lines.append(f"| {r['model']} | {r['batch']} | {r['levels']} | {fmt(r.get('torch_flat_sdpa_ms'))} | "
                         f"{fmt(r.get('torch_composed_ms'))} |")
    lines.append("")
    # plots: one figure per model, rows = batch sizes, columns = unique length
    for model in sorted({r["model"] for r in rows}):
        two = [r for r in rows if r["model"] == model and r["kind"] == "2-level"]
        batches = sorted({r["batch"] for r in two})
        uniq = sorted({r["unique"] for r in two})
        if not batches:
            continue
        fig, axes = plt.subplots(len(batches), len(uniq), figsize=(5.5 * len(uniq), 3.6 * len(batches)),
                                 squeeze=False)
        for i, b in enumerate(batches):
            for j, u in enumerate(uniq):
                ax = axes[i][j]
                sel = sorted([r for r in two if r["batch"] == b and r["unique"] == u], key=lambda r: r["prefix"])
                for key, label, color, ls in SERIES:
                    pts = [(r["prefix"], r[key]) for r in sel if key in r]
                    if pts:
                        ax.plot([p for p, _ in pts], [t for _, t in pts], ls, color=color, marker="o",
                                ms=3, label=label)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_title(f"{model}: batch {b}, unique {u} tokens/seq", fontsize=9)
                ax.set_xlabel("shared prefix (tokens)")
                ax.set_ylabel("time (ms)")
                ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        name = f"side_by_side_kernels_{model.replace('.', '_').replace('-', '_')}.png"
        fig.savefig(os.path.join(d, name), dpi=110)
        plt.close(fig)
        lines.append(f"![{model} kernels](img/{name})\n")


def e2e_outputs(d, res, lines):
    lines.append(f"### End to end ({res.get('card')}, copy {res.get('copy_bw', 0) / 1e12:.2f} TB/s, bf16 matmul "
                 f"{res.get('matmul_flops', 0) / 1e12:.0f} TFLOP/s, transformers attention "
                 f"{res.get('transformers_attn', 'n/a')})\n")
    lines.append("| workload | engine | requests | output tokens | time (s) | tokens/s | batch TTFT (s) | "
                 "roofline (s) | % of roofline | KV stored / logical |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    ok = [r for r in res["rows"] if "tok_s" in r]
    for r in ok:
        kv = f"{r['kv_stored']} / {r['kv_logical']}" if "kv_stored" in r else "-"
        lines.append(f"| {r['workload']} | {r['engine']} | {r['requests']} | {r['tokens']} | {r['secs']:.2f} | "
                     f"{r['tok_s']:.0f} | {fmt(r.get('ttft_s'), 2)} | {r['roofline_s']:.2f} | "
                     f"{100 * r['roofline_frac']:.0f}% | {kv} |")
    for r in res["rows"]:
        if "tok_s" not in r:
            lines.append(f"\nfailed: {r['workload']} {r['engine']}: `{r.get('error', '')[-400:]}`")
    if "auto_vs_off_identical" in res:
        lines.append("\nGreedy outputs identical between --cascade auto and off (requests): " +
                     ", ".join(f"{k} {a}/{b}" for k, (a, b) in res["auto_vs_off_identical"].items()))
    lines.append("")
    if ok:
        wls = list(dict.fromkeys(r["workload"] for r in ok))
        engines = list(dict.fromkeys(r["engine"] for r in ok))
        fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(wls)), 4))
        w = 0.8 / len(engines)
        for k, e in enumerate(engines):
            xs, ys = [], []
            for i, wl in enumerate(wls):
                m = [r for r in ok if r["workload"] == wl and r["engine"] == e]
                if m:
                    xs.append(i + k * w)
                    ys.append(m[0]["tok_s"])
            ax.bar(xs, ys, w, label=e)
        roof = []
        for i, wl in enumerate(wls):
            m = [r for r in ok if r["workload"] == wl]
            n = max(r["tokens"] for r in m)
            roof.append(n / m[0]["roofline_s"])
        ax.scatter([i + 0.4 - w / 2 for i in range(len(wls))], roof, marker="_", s=600, color="k",
                   label="roofline")
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(wls))])
        ax.set_xticklabels(wls, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("output tokens/s")
        ax.set_title("End-to-end throughput, random Qwen3-0.6B-shaped model")
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(d, "side_by_side_e2e.png"), dpi=110)
        plt.close(fig)
        lines.append("![end to end](img/side_by_side_e2e.png)\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    lines = []
    for name, fn in (("kernels.json", kernel_outputs), ("e2e.json", e2e_outputs)):
        p = os.path.join(a.dir, name)
        if os.path.exists(p):
            try:
                fn(a.dir, json.load(open(p)), lines)
            except Exception as e:  # a broken plot must not lose the tables
                lines.append(f"\n(plotting {name} failed: {e})\n")
    open(os.path.join(a.dir, "tables.md"), "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

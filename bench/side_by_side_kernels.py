#!/usr/bin/env python3
"""Decode attention side by side on one GPU: Cascade's multi-level kernels (through
libcascade_attn.so) against FlashInfer's MultiLevelCascadeAttentionWrapper and its flat paged
decode (BatchDecodeWithPagedKVCacheWrapper), on the same bf16 page pools.

The pools are one layer's K and V as src/cache/kv_layout.h lays them out, [pages, page_size,
kv_heads, head_dim], which is FlashInfer's paged NHD layout, so all kernels read the same bytes.
Each case is a sharing tree: level 0 one shared prefix for the whole batch, (3-level cases) level 1
one document per group of rows, last level each row's own tokens. Every query is one decode token
(the last position of its path). Outputs are checked against each other and against a float32
reference on sampled rows before anything is timed.

Timing: median of --iters runs, each between CUDA events, with L2 flushed (a 256 MiB write)
before every run; warm-ups excluded. Floor = distinct KV bytes (prefix once + every unique part
once) / copy bandwidth measured in this run (bytes read + written by a 1 GiB device copy).
If FlashInfer cannot be imported or run, the exact error is recorded and PyTorch stand-ins are
timed instead: flat attention with scaled_dot_product_attention on per-request gathered KV, and a
per-level composition (one batched call per level on gathered KV, then an exact lse merge).

usage: side_by_side_kernels.py --lib build-bench/libcascade_attn.so --out DIR [--quick]
"""
import argparse
import ctypes
import json
import math
import os
import sys
import time
import traceback

import torch

PAGE = 16
D = 128


def log(*a):
    print("[kern]", *a, file=sys.stderr, flush=True)


# ---- case description -----------------------------------------------------------------------
def make_case(batch, levels_spec):
    """levels_spec: list of (num_groups, tokens per group); rows split evenly and contiguously
    across each level's groups. Returns levels: list of list of (row_lo, row_hi, tokens)."""
    levels = []
    for groups, toks in levels_spec:
        per = batch // groups
        levels.append([(g * per, (g + 1) * per, toks) for g in range(groups)])
    return levels


def alloc_pages(levels):
    """Pages of each group, consecutive ids level by level."""
    nxt, pages = 0, []
    for lv in levels:
        lp = []
        for (_, _, toks) in lv:
            n = (toks + PAGE - 1) // PAGE
            lp.append(list(range(nxt, nxt + n)))
            nxt += n
        pages.append(lp)
    return pages, nxt


def page_lens(toks):
    n = (toks + PAGE - 1) // PAGE
    return [PAGE] * (n - 1) + [toks - PAGE * (n - 1)]


def row_paths(batch, levels, pages):
    """Per row: its (page id list, page len list) over all levels in order, and its total tokens."""
    paths = []
    for r in range(batch):
        ids, lens, total = [], [], 0
        for li, lv in enumerate(levels):
            for gi, (lo, hi, toks) in enumerate(lv):
                if lo <= r < hi:
                    ids += pages[li][gi]
                    lens += page_lens(toks)
                    total += toks
        paths.append((ids, lens, total))
    return paths


# ---- Cascade through the C ABI --------------------------------------------------------------
class CascadeLib:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        i32p = ctypes.POINTER(ctypes.c_int32)
        self.lib.cascade_attn_plan_create.restype = ctypes.c_void_p
        self.lib.cascade_attn_plan_create.argtypes = [ctypes.c_int, i32p, i32p, ctypes.c_int, i32p, i32p,
                                                      i32p, i32p, i32p, i32p, i32p] + [ctypes.c_int] * 6
        self.lib.cascade_attn_run.restype = ctypes.c_int
        self.lib.cascade_attn_run.argtypes = [ctypes.c_void_p] * 6
        self.lib.cascade_attn_plan_destroy.argtypes = [ctypes.c_void_p]
        self.lib.cascade_attn_last_error.restype = ctypes.c_char_p
        self.lib.cascade_attn_plan_info.argtypes = [ctypes.c_void_p, i32p, i32p, i32p, ctypes.c_int]

    def err(self):
        return self.lib.cascade_attn_last_error().decode()

    def plan(self, batch, levels, pages, H, KVH, num_sms):
        def arr(v):
            a = (ctypes.c_int32 * max(1, len(v)))(*v)
            return a
        row_order = list(range(batch))
        paths = row_paths(batch, levels, pages)
        q_pos = [p[2] - 1 for p in paths]
        groups, npages, qi, pi, pids, plens, kvs = [], [], [], [], [], [], []
        for li, lv in enumerate(levels):
            groups.append(len(lv))
            q, p = [0], [0]
            before = sum(levels[k][0][2] for k in range(li))  # every path has one group per level
            for gi, (lo, hi, toks) in enumerate(lv):
                assert lo == q[-1]
                q.append(hi)
                pids += pages[li][gi]
                plens += page_lens(toks)
                p.append(p[-1] + len(pages[li][gi]))
                kvs.append(before)
            npages.append(p[-1])
            qi += q
            pi += p
        keep = [arr(x) for x in (row_order, q_pos, groups, npages, qi, pi, pids, plens, kvs)]
        h = self.lib.cascade_attn_plan_create(batch, *keep[:2], len(levels), *keep[2:], H, KVH, D, PAGE,
                                              num_sms, 64)
        if not h:
            raise RuntimeError(self.err())
        nl, ns = ctypes.c_int32(), ctypes.c_int32()
        info = (ctypes.c_int32 * 48)()
        self.lib.cascade_attn_plan_info(h, ctypes.byref(nl), ctypes.byref(ns), info, 48)
        desc = [(info[3 * l], info[3 * l + 1], info[3 * l + 2]) for l in range(nl.value)]
        return h, {"slices": ns.value, "levels_warps_splits_items": desc}

    def run(self, h, q, k, v, out):
        rc = self.lib.cascade_attn_run(h, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                                       torch.cuda.current_stream().cuda_stream)
        if rc != 0:
            raise RuntimeError(self.err())

    def destroy(self, h):
        self.lib.cascade_attn_plan_destroy(h)


# ---- FlashInfer -----------------------------------------------------------------------------
class FlashInferSide:
    def __init__(self, backend):
        import flashinfer
        self.fi = flashinfer
        self.backend = backend
        self.ws = [torch.empty(256 << 20, dtype=torch.uint8, device="cuda") for _ in range(3)]

    def cascade(self, batch, levels, pages, H, KVH):
        w = self.fi.MultiLevelCascadeAttentionWrapper(len(levels), self.ws[0], "NHD")
        if self.backend != "auto":
            for inner in w._batch_prefill_wrappers:
                inner._backend = self.backend
        qo, kvi, kvx, last = [], [], [], []
        for li, lv in enumerate(levels):
            qo.append(torch.tensor([0] + [hi for (_, hi, _) in lv], dtype=torch.int32, device="cuda"))
            ind = [0]
            ids = []
            for gi, (_, _, toks) in enumerate(lv):
                ids += pages[li][gi]
                ind.append(len(ids))
            kvi.append(torch.tensor(ind, dtype=torch.int32, device="cuda"))
            kvx.append(torch.tensor(ids, dtype=torch.int32, device="cuda"))
            last.append(torch.tensor([page_lens(t)[-1] for (_, _, t) in lv], dtype=torch.int32, device="cuda"))
        w.plan(qo, kvi, kvx, last, H, KVH, D, PAGE, causal=False, q_data_type=torch.bfloat16,
               kv_data_type=torch.bfloat16)
        return w

    def flat(self, batch, levels, pages, H, KVH, tensor_cores):
        w = self.fi.BatchDecodeWithPagedKVCacheWrapper(self.ws[1 if not tensor_cores else 2], "NHD",
                                                       use_tensor_cores=tensor_cores)
        paths = row_paths(batch, levels, pages)
        ind, ids, last = [0], [], []
        for (pid, lens, _) in paths:
            ids += pid
            ind.append(len(ids))
            last.append(lens[-1])
        t = lambda v: torch.tensor(v, dtype=torch.int32, device="cuda")
        w.plan(t(ind), t(ids), t(last), H, KVH, D, PAGE, pos_encoding_mode="NONE",
               q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
        return w


# ---- PyTorch stand-ins (fallback) and the float32 reference ---------------------------------
def gather(kp, pid, lens):
    idx = torch.tensor(pid, device="cuda")
    x = kp[idx].reshape(-1, kp.shape[2], kp.shape[3])
    return x[: sum(lens)]


def reference_rows(q, kp, vp, paths, rows, H, KVH):
    out = []
    g = H // KVH
    for r in rows:
        pid, lens, _ = paths[r]
        k = gather(kp, pid, lens).float().repeat_interleave(g, dim=1)  # [T, H, D]
        v = gather(vp, pid, lens).float().repeat_interleave(g, dim=1)
        s = torch.einsum("hd,thd->ht", q[r].float(), k) / math.sqrt(D)
        out.append(torch.einsum("ht,thd->hd", torch.softmax(s, dim=-1), v))
    return torch.stack(out)


class TorchSide:
    """Flat SDPA over gathered per-request KV, and a per-level composition with an lse merge."""

    def __init__(self, q, kp, vp, batch, levels, pages, H, KVH):
        self.H, self.KVH = H, KVH
        paths = row_paths(batch, levels, pages)
        T = paths[0][2]
        self.flat_bytes = batch * T * KVH * D * 2 * 2
        self.q = q
        if self.flat_bytes <= (8 << 30):
            self.kf = torch.stack([gather(kp, p[0], p[1]) for p in paths]).transpose(1, 2)  # [B, KVH, T, D]
            self.vf = torch.stack([gather(vp, p[0], p[1]) for p in paths]).transpose(1, 2)
        else:
            self.kf = None
        self.lv = []  # per level: rows per group, K/V [G, KVH, T, D]
        for li, lv in enumerate(levels):
            k = torch.stack([gather(kp, pages[li][gi], page_lens(t)) for gi, (_, _, t) in enumerate(lv)])
            v = torch.stack([gather(vp, pages[li][gi], page_lens(t)) for gi, (_, _, t) in enumerate(lv)])
            self.lv.append((lv[0][1] - lv[0][0], k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()))

    def flat(self):
        if self.kf is None:
            return None
        q = self.q.unsqueeze(2)  # [B, H, 1, D]
        o = torch.nn.functional.scaled_dot_product_attention(q, self.kf, self.vf, enable_gqa=True)
        return o.squeeze(2)

    def composed(self):
        B, H, KVH = self.q.shape[0], self.H, self.KVH
        g = H // KVH
        o_acc, l_acc = None, None
        for rpg, k, v in self.lv:
            G = k.shape[0]
            q = self.q.view(G, rpg, KVH, g, D).permute(0, 2, 1, 3, 4).reshape(G, KVH, rpg * g, D)
            s = torch.matmul(q, k.transpose(-1, -2)).float() * (1.0 / math.sqrt(D))
            lse = torch.logsumexp(s, dim=-1)
            o = torch.matmul(torch.softmax(s, dim=-1).to(v.dtype), v).float()
            o = o.view(G, KVH, rpg, g, D).permute(0, 2, 1, 3, 4).reshape(B, H, D)
            lse = lse.view(G, KVH, rpg, g).permute(0, 2, 1, 3).reshape(B, H)
            if o_acc is None:
                o_acc, l_acc = o, lse
            else:
                m = torch.maximum(l_acc, lse)
                a, b = torch.exp(l_acc - m), torch.exp(lse - m)
                o_acc = (o_acc * a[..., None] + o * b[..., None]) / (a + b)[..., None]
                l_acc = m + torch.log(a + b)
        return o_acc.to(torch.bfloat16)


# ---- timing ---------------------------------------------------------------------------------
class Timer:
    def __init__(self, iters, warmup):
        self.iters, self.warmup = iters, warmup
        self.flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")

    def median_ms(self, fn):
        for _ in range(self.warmup):
            fn()
        ts = []
        for _ in range(self.iters):
            self.flush.zero_()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b))
        ts.sort()
        return ts[len(ts) // 2]


def copy_bandwidth():
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(10):
        y.copy_(x)
    b.record()
    b.synchronize()
    return 2 * x.numel() * 10 / (a.elapsed_time(b) / 1e3)


# ---- cases ----------------------------------------------------------------------------------
def all_cases(quick):
    heads = [("Qwen3-0.6B", 16, 8), ("Qwen3-8B", 32, 8)]
    if quick:
        return [(n, h, k, 16, [(1, 1024), (16, 128)], "2-level") for (n, h, k) in heads] + \
               [("Qwen3-8B", 32, 8, 64, [(1, 2048), (8, 4096), (64, 128)], "3-level")]
    cases = []
    for (n, h, k) in heads:
        for b in (16, 64, 256):
            for u in (128, 1024):
                for p in (1024, 4096, 16384, 32768):
                    cases.append((n, h, k, b, [(1, p), (b, u)], "2-level"))
        for b in (64, 256):
            cases.append((n, h, k, b, [(1, 2048), (8, 4096), (b, 128)], "3-level"))
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--fi-backend", default="fa2", help="FlashInfer prefill backend for the cascade levels")
    ap.add_argument("--budget-s", type=float, default=110.0, help="stop starting new cases after this")
    ap.add_argument("--warm-only", action="store_true", help="only JIT-compile FlashInfer's kernels")
    args = ap.parse_args()
    if args.warm_only:  # compiles the decode, fa2 prefill and merge modules once (cached on disk)
        t0 = time.time()
        fi = FlashInferSide(args.fi_backend)
        levels = make_case(16, [(1, 64), (16, 32)])
        pages, npages = alloc_pages(levels)
        kp = torch.randn(npages, PAGE, 8, D, device="cuda").to(torch.bfloat16)
        q = torch.randn(16, 16, D, device="cuda").to(torch.bfloat16)
        fi.cascade(16, levels, pages, 16, 8).run(q, (kp, kp))
        fi.flat(16, levels, pages, 16, 8, False).run(q, (kp, kp))
        fi.flat(16, levels, pages, 16, 8, True).run(q, (kp, kp))
        torch.cuda.synchronize()
        log(f"FlashInfer {fi.fi.__version__} kernels compiled in {time.time() - t0:.0f} s")
        return
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    torch.manual_seed(0)
    lib = CascadeLib(args.lib)
    props = torch.cuda.get_device_properties(0)
    num_sms = props.multi_processor_count
    res = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    try:
        fi = FlashInferSide(args.fi_backend)
        res["flashinfer"] = fi.fi.__version__
        res["fi_backend"] = args.fi_backend
    except Exception as e:
        fi = None
        res["flashinfer_error"] = f"{type(e).__name__}: {e}"
        log("FlashInfer unavailable:", res["flashinfer_error"])
    bw = copy_bandwidth()
    res["copy_bw"] = bw
    log(f"{res['card']}: copy bandwidth {bw / 1e12:.2f} TB/s, {num_sms} SMs")
    timer = Timer(args.iters, args.warmup)

    def save():
        with open(os.path.join(args.out, "kernels.json"), "w") as f:
            json.dump(res, f, indent=1)

    for (mname, H, KVH, B, spec, kind) in all_cases(args.quick):
        if time.time() - t_start > args.budget_s:
            res["rows"].append({"model": mname, "batch": B, "levels": spec, "error": "skipped: time budget"})
            continue
        kp = vp = q = None
        levels = make_case(B, spec)
        pages, npages = alloc_pages(levels)
        row = {"model": mname, "H": H, "KVH": KVH, "batch": B, "kind": kind, "levels": spec,
               "prefix": spec[0][1], "unique": spec[-1][1]}
        try:
            kp = (torch.randn(npages, PAGE, KVH, D, device="cuda") * 0.5).to(torch.bfloat16)
            vp = torch.randn(npages, PAGE, KVH, D, device="cuda").to(torch.bfloat16)
            q = torch.randn(B, H, D, device="cuda").to(torch.bfloat16)
            distinct_tokens = sum(t for lv in levels for (_, _, t) in lv)
            kv_bytes = distinct_tokens * KVH * D * 2 * 2
            flat_tokens = B * sum(lv[0][2] for lv in levels)
            row["floor_ms"] = kv_bytes / bw * 1e3
            row["flat_floor_ms"] = flat_tokens * KVH * D * 2 * 2 / bw * 1e3
            paths = row_paths(B, levels, pages)
            sample = sorted({0, B // 2, B - 1})
            ref = reference_rows(q, kp, vp, paths, sample, H, KVH)

            outs = {}
            h, info = lib.plan(B, levels, pages, H, KVH, num_sms)
            row["cascade_plan"] = info
            o_c = torch.full((B, H * D), float("nan"), dtype=torch.bfloat16, device="cuda")
            lib.run(h, q, kp, vp, o_c)
            torch.cuda.synchronize()
            outs["cascade"] = (o_c.view(B, H, D), lambda: lib.run(h, q, kp, vp, o_c))
            fns = {}
            if fi is not None:
                try:
                    wc = fi.cascade(B, levels, pages, H, KVH)
                    outs["fi_cascade"] = (wc.run(q, (kp, vp)), lambda: wc.run(q, (kp, vp)))
                    wf = fi.flat(B, levels, pages, H, KVH, False)
                    outs["fi_flat"] = (wf.run(q, (kp, vp)), lambda: wf.run(q, (kp, vp)))
                    wt = fi.flat(B, levels, pages, H, KVH, True)
                    outs["fi_flat_tc"] = (wt.run(q, (kp, vp)), lambda: wt.run(q, (kp, vp)))
                except Exception as e:
                    row["flashinfer_error"] = f"{type(e).__name__}: {e}"
                    log("FlashInfer failed:", row["flashinfer_error"])
            if fi is None or "flashinfer_error" in row:
                ts = TorchSide(q, kp, vp, B, levels, pages, H, KVH)
                fo = ts.flat()
                if fo is not None:
                    outs["torch_flat_sdpa"] = (fo, ts.flat)
                outs["torch_composed"] = (ts.composed(), ts.composed)
            torch.cuda.synchronize()
            # correctness before timing
            err = {}
            base = outs["cascade"][0].float()
            for name, (o, _) in outs.items():
                o = o.float().view(B, H, D)
                err[name + "_vs_ref"] = float((o[sample] - ref).abs().max())
                if name != "cascade":
                    err[name + "_vs_cascade"] = float((o - base).abs().max())
            row["max_abs_err"] = err
            row["outputs_match"] = all(v <= 2e-2 for v in err.values()) and not torch.isnan(base).any().item()
            if not row["outputs_match"]:
                log("MISMATCH", mname, B, spec, err)
            for name, (_, fn) in outs.items():
                row[name + "_ms"] = timer.median_ms(fn)
            lib.destroy(h)
            c = row["cascade_ms"]
            row["cascade_vs_floor"] = row["floor_ms"] / c
            for other in ("fi_cascade", "fi_flat", "fi_flat_tc", "torch_flat_sdpa", "torch_composed"):
                if other + "_ms" in row:
                    row["speedup_vs_" + other] = row[other + "_ms"] / c
            log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                            if k.endswith("_ms") or k in ("model", "batch", "levels", "outputs_match")}))
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"
            row["trace"] = traceback.format_exc()[-1500:]
            log("case failed:", mname, B, spec, row["error"])
        res["rows"].append(row)
        save()
        del kp, vp, q
        outs = None
        torch.cuda.empty_cache()
    res["seconds"] = time.time() - t_start
    save()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What the wide level's split model (attention_plan.cpp: wide_splits, beside_makespan) picks for
the cascade bench's shapes, under other fit constants: a replica for trying a refit on the host.

    python3 bench/wide_model_picks.py [--tile-us 2.28] [--fixed-us 10] [--sm-rate 40000] [--sms 132]

Shapes are cuda_attention_bench's (16 q / 8 KV heads, so 2 stacked rows a sequence per KV head;
the unique level beside the wide one reads B x U keys x 8 KV heads x 512 bytes). Keep the
constants' defaults equal to attention_plan.cpp's: the test
CudaPlanPack.WideModelReplicaPicksWhatPackPlanPicks checks that its picks are pack_plan's.
"""
import argparse

BESIDE_FIXED_US = 8.6
CHIP_BYTES_PER_US = 2.9e6
WIDE_TILE = 128


def makespan(ctas, tiles, sms, beside_bytes, a):
    waves = (ctas + sms - 1) // sms
    wide = waves * (tiles * a.tile_us + a.fixed_us)
    if beside_bytes <= 0:
        return wide
    rate = min(CHIP_BYTES_PER_US, max(0, sms - ctas) * a.sm_rate)
    during = rate * max(0.0, wide - BESIDE_FIXED_US)
    if during >= beside_bytes:
        end = BESIDE_FIXED_US + beside_bytes / rate
    else:
        end = max(wide, BESIDE_FIXED_US) + (beside_bytes - during) / CHIP_BYTES_PER_US
    return max(wide, end)


def splits(ctas, max_len, sms, budget, beside_bytes, a):
    max_tiles = (max_len + WIDE_TILE - 1) // WIDE_TILE
    most = max(1, min(sms // ctas, max_tiles, budget))
    best, best_cost, best_tiles = 1, -1.0, 0
    for s in range(1, most + 1):
        tiles = ((max_len + s - 1) // s + WIDE_TILE - 1) // WIDE_TILE
        real = (max_len + tiles * WIDE_TILE - 1) // (tiles * WIDE_TILE)
        cost = makespan(ctas * real, tiles, sms, beside_bytes, a)
        if best_cost < 0 or cost <= best_cost * (1 + 1e-9):
            best, best_cost, best_tiles = real, cost, tiles
    return best, best_tiles, best_cost


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tile-us", type=float, default=2.28)
    p.add_argument("--fixed-us", type=float, default=10.0)
    p.add_argument("--sm-rate", type=float, default=40000.0)
    p.add_argument("--sms", type=int, default=132)
    a = p.parse_args()
    print("| P/U/B | splits | CTAs | tiles a CTA | modelled us |")
    print("| --- | --- | --- | --- | --- |")
    for prefix, unique, batch in [(16384, 128, 256), (16384, 128, 64), (4096, 128, 256), (4096, 128, 64),
                                  (16384, 512, 256), (16384, 512, 64)]:
        ctas = (batch * 2 + 127) // 128 * 8
        s, tiles, cost = splits(ctas, prefix, a.sms, 62, batch * unique * 8 * 512.0, a)
        print("| %d/%d/%d | %d | %d | %d | %.1f |" % (prefix, unique, batch, s, ctas * s, tiles, cost))


if __name__ == "__main__":
    main()

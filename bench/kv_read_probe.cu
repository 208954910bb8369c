// How fast can a decode kernel's loader read paged KV at all? The one-warp decode level reaches
// ~85% of the copy bandwidth over long ranges but ~60% at 64 sequences x 512 keys (NOTES v12);
// this probe times the loader alone, no arithmetic, to split that loss between the memory
// access pattern and the kernel's own work.
//
// Each warp reads one (sequence, KV head, split) range in 16-token tiles with cp.async into
// shared memory (kStages stages, as the decode kernel), and folds one word of each tile into a
// checksum so the loads cannot be dropped. Layouts of a page of 16 tokens x 8 KV heads x 128
// (bf16, K and V in separate pools):
//   nhd: [page][token][head][dim]  (the engine's: a head's row is 256 B, rows 2 KB apart)
//   hnd: [page][head][token][dim]  (a head's 16 rows are 4 KB in one piece)
// Pages are shuffled (as the attention bench hands them out) or in order. Each run: L2 flushed,
// then one launch between events; median of 30. The flush is a 256 MB read (clean L2, as in an
// engine step), a 256 MB memset (dirty L2: the older flush of the benchmarks, l2_flush.cuh) or
// none (what stayed in L2 from the previous run may be hit).
//
// Usage: kv_read_probe OUT.json [--full]
//   default: each flush, both layouts, shuffled pages, 2 stages, splits of 64 keys (unique 128)
//            or 192 (unique 512; a decode step's splits at batch 64)
//   --full:  also pages in order, splits of 64 / 192 / 512 keys and 4 stages
//   --work:  64 sequences x 512 keys only (a batch-64 decode layer's bytes), read flush, splits of
//            192, with 0-3000 cycles of busy work per tile after its wait and 2, 3 or 4 stages:
//            how much per-tile work between a tile's wait and the next loads costs a loader;
//            then 2 stages with the source-size form of cp.async and/or 272-byte shared-memory
//            rows (the attention kernel's), against the plain form and 256-byte rows
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda_bench_util.h"
#include "l2_flush.cuh"

namespace {

constexpr int kKvHeads = 8, kDim = 128, kPage = 16, kTile = 16;
constexpr int kRowBytes = kDim * 2;

__device__ inline void cp16(void* smem, const void* g) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(g));
}
// The form with a source size (the attention kernel's, which zero-fills rows past a range).
__device__ inline void cp16_src_size(void* smem, const void* g, int src_size) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(g), "r"(src_size));
}

struct Probe {
  const uint4* k;
  const uint4* v;
  const int* pages;   // [seq][pages_per_seq]
  int pages_per_seq;
  int keys;           // keys per sequence
  int per_split;      // keys per warp
  int splits;
  int hnd;
  int spin;  // clock cycles of busy work per tile after its wait (--work), 0 otherwise
  unsigned* out;
};

// grid (seqs, heads, splits), one warp per CTA.
// kPadRows: shared-memory rows of 272 bytes (256 + 16), as the attention kernel's padded K/V tiles.
template <int kStages, bool kSrcSize = false, bool kPadRows = false>
__global__ void __launch_bounds__(32) probe_kernel(Probe p) {
  constexpr int kRowU4 = kRowBytes / 16 + (kPadRows ? 1 : 0);
  __shared__ __align__(16) uint4 buf[kStages][2][kTile * kRowU4];
  const int seq = blockIdx.x, head = blockIdx.y, split = blockIdx.z, lane = threadIdx.x;
  const int t_begin = split * p.per_split;
  const int t_end = min(p.keys, t_begin + p.per_split);
  const int tiles = (t_end - t_begin + kTile - 1) / kTile;
  const int* pages = p.pages + static_cast<long long>(seq) * p.pages_per_seq;
  // Lane l copies chunk l % 16 of rows l / 16, l / 16 + 2, ... (16 rows of 16 chunks).
  const int chunk = lane & 15, row0 = lane >> 4;
  auto load = [&](int tile, int stage) {
    const int t0 = t_begin + tile * kTile;
    const int page = pages[t0 / kPage];  // tiles are page-aligned here
#pragma unroll
    for (int i = 0; i < kTile / 2; ++i) {
      const int r = row0 + 2 * i;
      const long long row = p.hnd ? (static_cast<long long>(page) * kKvHeads + head) * kPage + r
                                  : (static_cast<long long>(page) * kPage + r) * kKvHeads + head;
      if constexpr (kSrcSize) {
        cp16_src_size(&buf[stage][0][r * kRowU4 + chunk], p.k + row * 16 + chunk, p.hnd >= 0 ? 16 : 0);
        cp16_src_size(&buf[stage][1][r * kRowU4 + chunk], p.v + row * 16 + chunk, p.hnd >= 0 ? 16 : 0);
      } else {
        cp16(&buf[stage][0][r * kRowU4 + chunk], p.k + row * 16 + chunk);
        cp16(&buf[stage][1][r * kRowU4 + chunk], p.v + row * 16 + chunk);
      }
    }
  };
  unsigned sum = 0;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < tiles) load(s, s);
    asm volatile("cp.async.commit_group;\n");
  }
  for (int t = 0; t < tiles; ++t) {
    const int ahead = t + kStages - 1;
    if (ahead < tiles) load(ahead, ahead % kStages);
    asm volatile("cp.async.commit_group;\n");
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 1));
    __syncwarp();
    const uint4 a = buf[t % kStages][0][lane], b = buf[t % kStages][1][lane + 32];
    sum ^= a.x + b.y;
    if (p.spin > 0) {  // stands for a kernel's arithmetic on the tile, before the next loads
      const long long c0 = clock64();
      while (clock64() - c0 < p.spin) {
      }
    }
    __syncwarp();
  }
  if (lane == 0) p.out[(seq * gridDim.y + head) * gridDim.z + split] = sum;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: kv_read_probe OUT.json [--full | --work]\n");
    return 2;
  }
  const bool full = argc > 2 && std::string(argv[2]) == "--full";
  const bool work = argc > 2 && std::string(argv[2]) == "--work";
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const double bw = cascade::bench::copy_bandwidth();
  std::printf("device: %s, %d SMs; copy bandwidth %.0f GB/s\n", prop.name, prop.multiProcessorCount, bw / 1e9);
  const int max_b = 256, max_u = 512;
  const std::size_t pool_pages = static_cast<std::size_t>(max_b) * max_u / kPage;
  const std::size_t pool_bytes = pool_pages * kPage * kKvHeads * kRowBytes;
  uint4 *k, *v;
  CK(cudaMalloc(&k, pool_bytes));
  CK(cudaMalloc(&v, pool_bytes));
  CK(cudaMemset(k, 1, pool_bytes));
  CK(cudaMemset(v, 2, pool_bytes));
  int* d_pages;
  CK(cudaMalloc(&d_pages, pool_pages * 4));
  unsigned* d_out;
  CK(cudaMalloc(&d_out, 1u << 24));
  const std::size_t flush_bytes = 256u << 20;
  void* flush;
  CK(cudaMalloc(&flush, flush_bytes + 16));
  CK(cudaMemset(flush, 0, flush_bytes + 16));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::mt19937_64 rng(7);

  // Warm-up: the first timed configuration ran 10-15% slower than its repeats in every call of
  // v17 (NOTES v17), so the whole pool is read a few times, untimed, before it.
  {
    std::vector<int> all(pool_pages);
    std::iota(all.begin(), all.end(), 0);
    CK(cudaMemcpy(d_pages, all.data(), all.size() * 4, cudaMemcpyHostToDevice));
    Probe p{k, v, d_pages, max_u / kPage, max_u, 192, (max_u + 191) / 192, 0, 0, d_out};
    for (int i = 0; i < 10; ++i) probe_kernel<2><<<dim3(max_b, kKvHeads, p.splits), 32>>>(p);
    CK(cudaDeviceSynchronize());
  }
  std::string json = "{\n  \"device\": \"" + std::string(prop.name) + "\",\n  \"copy_bandwidth_GBps\": " +
                     std::to_string(bw / 1e9) + ",\n  \"runs\": [\n";
  std::printf("%-8s %-7s %-4s %-8s %6s %7s %5s %9s %9s %8s\n", "B/U", "flush", "lay", "pages", "split", "stages",
              "spin", "us", "floor us", "GB/s");
  bool first = true;
  for (int b : {64, 256}) {
    for (int u : {128, 512}) {
      if (work && (b != 64 || u != 512)) continue;
      const int pps = u / kPage;
      const double bytes = 2.0 * b * u * kKvHeads * kRowBytes;
      for (int shuffled : {1, 0}) {
        if (!full && !shuffled) continue;
        std::vector<int> pages(static_cast<std::size_t>(b) * pps);
        std::iota(pages.begin(), pages.end(), 0);
        if (shuffled) std::shuffle(pages.begin(), pages.end(), rng);
        CK(cudaMemcpy(d_pages, pages.data(), pages.size() * 4, cudaMemcpyHostToDevice));
        for (int flush_mode = 0; flush_mode < 3; ++flush_mode) {  // read, memset, none
        if (work && flush_mode != 0) continue;
        for (int hnd : {0, 1}) {
          if (work && hnd) continue;
          for (int per_split : {64, 192, 512}) {
            if (per_split > u || (!full && per_split != (u <= 128 ? 64 : 192))) continue;
            for (int stages : {2, 3, 4}) {
              if (!full && !work && stages != 2) continue;
              if (full && stages == 3) continue;
              for (int spin : {0, 500, 1000, 2000, 3000}) {
              if (!work && spin != 0) continue;
              Probe p{k, v, d_pages, pps, u, per_split, (u + per_split - 1) / per_split, hnd, spin, d_out};
              const dim3 grid(b, kKvHeads, p.splits);
              std::vector<double> t;
              for (int i = 0; i < 33; ++i) {
                if (flush_mode < 2) CK(cascade::bench::flush_l2(flush, flush_bytes, 0, nullptr, flush_mode == 1));
                CK(cudaEventRecord(e0));
                if (stages == 2) {
                  probe_kernel<2><<<grid, 32>>>(p);
                } else if (stages == 3) {
                  probe_kernel<3><<<grid, 32>>>(p);
                } else {
                  probe_kernel<4><<<grid, 32>>>(p);
                }
                CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1));
                float ms;
                CK(cudaEventElapsedTime(&ms, e0, e1));
                if (i >= 3) t.push_back(ms * 1e3);
              }
              CK(cudaGetLastError());
              const double us = cascade::bench::median(t);
              const char* fname = flush_mode == 0 ? "read" : flush_mode == 1 ? "memset" : "none";
              std::printf("%3d/%-4d %-7s %-4s %-8s %6d %7d %5d %9.1f %9.1f %8.0f\n", b, u, fname, hnd ? "hnd" : "nhd",
                          shuffled ? "shuffled" : "in order", per_split, stages, spin, us, bytes / bw * 1e6,
                          bytes / us / 1e3);
              char line[320];
              std::snprintf(line, sizeof line,
                            "%s    {\"batch\": %d, \"unique\": %d, \"flush\": \"%s\", \"layout\": \"%s\", "
                            "\"pages\": \"%s\", \"per_split\": %d, \"stages\": %d, \"spin_cycles\": %d, \"us\": %.2f, "
                            "\"floor_us\": %.2f}",
                            first ? "" : ",\n", b, u, fname, hnd ? "hnd" : "nhd", shuffled ? "shuffled" : "in order",
                            per_split, stages, spin, us, bytes / bw * 1e6);
              json += line;
              first = false;
              }
            }
          }
        }
        }
      }
    }
  }
  if (work) {  // the source-size form of cp.async against the plain one, same shape
    const int b = 64, u = 512, pps = u / kPage, per_split = 192;
    const double bytes = 2.0 * b * u * kKvHeads * kRowBytes;
    std::vector<int> pages(static_cast<std::size_t>(b) * pps);
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), rng);
    CK(cudaMemcpy(d_pages, pages.data(), pages.size() * 4, cudaMemcpyHostToDevice));
    for (int round = 0; round < 2; ++round) {
      for (int form = 0; form < 4; ++form) {
        const bool src_size = form & 1, pad = form & 2;
        Probe p{k, v, d_pages, pps, u, per_split, (u + per_split - 1) / per_split, 0, 0, d_out};
        const dim3 grid(b, kKvHeads, p.splits);
        std::vector<double> t;
        for (int i = 0; i < 33; ++i) {
          CK(cascade::bench::flush_l2(flush, flush_bytes, 0, nullptr, false));
          CK(cudaEventRecord(e0));
          if (form == 0) probe_kernel<2, false, false><<<grid, 32>>>(p);
          if (form == 1) probe_kernel<2, true, false><<<grid, 32>>>(p);
          if (form == 2) probe_kernel<2, false, true><<<grid, 32>>>(p);
          if (form == 3) probe_kernel<2, true, true><<<grid, 32>>>(p);
          CK(cudaEventRecord(e1));
          CK(cudaEventSynchronize(e1));
          float ms;
          CK(cudaEventElapsedTime(&ms, e0, e1));
          if (i >= 3) t.push_back(ms * 1e3);
        }
        const double us = cascade::bench::median(t);
        std::printf("64/512 read, 2 stages, cp.async %-16s, rows of %d B %9.1f us %8.0f GB/s\n",
                    src_size ? "with source size" : "plain", pad ? 272 : 256, us, bytes / us / 1e3);
        char line[200];
        std::snprintf(line, sizeof line,
                      ",\n    {\"batch\": 64, \"unique\": 512, \"cp_async\": \"%s\", \"smem_row_bytes\": %d, \"us\": %.2f}",
                      src_size ? "src_size" : "plain", pad ? 272 : 256, us);
        json += line;
      }
    }
  }
  json += "\n  ]\n}\n";
  return cascade::bench::write_text(argv[1], json) ? 0 : 1;
}

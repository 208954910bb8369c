// The decode-batch GEMMs of a Qwen3-0.6B layer (qkv 4096x1024, o_proj 1024x2048, gate_up
// 6144x1024, down 1024x3072; lm_head 151936x1024 with fp32 out) at M rows, through Gemm::run (the
// GEMV for M <= 2, the skinny GEMM for 3-64 on sm_90a, else cuBLASLt) and through cuBLASLt alone,
// against the floor: bytes of w read once over the copy bandwidth measured in the same run.
// "down+silu" is the MLP's down projection from the gate_up output as the runner runs it: the
// silu GEMV at M <= 2, else (and in the cuBLASLt column) the silu_mul kernel and then the GEMM.
//
// Usage: cuda_gemm_bench OUT.json [--m 4,8,16,32,64] [--reps N] [--w-copies C]
// Each timing is the median over --reps runs of a CUDA graph of 16 back-to-back GEMMs, each on
// its own copy of w (together larger than L2, so w comes from DRAM as in a decode step).
// --w-copies C cycles the 16 GEMMs over C copies of w instead (lm_head: at most 2): with C = 1
// the layer shapes read w from L2, which tells how much of a GEMM's time the DRAM reads set.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backend/cuda/gemm.h"
#include "backend/cuda/kernels.h"
#include "cuda_bench_util.h"

namespace {

using cascade::bench::copy_bandwidth;
using cascade::bench::median;

__global__ void fill_kernel(__nv_bfloat16* p, std::size_t n, unsigned seed) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
    h ^= h >> 13;
    p[i] = __float2bfloat16((static_cast<float>(h & 0xffff) / 65536.0f - 0.5f) * 0.05f);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s OUT.json [--m 4,8,16,32,64] [--reps N] [--w-copies C]\n", argv[0]);
    return 2;
  }
  std::vector<int> ms = {4, 8, 16, 32, 64};
  int reps = 30;
  constexpr int kGemmsPerGraph = 16;
  int w_copies = kGemmsPerGraph;  // each GEMM of a graph on its own copy of w
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else if (a == "--w-copies" && i + 1 < argc) {
      w_copies = std::clamp(std::atoi(argv[++i]), 1, kGemmsPerGraph);
    } else if (a == "--m" && i + 1 < argc) {
      ms.clear();
      std::stringstream ss(argv[++i]);
      std::string tok;
      while (std::getline(ss, tok, ',')) ms.push_back(std::atoi(tok.c_str()));
    }
  }
  struct G {
    const char* name;
    int n, k;
    bool f32;
    bool silu = false;  // x is gate_up [M, 2K]: Gemm::run_silu_gemm (cuBLASLt: silu_mul + GEMM)
  };
  const G shapes[] = {{"qkv", 4096, 1024, false},
                      {"o_proj", 1024, 2048, false},
                      {"gate_up", 6144, 1024, false},
                      {"down", 1024, 3072, false},
                      {"down+silu", 1024, 3072, false, true},
                      {"lm_head", 151936, 1024, true}};
  const double bw = copy_bandwidth();
  cascade::cuda::Gemm gemm;
  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  const int max_m = *std::max_element(ms.begin(), ms.end());
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::string json = "{\n  \"device\": \"" + std::string(prop.name) + "\",\n  \"copy_bandwidth_gbs\": " +
                     std::to_string(bw / 1e9) + ",\n  \"w_copies\": " + std::to_string(w_copies) + ",\n  \"skinny\": " +
                     (gemm.skinny_enabled() ? "true" : "false") + ",\n  \"results\": [\n";
  bool first = true;
  std::printf("%s, copy bandwidth %.0f GB/s, skinny GEMM %s\n", prop.name, bw / 1e9,
              gemm.skinny_enabled() ? "on" : "off");
  std::printf("%-8s %4s %10s %10s %10s %8s %8s\n", "gemm", "M", "run us", "cublas us", "floor us",
              "run/fl", "cub/fl");
  for (const G& g : shapes) {
    const int copies = g.n > 100000 ? std::min(2, w_copies) : w_copies;  // lm_head: 311 MB a copy
    const std::size_t wn = static_cast<std::size_t>(g.n) * g.k;
    std::vector<__nv_bfloat16*> w(copies);
    for (int c = 0; c < copies; ++c) {
      CK(cudaMalloc(&w[c], wn * 2));
      fill_kernel<<<1024, 256>>>(w[c], wn, 17u + c);
    }
    __nv_bfloat16* x = nullptr;
    void* y = nullptr;
    CK(cudaMalloc(&x, static_cast<std::size_t>(max_m) * g.k * 2 * (g.silu ? 3 : 1)));
    CK(cudaMalloc(&y, static_cast<std::size_t>(max_m) * g.n * 4));
    fill_kernel<<<256, 256>>>(x, static_cast<std::size_t>(max_m) * g.k * (g.silu ? 3 : 1), 5u);
    __nv_bfloat16* act = x + static_cast<std::size_t>(max_m) * g.k * 2;  // silu_mul's output (cuBLASLt path)
    CK(cudaDeviceSynchronize());
    for (int M : ms) {
      double us[2];
      for (int path = 0; path < 2; ++path) {
        auto enqueue = [&] {
          for (int r = 0; r < kGemmsPerGraph; ++r) {
            if (g.silu) {
              if (path == 0 && gemm.run_silu_gemv(x, w[r % copies], static_cast<__nv_bfloat16*>(y), M, g.n, g.k, stream)) continue;
              CK(cascade::cuda::launch_silu_mul({x, act, M, g.k}, stream));
              if (path == 0) gemm.run(act, w[r % copies], y, false, M, g.n, g.k, stream);
              else gemm.run_cublaslt(act, w[r % copies], y, false, M, g.n, g.k, stream);
            } else if (path == 0) {
              gemm.run(x, w[r % copies], y, g.f32, M, g.n, g.k, stream);
            } else {
              gemm.run_cublaslt(x, w[r % copies], y, g.f32, M, g.n, g.k, stream);
            }
          }
        };
        enqueue();  // warm-up: plans, attributes
        CK(cudaStreamSynchronize(stream));
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        enqueue();
        CK(cudaStreamEndCapture(stream, &graph));
        CK(cudaGraphInstantiate(&exec, graph, 0));
        std::vector<double> t;
        for (int i = 0; i < reps + 2; ++i) {
          CK(cudaEventRecord(e0, stream));
          CK(cudaGraphLaunch(exec, stream));
          CK(cudaEventRecord(e1, stream));
          CK(cudaEventSynchronize(e1));
          float msec = 0;
          CK(cudaEventElapsedTime(&msec, e0, e1));
          if (i >= 2) t.push_back(msec * 1e3 / kGemmsPerGraph);
        }
        us[path] = median(t);
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
      }
      const double floor_us = wn * 2.0 / bw * 1e6;
      std::printf("%-8s %4d %10.2f %10.2f %10.2f %8.2f %8.2f\n", g.name, M, us[0], us[1], floor_us,
                  us[0] / floor_us, us[1] / floor_us);
      char buf[256];
      std::snprintf(buf, sizeof buf,
                    "%s    {\"gemm\": \"%s\", \"m\": %d, \"n\": %d, \"k\": %d, \"run_us\": %.3f, "
                    "\"cublaslt_us\": %.3f, \"floor_us\": %.3f}",
                    first ? "" : ",\n", g.name, M, g.n, g.k, us[0], us[1], floor_us);
      json += buf;
      first = false;
    }
    for (auto* p : w) cudaFree(p);
    cudaFree(x);
    cudaFree(y);
  }
  json += "\n  ]\n}\n";
  if (!cascade::bench::write_text(argv[1], json)) return 1;
  return 0;
}

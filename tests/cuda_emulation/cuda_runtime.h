// CPU emulation shim for tests/cuda_emulation/check_*.cc: it stands in for
// <cuda_runtime.h> so that the kernels of csrc/cuda/*.cuh compile as host C++20.
// One block at a time, one std::thread per CUDA thread, std::barrier for
// __syncthreads, __syncwarp and the warp shuffles. The fp32 intrinsics round as on the
// GPU: IEEE binary32 with round-to-nearest-even, no FTZ, and the build uses
// -ffp-contract=off so that nothing is fused behind the kernels' back (fmaf is
// std::fmaf, the exact fused multiply-add). For correctness checks only.
#pragma once
#include <algorithm>
#include <barrier>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
struct uint4 { unsigned x, y, z, w; };
struct uint2 { unsigned x, y; };
inline float fmaf(float a, float b, float c) { return std::fma(a, b, c); }
inline float fmaxf(float a, float b) { return std::fmax(a, b); }
inline float fabsf(float v) { return std::fabs(v); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdividef(float a, float b) { return a / b; }
inline int __float_as_int(float v) { return std::bit_cast<int>(v); }
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline long long __double_as_longlong(double v) { return std::bit_cast<long long>(v); }
inline float __uint2float_rn(unsigned v) { return static_cast<float>(v); }
inline int __clz(int v) { return std::countl_zero(static_cast<unsigned>(v)); }
struct dim3e { unsigned x = 0, y = 0, z = 0; };
inline thread_local dim3e threadIdx;
inline dim3e blockIdx, blockDim;
inline std::unique_ptr<std::barrier<>> g_block_bar;
inline std::vector<std::unique_ptr<std::barrier<>>> g_warp_bar;
inline double g_xchg[1024];
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) {
  g_warp_bar[threadIdx.x / 32]->arrive_and_wait();
}
template <class T> T __shfl_xor_sync(unsigned, T v, int off) {
  const int tid = threadIdx.x;
  g_xchg[tid] = static_cast<double>(v);
  g_warp_bar[tid / 32]->arrive_and_wait();
  T r = static_cast<T>(g_xchg[tid ^ off]);
  g_warp_bar[tid / 32]->arrive_and_wait();
  return r;
}
// Runs body() for every thread of every block: one std::thread per CUDA thread,
// reused across the blocks of the launch, which run one after the other.
template <class F> void emu_launch(unsigned grid, unsigned block, F&& body) {
  blockDim.x = block;
  g_block_bar = std::make_unique<std::barrier<>>(block);
  g_warp_bar.clear();
  for (unsigned w = 0; w < (block + 31) / 32; ++w)
    g_warp_bar.push_back(std::make_unique<std::barrier<>>(std::min(32u, block - 32 * w)));
  std::barrier<> step(block);
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < block; ++t) {
    ts.emplace_back([&, t] {
      threadIdx.x = t;
      for (unsigned b = 0; b < grid; ++b) {
        if (t == 0) blockIdx.x = b;
        step.arrive_and_wait();   // blockIdx is set for everyone
        body();
        step.arrive_and_wait();   // the block is done before the next one starts
      }
    });
  }
  for (auto& th : ts) th.join();
}

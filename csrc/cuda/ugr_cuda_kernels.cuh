// CUDA kernels of the two T-sized passes of weighted SI-SDR (launch code: ugr_cuda.cu).
//
// Kept free of ATen so they can be compile-checked on their own; scalar_t is any
// 2-, 4- or 8-byte float type convertible to float (double for 8 bytes).
//
// stats: the tile pass of ugr_tile_kernel.cuh (x rows against y rows; float-float sums
// for fp16/bf16/fp32, double for fp64), then stats_merge_kernel: one block per example
// merges the tile records in float64, tiles in order (Chan et al.'s parallel update in
// its k-way form: M = sum n_t m_t / N, S = sum_t [S_t + n_t (m_t - M)(m'_t - M')]);
// deterministic. zero_mean == false centres on 0 (raw sums).
// Backward (combine_kernel): out_i = h_i (x_i - mx_i) + sum_j g_ij (y_j - my_j) in double
// (the coefficients scale as 1/amplitude^2 and the terms cancel when the SI-SDR
// saturates); a zero coefficient contributes exactly 0. VEC samples per thread and step,
// fewer for 8 sources, so that the double y rows fit the registers (no spill).
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_runtime.h>

#include "ugr_tile_kernel.cuh"

namespace ugr_cuda {

constexpr int kMaxNC = 8;

// ---------------------------------------------------------------- pass 1b: merge

// One block per example; one thread per output value; tiles visited in order.
template <typename rec_t>
__global__ void stats_merge_kernel(const rec_t* __restrict__ part, double* __restrict__ mx,
                                   double* __restrict__ my, double* __restrict__ sxy,
                                   double* __restrict__ sxx, double* __restrict__ syy,
                                   int cx, int cy, int64_t T, int64_t tile, int64_t n_tiles,
                                   bool zero_mean) {
  const int64_t b = blockIdx.x;
  const RecLayout L{cx, cy};
  const int nf = 2 * cx + 2 * cy + cx * cy;
  const rec_t* rec0 = part + b * n_tiles * L.size();
  auto centre = [&](int r) { return zero_mean ? merged_mean(rec0, L, r, T, tile, n_tiles) : 0.0; };
  for (int o = threadIdx.x; o < nf; o += blockDim.x) {
    if (o < cx) {
      mx[b * cx + o] = centre(o);
    } else if (o < cx + cy) {
      my[b * cy + (o - cx)] = centre(o);
    } else if (o < 2 * cx + cy) {
      const int i = o - cx - cy;
      const double m = centre(i);
      sxx[b * cx + i] = merged_comoment(rec0, L, L.s2(i), i, i, m, m, T, tile, n_tiles);
    } else if (o < 2 * cx + 2 * cy) {
      const int j = o - 2 * cx - cy;
      const double m = centre(cx + j);
      syy[b * cy + j] = merged_comoment(rec0, L, L.s2(cx + j), cx + j, cx + j, m, m, T, tile,
                                        n_tiles);
    } else {
      const int r = o - 2 * cx - 2 * cy;
      const int i = r / cy, j = r % cy;
      sxy[(b * cx + i) * cy + j] = merged_comoment(rec0, L, L.sxy(i, j), i, cx + j, centre(i),
                                                   centre(cx + j), T, tile, n_tiles);
    }
  }
}

// ---------------------------------------------------------------- backward: combine

template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void store_row(scalar_t* __restrict__ p, int cnt, bool full,
                                          const acc_t (&val)[VEC]) {
  constexpr int kBytes = VEC * static_cast<int>(sizeof(scalar_t));
  if (full) {
    scalar_t v[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = static_cast<scalar_t>(val[k]);
    if constexpr (kBytes == 16) {
      uint4 raw;
      memcpy(&raw, v, sizeof(raw));
      *reinterpret_cast<uint4*>(p) = raw;
    } else if constexpr (kBytes == 8) {
      uint2 raw;
      memcpy(&raw, v, sizeof(raw));
      *reinterpret_cast<uint2*>(p) = raw;
    } else {
      unsigned raw;
      memcpy(&raw, v, sizeof(raw));
      *reinterpret_cast<unsigned*>(p) = raw;
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      if (k < cnt) p[k] = static_cast<scalar_t>(val[k]);
  }
}

// Samples per thread and step of combine: 4 (2 for float64, and for 8 sources).
template <typename scalar_t, int NC>
constexpr int combine_vec() {
  return (sizeof(scalar_t) == 8 || NC >= 8) ? 2 : 4;
}

template <typename scalar_t, typename acc_t, int NC>
__global__ void __launch_bounds__(kThreads)
combine_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
               const double* __restrict__ mx, const double* __restrict__ my,
               const double* __restrict__ g, const double* __restrict__ h,
               scalar_t* __restrict__ out, int cx, int cy, int64_t T, int64_t tile,
               int64_t n_tiles, bool vec_ok) {
  constexpr int VEC = combine_vec<scalar_t, NC>();
  const int64_t b = blockIdx.x / static_cast<unsigned>(n_tiles);    // 32-bit division
  const int64_t t_idx = blockIdx.x % static_cast<unsigned>(n_tiles);
  const int64_t start = t_idx * tile;
  const int64_t end = start + tile_count(t_idx, tile, T);

  __shared__ acc_t s_g[NC * NC];
  __shared__ acc_t s_h[NC], s_mx[NC], s_my[NC];
  const int tid = threadIdx.x;
  if (tid < NC * NC) {
    const int i = tid / NC, j = tid % NC;
    s_g[tid] = (i < cx && j < cy) ? static_cast<acc_t>(g[(b * cx + i) * cy + j]) : acc_t(0);
  }
  if (tid < NC) {
    s_h[tid] = tid < cx ? static_cast<acc_t>(h[b * cx + tid]) : acc_t(0);
    s_mx[tid] = tid < cx ? static_cast<acc_t>(mx[b * cx + tid]) : acc_t(0);
    s_my[tid] = tid < cy ? static_cast<acc_t>(my[b * cy + tid]) : acc_t(0);
  }
  __syncthreads();

  const scalar_t* xb = x + b * cx * T;
  const scalar_t* yb = y + b * cy * T;
  scalar_t* ob = out + b * cx * T;
  for (int64_t t0 = start + static_cast<int64_t>(tid) * VEC; t0 < end;
       t0 += static_cast<int64_t>(kThreads) * VEC) {
    const int cnt = static_cast<int>(end - t0 < VEC ? end - t0 : VEC);
    const bool full = vec_ok && cnt == VEC;
    acc_t yc[NC][VEC];
#pragma unroll
    for (int j = 0; j < NC; ++j) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) yc[j][k] = acc_t(0);
      if (j < cy) {
        load_vec<scalar_t, acc_t, VEC>(yb + j * T + t0, cnt, full, yc[j]);
#pragma unroll
        for (int k = 0; k < VEC; ++k) yc[j][k] -= s_my[j];
      }
    }
    // Not unrolled over i: unrolled, the compiler keeps all NC * NC coefficients of s_g
    // in registers and spills at NC = 8.
#pragma unroll 1
    for (int i = 0; i < cx; ++i) {
      {
        acc_t xc[VEC], o[VEC];
        load_vec<scalar_t, acc_t, VEC>(xb + i * T + t0, cnt, full, xc);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          // A zero coefficient adds exactly 0, even against a NaN/inf row
          // (a masked item must not poison the gradient).
          acc_t acc = s_h[i] != acc_t(0) ? s_h[i] * (xc[k] - s_mx[i]) : acc_t(0);
#pragma unroll
          for (int j = 0; j < NC; ++j)
            if (j < cy && s_g[i * NC + j] != acc_t(0)) acc += s_g[i * NC + j] * yc[j][k];
          o[k] = acc;
        }
        store_row<scalar_t, acc_t, VEC>(ob + i * T + t0, cnt, full, o);
      }
    }
  }
}

}  // namespace ugr_cuda

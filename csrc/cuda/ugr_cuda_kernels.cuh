// CUDA kernels of the two T-sized passes of weighted SI-SDR (launch code: ugr_cuda.cu).
//
// Kept free of ATen so they can be compile-checked on their own; scalar_t is any
// 2-, 4- or 8-byte float type convertible to and from acc_t (float / double,
// c10::Half / c10::BFloat16, __half / __nv_bfloat16).
//
// Layout: x (B, CX, T), y (B, CY, T) contiguous. A block owns one (example, tile)
// with every row of x and y; NC >= max(CX, CY) is a compile-time bound so the
// per-thread accumulators stay in registers.
//
// Pass 1 (stats_tile_kernel): each thread accumulates, over its samples of the
// tile, sums of the *shifted* samples (x - K_x), (y - K_y) and their products, with
// K the tile's first sample of each row (cheap, and close to the tile mean for
// audio, so there is no catastrophic cancellation); warp-shuffle + shared-memory
// reduction in a fixed order; one thread per field turns the block sums into
// the tile's means and centred sums in double and writes them to the partials
//     part[b, f, tile],  f: mean_x[CX] | mean_y[CY] | sxx[CX] | syy[CY] | sxy[CX*CY].
// Pass 2 (stats_merge_kernel): one block per example merges the tiles in double,
// sequentially in tile order (Chan et al.'s parallel update in its k-way form:
// M = sum n_t m_t / N, S = sum_t [S_t + n_t (m_t - M)(m'_t - M')]); deterministic.
// Backward (combine_kernel): out_i = h_i (x_i - mx_i) + sum_j g_ij (y_j - my_j), the
// double means applied as an acc_t hi + lo pair; launched with acc_t = double
// (the coefficients scale as 1/amplitude^2 and the terms cancel when the SI-SDR
// saturates); a zero coefficient contributes exactly 0.
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_runtime.h>

namespace ugr_cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxNC = 8;

// Number of accumulators of pass 1 per thread: s1x, s1y, s2x, s2y (NC each), sxy (NC*NC).
template <int NC>
struct Acc {
  static constexpr int kS1X = 0, kS1Y = NC, kS2X = 2 * NC, kS2Y = 3 * NC, kSXY = 4 * NC;
  static constexpr int kCount = 4 * NC + NC * NC;
};

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Loads VEC samples at p (cnt of them valid), converted to acc_t, as
// (v - shift) - shift_lo; invalid lanes are 0. shift_lo carries the part of a
// double shift that acc_t cannot hold (a mean near a large DC offset).
// `full`: cnt == VEC and p is 16-byte aligned -> one 16-byte load.
template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void load_row(const scalar_t* __restrict__ p, int cnt, bool full,
                                         acc_t shift, acc_t shift_lo, acc_t (&out)[VEC]) {
  static_assert(sizeof(scalar_t) * VEC == 16, "one 16-byte vector");
  if (full) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    scalar_t v[VEC];
    memcpy(v, &raw, sizeof(raw));
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = (static_cast<acc_t>(v[k]) - shift) - shift_lo;
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      out[k] = k < cnt ? (static_cast<acc_t>(p[k]) - shift) - shift_lo : acc_t(0);
  }
}

template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void store_row(scalar_t* __restrict__ p, int cnt, bool full,
                                          const acc_t (&val)[VEC]) {
  if (full) {
    scalar_t v[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = static_cast<scalar_t>(val[k]);
    uint4 raw;
    memcpy(&raw, v, sizeof(raw));
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      if (k < cnt) p[k] = static_cast<scalar_t>(val[k]);
  }
}

__device__ __forceinline__ int64_t tile_count(int64_t t, int64_t tile, int64_t T) {
  const int64_t rest = T - t * tile;
  return rest < tile ? rest : tile;
}

// ---------------------------------------------------------------- pass 1: tile partials

template <typename scalar_t, typename acc_t, int NC>
__global__ void __launch_bounds__(kThreads)
stats_tile_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                  double* __restrict__ part, int cx, int cy, int64_t T, int64_t tile,
                  int64_t n_tiles, bool vec_ok) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  using A = Acc<NC>;
  const int64_t b = blockIdx.x / n_tiles;
  const int64_t t_idx = blockIdx.x % n_tiles;
  const int64_t start = t_idx * tile;
  const int64_t end = start + tile_count(t_idx, tile, T);
  const scalar_t* xb = x + b * cx * T;
  const scalar_t* yb = y + b * cy * T;

  acc_t kx[NC], ky[NC];
#pragma unroll
  for (int i = 0; i < NC; ++i) {
    kx[i] = i < cx ? static_cast<acc_t>(xb[i * T + start]) : acc_t(0);
    ky[i] = i < cy ? static_cast<acc_t>(yb[i * T + start]) : acc_t(0);
  }
  acc_t a[A::kCount];
#pragma unroll
  for (int v = 0; v < A::kCount; ++v) a[v] = acc_t(0);

  for (int64_t t0 = start + static_cast<int64_t>(threadIdx.x) * VEC; t0 < end;
       t0 += static_cast<int64_t>(kThreads) * VEC) {
    const int cnt = static_cast<int>(end - t0 < VEC ? end - t0 : VEC);
    const bool full = vec_ok && cnt == VEC;
    acc_t xv[NC][VEC];
#pragma unroll
    for (int i = 0; i < NC; ++i) {
      if (i < cx) {
        load_row<scalar_t, acc_t, VEC>(xb + i * T + t0, cnt, full, kx[i], acc_t(0), xv[i]);
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) xv[i][k] = acc_t(0);
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        a[A::kS1X + i] += xv[i][k];
        a[A::kS2X + i] += xv[i][k] * xv[i][k];
      }
    }
#pragma unroll
    for (int j = 0; j < NC; ++j) {
      if (j < cy) {
        acc_t yv[VEC];
        load_row<scalar_t, acc_t, VEC>(yb + j * T + t0, cnt, full, ky[j], acc_t(0), yv);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          a[A::kS1Y + j] += yv[k];
          a[A::kS2Y + j] += yv[k] * yv[k];
#pragma unroll
          for (int i = 0; i < NC; ++i) a[A::kSXY + i * NC + j] += xv[i][k] * yv[k];
        }
      }
    }
  }

  // Block reduction in a fixed order: butterfly within warps, then warps in order.
  __shared__ acc_t warp_part[kWarps][A::kCount];
  __shared__ acc_t total[A::kCount];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int v = 0; v < A::kCount; ++v) {
    const acc_t r = warp_sum(a[v]);
    if (lane == 0) warp_part[warp][v] = r;
  }
  __syncthreads();
  for (int v = threadIdx.x; v < A::kCount; v += kThreads) {
    acc_t s = acc_t(0);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += warp_part[w][v];
    total[v] = s;
  }
  __syncthreads();

  // Shifted sums -> tile mean and centred sums, in double.
  const double n = static_cast<double>(end - start);
  const int nf = 2 * cx + 2 * cy + cx * cy;
  double* out = part + b * nf * n_tiles + t_idx;
  for (int f = threadIdx.x; f < nf; f += kThreads) {
    double val;
    if (f < cx) {
      val = static_cast<double>(static_cast<acc_t>(xb[f * T + start])) +
            static_cast<double>(total[A::kS1X + f]) / n;
    } else if (f < cx + cy) {
      const int j = f - cx;
      val = static_cast<double>(static_cast<acc_t>(yb[j * T + start])) +
            static_cast<double>(total[A::kS1Y + j]) / n;
    } else if (f < 2 * cx + cy) {
      const int i = f - cx - cy;
      const double s1 = static_cast<double>(total[A::kS1X + i]);
      val = static_cast<double>(total[A::kS2X + i]) - s1 * s1 / n;
    } else if (f < 2 * cx + 2 * cy) {
      const int j = f - 2 * cx - cy;
      const double s1 = static_cast<double>(total[A::kS1Y + j]);
      val = static_cast<double>(total[A::kS2Y + j]) - s1 * s1 / n;
    } else {
      const int r = f - 2 * cx - 2 * cy;
      const int i = r / cy, j = r % cy;
      val = static_cast<double>(total[A::kSXY + i * NC + j]) -
            static_cast<double>(total[A::kS1X + i]) * static_cast<double>(total[A::kS1Y + j]) / n;
    }
    out[static_cast<int64_t>(f) * n_tiles] = val;
  }
}

// ---------------------------------------------------------------- pass 1b: merge

__device__ __forceinline__ double merged_mean(const double* __restrict__ mean_t, int64_t T,
                                              int64_t tile, int64_t n_tiles) {
  double s = 0.0;
  for (int64_t t = 0; t < n_tiles; ++t)
    s += static_cast<double>(tile_count(t, tile, T)) * mean_t[t];
  return s / static_cast<double>(T);
}

__device__ __forceinline__ double merged_comoment(const double* __restrict__ s_t,
                                                  const double* __restrict__ ma_t,
                                                  const double* __restrict__ mb_t,
                                                  double ma, double mb, int64_t T,
                                                  int64_t tile, int64_t n_tiles) {
  double s = 0.0;
  for (int64_t t = 0; t < n_tiles; ++t)
    s += s_t[t] + static_cast<double>(tile_count(t, tile, T)) * (ma_t[t] - ma) * (mb_t[t] - mb);
  return s;
}

// One block per example; one thread per output value; tiles visited in order.
// zero_mean == false: M = 0, so the sums come out raw (uncentred).
// static: this header is included by two translation units (ugr_cuda.cu and, through
// ugr_fused_cuda_kernels.cuh, ugr_fused_cuda.cu); a non-template kernel with external
// linkage would be defined twice and the extension would not link.
static __global__ void stats_merge_kernel(const double* __restrict__ part, double* __restrict__ mx,
                                   double* __restrict__ my, double* __restrict__ sxy,
                                   double* __restrict__ sxx, double* __restrict__ syy,
                                   int cx, int cy, int64_t T, int64_t tile, int64_t n_tiles,
                                   bool zero_mean) {
  const int64_t b = blockIdx.x;
  const int nf = 2 * cx + 2 * cy + cx * cy;
  const double* base = part + b * nf * n_tiles;
  const double* mean_x = base;                              // field i
  const double* mean_y = base + static_cast<int64_t>(cx) * n_tiles;
  auto field = [&](int f) { return base + static_cast<int64_t>(f) * n_tiles; };
  for (int o = threadIdx.x; o < nf; o += blockDim.x) {
    if (o < cx) {
      mx[b * cx + o] = zero_mean ? merged_mean(field(o), T, tile, n_tiles) : 0.0;
    } else if (o < cx + cy) {
      const int j = o - cx;
      my[b * cy + j] = zero_mean ? merged_mean(field(cx + j), T, tile, n_tiles) : 0.0;
    } else if (o < 2 * cx + cy) {
      const int i = o - cx - cy;
      const double* m = mean_x + static_cast<int64_t>(i) * n_tiles;
      const double big = zero_mean ? merged_mean(m, T, tile, n_tiles) : 0.0;
      sxx[b * cx + i] = merged_comoment(field(o), m, m, big, big, T, tile, n_tiles);
    } else if (o < 2 * cx + 2 * cy) {
      const int j = o - 2 * cx - cy;
      const double* m = mean_y + static_cast<int64_t>(j) * n_tiles;
      const double big = zero_mean ? merged_mean(m, T, tile, n_tiles) : 0.0;
      syy[b * cy + j] = merged_comoment(field(o), m, m, big, big, T, tile, n_tiles);
    } else {
      const int r = o - 2 * cx - 2 * cy;
      const int i = r / cy, j = r % cy;
      const double* ma = mean_x + static_cast<int64_t>(i) * n_tiles;
      const double* mb = mean_y + static_cast<int64_t>(j) * n_tiles;
      const double big_a = zero_mean ? merged_mean(ma, T, tile, n_tiles) : 0.0;
      const double big_b = zero_mean ? merged_mean(mb, T, tile, n_tiles) : 0.0;
      sxy[(b * cx + i) * cy + j] =
          merged_comoment(field(o), ma, mb, big_a, big_b, T, tile, n_tiles);
    }
  }
}

// ---------------------------------------------------------------- backward: combine

template <typename scalar_t, typename acc_t, int NC>
__global__ void __launch_bounds__(kThreads)
combine_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
               const double* __restrict__ mx, const double* __restrict__ my,
               const double* __restrict__ g, const double* __restrict__ h,
               scalar_t* __restrict__ out, int cx, int cy, int64_t T, int64_t tile,
               int64_t n_tiles, bool vec_ok) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  const int64_t b = blockIdx.x / n_tiles;
  const int64_t t_idx = blockIdx.x % n_tiles;
  const int64_t start = t_idx * tile;
  const int64_t end = start + tile_count(t_idx, tile, T);

  __shared__ acc_t s_g[NC * NC];
  __shared__ acc_t s_h[NC], s_mx[NC], s_my[NC], s_mx_lo[NC], s_my_lo[NC];
  const int tid = threadIdx.x;
  if (tid < NC * NC) {
    const int i = tid / NC, j = tid % NC;
    s_g[tid] = (i < cx && j < cy) ? static_cast<acc_t>(g[(b * cx + i) * cy + j]) : acc_t(0);
  }
  if (tid < NC) {
    // The means as a hi + lo pair of acc_t: x - mean stays accurate in fp32
    // when the mean is large (a DC offset) and not representable in fp32.
    const double mxd = tid < cx ? mx[b * cx + tid] : 0.0;
    const double myd = tid < cy ? my[b * cy + tid] : 0.0;
    s_h[tid] = tid < cx ? static_cast<acc_t>(h[b * cx + tid]) : acc_t(0);
    s_mx[tid] = static_cast<acc_t>(mxd);
    s_mx_lo[tid] = static_cast<acc_t>(mxd - static_cast<double>(s_mx[tid]));
    s_my[tid] = static_cast<acc_t>(myd);
    s_my_lo[tid] = static_cast<acc_t>(myd - static_cast<double>(s_my[tid]));
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
      if (j < cy) {
        load_row<scalar_t, acc_t, VEC>(yb + j * T + t0, cnt, full, s_my[j], s_my_lo[j], yc[j]);
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) yc[j][k] = acc_t(0);
      }
    }
#pragma unroll
    for (int i = 0; i < NC; ++i) {
      if (i < cx) {
        acc_t xc[VEC], o[VEC];
        load_row<scalar_t, acc_t, VEC>(xb + i * T + t0, cnt, full, s_mx[i], s_mx_lo[i], xc);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          // A zero coefficient adds exactly 0, even against a NaN/inf row
          // (a masked item must not poison the gradient).
          acc_t acc = s_h[i] != acc_t(0) ? s_h[i] * xc[k] : acc_t(0);
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

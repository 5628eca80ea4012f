// CUDA kernels of the fused weighted PIT SI-SDR(i) ops ugr::weighted_sisdr_fwd /
// ugr::weighted_sisdr_bwd (launch code and registration: ugr_fused_cuda.cu). They
// compute what the C++ CPU kernels of csrc/ugr_fused_cpu.cpp compute, with the same
// coef layout (B, C, kCoefWidth), because the C++ autograd kernel (every device)
// calls the backward op through the dispatcher with the forward's coef.
//
// Kept free of ATen (like ugr_cuda_kernels.cuh) so that nvcc can compile them on
// their own and tests/cuda_emulation/check_fused.cc can run them on the CPU.
// scalar_t is any 2-, 4- or 8-byte float type convertible to and from float
// (c10::Half / c10::BFloat16, float, double); every sum is taken in double.
//
// Three launches per forward + backward, no host sync, no atomics, deterministic:
//
// 1. fused_tile_kernel, grid B * n_tiles: one block per (example, T-tile) reads the
//    C estimate rows, the mixture (one more "estimate" row, x row C) and the C
//    reference rows once and writes the tile's record (float64)
//        part[(b * n_tiles + tile) * NF + f]: mx[cx] | my[cy] | sxy[cx*cy] | sxx[cx] | syy[cy]
//    (tile means, then sums centred on them; cx = C + has_mix, cy = C), with the CPU
//    kernel's arithmetic: sums of (v - K) in double around a shift K per row (the mean
//    of the tile's first 16 samples), then m = K + S / n, C_xy = S_xy - S_x S_y / n.
//    Per-thread sums, a warp butterfly, then the warps in order: a fixed order.
// 2. fused_epilogue_kernel, grid 1 (one block of kThreads): the whole batch:
//    (a) threads over (example, field): the k-way Chan merge of the tiles, in tile
//        order; (b) threads over examples: the SI-SDR matrix, exhaustive PIT (C <= 6,
//        permutations in lexicographic order, the first maximum wins), masks, the
//        item losses and F = alpha L + bias (alpha read from the device), coef slots
//        1..9; (c) block-wide tree reductions in a fixed order for the softmax max,
//        the sum of exponentials and the loss; (d) weights and coef slot 0.
// 3. fused_backward_kernel, grid B * n_tiles: d est[b, k, t] from coef, perm and the
//    incoming gradients (s_j computed on the device), in double, rounded once.
#pragma once

#include <cmath>
#include <cstdint>

#include <cuda_runtime.h>

#include "ugr_cuda_kernels.cuh"

namespace ugr_fused_cuda {

using ugr_cuda::kThreads;
using ugr_cuda::kWarps;
using ugr_cuda::tile_count;
using ugr_cuda::warp_sum;

constexpr int kCoefWidth = 10;
constexpr int kMaxPitSources = 6;
// Reference rows held in registers by the tile kernel (x rows: one more, the mixture);
// more sources (pit=False only) take the float64 ATen statistics and n_tiles = 1.
constexpr int kMaxTileSources = 8;
constexpr int kShiftSamples = 16;   // as ugr_cpu_kernels.h
constexpr int kBwdRows = 32;        // output rows whose coefficients a backward block stages
constexpr double kDbPerNeper = 4.342944819032518;  // 10 / ln(10)
constexpr double kDblMax = 1.7976931348623157e308;
constexpr double kDblMin = 2.2250738585072014e-308;

__host__ __device__ __forceinline__ double neg_inf() { return -__builtin_huge_val(); }

// NaN and +-inf are not finite (no library call, valid without fast-math).
__host__ __device__ __forceinline__ bool is_finite(double v) { return ::fabs(v) <= kDblMax; }

// Widening: 16-bit floats go through float (exact), as the CPU kernels widen them.
template <typename scalar_t>
__host__ __device__ __forceinline__ double to_double(scalar_t v) {
  if constexpr (sizeof(scalar_t) == 8) {
    return static_cast<double>(v);
  } else {
    return static_cast<double>(static_cast<float>(v));
  }
}

// Narrowing: double -> float -> 16-bit, the CPU backward's roundings (double -> float
// in the row kernel, float -> 16-bit in narrow()).
template <typename scalar_t>
__host__ __device__ __forceinline__ scalar_t from_double(double v) {
  if constexpr (sizeof(scalar_t) == 8) {
    return static_cast<scalar_t>(v);
  } else {
    return static_cast<scalar_t>(static_cast<float>(v));
  }
}

// One statistics record (a tile's, or an example's once merged), the CPU layout.
struct Layout {
  int cx, cy;
  __host__ __device__ int mx() const { return 0; }
  __host__ __device__ int my() const { return cx; }
  __host__ __device__ int xy() const { return cx + cy; }
  __host__ __device__ int xx() const { return cx + cy + cx * cy; }
  __host__ __device__ int yy() const { return 2 * cx + cy + cx * cy; }
  __host__ __device__ int size() const { return 2 * (cx + cy) + cx * cy; }
};

// ------------------------------------------------------------------ 1. tile pass

// NY >= C reference rows, NX >= C + has_mix estimate rows (compile-time bounds: the
// accumulators stay in registers). Block of kThreads threads.
template <typename scalar_t, int NX, int NY>
__global__ void __launch_bounds__(kThreads)
fused_tile_kernel(const scalar_t* __restrict__ est, const scalar_t* __restrict__ ref,
                  const scalar_t* __restrict__ mix, double* __restrict__ part, int c, int cx,
                  int64_t T, int64_t tile, int64_t n_tiles) {
  constexpr int kS1X = 0, kS2X = NX, kS1Y = 2 * NX, kS2Y = 2 * NX + NY;
  constexpr int kSXY = 2 * NX + 2 * NY;
  constexpr int kCount = 2 * NX + 2 * NY + NX * NY;
  const int cy = c;
  const int64_t b = blockIdx.x / n_tiles;
  const int64_t t_idx = blockIdx.x % n_tiles;
  const int64_t start = t_idx * tile;
  const int64_t n = tile_count(t_idx, tile, T);
  const int tid = threadIdx.x;

  const scalar_t* xp[NX];
  const scalar_t* yp[NY];
#pragma unroll
  for (int i = 0; i < NX; ++i)
    xp[i] = i < c ? est + (b * c + i) * T + start : (i < cx ? mix + b * T + start : nullptr);
#pragma unroll
  for (int j = 0; j < NY; ++j) yp[j] = j < cy ? ref + (b * cy + j) * T + start : nullptr;

  // The shift of each row: the mean of its first kShiftSamples samples of the tile.
  __shared__ double shift[NX + NY];
  if (tid < cx + cy) {
    const scalar_t* p = tid < cx ? (tid < c ? est + (b * c + tid) * T : mix + b * T)
                                 : ref + (b * cy + (tid - cx)) * T;
    p += start;
    const int64_t k = n < kShiftSamples ? n : kShiftSamples;
    double s = 0.0;
    for (int64_t t = 0; t < k; ++t) s += to_double(p[t]);
    shift[tid] = s / static_cast<double>(k);
  }
  __syncthreads();
  double kx[NX], ky[NY];
#pragma unroll
  for (int i = 0; i < NX; ++i) kx[i] = i < cx ? shift[i] : 0.0;
#pragma unroll
  for (int j = 0; j < NY; ++j) ky[j] = j < cy ? shift[cx + j] : 0.0;

  double a[kCount];
#pragma unroll
  for (int v = 0; v < kCount; ++v) a[v] = 0.0;
  for (int64_t t = tid; t < n; t += kThreads) {
    double dx[NX];
#pragma unroll
    for (int i = 0; i < NX; ++i) {
      dx[i] = i < cx ? to_double(xp[i][t]) - kx[i] : 0.0;
      a[kS1X + i] += dx[i];
      a[kS2X + i] += dx[i] * dx[i];
    }
#pragma unroll
    for (int j = 0; j < NY; ++j) {
      if (j < cy) {
        const double dy = to_double(yp[j][t]) - ky[j];
        a[kS1Y + j] += dy;
        a[kS2Y + j] += dy * dy;
#pragma unroll
        for (int i = 0; i < NX; ++i) a[kSXY + i * NY + j] += dx[i] * dy;
      }
    }
  }

  // Fixed-order block reduction: butterfly within warps, then the warps in order.
  __shared__ double warp_part[kWarps][kCount];
  __shared__ double total[kCount];
  const int lane = tid & 31;
  const int warp = tid >> 5;
#pragma unroll
  for (int v = 0; v < kCount; ++v) {
    const double r = warp_sum(a[v]);
    if (lane == 0) warp_part[warp][v] = r;
  }
  __syncthreads();
  for (int v = tid; v < kCount; v += kThreads) {
    double s = 0.0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += warp_part[w][v];
    total[v] = s;
  }
  __syncthreads();

  // Shifted sums -> tile means and centred sums (the CPU kernel's formulas).
  const Layout L{cx, cy};
  const double inv_n = 1.0 / static_cast<double>(n);
  double* rec = part + (b * n_tiles + t_idx) * L.size();
  for (int f = tid; f < L.size(); f += kThreads) {
    double val;
    if (f < L.my()) {
      val = shift[f] + total[kS1X + f] * inv_n;   // shift[f] == kx[f] (runtime index)
    } else if (f < L.xy()) {
      const int j = f - L.my();
      val = shift[cx + j] + total[kS1Y + j] * inv_n;
    } else if (f < L.xx()) {
      const int r = f - L.xy(), i = r / cy, j = r % cy;
      val = total[kSXY + i * NY + j] - total[kS1X + i] * total[kS1Y + j] * inv_n;
    } else if (f < L.yy()) {
      const int i = f - L.xx();
      val = total[kS2X + i] - total[kS1X + i] * total[kS1X + i] * inv_n;
    } else {
      const int j = f - L.yy();
      val = total[kS2Y + j] - total[kS1Y + j] * total[kS1Y + j] * inv_n;
    }
    rec[f] = val;
  }
}

// ------------------------------------------------------------------ 2. epilogue

// float64 workspace of the epilogue, after the tile partials.
struct Workspace {
  int64_t batch, n_items;
  int c, cx;
  __host__ __device__ int nf() const { return Layout{cx, c}.size(); }
  __host__ __device__ int64_t merged() const { return 0; }                 // (B, NF)
  __host__ __device__ int64_t pairs() const { return batch * nf(); }       // (B, cx, C, 4)
  __host__ __device__ int64_t item_loss() const { return pairs() + batch * cx * c * 4; }
  __host__ __device__ int64_t item_f() const { return item_loss() + n_items; }
  __host__ __device__ int64_t item_ok() const { return item_f() + n_items; }
  __host__ __device__ int64_t item_w() const { return item_ok() + n_items; }
  __host__ __device__ int64_t count() const { return item_w() + n_items; }  // (B,)
  __host__ __device__ int64_t size() const { return count() + batch; }
};

struct EpilogueArgs {
  const double* part;   // tile records, (B, n_tiles, NF)
  double* ws;           // Workspace
  const double* alpha;  // 0-d, on the device
  const double* bias;   // item-shaped (strides below) or null
  int64_t bias_sb, bias_sc;
  const bool* mask;     // item-shaped or null
  int64_t mask_sb, mask_sc;
  int64_t batch, T, tile, n_tiles;
  int c, cx;
  bool by_source, pit, zero_mean;
  double eps, tau;
};

template <typename out_t>
struct EpilogueOut {
  out_t* loss;      // 0-d
  out_t* sisdr;     // (B, C)
  out_t* sisdri;    // (B, C)
  out_t* weights;   // (B, C) or (B,)
  int64_t* perm;    // (B, C)
  bool* valid;      // (B, C)
  double* coef;     // (B, C, kCoefWidth)
};

struct PairSisdr {
  double value, a, c;
  bool valid;
};

// The CPU kernel's pair_sisdr (ugr_fused_cpu.cpp), operation for operation.
__host__ __device__ inline PairSisdr pair_sisdr(double sxy, double sxx, double syy, double eps,
                                                double tau, bool collinear) {
  PairSisdr out{0.0, 0.0, 0.0, false};
  out.valid = sxx > 0.0 && syy > 0.0 && is_finite(sxx) && is_finite(syy) && is_finite(sxy);
  if (!out.valid) return out;
  const double sx = ::sqrt(sxx), sy = ::sqrt(syy);
  const double r = sxy / sx / sy;
  const double lo = (-1.0 < r) ? r : -1.0;   // std::max(-1.0, r)
  double rho = (lo < 1.0) ? lo : 1.0;        // std::min(1.0, lo)
  if (collinear) rho = rho >= 0.0 ? 1.0 : -1.0;
  const double rho2 = rho * rho;
  const double num = rho2 + eps;
  const double den = (1.0 - rho) * (1.0 + rho) + eps + tau * num;
  out.value = 10.0 * ::log10(num / den);
  if (!collinear) {
    const double d_rho2 = kDbPerNeper * (1.0 / num + (1.0 - tau) / den);
    out.a = d_rho2 * 2.0 * rho / sx / sy;
    out.c = -2.0 * d_rho2 * rho2 / sxx;
  }
  return out;
}

// In-place next permutation of p[0..n) in lexicographic order; false after the last.
__host__ __device__ inline bool next_permutation(int* p, int n) {
  int i = n - 2;
  while (i >= 0 && p[i] >= p[i + 1]) --i;
  if (i < 0) return false;
  int j = n - 1;
  while (p[j] <= p[i]) --j;
  int t = p[i];
  p[i] = p[j];
  p[j] = t;
  for (int l = i + 1, r = n - 1; l < r; ++l, --r) {
    t = p[l];
    p[l] = p[r];
    p[r] = t;
  }
  return true;
}

// Fixed-order tree reduction over the block (kThreads, a power of two): the same
// pairing on every call, so the result is bitwise repeatable.
template <bool kMax>
__device__ __forceinline__ double block_reduce(double v, double* red) {
  const int tid = threadIdx.x;
  red[tid] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (tid < s) {
      const double o = red[tid + s];
      if (kMax) {
        if (o > red[tid]) red[tid] = o;
      } else {
        red[tid] += o;
      }
    }
    __syncthreads();
  }
  const double r = red[0];
  __syncthreads();
  return r;
}

// Tiles merged in order (k-way Chan): M = sum_t n_t m_t / N, and the sums around
// centres (M, M') or (0, 0): S = sum_t [S_t + n_t (m_t - M)(m'_t - M')].
__device__ __forceinline__ double merged_mean(const double* rec0, int f, int nf, int64_t T,
                                              int64_t tile, int64_t n_tiles) {
  double s = 0.0;
  for (int64_t t = 0; t < n_tiles; ++t)
    s += static_cast<double>(tile_count(t, tile, T)) * rec0[t * nf + f];
  return s / static_cast<double>(T);
}

__device__ __forceinline__ double merged_sum(const double* rec0, int f, int fa, int fb,
                                             double ca, double cb, int nf, int64_t T,
                                             int64_t tile, int64_t n_tiles) {
  double s = 0.0;
  for (int64_t t = 0; t < n_tiles; ++t) {
    const double* r = rec0 + t * nf;
    s += r[f] + static_cast<double>(tile_count(t, tile, T)) * (r[fa] - ca) * (r[fb] - cb);
  }
  return s;
}

template <typename out_t>
__global__ void __launch_bounds__(kThreads)
fused_epilogue_kernel(EpilogueArgs A, EpilogueOut<out_t> out) {
  const int tid = threadIdx.x;
  const int C = A.c, cx = A.cx;
  const Layout L{cx, C};
  const int nf = L.size();
  const int64_t n_items = A.by_source ? A.batch * C : A.batch;
  const Workspace W{A.batch, n_items, C, cx};
  double* merged = A.ws + W.merged();
  double* pairs = A.ws + W.pairs();
  double* item_loss = A.ws + W.item_loss();
  double* item_f = A.ws + W.item_f();
  double* item_ok = A.ws + W.item_ok();
  double* item_w = A.ws + W.item_w();
  double* count = A.ws + W.count();

  // (a) merge: one value per thread; zero_mean=false centres on 0 (raw sums).
  for (int64_t o = tid; o < A.batch * nf; o += kThreads) {
    const int64_t b = o / nf;
    const int f = static_cast<int>(o % nf);
    const double* rec0 = A.part + b * A.n_tiles * nf;
    auto centre = [&](int mf) {
      return A.zero_mean ? merged_mean(rec0, mf, nf, A.T, A.tile, A.n_tiles) : 0.0;
    };
    double val;
    if (f < L.xy()) {
      val = merged_mean(rec0, f, nf, A.T, A.tile, A.n_tiles);
    } else if (f < L.xx()) {
      const int r = f - L.xy(), i = r / C, j = r % C;
      val = merged_sum(rec0, f, L.mx() + i, L.my() + j, centre(L.mx() + i), centre(L.my() + j),
                       nf, A.T, A.tile, A.n_tiles);
    } else if (f < L.yy()) {
      const int i = f - L.xx();
      const double m = centre(L.mx() + i);
      val = merged_sum(rec0, f, L.mx() + i, L.mx() + i, m, m, nf, A.T, A.tile, A.n_tiles);
    } else {
      const int j = f - L.yy();
      const double m = centre(L.my() + j);
      val = merged_sum(rec0, f, L.my() + j, L.my() + j, m, m, nf, A.T, A.tile, A.n_tiles);
    }
    merged[b * nf + f] = val;
  }
  __syncthreads();

  // (b) per example: SI-SDR matrix, PIT, items.
  const double alpha = *A.alpha;
  const bool collinear = (A.zero_mean ? A.T - 1 : A.T) <= 1;
  for (int64_t b = tid; b < A.batch; b += kThreads) {
    const double* rec = merged + b * nf;
    double* pq = pairs + b * cx * C * 4;   // (i, j) -> value, a, c, valid
    for (int i = 0; i < cx; ++i) {
      const double tau = i < C ? A.tau : 0.0;  // the mixture's SI-SDR is never clamped
      for (int j = 0; j < C; ++j) {
        const PairSisdr q = pair_sisdr(rec[L.xy() + i * C + j], rec[L.xx() + i],
                                       rec[L.yy() + j], A.eps, tau, collinear);
        double* d = pq + (i * C + j) * 4;
        d[0] = q.value;
        d[1] = q.a;
        d[2] = q.c;
        d[3] = q.valid ? 1.0 : 0.0;
      }
    }

    // PIT: lexicographic order, invalid pairs count 0, the first maximum wins.
    int best[kMaxPitSources];
    const bool use_pit = A.pit && C > 1 && C <= kMaxPitSources;
    if (use_pit) {
      double score[kMaxPitSources * kMaxPitSources];
      int p[kMaxPitSources];
      for (int i = 0; i < C; ++i)
        for (int j = 0; j < C; ++j) {
          const double* d = pq + (i * C + j) * 4;
          score[i * C + j] = d[3] != 0.0 ? d[0] : 0.0;
        }
      for (int j = 0; j < C; ++j) p[j] = best[j] = j;
      double best_total = neg_inf();
      do {
        double total = 0.0;
        for (int j = 0; j < C; ++j) total += score[p[j] * C + j];
        if (total > best_total) {
          best_total = total;
          for (int j = 0; j < C; ++j) best[j] = p[j];
        }
      } while (next_permutation(p, C));
    }

    int64_t n_valid = 0;
    double loss_sum = 0.0;
    for (int j = 0; j < C; ++j) {
      const int64_t bj = b * C + j;
      const int k = use_pit ? best[j] : j;
      const double* q = pq + (k * C + j) * 4;
      const double* qm = cx > C ? pq + (C * C + j) * 4 : nullptr;
      const bool q_valid = q[3] != 0.0;
      const bool pm = q_valid && (qm == nullptr || qm[3] != 0.0);
      const bool user_off = A.by_source && A.mask != nullptr &&
                            !A.mask[b * A.mask_sb + j * A.mask_sc];
      const bool v = pm && !user_off;
      const double sisdr = v ? q[0] : 0.0;
      const double sisdri = (qm != nullptr && pm) ? q[0] - qm[0] : 0.0;
      const double l = -(qm != nullptr ? sisdri : sisdr);
      out.perm[bj] = k;
      out.sisdr[bj] = static_cast<out_t>(sisdr);
      out.sisdri[bj] = static_cast<out_t>(sisdri);
      out.valid[bj] = v;
      double* cf = out.coef + bj * kCoefWidth;
      cf[1] = pm ? q[1] : 0.0;
      cf[2] = pm ? q[2] : 0.0;
      cf[3] = A.zero_mean ? rec[L.mx() + k] : 0.0;
      cf[4] = A.zero_mean ? rec[L.my() + j] : 0.0;
      cf[5] = v ? 1.0 : 0.0;
      cf[6] = (qm != nullptr && pm) ? 1.0 : 0.0;
      cf[7] = !(is_finite(rec[L.mx() + j]) && is_finite(rec[L.xx() + j])) ? 1.0 : 0.0;
      cf[8] = !(is_finite(rec[L.my() + j]) && is_finite(rec[L.yy() + j])) ? 1.0 : 0.0;
      cf[9] = (cx > C && !(is_finite(rec[L.mx() + C]) && is_finite(rec[L.xx() + C]))) ? 1.0
                                                                                      : 0.0;
      if (A.by_source) {
        const double bias = A.bias != nullptr ? A.bias[b * A.bias_sb + j * A.bias_sc] : 0.0;
        const double f = alpha * l + bias;
        item_loss[bj] = l;
        item_f[bj] = f;
        item_ok[bj] = (v && is_finite(f)) ? 1.0 : 0.0;
      } else {
        n_valid += v;
        loss_sum += l;
      }
    }
    if (!A.by_source) {
      count[b] = static_cast<double>(n_valid);
      const double lb = loss_sum / static_cast<double>(n_valid > 1 ? n_valid : 1);
      bool ok = n_valid > 0 && !(A.mask != nullptr && !A.mask[b * A.mask_sb]);
      if (!ok)
        for (int j = 0; j < C; ++j) out.valid[b * C + j] = false;
      const double bias = A.bias != nullptr ? A.bias[b * A.bias_sb] : 0.0;
      const double f = alpha * lb + bias;
      item_loss[b] = lb;
      item_f[b] = f;
      item_ok[b] = (ok && is_finite(f)) ? 1.0 : 0.0;
    }
  }
  __syncthreads();

  // (c) the masked stable softmax over all items, then the loss.
  __shared__ double red[kThreads];
  double local = neg_inf();
  for (int64_t i = tid; i < n_items; i += kThreads)
    if (item_ok[i] != 0.0 && item_f[i] > local) local = item_f[i];
  const double f_max = block_reduce<true>(local, red);
  local = 0.0;
  for (int64_t i = tid; i < n_items; i += kThreads) {
    const double e = item_ok[i] != 0.0 ? ::exp(item_f[i] - f_max) : 0.0;
    item_w[i] = e;
    local += e;
  }
  double total = block_reduce<false>(local, red);
  total = total > kDblMin ? total : kDblMin;
  local = 0.0;
  for (int64_t i = tid; i < n_items; i += kThreads) {
    const double w = item_w[i] / total;
    item_w[i] = w;
    out.weights[i] = static_cast<out_t>(w);
    local += w * item_loss[i];
  }
  const double loss = block_reduce<false>(local, red);  // its barriers publish item_w
  if (tid == 0) *out.loss = static_cast<out_t>(loss);

  // (d) d loss / d SI-SDR per item; example granularity: the mean over valid sources.
  for (int64_t bj = tid; bj < A.batch * C; bj += kThreads) {
    double* cf = out.coef + bj * kCoefWidth;
    const int64_t b = bj / C;
    cf[0] = A.by_source ? -item_w[bj] : cf[5] != 0.0 ? -item_w[b] / count[b] : 0.0;
  }
}

// ------------------------------------------------------------------ 3. backward

template <typename scalar_t>
struct BwdArgs {
  const scalar_t* est;      // (B, C, T)
  const scalar_t* ref;      // (B, C, T)
  const int64_t* perm;      // (B, C)
  const double* coef;       // (B, C, kCoefWidth)
  const void* grad_loss;    // 0-d float or double
  bool grad_loss_f64;
  const void* grad_sisdr;   // (B, C) float or double (strides), or null
  bool grad_sisdr_f64;
  int64_t gs_sb, gs_sc;
  const void* grad_sisdri;  // (B, C) float or double (strides), or null
  bool grad_sisdri_f64;
  int64_t gi_sb, gi_sc;
  scalar_t* out;            // (B, C, T)
  int64_t batch, T, tile, n_tiles;
  int c;
};

__device__ __forceinline__ double load_real(const void* p, bool f64, int64_t i) {
  return f64 ? static_cast<const double*>(p)[i]
             : static_cast<double>(static_cast<const float*>(p)[i]);
}

// One block per (example, tile): rows k = perm[b, j] in chunks of kBwdRows, whose
// factors s_j a_j, s_j c_j (the CPU backward's, zero-guarded) and means are staged in
// shared memory. A row no perm entry points to (perm not from the forward) gets 0.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) fused_backward_kernel(BwdArgs<scalar_t> A) {
  const int tid = threadIdx.x;
  const int C = A.c;
  const int64_t b = blockIdx.x / A.n_tiles;
  const int64_t t_idx = blockIdx.x % A.n_tiles;
  const int64_t start = t_idx * A.tile;
  const int64_t n = tile_count(t_idx, A.tile, A.T);
  __shared__ double s_a[kBwdRows], s_c[kBwdRows], s_mx[kBwdRows], s_my[kBwdRows];
  __shared__ int64_t s_j[kBwdRows];

  for (int k0 = 0; k0 < C; k0 += kBwdRows) {
    const int rows = C - k0 < kBwdRows ? C - k0 : kBwdRows;
    if (tid < rows) {
      const int k = k0 + tid;
      int j = -1;
      for (int jj = C - 1; jj >= 0; --jj)
        if (A.perm[b * C + jj] == k) j = jj;
      double sa = 0.0, sc = 0.0, mx = 0.0, my = 0.0;
      if (j >= 0) {
        const int64_t bj = b * C + j;
        const double* q = A.coef + bj * kCoefWidth;
        double s = 0.0;
        if (q[1] != 0.0 || q[2] != 0.0) {
          if (q[0] != 0.0) s += load_real(A.grad_loss, A.grad_loss_f64, 0) * q[0];
          if (A.grad_sisdr != nullptr && q[5] != 0.0)
            s += load_real(A.grad_sisdr, A.grad_sisdr_f64, b * A.gs_sb + j * A.gs_sc);
          if (A.grad_sisdri != nullptr && q[6] != 0.0)
            s += load_real(A.grad_sisdri, A.grad_sisdri_f64, b * A.gi_sb + j * A.gi_sc);
        }
        sa = (s != 0.0 && q[1] != 0.0) ? s * q[1] : 0.0;
        sc = (s != 0.0 && q[2] != 0.0) ? s * q[2] : 0.0;
        mx = q[3];
        my = q[4];
      }
      s_a[tid] = sa;
      s_c[tid] = sc;
      s_mx[tid] = mx;
      s_my[tid] = my;
      s_j[tid] = j < 0 ? 0 : j;
    }
    __syncthreads();
    for (int r = 0; r < rows; ++r) {
      const double sa = s_a[r], sc = s_c[r], mx = s_mx[r], my = s_my[r];
      const scalar_t* x = A.est + (b * C + k0 + r) * A.T + start;
      const scalar_t* y = A.ref + (b * C + s_j[r]) * A.T + start;
      scalar_t* o = A.out + (b * C + k0 + r) * A.T + start;
      // A term whose factor is exactly 0 is not evaluated (never 0 * NaN).
      if (sa != 0.0 && sc != 0.0) {
        for (int64_t t = tid; t < n; t += kThreads)
          o[t] = from_double<scalar_t>(sa * (to_double(y[t]) - my) + sc * (to_double(x[t]) - mx));
      } else if (sa != 0.0) {
        for (int64_t t = tid; t < n; t += kThreads)
          o[t] = from_double<scalar_t>(sa * (to_double(y[t]) - my));
      } else if (sc != 0.0) {
        for (int64_t t = tid; t < n; t += kThreads)
          o[t] = from_double<scalar_t>(sc * (to_double(x[t]) - mx));
      } else {
        for (int64_t t = tid; t < n; t += kThreads) o[t] = from_double<scalar_t>(0.0);
      }
    }
    __syncthreads();
  }
}

}  // namespace ugr_fused_cuda

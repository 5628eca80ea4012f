// The T-sized statistics pass on CUDA, shared by the fused ops (ugr_fused_cuda.cu) and
// the two-pass stats (ugr_cuda.cu). ATen-free (compiled alone by the static checks and
// on the CPU by tests/cuda_emulation).
//
// Rows: x rows (cx: the rows of x0, then optionally one more row, e.g. the mixture) and
// y rows (cy), (B, rows, T) contiguous. One block per (example, T-tile, x-row group):
// the block reads its GX x rows and the NY y rows of the tile once and writes, per row r,
// a shift K_r and a power-of-two scale s_r, and the sums over the tile of
//     d_r(t) = s_r v_r(t) - K_r                                        (exact, float-float)
//     S1_r = sum d_r,  S2_r = sum d_r^2,  Sxy_ij = sum d_i d_j,
// into its record (RecLayout). Group 0 also writes the y rows' K, s, S1, S2.
//
// Accuracy without float64 (fp16/bf16/fp32 inputs; acc_t = float):
//  - K_r is the mean of the tile's first 16 samples, so d is centred up to a fraction
//    of the signal's spread: no cancellation in S2 - S1^2 / n. d is kept exactly as a
//    float-float dh + dl = TwoSum(s v, -K) (s v is exact: s is a power of two).
//  - products are exact (FMA TwoProduct) and summed in float-float (TwoSum), ~48 bits;
//    the block reduction is float-float too, in a fixed order.
//  - s_r keeps |d| within [2^-40, 2^40] so squares neither overflow nor underflow in
//    fp32 whatever the amplitude (fp32 / bf16 carry 1e-45 .. 3e38): chosen from the first
//    16 samples, checked against the tile's max |v| after the pass, and the pass redone
//    once with s from that max when it was off (a silent start, then a loud signal).
//    fp16 (|v| <= 65504, >= 2^-24) needs no scale.
// float64 inputs: acc_t = double, plain sums (as the CPU kernels), s = 1.
// The tile's means and centred sums, and the merge of tiles, are formed in float64 by
// the per-example kernels (merged_field below): no fp64 instruction runs per sample.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_runtime.h>

#include "ugr_ff.cuh"

namespace ugr_cuda {

// Threads per block. The CPU emulation tests build with fewer (UGR_CUDA_THREADS=64) to
// run in CI's time; the kernels are written for any multiple of 32 up to 256.
#ifndef UGR_CUDA_THREADS
#define UGR_CUDA_THREADS 256
#endif
constexpr int kThreads = UGR_CUDA_THREADS;
constexpr int kWarps = kThreads / 32;
constexpr int kShiftSamples = 16;
constexpr int kScaleWindow = 40;      // |d| kept within [2^-40, 2^40]

__host__ __device__ __forceinline__ int64_t tile_count(int64_t t, int64_t tile, int64_t T) {
  const int64_t rest = T - t * tile;
  return rest < tile ? rest : tile;
}

// One (example, tile) record: per row K, s; per row S1, S2 and per (i, j) Sxy as hi, lo.
struct RecLayout {
  int cx, cy;
  __host__ __device__ int rows() const { return cx + cy; }
  __host__ __device__ int k(int r) const { return r; }
  __host__ __device__ int scale(int r) const { return rows() + r; }
  __host__ __device__ int s1(int r) const { return 2 * rows() + 2 * r; }
  __host__ __device__ int s2(int r) const { return 4 * rows() + 2 * r; }
  __host__ __device__ int sxy(int i, int j) const { return 6 * rows() + 2 * (i * cy + j); }
  __host__ __device__ int size() const { return 6 * rows() + 2 * cx * cy; }
};

// Accumulator of the tile pass: float-float for float samples, plain double for double.
template <typename acc_t>
struct Acc;

// A centred sample d = s v - K: exact as hi + lo (float), or a plain double.
template <typename acc_t>
struct Diff;

template <>
struct Diff<float> {
  float h, l;
  __device__ __forceinline__ static Diff make(float v, float s, float k) {
    Diff d;
    ugr_ff::two_sum(__fmul_rn(v, s), -k, d.h, d.l);
    return d;
  }
};

template <>
struct Diff<double> {
  double h;
  __device__ __forceinline__ static Diff make(double v, double s, double k) {
    return Diff{v * s - k};   // s == 1: v - K, as the CPU kernels
  }
};

template <>
struct Acc<float> {
  ugr_ff::FF v;
  using D = Diff<float>;
  __device__ __forceinline__ void zero() { v.hi = v.lo = 0.0f; }
  __device__ __forceinline__ void add(const D& d) {
    ugr_ff::ff_add(v, d.h);
    v.lo = __fadd_rn(v.lo, d.l);
  }
  // += (a.h + a.l)(b.h + b.l): a.h b.h exactly (TwoProduct + TwoSum), the cross terms
  // into lo (a.l b.l, below 2^-48 of the product, is dropped).
  __device__ __forceinline__ void add_prod(const D& a, const D& b) {
    ugr_ff::ff_add_prod(v, a.h, b.h);
    v.lo = fmaf(a.h, b.l, fmaf(a.l, b.h, v.lo));
  }
  __device__ __forceinline__ void renorm() { ugr_ff::ff_renorm(v); }
  __device__ __forceinline__ void merge(const Acc& o) { v = ugr_ff::ff_sum(v, o.v); }
  __device__ __forceinline__ Acc shfl_xor(int off) const {
    Acc o;
    o.v.hi = __shfl_xor_sync(0xffffffffu, v.hi, off);
    o.v.lo = __shfl_xor_sync(0xffffffffu, v.lo, off);
    return o;
  }
  __device__ __forceinline__ float hi() const { return v.hi; }
  __device__ __forceinline__ float lo() const { return v.lo; }
};

template <>
struct Acc<double> {
  double v;
  using D = Diff<double>;
  __device__ __forceinline__ void zero() { v = 0.0; }
  __device__ __forceinline__ void add(const D& d) { v += d.h; }
  __device__ __forceinline__ void add_prod(const D& a, const D& b) { v += a.h * b.h; }
  __device__ __forceinline__ void renorm() {}
  __device__ __forceinline__ void merge(const Acc& o) { v += o.v; }
  __device__ __forceinline__ Acc shfl_xor(int off) const {
    Acc o;
    o.v = __shfl_xor_sync(0xffffffffu, v, off);
    return o;
  }
  __device__ __forceinline__ double hi() const { return v; }
  __device__ __forceinline__ double lo() const { return 0.0; }
};

// fp16 (specialised where the type is known: the .cu files, the emulation) needs no
// scale: |v| <= 65504 and >= 2^-24, so squares stay normal fp32 numbers.
template <typename scalar_t>
struct IsFp16 : std::false_type {};

template <typename scalar_t>
struct TileTraits {
  // float64 samples: double arithmetic; others: fp32 float-float.
  using acc_t = typename std::conditional<sizeof(scalar_t) == 8, double, float>::type;
  static constexpr int kVec = sizeof(scalar_t) == 8 ? 2 : 4;   // samples per load
  static constexpr int kBytes = kVec * static_cast<int>(sizeof(scalar_t));
  // fp16 needs no scale; bf16 and fp32 span the fp32 exponent range.
  static constexpr bool kScaled = sizeof(scalar_t) != 8 && !IsFp16<scalar_t>::value;
};

template <typename scalar_t>
__device__ __forceinline__ float widen(scalar_t v) {
  return static_cast<float>(v);
}
__device__ __forceinline__ double widen(double v) { return v; }


// VEC samples of a row at p (cnt valid; `full`: cnt == VEC and p aligned to the vector).
template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void load_vec(const scalar_t* __restrict__ p, int cnt, bool full,
                                         acc_t (&out)[VEC]) {
  constexpr int kBytes = VEC * static_cast<int>(sizeof(scalar_t));
  if (full) {
    scalar_t v[VEC];
    if constexpr (kBytes == 16) {
      const uint4 raw = *reinterpret_cast<const uint4*>(p);
      memcpy(v, &raw, sizeof(raw));
    } else if constexpr (kBytes == 8) {
      const uint2 raw = *reinterpret_cast<const uint2*>(p);
      memcpy(v, &raw, sizeof(raw));
    } else {
      static_assert(kBytes == 4, "4-, 8- or 16-byte vectors");
      const unsigned raw = *reinterpret_cast<const unsigned*>(p);
      memcpy(v, &raw, sizeof(raw));
    }
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = static_cast<acc_t>(widen(v[k]));
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = k < cnt ? static_cast<acc_t>(widen(p[k])) : acc_t(0);
  }
}

template <typename scalar_t, typename rec_t>
struct TileArgs {
  const scalar_t* x0;     // (B, cx0, T)
  const scalar_t* xm;     // (B, T) one more x row, or null
  const scalar_t* y;      // (B, cy, T)
  rec_t* part;            // (B, n_tiles, RecLayout{cx, cy}.size())
  int cx0, cx, cy, groups;
  int64_t T, tile, n_tiles;
  bool vec_ok;            // every row start 16-byte aligned and tile % VEC == 0 and T % VEC == 0
};

// Row r of example b (x rows first, then y rows).
template <typename scalar_t, typename rec_t>
__device__ __forceinline__ const scalar_t* row_ptr(const TileArgs<scalar_t, rec_t>& A,
                                                   int64_t b, int r) {
  if (r < A.cx0) return A.x0 + (b * A.cx0 + r) * A.T;
  if (r < A.cx) return A.xm + b * A.T;
  return A.y + (b * A.cy + (r - A.cx)) * A.T;
}

// Scale exponent that brings m to [1, 2) (0 for 0 / non-finite / unscaled types).
__device__ __forceinline__ int scale_exp_for(float m) {
  if (!(m > 0.0f) || !(m <= 3.4028235e38f)) return 0;
  const int e = -ugr_ff::exponent_of(m);
  return e > 126 ? 126 : (e < -126 ? -126 : e);
}

// The shift K (scaled) of a row: the mean of the scaled first kShiftSamples samples.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t row_shift(const scalar_t* p, int64_t n, acc_t s) {
  const int64_t k = n < kShiftSamples ? n : kShiftSamples;
  acc_t sum = acc_t(0);
  for (int64_t t = 0; t < k; ++t) sum += static_cast<acc_t>(widen(p[t])) * s;
  // Any shift near the mean will do (it is stored and used as rounded): the fast fp32
  // division, whose IEEE slow path would be a call (and a spill on sm_80).
  if constexpr (sizeof(acc_t) == 4) {
    return __fdividef(sum, static_cast<float>(k));
  } else {
    return sum / static_cast<acc_t>(k);
  }
}

// GX x rows per block (the group), NY >= cy y rows. Block of kThreads. (Min. 1 block per
// SM in the launch bounds: with the default, sm_80's ptxas held tile<fp16, 1, 1> to 48
// registers and spilled 12 B.)
template <typename scalar_t, typename rec_t, int GX, int NY>
__global__ void __launch_bounds__(kThreads, 1)
tile_stats_kernel(TileArgs<scalar_t, rec_t> A) {
  using Tr = TileTraits<scalar_t>;
  using acc_t = typename Tr::acc_t;
  // Samples per thread and step: 4 (2 for float64, and for the big instances, whose
  // float-float accumulators and samples would not fit the registers otherwise).
  constexpr int VEC = (sizeof(scalar_t) == 8 || GX * NY >= 12) ? 2 : 4;
  constexpr int NR = GX + NY;
  constexpr int kS1X = 0, kS2X = GX, kS1Y = 2 * GX, kS2Y = 2 * GX + NY, kSXY = 2 * GX + 2 * NY;
  constexpr int kCount = 2 * GX + 2 * NY + GX * NY;
  static_assert(kCount <= kThreads && NR <= 32, "one thread per accumulator / row");
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // 32-bit index division (the grid is < 2^31 blocks; a 64-bit one is a call).
  const unsigned groups = static_cast<unsigned>(A.groups);
  const unsigned n_tiles = static_cast<unsigned>(A.n_tiles);
  const int g = static_cast<int>(blockIdx.x % groups);
  const unsigned bt = blockIdx.x / groups;
  const unsigned b = bt / n_tiles, t_idx = bt % n_tiles;
  const int64_t start = t_idx * A.tile;
  const int64_t n = tile_count(t_idx, A.tile, A.T);
  const int x_first = static_cast<int>(g) * GX;
  const int gx = A.cx - x_first < GX ? A.cx - x_first : GX;   // x rows of this group
  const bool own_y = g == 0;

  // Block row slot r: x rows 0..GX-1 (global x_first + r), then y rows GX..GX+NY-1.
  __shared__ acc_t s_shift[NR];
  __shared__ int s_exp[NR];
  __shared__ float s_max[kWarps][NR];
  __shared__ int s_retry;
  auto global_row = [&](int r) { return r < GX ? x_first + r : A.cx + (r - GX); };
  auto live = [&](int r) { return r < GX ? r < gx : r - GX < A.cy; };
  if (tid < NR && live(tid)) {
    const scalar_t* p = row_ptr(A, b, global_row(tid)) + start;
    int e = 0;
    if constexpr (Tr::kScaled) {
      const int64_t k = n < kShiftSamples ? n : kShiftSamples;
      float m = 0.0f;
      for (int64_t t = 0; t < k; ++t) m = fmaxf(m, fabsf(widen(p[t])));
      e = scale_exp_for(m);
    }
    s_exp[tid] = e;
    s_shift[tid] = row_shift<scalar_t, acc_t>(p, n, static_cast<acc_t>(ugr_ff::pow2f(e)));
  }
  if (tid == 0) s_retry = 0;

  Acc<acc_t> a[kCount];
  constexpr int kPasses = Tr::kScaled ? 2 : 1;   // the second only when a scale was off
  for (int pass = 0; pass < kPasses; ++pass) {
    __syncthreads();
    acc_t sc[NR], k[NR];
    float m[NR];
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      const bool on = live(r);
      sc[r] = on ? static_cast<acc_t>(ugr_ff::pow2f(s_exp[r])) : acc_t(0);
      k[r] = on ? s_shift[r] : acc_t(0);
      m[r] = 0.0f;
    }
#pragma unroll
    for (int v = 0; v < kCount; ++v) a[v].zero();

    const scalar_t* xp[GX];
    const scalar_t* yp[NY];
#pragma unroll
    for (int i = 0; i < GX; ++i) xp[i] = i < gx ? row_ptr(A, b, x_first + i) + start : nullptr;
#pragma unroll
    for (int j = 0; j < NY; ++j) yp[j] = j < A.cy ? row_ptr(A, b, A.cx + j) + start : nullptr;

    for (int64_t t0 = static_cast<int64_t>(tid) * VEC; t0 < n;
         t0 += static_cast<int64_t>(kThreads) * VEC) {
      const int cnt = static_cast<int>(n - t0 < VEC ? n - t0 : VEC);
      const bool full = A.vec_ok && cnt == VEC;
      using D = Diff<acc_t>;
      D dx[GX][VEC];
#pragma unroll
      for (int i = 0; i < GX; ++i) {
#pragma unroll
        for (int q = 0; q < VEC; ++q) dx[i][q] = D{};
        if (i < gx) {
          acc_t v[VEC];
          load_vec<scalar_t, acc_t, VEC>(xp[i] + t0, cnt, full, v);
#pragma unroll
          for (int q = 0; q < VEC; ++q) {
            if constexpr (Tr::kScaled) m[i] = fmaxf(m[i], fabsf(static_cast<float>(v[q])));
            if (q < cnt) dx[i][q] = D::make(v[q], sc[i], k[i]);
            a[kS1X + i].add(dx[i][q]);
            a[kS2X + i].add_prod(dx[i][q], dx[i][q]);
          }
        }
      }
#pragma unroll
      for (int j = 0; j < NY; ++j) {
        if (j < A.cy) {
          acc_t v[VEC];
          load_vec<scalar_t, acc_t, VEC>(yp[j] + t0, cnt, full, v);
#pragma unroll
          for (int q = 0; q < VEC; ++q) {
            if constexpr (Tr::kScaled) m[GX + j] = fmaxf(m[GX + j], fabsf(static_cast<float>(v[q])));
            const D dy = q < cnt ? D::make(v[q], sc[GX + j], k[GX + j]) : D{};
            if (own_y) {
              a[kS1Y + j].add(dy);
              a[kS2Y + j].add_prod(dy, dy);
            }
#pragma unroll
            for (int i = 0; i < GX; ++i)
              if (i < gx) a[kSXY + i * NY + j].add_prod(dx[i][q], dy);
          }
        }
      }
#pragma unroll
      for (int v = 0; v < kCount; ++v) a[v].renorm();
    }
    if constexpr (Tr::kScaled) {   // (fp16 and fp64: one pass)
      // Was every row's scaled range within the window? Block max of |v| per row.
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        float v = m[r];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
        if (lane == 0) s_max[warp][r] = v;
      }
      __syncthreads();
      if (tid < NR && live(tid) && pass == 0) {
        float mx = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, s_max[w][tid]);
        // Non-finite or all-zero rows keep their scale (their sums are what they are).
        if (mx > 0.0f && mx <= 3.4028235e38f) {
          const int span = ugr_ff::exponent_of(mx) + s_exp[tid];
          if (span > kScaleWindow || span < -kScaleWindow) {
            const int e = scale_exp_for(mx);
            s_exp[tid] = e;
            s_shift[tid] = row_shift<scalar_t, acc_t>(row_ptr(A, b, global_row(tid)) + start, n,
                                                      static_cast<acc_t>(ugr_ff::pow2f(e)));
            s_retry = 1;   // every writer writes 1: no race on the value
          }
        }
      }
      __syncthreads();
      if (s_retry == 0) break;
    }
  }

  // Fixed-order block reduction: butterfly within warps, then the warps in order.
  __shared__ acc_t warp_hi[kWarps][kCount], warp_lo[kWarps][kCount];
#pragma unroll
  for (int v = 0; v < kCount; ++v) {
    Acc<acc_t> r = a[v];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) r.merge(r.shfl_xor(off));
    if (lane == 0) {
      warp_hi[warp][v] = r.hi();
      warp_lo[warp][v] = r.lo();
    }
  }
  __syncthreads();
  const RecLayout L{A.cx, A.cy};
  rec_t* rec = A.part + (b * A.n_tiles + t_idx) * L.size();
  if (tid < kCount) {
    const int v = tid;
    Acc<acc_t> s;
    s.zero();
    if constexpr (sizeof(acc_t) == 4) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) s.v = ugr_ff::ff_sum(s.v, ugr_ff::FF{warp_hi[w][v], warp_lo[w][v]});
    } else {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) s.v += warp_hi[w][v];
    }
    int slot = -1;
    if (v < kS2X) {
      if (v - kS1X < gx) slot = L.s1(x_first + v - kS1X);
    } else if (v < kS1Y) {
      if (v - kS2X < gx) slot = L.s2(x_first + v - kS2X);
    } else if (v < kS2Y) {
      if (own_y && v - kS1Y < A.cy) slot = L.s1(A.cx + v - kS1Y);
    } else if (v < kSXY) {
      if (own_y && v - kS2Y < A.cy) slot = L.s2(A.cx + v - kS2Y);
    } else {
      const int i = (v - kSXY) / NY, j = (v - kSXY) % NY;
      if (i < gx && j < A.cy) slot = L.sxy(x_first + i, j);
    }
    if (slot >= 0) {
      rec[slot] = static_cast<rec_t>(s.hi());
      rec[slot + 1] = static_cast<rec_t>(s.lo());
    }
  }
  if (tid < NR && live(tid) && (tid < GX || own_y)) {
    const int r = global_row(tid);
    rec[L.k(r)] = static_cast<rec_t>(s_shift[tid]);
    rec[L.scale(r)] = static_cast<rec_t>(ugr_ff::pow2f(s_exp[tid]));
  }
}

// ------------------------------------------------------------------ float64 side

// A tile's mean of row r: (K + S1 / n) / s.
template <typename rec_t>
__host__ __device__ __forceinline__ double tile_mean(const rec_t* rec, const RecLayout& L,
                                                     int r, double n) {
  const double s1 = static_cast<double>(rec[L.s1(r)]) + static_cast<double>(rec[L.s1(r) + 1]);
  return (static_cast<double>(rec[L.k(r)]) + s1 / n) / static_cast<double>(rec[L.scale(r)]);
}

// A tile's centred co-moment sum_t (u_a - m_a)(u_b - m_b) from the sum at `slot`.
template <typename rec_t>
__host__ __device__ __forceinline__ double tile_comoment(const rec_t* rec, const RecLayout& L,
                                                         int slot, int ra, int rb, double n) {
  const double s = static_cast<double>(rec[slot]) + static_cast<double>(rec[slot + 1]);
  const double sa = static_cast<double>(rec[L.s1(ra)]) + static_cast<double>(rec[L.s1(ra) + 1]);
  const double sb = static_cast<double>(rec[L.s1(rb)]) + static_cast<double>(rec[L.s1(rb) + 1]);
  return (s - sa * sb / n) /
         (static_cast<double>(rec[L.scale(ra)]) * static_cast<double>(rec[L.scale(rb)]));
}

// Merged mean of row r over the tiles (in order): M = sum_t n_t m_t / T.
template <typename rec_t>
__host__ __device__ inline double merged_mean(const rec_t* rec0, const RecLayout& L, int r,
                                              int64_t T, int64_t tile, int64_t n_tiles) {
  double s = 0.0;
  for (int64_t t = 0; t < n_tiles; ++t) {
    const double n = static_cast<double>(tile_count(t, tile, T));
    s += n * tile_mean(rec0 + t * L.size(), L, r, n);
  }
  return s / static_cast<double>(T);
}

// Merged centred co-moment of rows (ra, rb) around (ma, mb) (k-way Chan, tiles in order):
// S = sum_t [C_t + n_t (m_a,t - ma)(m_b,t - mb)].
template <typename rec_t>
__host__ __device__ inline double merged_comoment(const rec_t* rec0, const RecLayout& L,
                                                  int slot, int ra, int rb, double ma,
                                                  double mb, int64_t T, int64_t tile,
                                                  int64_t n_tiles) {
  double s = 0.0;
  for (int64_t t = 0; t < n_tiles; ++t) {
    const rec_t* rec = rec0 + t * L.size();
    const double n = static_cast<double>(tile_count(t, tile, T));
    s += tile_comoment(rec, L, slot, ra, rb, n) +
         n * (tile_mean(rec, L, ra, n) - ma) * (tile_mean(rec, L, rb, n) - mb);
  }
  return s;
}

}  // namespace ugr_cuda

// CUDA kernels of the fused weighted PIT SI-SDR(i) ops ugr::weighted_sisdr_fwd /
// ugr::weighted_sisdr_bwd (launch code and registration: ugr_fused_cuda.cu). They
// compute what the C++ CPU kernels of csrc/ugr_fused_cpu.cpp compute, with the same
// coef layout (B, C, kCoefWidth), because the C++ autograd kernel (every device)
// calls the backward op through the dispatcher with the forward's coef.
//
// Kept free of ATen so that nvcc can compile them on their own (tests/test_cuda_static.py)
// and tests/cuda_emulation/check_fused.cc can run them on the CPU.
//
// Four launches per forward + backward, no host sync, no atomics, deterministic:
//
// 1. tile_stats_kernel (ugr_tile_kernel.cuh), grid B * n_tiles * groups: est rows and the
//    mixture (x rows; the mixture is one more "estimate") against the ref rows (y rows),
//    per tile: shift, scale and float-float sums (fp16/bf16/fp32) or double sums (fp64).
//    No fp64 instruction per sample for fp16/bf16/fp32.
// 2. fused_epilogue_kernel, one warp per example (kWarps examples per block): merge of
//    the tile records in float64 (k-way Chan, tiles in order), the SI-SDR matrix,
//    exhaustive PIT (C <= 6) with the permutations split over the lanes (first maximum
//    in lexicographic order wins, as on the CPU), masks, the item losses,
//    F = alpha L + bias (alpha read from the device), coef slots 1..9.
// 3. fused_normalise_kernel, one block: the only batch-wide step, the masked stable
//    softmax over the <= B*C item scores (max, sum of exponentials, fixed-order tree
//    reductions), the loss, the weights and coef slot 0.
// 4. fused_backward_kernel, grid B * n_tiles: d est[b, k, t] from coef, perm and the
//    incoming gradients. fp16/bf16/fp32: in float-float (the centring with a float64
//    mean held exactly as three floats, the factors s a and s c as float-float mantissas
//    with an integer exponent), rounded once; the per-row float64 work (s = the incoming
//    gradients times coef) is a few instructions per row, none per sample. fp64: double.
#pragma once

#include <cmath>
#include <cstdint>

#include <cuda_runtime.h>

#include "ugr_ff.cuh"
#include "ugr_tile_kernel.cuh"

namespace ugr_fused_cuda {

using ugr_cuda::kThreads;
using ugr_cuda::kWarps;
using ugr_cuda::RecLayout;
using ugr_cuda::tile_count;

constexpr int kCoefWidth = 10;
constexpr int kMaxPitSources = 6;
// Reference rows of the register tile kernel (x rows: one more, the mixture); more
// sources (pit=False only) take the float64 ATen statistics.
constexpr int kMaxTileSources = 8;
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

// The merged per-example statistics, the CPU layout (ugr_cpu_dispatch.h):
// mx[cx] | my[cy] | sxy[cx*cy] | sxx[cx] | syy[cy], centred on the means.
struct Layout {
  int cx, cy;
  __host__ __device__ int mx() const { return 0; }
  __host__ __device__ int my() const { return cx; }
  __host__ __device__ int xy() const { return cx + cy; }
  __host__ __device__ int xx() const { return cx + cy + cx * cy; }
  __host__ __device__ int yy() const { return 2 * cx + cy + cx * cy; }
  __host__ __device__ int size() const { return 2 * (cx + cy) + cx * cy; }
};

// float64 workspace of the epilogue and the normaliser.
struct Workspace {
  int64_t batch, n_items;
  int c, cx;
  __host__ __device__ int nf() const { return Layout{cx, c}.size(); }
  __host__ __device__ int64_t merged() const { return 0; }                        // (B, NF)
  __host__ __device__ int64_t pairs() const { return batch * nf(); }              // (B, cx, C, 4)
  __host__ __device__ int64_t src_loss() const { return pairs() + batch * cx * c * 4; }  // (B, C)
  __host__ __device__ int64_t item_loss() const { return src_loss() + batch * c; }
  __host__ __device__ int64_t item_f() const { return item_loss() + n_items; }
  __host__ __device__ int64_t item_ok() const { return item_f() + n_items; }
  __host__ __device__ int64_t item_w() const { return item_ok() + n_items; }
  __host__ __device__ int64_t count() const { return item_w() + n_items; }      // (B,) 1/count
  __host__ __device__ int64_t size() const { return count() + batch; }
};

template <typename rec_t>
struct EpilogueArgs {
  const rec_t* part;       // tile records (B, n_tiles, RecLayout), or null
  const double* merged0;   // already merged statistics (B, NF) (ATen fallback), or null
  double* ws;              // Workspace
  const double* alpha;     // 0-d, on the device
  const double* bias;      // item-shaped (strides below) or null
  int64_t bias_sb, bias_sc;
  const bool* mask;        // item-shaped or null
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

// The idx-th permutation of 0..n-1 in lexicographic order (factorial number system).
__host__ __device__ inline void unrank_permutation(int idx, int n, int* p) {
  int avail[kMaxPitSources];
  int fact = 1;
  for (int i = 0; i < n; ++i) avail[i] = i;
  for (int i = 2; i < n; ++i) fact *= i;                 // (n - 1)!
  for (int pos = 0; pos < n; ++pos) {
    const int q = fact > 0 ? idx / fact : 0;
    idx = fact > 0 ? idx % fact : 0;
    p[pos] = avail[q];
    for (int k = q; k < n - 1 - pos; ++k) avail[k] = avail[k + 1];
    const int rest = n - 1 - pos;                      // fact was rest!; next (rest - 1)!
    fact = rest > 0 ? fact / rest : 1;
  }
}

// ------------------------------------------------------------------ 2. per-example epilogue

// One warp per example. No block-wide barrier (a warp whose example is past the batch
// returns); __syncwarp orders the phases, whose data go through the global workspace.
template <typename rec_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
fused_epilogue_kernel(EpilogueArgs<rec_t> A, EpilogueOut<out_t> out) {
  const int lane = threadIdx.x & 31;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (b >= A.batch) return;
  const int C = A.c, cx = A.cx;
  const Layout L{cx, C};
  const RecLayout R{cx, C};
  const int nf = L.size();
  const Workspace W{A.batch, A.by_source ? A.batch * C : A.batch, C, cx};
  double* rec = A.ws + W.merged() + b * nf;
  double* pairs = A.ws + W.pairs() + b * cx * C * 4;   // (i, j) -> value, a, c, valid
  double* src_loss = A.ws + W.src_loss() + b * C;
  double* item_loss = A.ws + W.item_loss();
  double* item_f = A.ws + W.item_f();
  double* item_ok = A.ws + W.item_ok();
  double* count = A.ws + W.count();

  // (a) merge the tiles: means first (lanes over rows), then the centred sums.
  if (A.part != nullptr) {
    const rec_t* rec0 = A.part + b * A.n_tiles * R.size();
    for (int r = lane; r < cx + C; r += 32)
      rec[r] = ugr_cuda::merged_mean(rec0, R, r, A.T, A.tile, A.n_tiles);   // mx | my
    __syncwarp();
    for (int f = L.xy() + lane; f < nf; f += 32) {
      int slot, ra, rb;
      if (f < L.xx()) {
        const int q = f - L.xy(), i = q / C, j = q % C;
        slot = R.sxy(i, j), ra = i, rb = cx + j;
      } else if (f < L.yy()) {
        ra = rb = f - L.xx(), slot = R.s2(ra);
      } else {
        ra = rb = cx + (f - L.yy()), slot = R.s2(ra);
      }
      rec[f] = ugr_cuda::merged_comoment(rec0, R, slot, ra, rb, rec[ra], rec[rb], A.T, A.tile,
                                         A.n_tiles);
    }
  } else {
    for (int f = lane; f < nf; f += 32) rec[f] = A.merged0[b * nf + f];
  }
  __syncwarp();

  // (b) the SI-SDR matrix (lanes over pairs). Raw sums (zero_mean false) from the
  // centred ones as on the CPU: S = C + n m m'.
  const double n_all = static_cast<double>(A.T);
  const bool collinear = (A.zero_mean ? A.T - 1 : A.T) <= 1;
  for (int q = lane; q < cx * C; q += 32) {
    const int i = q / C, j = q % C;
    const double mi = rec[L.mx() + i], mj = rec[L.my() + j];
    const double sxx = rec[L.xx() + i] + (A.zero_mean ? 0.0 : n_all * mi * mi);
    const double syy = rec[L.yy() + j] + (A.zero_mean ? 0.0 : n_all * mj * mj);
    const double sxy = rec[L.xy() + i * C + j] + (A.zero_mean ? 0.0 : n_all * mi * mj);
    const double tau = i < C ? A.tau : 0.0;  // the mixture's SI-SDR is never clamped
    const PairSisdr p = pair_sisdr(sxy, sxx, syy, A.eps, tau, collinear);
    double* d = pairs + q * 4;
    d[0] = p.value;
    d[1] = p.a;
    d[2] = p.c;
    d[3] = p.valid ? 1.0 : 0.0;
  }
  __syncwarp();

  // (c) PIT: lane l scores the permutations [l * chunk, (l + 1) * chunk) in lexicographic
  // order (invalid pairs count 0, sums over j in order, as on the CPU), keeping its first
  // maximum; the warp keeps the largest total, the smallest index among equal totals.
  int best[kMaxTileSources + 1];
  for (int j = 0; j < C && j <= kMaxTileSources; ++j) best[j] = j;
  const bool use_pit = A.pit && C > 1 && C <= kMaxPitSources;
  if (use_pit) {
    int n_perm = 1;
    for (int i = 2; i <= C; ++i) n_perm *= i;
    const int chunk = (n_perm + 31) / 32;
    const int first = lane * chunk;
    double best_total = neg_inf();
    int best_idx = first < n_perm ? first : 0x7fffffff;
    if (first < n_perm) {
      int p[kMaxPitSources];
      unrank_permutation(first, C, p);
      const int last = first + chunk < n_perm ? first + chunk : n_perm;
      for (int idx = first; idx < last; ++idx) {
        double total = 0.0;
        for (int j = 0; j < C; ++j) {
          const double* d = pairs + (p[j] * C + j) * 4;
          total += d[3] != 0.0 ? d[0] : 0.0;
        }
        if (total > best_total) {
          best_total = total;
          best_idx = idx;
        }
        next_permutation(p, C);
      }
    }
    for (int off = 16; off > 0; off >>= 1) {
      const double o_total = __shfl_xor_sync(0xffffffffu, best_total, off);
      const int o_idx = __shfl_xor_sync(0xffffffffu, best_idx, off);
      if (o_total > best_total || (o_total == best_total && o_idx < best_idx)) {
        best_total = o_total;
        best_idx = o_idx;
      }
    }
    unrank_permutation(best_idx, C, best);
  }

  // (d) the items (lanes over references j).
  const double alpha = *A.alpha;
  for (int j = lane; j < C; j += 32) {
    const int64_t bj = b * C + j;
    const int k = use_pit ? best[j] : j;
    const double* q = pairs + (k * C + j) * 4;
    const double* qm = cx > C ? pairs + (C * C + j) * 4 : nullptr;
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
    const double sxx_j = rec[L.xx() + j] + (A.zero_mean ? 0.0 : n_all * rec[L.mx() + j] *
                                                                  rec[L.mx() + j]);
    const double syy_j = rec[L.yy() + j] + (A.zero_mean ? 0.0 : n_all * rec[L.my() + j] *
                                                                  rec[L.my() + j]);
    cf[1] = pm ? q[1] : 0.0;
    cf[2] = pm ? q[2] : 0.0;
    cf[3] = A.zero_mean ? rec[L.mx() + k] : 0.0;
    cf[4] = A.zero_mean ? rec[L.my() + j] : 0.0;
    cf[5] = v ? 1.0 : 0.0;
    cf[6] = (qm != nullptr && pm) ? 1.0 : 0.0;
    cf[7] = !(is_finite(rec[L.mx() + j]) && is_finite(sxx_j)) ? 1.0 : 0.0;
    cf[8] = !(is_finite(rec[L.my() + j]) && is_finite(syy_j)) ? 1.0 : 0.0;
    if (cx > C) {
      const double mm = rec[L.mx() + C];
      const double sxx_m = rec[L.xx() + C] + (A.zero_mean ? 0.0 : n_all * mm * mm);
      cf[9] = !(is_finite(mm) && is_finite(sxx_m)) ? 1.0 : 0.0;
    } else {
      cf[9] = 0.0;
    }
    src_loss[j] = l;
    if (A.by_source) {
      const double bias = A.bias != nullptr ? A.bias[b * A.bias_sb + j * A.bias_sc] : 0.0;
      const double f = alpha * l + bias;
      item_loss[bj] = l;
      item_f[bj] = f;
      item_ok[bj] = (v && is_finite(f)) ? 1.0 : 0.0;
    }
  }
  __syncwarp();
  if (!A.by_source && lane == 0) {
    // Example granularity: the mean over the valid sources, summed in order (as the CPU).
    int64_t n_valid = 0;
    double loss_sum = 0.0;
    for (int j = 0; j < C; ++j) {
      const bool v = out.valid[b * C + j];
      n_valid += v;
      loss_sum += src_loss[j];
    }
    count[b] = 1.0 / static_cast<double>(n_valid);   // the normaliser multiplies by it
    const double lb = loss_sum / static_cast<double>(n_valid > 1 ? n_valid : 1);
    const bool ok = n_valid > 0 && !(A.mask != nullptr && !A.mask[b * A.mask_sb]);
    if (!ok)
      for (int j = 0; j < C; ++j) out.valid[b * C + j] = false;
    const double bias = A.bias != nullptr ? A.bias[b * A.bias_sb] : 0.0;
    const double f = alpha * lb + bias;
    item_loss[b] = lb;
    item_f[b] = f;
    item_ok[b] = (ok && is_finite(f)) ? 1.0 : 0.0;
  }
}

// ------------------------------------------------------------------ 3. batch normaliser

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

struct NormaliseArgs {
  double* ws;
  int64_t batch, n_items;
  int c, cx;
  bool by_source;
};

// One block: the masked stable softmax over all items, the loss, the weights, coef[.., 0].
template <typename out_t>
__global__ void __launch_bounds__(kThreads)
fused_normalise_kernel(NormaliseArgs A, EpilogueOut<out_t> out) {
  const int tid = threadIdx.x;
  const Workspace W{A.batch, A.n_items, A.c, A.cx};
  const double* item_loss = A.ws + W.item_loss();
  const double* item_f = A.ws + W.item_f();
  const double* item_ok = A.ws + W.item_ok();
  double* item_w = A.ws + W.item_w();
  const double* inv_count = A.ws + W.count();   // 1 / (valid sources), example granularity
  __shared__ double red[kThreads];
  double local = neg_inf();
#pragma unroll 1
  for (int64_t i = tid; i < A.n_items; i += kThreads)
    if (item_ok[i] != 0.0 && item_f[i] > local) local = item_f[i];
  const double f_max = block_reduce<true>(local, red);
  local = 0.0;
#pragma unroll 1
  for (int64_t i = tid; i < A.n_items; i += kThreads) {
    const double e = item_ok[i] != 0.0 ? ::exp(item_f[i] - f_max) : 0.0;
    item_w[i] = e;
    local += e;
  }
  double total = block_reduce<false>(local, red);
  total = total > kDblMin ? total : kDblMin;
  // No division: its slow path is a call and the kernel would spill around it. total is
  // in [1, n_items] (the largest item contributes exp(0) = 1) or, with no item, tiny and
  // every e is 0. 1 / total by two Newton steps from the fp32 reciprocal (24 -> 48 -> 96
  // bits): w = e * (1 / total) is within an ulp of the CPU's e / total.
  double inv_total = 0.0;
  if (total >= 1.0) {
    inv_total = static_cast<double>(1.0f / static_cast<float>(total));
    inv_total = ::fma(inv_total, ::fma(-total, inv_total, 1.0), inv_total);
    inv_total = ::fma(inv_total, ::fma(-total, inv_total, 1.0), inv_total);
  }
  local = 0.0;
#pragma unroll 1
  for (int64_t i = tid; i < A.n_items; i += kThreads) {
    const double w = item_w[i] * inv_total;
    item_w[i] = w;
    out.weights[i] = static_cast<out_t>(w);
    local += w * item_loss[i];
  }
  const double loss = block_reduce<false>(local, red);  // its barriers publish item_w
  if (tid == 0) *out.loss = static_cast<out_t>(loss);
  // d loss / d SI-SDR per item; example granularity: the mean over valid sources.
#pragma unroll 1
  for (int64_t bj = tid; bj < A.batch * A.c; bj += kThreads) {
    double* cf = out.coef + bj * kCoefWidth;
    const int64_t b = bj / A.c;
    cf[0] = A.by_source ? -item_w[bj] : cf[5] != 0.0 ? -item_w[b] * inv_count[b] : 0.0;
  }
}

// ------------------------------------------------------------------ 4. backward

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
  bool vec_ok;
};

__device__ __forceinline__ double load_real(const void* p, bool f64, int64_t i) {
  return f64 ? static_cast<const double*>(p)[i]
             : static_cast<double>(static_cast<const float*>(p)[i]);
}

// One row's factors. float64 path: sa, sc, mx, my as they are. fp32 path: the row's
// gradient is 2^ea (A ~y + 2^dc C ~x), A and C float-float mantissas in [1/2, 1), the
// means as three floats each (exact), a mode saying which terms are non-zero.
struct RowFactors {
  double sa, sc, mx, my;
  float a_hi, a_lo, c_hi, c_lo;
  float mx1, mx2, mx3, my1, my2, my3;
  int ea, dc, mode;   // mode: bit 0 the ref term, bit 1 the est term
  int64_t j;
};

template <typename scalar_t>
__device__ __forceinline__ void store_vec(scalar_t* __restrict__ p, int cnt, bool full,
                                          const float (&val)[ugr_cuda::TileTraits<scalar_t>::kVec]) {
  constexpr int VEC = ugr_cuda::TileTraits<scalar_t>::kVec;
  if (full) {
    scalar_t v[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = static_cast<scalar_t>(val[k]);
    if constexpr (VEC * sizeof(scalar_t) == 16) {
      uint4 raw;
      memcpy(&raw, v, sizeof(raw));
      *reinterpret_cast<uint4*>(p) = raw;
    } else {
      uint2 raw;
      memcpy(&raw, v, sizeof(raw));
      *reinterpret_cast<uint2*>(p) = raw;
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      if (k < cnt) p[k] = static_cast<scalar_t>(val[k]);
  }
}

// out = 2^ea (A (y - my) + 2^dc C (x - mx)) in float-float, rounded once.
template <int kMode>
__device__ __forceinline__ float grad_ff(const RowFactors& f, float x, float y) {
  using namespace ugr_ff;
  float s, e;
  if constexpr (kMode == 3) {
    const FF yc = ff_centre(y, f.my1, f.my2, f.my3);
    const FF xc = ff_centre(x, f.mx1, f.mx2, f.mx3);
    const FF P = ff_mul(FF{f.a_hi, f.a_lo}, yc);
    FF Q = ff_mul(FF{f.c_hi, f.c_lo}, xc);
    Q.hi = scale2(Q.hi, f.dc);
    Q.lo = scale2(Q.lo, f.dc);
    two_sum(P.hi, Q.hi, s, e);
    e = __fadd_rn(e, __fadd_rn(P.lo, Q.lo));
  } else if constexpr (kMode == 1) {
    const FF P = ff_mul(FF{f.a_hi, f.a_lo}, ff_centre(y, f.my1, f.my2, f.my3));
    s = P.hi, e = P.lo;
  } else {
    const FF Q = ff_mul(FF{f.c_hi, f.c_lo}, ff_centre(x, f.mx1, f.mx2, f.mx3));
    s = Q.hi, e = Q.lo;
  }
  return scale2(__fadd_rn(s, e), f.ea);
}

template <typename scalar_t, int kMode>
__device__ __forceinline__ void grad_row(const BwdArgs<scalar_t>& A, const RowFactors& f,
                                         const scalar_t* x, const scalar_t* y, scalar_t* o,
                                         int64_t n) {
  using Tr = ugr_cuda::TileTraits<scalar_t>;
  constexpr int VEC = Tr::kVec;
  for (int64_t t0 = static_cast<int64_t>(threadIdx.x) * VEC; t0 < n;
       t0 += static_cast<int64_t>(kThreads) * VEC) {
    const int cnt = static_cast<int>(n - t0 < VEC ? n - t0 : VEC);
    const bool full = A.vec_ok && cnt == VEC;
    if constexpr (sizeof(scalar_t) == 8) {
      double xv[VEC], yv[VEC];
      if (kMode & 2) ugr_cuda::load_vec<scalar_t, double, VEC>(x + t0, cnt, full, xv);
      if (kMode & 1) ugr_cuda::load_vec<scalar_t, double, VEC>(y + t0, cnt, full, yv);
#pragma unroll
      for (int q = 0; q < VEC; ++q) {
        if (q >= cnt) continue;
        double r = 0.0;
        if constexpr (kMode == 3) r = f.sa * (yv[q] - f.my) + f.sc * (xv[q] - f.mx);
        else if constexpr (kMode == 1) r = f.sa * (yv[q] - f.my);
        else if constexpr (kMode == 2) r = f.sc * (xv[q] - f.mx);
        o[t0 + q] = static_cast<scalar_t>(r);
      }
    } else {
      float xv[VEC], yv[VEC], r[VEC];
      if (kMode & 2) ugr_cuda::load_vec<scalar_t, float, VEC>(x + t0, cnt, full, xv);
      if (kMode & 1) ugr_cuda::load_vec<scalar_t, float, VEC>(y + t0, cnt, full, yv);
#pragma unroll
      for (int q = 0; q < VEC; ++q) {
        if constexpr (kMode == 0) r[q] = 0.0f;
        else r[q] = grad_ff<kMode>(f, (kMode & 2) ? xv[q] : 0.0f, (kMode & 1) ? yv[q] : 0.0f);
      }
      store_vec<scalar_t>(o + t0, cnt, full, r);
    }
  }
}

// One block per (example, tile): rows k = perm[b, j] in chunks of kBwdRows, whose
// factors (the CPU backward's s_j a_j, s_j c_j, zero-guarded) and means are staged in
// shared memory. A row no perm entry points to (perm not from the forward) gets 0.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) fused_backward_kernel(BwdArgs<scalar_t> A) {
  const int tid = threadIdx.x;
  const int C = A.c;
  // 32-bit index division (the grid is < 2^31 blocks): a 64-bit one is a call, and the
  // kernel would spill around it.
  const unsigned n_tiles = static_cast<unsigned>(A.n_tiles);
  const int64_t b = blockIdx.x / n_tiles;
  const int64_t t_idx = blockIdx.x % n_tiles;
  const int64_t start = t_idx * A.tile;
  const int64_t n = tile_count(t_idx, A.tile, A.T);
  __shared__ RowFactors s_f[kBwdRows];

  for (int k0 = 0; k0 < C; k0 += kBwdRows) {
    const int rows = C - k0 < kBwdRows ? C - k0 : kBwdRows;
    if (tid < rows) {
      const int k = k0 + tid;
      int j = -1;
      for (int jj = C - 1; jj >= 0; --jj)
        if (A.perm[b * C + jj] == k) j = jj;
      RowFactors f{};
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
        f.sa = (s != 0.0 && q[1] != 0.0) ? s * q[1] : 0.0;
        f.sc = (s != 0.0 && q[2] != 0.0) ? s * q[2] : 0.0;
        f.mx = q[3];
        f.my = q[4];
      }
      f.mode = (f.sa != 0.0 ? 1 : 0) | (f.sc != 0.0 ? 2 : 0);
      if constexpr (sizeof(scalar_t) != 8) {
        // Integer instructions only from here (ugr_ff::split_double).
        const ugr_ff::Split sa = ugr_ff::split_double(f.sa), sc = ugr_ff::split_double(f.sc);
        const ugr_ff::Split mx = ugr_ff::split_double(f.mx), my = ugr_ff::split_double(f.my);
        f.a_hi = sa.m1;
        f.a_lo = __fadd_rn(sa.m2, sa.m3);
        f.c_hi = sc.m1;
        f.c_lo = __fadd_rn(sc.m2, sc.m3);
        f.ea = f.mode == 2 ? sc.e : sa.e;     // the frame: a's exponent, or c's alone
        f.dc = f.mode == 3 ? sc.e - sa.e : 0;
        f.mx1 = ugr_ff::scale2(mx.m1, mx.e), f.mx2 = ugr_ff::scale2(mx.m2, mx.e);
        f.mx3 = ugr_ff::scale2(mx.m3, mx.e);
        f.my1 = ugr_ff::scale2(my.m1, my.e), f.my2 = ugr_ff::scale2(my.m2, my.e);
        f.my3 = ugr_ff::scale2(my.m3, my.e);
      }
      f.j = j < 0 ? 0 : j;
      s_f[tid] = f;
    }
    __syncthreads();
    for (int r = 0; r < rows; ++r) {
      const RowFactors& f = s_f[r];
      const scalar_t* x = A.est + (b * C + k0 + r) * A.T + start;
      const scalar_t* y = A.ref + (b * C + f.j) * A.T + start;
      scalar_t* o = A.out + (b * C + k0 + r) * A.T + start;
      // A term whose factor is exactly 0 is not evaluated (never 0 * NaN).
      switch (f.mode) {
        case 3: grad_row<scalar_t, 3>(A, f, x, y, o, n); break;
        case 1: grad_row<scalar_t, 1>(A, f, x, y, o, n); break;
        case 2: grad_row<scalar_t, 2>(A, f, x, y, o, n); break;
        default: grad_row<scalar_t, 0>(A, f, x, y, o, n); break;
      }
    }
    __syncthreads();
  }
}

}  // namespace ugr_fused_cuda

// Per-tile kernels of the CPU passes. No include guard on purpose: ugr_cpu.cpp
// includes this file twice, once for the baseline ISA (namespace ugr_base) and
// once under a target("avx2,fma,f16c") pragma (namespace ugr_avx2), and picks
// one at run time. Only float and double are handled here; 16-bit inputs are
// widened tile by tile into float buffers first.
//
// Expects: UGR_NS (namespace name), UGR_LANES (doubles per accumulator, the
// vector width), UGR_F16C (1 when F16C intrinsics may be used).
//
// Sums are accumulated in fixed vector lanes and reduced in a fixed order (no
// fast-math, no reassociation), hence bitwise reproducible for a given ISA path.

namespace {  // internal linkage: nothing here is exported
namespace UGR_NS {

// Explicit vectors (GCC/clang vector extensions) rather than auto-vectorised
// lane arrays: GCC's SLP vectoriser left some accumulators in memory.
constexpr int kLanes = UGR_LANES;
typedef double vd __attribute__((vector_size(kLanes * sizeof(double))));
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));

// Independent accumulator vectors needed to cover the add/FMA latency
// (~4 cycles on 2 ports).
constexpr int kChainsWanted = 8;

inline vd load(const double* p) {
  vd v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline vd load(const float* p) {
  // Intrinsics: GCC 12 splits __builtin_convertvector(v4sf -> v4df) into halves.
#if UGR_F16C
  return reinterpret_cast<vd>(_mm256_cvtps_pd(_mm_loadu_ps(p)));
#elif UGR_LANES == 2 && defined(__SSE2__)
  return reinterpret_cast<vd>(
      _mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))));
#else
  vf v;
  std::memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, vd);
#endif
}

inline vd splat(double s) {
  return vd{} + s;
}

// Sum of the lanes in a fixed pairwise order.
inline double hsum(vd v) {
  double lanes[kLanes];
  std::memcpy(lanes, &v, sizeof lanes);
  double s[kLanes];
  for (int l = 0; l < kLanes; ++l) s[l] = lanes[l];
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) s[l] = s[l] + s[l + w];
  return s[0];
}

// a[0] + ... + a[M-1] (vector adds in order), then the lanes, then the
// scalar tail: the same order for every call.
template <int M>
inline double reduce(const vd* a, double tail) {
  vd v = a[0];
  for (int m = 1; m < M; ++m) v += a[m];
  return hsum(v) + tail;
}

// Samples averaged for a tile's shift (below).
constexpr int64_t kShiftSamples = 16;

template <typename T>
double shift_of(const T* p, int64_t n) {
  const int64_t k = n < kShiftSamples ? n : kShiftSamples;
  double s = 0.0;
  for (int64_t t = 0; t < k; ++t) s += static_cast<double>(p[t]);
  return s / static_cast<double>(k);
}

// One pass over a CX x CY block of channels of one tile, all from registers.
// Sums are taken around a shift K per channel (the mean of the tile's first
// kShiftSamples samples), then centred exactly on the tile mean:
//   m = K + S_x / n,   C_xy = S_(x-K)(y-K') - S_x S_y / n.
// |m - K|^2 <= (n / kShiftSamples) var (Cauchy-Schwarz), so the cancellation
// costs at most log2(n / kShiftSamples) ~ 7 bits of double precision in the
// worst case and nothing for ordinary audio; a constant channel gives exactly 0.
// Reading every sample once lets the loads overlap the arithmetic.
template <int CX, int CY, typename T>
void block_stats(const T* const* xs, const T* const* ys, int64_t n, double* mx_out,
                 double* my_out, double* sxy, int64_t ldy, double* sxx, double* syy) {
  constexpr int kChains = CX * CY + 2 * (CX + CY);
  constexpr int M = kChains >= kChainsWanted ? 1 : 2;  // vectors per accumulator
  constexpr int kStep = M * kLanes;
  const T* xp[CX];
  const T* yp[CY];
  double kx[CX], ky[CY];
  vd vkx[CX], vky[CY];
  for (int i = 0; i < CX; ++i) xp[i] = xs[i], kx[i] = shift_of(xs[i], n), vkx[i] = splat(kx[i]);
  for (int j = 0; j < CY; ++j) yp[j] = ys[j], ky[j] = shift_of(ys[j], n), vky[j] = splat(ky[j]);

  vd axy[CX * CY][M] = {};
  vd axx[CX][M] = {}, ax[CX][M] = {};
  vd ayy[CY][M] = {}, ay[CY][M] = {};
  int64_t t = 0;
  for (; t + kStep <= n; t += kStep) {
    for (int m = 0; m < M; ++m) {
      vd dx[CX], dy[CY];
      for (int i = 0; i < CX; ++i) dx[i] = load(xp[i] + t + m * kLanes) - vkx[i];
      for (int j = 0; j < CY; ++j) dy[j] = load(yp[j] + t + m * kLanes) - vky[j];
      for (int i = 0; i < CX; ++i)
        for (int j = 0; j < CY; ++j) axy[i * CY + j][m] += dx[i] * dy[j];
      for (int i = 0; i < CX; ++i) axx[i][m] += dx[i] * dx[i], ax[i][m] += dx[i];
      for (int j = 0; j < CY; ++j) ayy[j][m] += dy[j] * dy[j], ay[j][m] += dy[j];
    }
  }
  double txy[CX * CY] = {}, txx[CX] = {}, tx[CX] = {}, tyy[CY] = {}, ty[CY] = {};
  for (; t < n; ++t) {
    double dx[CX], dy[CY];
    for (int i = 0; i < CX; ++i) dx[i] = static_cast<double>(xp[i][t]) - kx[i];
    for (int j = 0; j < CY; ++j) dy[j] = static_cast<double>(yp[j][t]) - ky[j];
    for (int i = 0; i < CX; ++i)
      for (int j = 0; j < CY; ++j) txy[i * CY + j] += dx[i] * dy[j];
    for (int i = 0; i < CX; ++i) txx[i] += dx[i] * dx[i], tx[i] += dx[i];
    for (int j = 0; j < CY; ++j) tyy[j] += dy[j] * dy[j], ty[j] += dy[j];
  }

  const double inv_n = 1.0 / static_cast<double>(n);
  double sx[CX], sy[CY];
  for (int i = 0; i < CX; ++i) sx[i] = reduce<M>(ax[i], tx[i]);
  for (int j = 0; j < CY; ++j) sy[j] = reduce<M>(ay[j], ty[j]);
  for (int i = 0; i < CX; ++i) {
    mx_out[i] = kx[i] + sx[i] * inv_n;
    sxx[i] = reduce<M>(axx[i], txx[i]) - sx[i] * sx[i] * inv_n;
    for (int j = 0; j < CY; ++j)
      sxy[i * ldy + j] = reduce<M>(axy[i * CY + j], txy[i * CY + j]) - sx[i] * sy[j] * inv_n;
  }
  for (int j = 0; j < CY; ++j) {
    my_out[j] = ky[j] + sy[j] * inv_n;
    syy[j] = reduce<M>(ayy[j], tyy[j]) - sy[j] * sy[j] * inv_n;
  }
}

// One tile of the stats pass. rec: tile means mx[cx], my[cy], then the sums
// centred on them: sxy[cx * cy], sxx[cx], syy[cy]. Channels go in blocks of
// at most 2 x 2 (the register budget of 16 vector registers); what a block
// computes again for a channel (its mean and square sum, bitwise the same)
// is dropped, which costs less than a second kernel.
template <typename T>
void tile_stats(const T* const* xs, const T* const* ys, int64_t cx, int64_t cy, int64_t n,
                double* rec) {
  double* mx = rec;
  double* my = rec + cx;
  double* sxy = rec + cx + cy;
  double* sxx = sxy + cx * cy;
  double* syy = sxx + cx;
  double dump[8];
  for (int64_t i0 = 0; i0 < cx; i0 += 2) {
    const int bi = cx - i0 >= 2 ? 2 : 1;
    for (int64_t j0 = 0; j0 < cy; j0 += 2) {
      const int bj = cy - j0 >= 2 ? 2 : 1;
      double* out_mx = j0 == 0 ? mx + i0 : dump;
      double* out_xx = j0 == 0 ? sxx + i0 : dump + 2;
      double* out_my = i0 == 0 ? my + j0 : dump + 4;
      double* out_yy = i0 == 0 ? syy + j0 : dump + 6;
      double* out_xy = sxy + i0 * cy + j0;
      const T* const* bx = xs + i0;
      const T* const* by = ys + j0;
      if (bi == 2 && bj == 2) {
        block_stats<2, 2>(bx, by, n, out_mx, out_my, out_xy, cy, out_xx, out_yy);
      } else if (bi == 2) {
        block_stats<2, 1>(bx, by, n, out_mx, out_my, out_xy, cy, out_xx, out_yy);
      } else if (bj == 2) {
        block_stats<1, 2>(bx, by, n, out_mx, out_my, out_xy, cy, out_xx, out_yy);
      } else {
        block_stats<1, 1>(bx, by, n, out_mx, out_my, out_xy, cy, out_xx, out_yy);
      }
    }
  }
}

// Store the lanes of v rounded to float (or as double).
inline void store(double* p, vd v) {
  std::memcpy(p, &v, sizeof v);
}

inline void store(float* p, vd v) {
#if UGR_F16C
  _mm_storeu_ps(p, _mm256_cvtpd_ps(reinterpret_cast<__m256d>(v)));
#elif UGR_LANES == 2 && defined(__SSE2__)
  _mm_storel_pi(reinterpret_cast<__m64*>(p), _mm_cvtpd_ps(reinterpret_cast<__m128d>(v)));
#else
  const vf f = __builtin_convertvector(v, vf);
  std::memcpy(p, &f, sizeof f);
#endif
}

// out = sum_j g_j (y_j - my_j) + h (x - mx) over one tile, in double whatever T
// is, rounded once to T at the store. Double matters for float inputs: the
// coefficients scale as 1/amplitude^2 (1e40 at amplitude 1e-20 would overflow
// float), a large DC offset must be removed before rounding, and when the
// SI-SDR saturates the two terms cancel to ~1e-16 of their size, not ~1e-7.
// A row whose coefficient is exactly 0 is skipped, so it contributes exactly 0
// even when it holds NaN or inf (a masked item must not poison the gradient).
// Terms are summed in the order j = 0, 1, ..., then the x term.
template <typename T>
void tile_combine(const T* x, const T* const* ys, const double* g, const double* my,
                  double h, double mx, int64_t cy, int64_t n, T* __restrict out) {
  // Up to kMaxRows non-zero rows go in one register pass straight to out; more
  // rows (C > 7) accumulate in a double scratch tile first.
  constexpr int kMaxRows = 8;
  std::vector<const T*> rows;
  std::vector<double> coef, mean;
  rows.reserve(static_cast<size_t>(cy + 1));
  for (int64_t j = 0; j < cy; ++j) {
    if (g[j] == 0.0) continue;
    rows.push_back(ys[j]), coef.push_back(g[j]), mean.push_back(my[j]);
  }
  if (h != 0.0) rows.push_back(x), coef.push_back(h), mean.push_back(mx);
  const int used = static_cast<int>(rows.size());
  if (used <= kMaxRows) {
    int64_t t = 0;
    for (; t + kLanes <= n; t += kLanes) {
      vd acc = vd{};
      for (int r = 0; r < used; ++r)
        acc += splat(coef[r]) * (load(rows[r] + t) - splat(mean[r]));
      store(out + t, acc);
    }
    for (; t < n; ++t) {
      double acc = 0.0;
      for (int r = 0; r < used; ++r)
        acc += coef[r] * (static_cast<double>(rows[r][t]) - mean[r]);
      out[t] = static_cast<T>(acc);
    }
    return;
  }
  std::vector<double> acc(static_cast<size_t>(n), 0.0);
  for (int r = 0; r < used; ++r) {
    const T* __restrict row = rows[r];
    for (int64_t t = 0; t < n; ++t) acc[t] += coef[r] * (static_cast<double>(row[t]) - mean[r]);
  }
  for (int64_t t = 0; t < n; ++t) out[t] = static_cast<T>(acc[t]);
}

inline void widen(const c10::Half* __restrict src, float* __restrict dst, int64_t n) {
  int64_t t = 0;
#if UGR_F16C
  for (; t + 8 <= n; t += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + t));
    _mm256_storeu_ps(dst + t, _mm256_cvtph_ps(h));
  }
#endif
  for (; t < n; ++t) dst[t] = static_cast<float>(src[t]);
}

inline void widen(const c10::BFloat16* __restrict src, float* __restrict dst, int64_t n) {
  // bfloat16 is the top half of a float: exact.
  const uint16_t* __restrict bits = reinterpret_cast<const uint16_t*>(src);
  for (int64_t t = 0; t < n; ++t) {
    const uint32_t u = static_cast<uint32_t>(bits[t]) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    dst[t] = f;
  }
}

inline void narrow(const float* __restrict src, c10::Half* __restrict dst, int64_t n) {
  int64_t t = 0;
#if UGR_F16C
  for (; t + 8 <= n; t += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + t), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + t), h);
  }
#endif
  for (; t < n; ++t) dst[t] = static_cast<c10::Half>(src[t]);
}

inline void narrow(const float* __restrict src, c10::BFloat16* __restrict dst, int64_t n) {
  for (int64_t t = 0; t < n; ++t) dst[t] = static_cast<c10::BFloat16>(src[t]);
}

}  // namespace UGR_NS
}  // namespace

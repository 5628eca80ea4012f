// Float-float ("double-float") arithmetic for the CUDA kernels: a value is an unevaluated
// sum hi + lo of two fp32 numbers with |lo| <= ulp(hi) / 2, about 48 significant bits,
// built only from fp32 instructions (consumer GPUs run fp64 at 1/64 of fp32).
//
// The error-free transformations (Knuth's TwoSum, Dekker's Fast2Sum, the FMA-based
// TwoProduct) need every operation rounded exactly once as written: the __f*_rn
// intrinsics are never contracted into an FMA by nvcc, and fmaf is the exact fused
// multiply-add on every CUDA GPU (and std::fmaf on the CPU of the emulation tests, which
// builds with -ffp-contract=off). No --use_fast_math (no FTZ): setup.py.
//
// Also: exact power-of-two scales (frexp-style, from the bits), and the split of a
// float64 into three floats and an exponent with integer instructions only, so that the
// fp32 kernels need no fp64 instruction per sample (tests/test_cuda_static.py counts).
#pragma once

#include <cmath>
#include <cstdint>

#include <cuda_runtime.h>

namespace ugr_ff {

struct FF {
  float hi, lo;
};

// s + e == a + b exactly (Knuth; no condition on the magnitudes).
__device__ __forceinline__ void two_sum(float a, float b, float& s, float& e) {
  s = __fadd_rn(a, b);
  const float bb = __fsub_rn(s, a);
  e = __fadd_rn(__fsub_rn(a, __fsub_rn(s, bb)), __fsub_rn(b, bb));
}

// s + e == a + b exactly when |a| >= |b| (or a == 0) (Dekker).
__device__ __forceinline__ void fast_two_sum(float a, float b, float& s, float& e) {
  s = __fadd_rn(a, b);
  e = __fsub_rn(b, __fsub_rn(s, a));
}

// acc += v, v exact (a sample).
__device__ __forceinline__ void ff_add(FF& acc, float v) {
  float s, e;
  two_sum(acc.hi, v, s, e);
  acc.hi = s;
  acc.lo = __fadd_rn(acc.lo, e);
}

// acc += a * b with the product exact: p + pe == a b (FMA TwoProduct; exact unless the
// product underflows, i.e. below 2^-126 relative to 1, which the scaled inputs avoid).
__device__ __forceinline__ void ff_add_prod(FF& acc, float a, float b) {
  const float p = __fmul_rn(a, b);
  const float pe = fmaf(a, b, -p);
  float s, e;
  two_sum(acc.hi, p, s, e);
  acc.hi = s;
  acc.lo = __fadd_rn(acc.lo, __fadd_rn(e, pe));
}

// Restores |lo| <= ulp(hi) / 2 (keeps the rounding errors of lo's own additions small).
__device__ __forceinline__ void ff_renorm(FF& a) {
  float s, e;
  fast_two_sum(a.hi, a.lo, s, e);
  a.hi = s;
  a.lo = e;
}

// a + b in float-float (the "accurate" sum: TwoSum of the high parts, then the lows).
__device__ __forceinline__ FF ff_sum(FF a, FF b) {
  float s, e;
  two_sum(a.hi, b.hi, s, e);
  e = __fadd_rn(e, __fadd_rn(a.lo, b.lo));
  FF r;
  fast_two_sum(s, e, r.hi, r.lo);
  return r;
}

// a * (b.hi + b.lo) for a float-float a, unnormalised (hi + lo, |lo| small).
__device__ __forceinline__ FF ff_mul(FF a, FF b) {
  FF r;
  r.hi = __fmul_rn(a.hi, b.hi);
  r.lo = fmaf(a.hi, b.hi, -r.hi);
  r.lo = fmaf(a.hi, b.lo, r.lo);
  r.lo = fmaf(a.lo, b.hi, r.lo);
  return r;
}

// v - (m1 + m2 + m3) as a float-float: exact TwoSum with the leading part of the mean,
// then the two small parts (m = m1 + m2 + m3 holds a float64 mean exactly).
__device__ __forceinline__ FF ff_centre(float v, float m1, float m2, float m3) {
  float s, e;
  two_sum(v, -m1, s, e);
  e = __fsub_rn(__fsub_rn(e, m2), m3);
  FF r;
  fast_two_sum(s, e, r.hi, r.lo);
  return r;
}

// Binary exponent of a finite non-zero float: |v| in [2^e, 2^(e+1)). From the bits
// (denormals included); 0 for 0, inf and NaN.
__device__ __forceinline__ int exponent_of(float v) {
  const uint32_t u = static_cast<uint32_t>(__float_as_int(v)) & 0x7fffffffu;
  if (u == 0u || u >= 0x7f800000u) return 0;
  if (u >= 0x00800000u) return static_cast<int>(u >> 23) - 127;
  int lead = 31 - __clz(static_cast<int>(u));   // denormal: highest set bit of the mantissa
  return lead - 149;
}

// 2^k as a float for k in [-126, 127].
__device__ __forceinline__ float pow2f(int k) {
  return __int_as_float(static_cast<int>(static_cast<uint32_t>(k + 127) << 23));
}

// A float64 as m * 2^e with m = m1 + m2 + m3 (|m1| in [1/2, 1), exact: 24 + 24 + 5 bits;
// below 1 so that m1 times a float never overflows more than the float itself) and
// the sign on every part, using integer instructions only. 0 and float64 denormals give
// m = 0, e = 0; inf and NaN give m1 = the same inf / NaN.
struct Split {
  float m1, m2, m3;
  int e;
};

__device__ __forceinline__ Split split_double(double v) {
  const uint64_t u = static_cast<uint64_t>(__double_as_longlong(v));
  const bool neg = (u >> 63) != 0;
  const int ef = static_cast<int>((u >> 52) & 0x7ff);
  Split r{0.0f, 0.0f, 0.0f, 0};
  if (ef == 0) return r;
  if (ef == 0x7ff) {
    const bool nan = (u & 0xfffffffffffffull) != 0;
    r.m1 = __int_as_float(nan ? 0x7fc00000 : (neg ? static_cast<int>(0xff800000u) : 0x7f800000));
    return r;
  }
  const uint64_t mant = (u & 0xfffffffffffffull) | (1ull << 52);   // 53 bits
  const float s = neg ? -1.0f : 1.0f;
  // top 24 bits, next 24, last 5; each an exact float.
  r.m1 = s * __uint2float_rn(static_cast<unsigned>(mant >> 29)) * pow2f(-24);
  r.m2 = s * __uint2float_rn(static_cast<unsigned>((mant >> 5) & 0xffffffu)) * pow2f(-48);
  r.m3 = s * __uint2float_rn(static_cast<unsigned>(mant & 0x1fu)) * pow2f(-53);
  r.e = ef - 1022;
  return r;
}

// x * 2^k for any k in about [-378, 381]: up to three exact steps of the same sign (only
// the last can round, when the result is denormal), so the result is rounded once.
__device__ __forceinline__ float scale2(float x, int k) {
  const int k1 = k > 127 ? 127 : (k < -126 ? -126 : k);
  const int r1 = k - k1;
  const int k2 = r1 > 127 ? 127 : (r1 < -126 ? -126 : r1);
  const int k3 = r1 - k2;
  x = __fmul_rn(x, pow2f(k1));
  if (k2 != 0) x = __fmul_rn(x, pow2f(k2));
  if (k3 != 0) x = __fmul_rn(x, pow2f(k3 > 127 ? 127 : (k3 < -126 ? -126 : k3)));
  return x;
}

}  // namespace ugr_ff

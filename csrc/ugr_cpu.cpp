// CPU implementation of the two passes (stats, combine); see ugr.h.
//
// Work is split into (example, tile) items of kCpuTile samples so that one item
// (all Cx + Cy channels) stays in L1/L2 and B = 1 with a long T still uses every
// thread (at::parallel_for: OpenMP with torch's intra-op thread count, i.e. a
// collapsed loop over examples x tiles). Each item reads its samples once and
// leaves a small partial record (tile means and centred sums, in double; see
// block_stats in ugr_cpu_kernels.h). The records are then merged per example in
// tile order with Chan et al.'s parallel update, so the result does not depend on
// the number of threads. Centring per tile keeps sxx * syy - sxy^2 accurate to
// ~1e-13 relative (SI-SDR accurate well above 100 dB); a one-pass raw sum in fp32
// loses it above ~50 dB.
//
// The per-tile kernels (ugr_cpu_kernels.h) are compiled twice: for the baseline
// ISA and, on x86-64, under a target pragma for AVX2 + FMA + F16C; the AVX2 copy
// runs when the CPU has it (no -march flags, so the binary runs anywhere).
// UGR_CPU_ISA=base in the environment forces the baseline copy.
#include "ugr.h"
#include "ugr_cpu_dispatch.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define UGR_X86_DISPATCH 1
#include <immintrin.h>
#else
#define UGR_X86_DISPATCH 0
#endif

#define UGR_NS ugr_base
#define UGR_LANES 2
#define UGR_F16C 0
#include "ugr_cpu_kernels.h"
#include "ugr_fused_kernels.h"
#undef UGR_NS
#undef UGR_LANES
#undef UGR_F16C

#if UGR_X86_DISPATCH
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
#define UGR_NS ugr_avx2
#define UGR_LANES 4
#define UGR_F16C 1
#include "ugr_cpu_kernels.h"
#include "ugr_fused_kernels.h"
#undef UGR_NS
#undef UGR_LANES
#undef UGR_F16C
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

namespace {

using ugr::kCpuTile;

using ugr::cpu::grain_items;
using ugr::cpu::is_16bit;
using ugr::is_float_dtype;
using ugr::cpu::Kernels;
using ugr::cpu::Layout;
using ugr::cpu::merged_stats;
using ugr::cpu::kernels;
using ugr::cpu::narrow_tile;
using ugr::cpu::num_tiles;
using ugr::cpu::widen_tile;

#define UGR_KERNEL_TABLE(ns)                                                            \
  Kernels {                                                                             \
    #ns, &ns::tile_stats<float>, &ns::tile_stats<double>, &ns::tile_combine<float>,     \
        &ns::tile_combine<double>, &ns::fused_grad_row<float>,                          \
        &ns::fused_grad_row<double>, static_cast<void (*)(const c10::Half*, float*, int64_t)>(&ns::widen), \
        static_cast<void (*)(const c10::BFloat16*, float*, int64_t)>(&ns::widen),       \
        static_cast<void (*)(const float*, c10::Half*, int64_t)>(&ns::narrow),          \
        static_cast<void (*)(const float*, c10::BFloat16*, int64_t)>(&ns::narrow)       \
  }

const Kernels kBase = UGR_KERNEL_TABLE(ugr_base);
#if UGR_X86_DISPATCH
const Kernels kAvx2 = UGR_KERNEL_TABLE(ugr_avx2);
#endif

bool cpu_has_avx2() {
#if UGR_X86_DISPATCH
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

const Kernels* best_kernels() {
#if UGR_X86_DISPATCH
  const char* env = std::getenv("UGR_CPU_ISA");
  const bool force_base = env != nullptr && std::string(env) == "base";
  if (!force_base && cpu_has_avx2()) return &kAvx2;
#endif
  return &kBase;
}

std::atomic<const Kernels*> g_kernels{nullptr};

template <typename T>
void stats_kernel(const T* x, const T* y, int64_t batch, int64_t cx, int64_t cy, int64_t length,
                  bool zero_mean, double* out_mx, double* out_my, double* out_sxy,
                  double* out_sxx, double* out_syy) {
  const Layout L{cx, cy};
  std::vector<double> merged;
  merged_stats<T>(kernels(), batch, cx, cy, length, [&](int64_t b, int64_t r) {
    return r < cx ? x + (b * cx + r) * length : y + (b * cy + (r - cx)) * length;
  }, merged);
  for (int64_t b = 0; b < batch; ++b) {
    const double* acc = merged.data() + b * L.size();
    // Raw sums (zero_mean false) from the centred ones: S = C + n m m'.
    const double n_all = static_cast<double>(length);
    for (int64_t i = 0; i < cx; ++i) {
      const double m = acc[L.mx() + i];
      out_mx[b * cx + i] = zero_mean ? m : 0.0;
      out_sxx[b * cx + i] = acc[L.xx() + i] + (zero_mean ? 0.0 : n_all * m * m);
      for (int64_t j = 0; j < cy; ++j) {
        const double mj = acc[L.my() + j];
        out_sxy[(b * cx + i) * cy + j] =
            acc[L.xy() + i * cy + j] + (zero_mean ? 0.0 : n_all * m * mj);
      }
    }
    for (int64_t j = 0; j < cy; ++j) {
      const double m = acc[L.my() + j];
      out_my[b * cy + j] = zero_mean ? m : 0.0;
      out_syy[b * cy + j] = acc[L.yy() + j] + (zero_mean ? 0.0 : n_all * m * m);
    }
  }
}

// out_i = sum_j g_ij (y_j - my_j) + h_i (x_i - mx_i), in float (double for double
// inputs), rounded once to the storage type.
template <typename T>
void combine_kernel(const T* x, const T* y, const double* mx, const double* my, const double* g,
                    const double* h, T* out, int64_t batch, int64_t cx, int64_t cy,
                    int64_t length) {
  const Kernels& k = kernels();
  const int64_t tiles = num_tiles(length);
  const int64_t items = batch * tiles;
  at::parallel_for(0, items, grain_items(cx + cy), [&](int64_t begin, int64_t end) {
    using W = std::conditional_t<is_16bit<T>, float, T>;
    // 16-bit: x_i, y_j widened, and the float result, per tile.
    std::vector<float> wide(is_16bit<T> ? static_cast<size_t>((cx + cy + 1) * kCpuTile) : 0);
    std::vector<const W*> ys(static_cast<size_t>(cy));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / tiles;
      const int64_t start = (item % tiles) * kCpuTile;
      const int64_t n = std::min(kCpuTile, length - start);
      for (int64_t j = 0; j < cy; ++j) {
        const T* src = y + (b * cy + j) * length + start;
        if constexpr (is_16bit<T>) {
          float* dst = wide.data() + j * kCpuTile;
          widen_tile(k, src, dst, n);
          ys[j] = dst;
        } else {
          ys[j] = src;
        }
      }
      for (int64_t i = 0; i < cx; ++i) {
        const int64_t bi = b * cx + i;
        const T* xi = x + bi * length + start;
        T* oi = out + bi * length + start;
        if constexpr (is_16bit<T>) {
          float* xw = wide.data() + cy * kCpuTile;
          float* ow = xw + kCpuTile;
          widen_tile(k, xi, xw, n);
          k.combine_f(xw, ys.data(), g + bi * cy, my + b * cy, h[bi], mx[bi], cy, n, ow);
          narrow_tile(k, ow, oi, n);
        } else if constexpr (std::is_same_v<T, double>) {
          k.combine_d(xi, ys.data(), g + bi * cy, my + b * cy, h[bi], mx[bi], cy, n, oi);
        } else {
          k.combine_f(xi, ys.data(), g + bi * cy, my + b * cy, h[bi], mx[bi], cy, n, oi);
        }
      }
    }
  });
}

void check_signal(const at::Tensor& t, const char* fn, const char* name) {
  TORCH_CHECK(t.defined(), fn, ": expected ", name, " to be a tensor, got an undefined tensor");
  TORCH_CHECK(t.device().is_cpu(), fn, ": expected ", name, " to be a CPU tensor, got device ",
              t.device());
  TORCH_CHECK(t.dim() == 3, fn, ": expected ", name,
              " to be 3-D (batch, channels, time), got shape ", t.sizes());
  TORCH_CHECK(is_float_dtype(t.scalar_type()), fn, ": expected ", name,
              " to be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

void check_pair(const at::Tensor& x, const at::Tensor& y, const char* fn) {
  check_signal(x, fn, "x");
  check_signal(y, fn, "y");
  TORCH_CHECK(x.size(0) == y.size(0) && x.size(2) == y.size(2), fn,
              ": expected x and y with the same batch size and length, got shapes ", x.sizes(),
              " and ", y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), fn,
              ": expected x and y with the same dtype, got ", x.scalar_type(), " and ",
              y.scalar_type());
}

at::Tensor coefficient(const at::Tensor& t, at::IntArrayRef shape, const char* fn,
                       const char* name) {
  TORCH_CHECK(t.defined(), fn, ": expected ", name, " to be a tensor, got an undefined tensor");
  TORCH_CHECK(t.device().is_cpu(), fn, ": expected ", name, " to be a CPU tensor, got device ",
              t.device());
  TORCH_CHECK(t.sizes() == shape, fn, ": expected ", name, " of shape ", shape, ", got ",
              t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), fn, ": expected ", name,
              " to be a floating-point tensor (float64), got ", t.scalar_type());
  return t.to(at::kDouble).contiguous();
}

}  // namespace

const ugr::cpu::Kernels& ugr::cpu::kernels() {
  const Kernels* k = g_kernels.load(std::memory_order_acquire);
  if (k == nullptr) {
    k = best_kernels();
    g_kernels.store(k, std::memory_order_release);
  }
  return *k;
}

UgrStats stats_cpu(const at::Tensor& x_in, const at::Tensor& y_in, bool zero_mean) {
  constexpr const char* fn = "ugr stats_cpu";
  check_pair(x_in, y_in, fn);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const int64_t batch = x.size(0), cx = x.size(1), cy = y.size(1), length = x.size(2);
  const auto f64 = x.options().dtype(at::kDouble);
  at::Tensor mx = at::zeros({batch, cx}, f64);
  at::Tensor my = at::zeros({batch, cy}, f64);
  at::Tensor sxy = at::zeros({batch, cx, cy}, f64);
  at::Tensor sxx = at::zeros({batch, cx}, f64);
  at::Tensor syy = at::zeros({batch, cy}, f64);
  if (batch == 0 || length == 0) return {mx, my, sxy, sxx, syy};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ugr_stats_cpu", [&] {
    stats_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), batch, cx,
                           cy, length, zero_mean, mx.mutable_data_ptr<double>(),
                           my.mutable_data_ptr<double>(), sxy.mutable_data_ptr<double>(),
                           sxx.mutable_data_ptr<double>(), syy.mutable_data_ptr<double>());
  });
  return {mx, my, sxy, sxx, syy};
}

at::Tensor combine_cpu(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& mx_in,
                       const at::Tensor& my_in, const at::Tensor& g_in, const at::Tensor& h_in) {
  constexpr const char* fn = "ugr combine_cpu";
  check_pair(x_in, y_in, fn);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const int64_t batch = x.size(0), cx = x.size(1), cy = y.size(1), length = x.size(2);
  const at::Tensor mx = coefficient(mx_in, {batch, cx}, fn, "mx");
  const at::Tensor my = coefficient(my_in, {batch, cy}, fn, "my");
  const at::Tensor g = coefficient(g_in, {batch, cx, cy}, fn, "g");
  const at::Tensor h = coefficient(h_in, {batch, cx}, fn, "h");
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ugr_combine_cpu", [&] {
    combine_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                             mx.const_data_ptr<double>(), my.const_data_ptr<double>(),
                             g.const_data_ptr<double>(), h.const_data_ptr<double>(),
                             out.mutable_data_ptr<scalar_t>(), batch, cx, cy, length);
  });
  return out;
}

std::string cpu_isa() {
  return kernels().name;
}

void set_cpu_isa(const std::string& name) {
  if (name == "auto") {
    g_kernels.store(best_kernels(), std::memory_order_release);
  } else if (name == "base" || name == "ugr_base") {
    g_kernels.store(&kBase, std::memory_order_release);
  } else if (name == "avx2" || name == "ugr_avx2") {
#if UGR_X86_DISPATCH
    TORCH_CHECK(cpu_has_avx2(), "set_cpu_isa: this CPU lacks AVX2/FMA/F16C");
    g_kernels.store(&kAvx2, std::memory_order_release);
#else
    TORCH_CHECK(false, "set_cpu_isa: the AVX2 kernels are not compiled in (not x86-64)");
#endif
  } else {
    TORCH_CHECK(false, "set_cpu_isa: expected 'auto', 'base' or 'avx2', got '", name, "'");
  }
}

// The CPU kernel table shared by the two-pass ops (ugr_cpu.cpp) and the fused ops
// (ugr_fused_cpu.cpp). ugr_cpu.cpp compiles the per-tile kernels (ugr_cpu_kernels.h,
// ugr_fused_kernels.h) once per ISA and defines kernels(), which picks a copy at run
// time (UGR_CPU_ISA / set_cpu_isa); both kinds of ops call through the same table.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "ugr.h"

namespace ugr::cpu {

// Minimum number of samples (all channels) per parallel chunk: below it a
// thread start costs more than it saves.
constexpr int64_t kMinSamplesPerChunk = 1 << 15;

// One ISA path: function pointers into one compiled copy of the tile kernels.
struct Kernels {
  const char* name;
  void (*stats_f)(const float* const*, const float* const*, int64_t, int64_t, int64_t, double*);
  void (*stats_d)(const double* const*, const double* const*, int64_t, int64_t, int64_t,
                  double*);
  void (*combine_f)(const float*, const float* const*, const double*, const double*, double,
                    double, int64_t, int64_t, float*);
  void (*combine_d)(const double*, const double* const*, const double*, const double*, double,
                    double, int64_t, int64_t, double*);
  void (*grad_f)(const float*, const float*, double, double, double, double, int64_t, float*);
  void (*grad_d)(const double*, const double*, double, double, double, double, int64_t,
                 double*);
  void (*widen_h)(const c10::Half*, float*, int64_t);
  void (*widen_b)(const c10::BFloat16*, float*, int64_t);
  void (*narrow_h)(const float*, c10::Half*, int64_t);
  void (*narrow_b)(const float*, c10::BFloat16*, int64_t);
};

// The copy in use (defined in ugr_cpu.cpp).
const Kernels& kernels();

inline int64_t num_tiles(int64_t length) {
  return (length + kCpuTile - 1) / kCpuTile;
}

// (example, tile) work items per parallel chunk for `channels` rows per item.
inline int64_t grain_items(int64_t channels) {
  const int64_t per_item = kCpuTile * std::max<int64_t>(channels, 1);
  return std::max<int64_t>(1, (kMinSamplesPerChunk + per_item - 1) / per_item);
}

template <typename T>
constexpr bool is_16bit = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

// 16-bit rows are widened to float tile by tile (and results narrowed back).
template <typename T>
void widen_tile(const Kernels& k, const T* src, float* dst, int64_t n) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    k.widen_h(src, dst, n);
  } else {
    k.widen_b(src, dst, n);
  }
}

template <typename T>
void narrow_tile(const Kernels& k, const float* src, T* dst, int64_t n) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    k.narrow_h(src, dst, n);
  } else {
    k.narrow_b(src, dst, n);
  }
}

inline bool is_float_dtype(at::ScalarType s) {
  return s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble;
}

}  // namespace ugr::cpu

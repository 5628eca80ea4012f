// The CPU kernel table shared by the two-pass ops (ugr_cpu.cpp) and the fused ops
// (ugr_fused_cpu.cpp). ugr_cpu.cpp compiles the per-tile kernels (ugr_cpu_kernels.h,
// ugr_fused_kernels.h) once per ISA and defines kernels(), which picks a copy at run
// time (UGR_CPU_ISA / set_cpu_isa); both kinds of ops call through the same table.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

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

// Statistics record of one tile or one example, as tile_stats writes it: means
// mx[cx], my[cy], then sums centred on them: sxy[cx * cy], sxx[cx], syy[cy].
struct Layout {
  int64_t cx, cy;
  int64_t mx() const { return 0; }
  int64_t my() const { return cx; }
  int64_t xy() const { return cx + cy; }
  int64_t xx() const { return cx + cy + cx * cy; }
  int64_t yy() const { return 2 * cx + cy + cx * cy; }
  int64_t size() const { return 2 * (cx + cy) + cx * cy; }
};

// The stats pass: every (example, tile) work item reads its cx + cy rows once
// (row_of(b, r) is the start of row r of example b: x rows r < cx, then y rows)
// and leaves a tile record; the records of each example are then merged in tile
// order with Chan et al.'s pairwise update (deterministic, independent of the
// thread count): C_ab = C_a + C_b + (m_b - m_a)(m'_b - m'_a) n_a n_b / (n_a + n_b).
// out: one merged (centred) record per example.
template <typename T, typename RowOf>
void merged_stats(const Kernels& k, int64_t batch, int64_t cx, int64_t cy, int64_t length,
                  RowOf row_of, std::vector<double>& out) {
  const Layout L{cx, cy};
  const int64_t tiles = num_tiles(length);
  const int64_t items = batch * tiles;
  std::vector<double> partials(static_cast<size_t>(items * L.size()));

  at::parallel_for(0, items, grain_items(cx + cy), [&](int64_t begin, int64_t end) {
    using W = std::conditional_t<is_16bit<T>, float, T>;  // what the kernels read
    std::vector<float> wide(is_16bit<T> ? static_cast<size_t>((cx + cy) * kCpuTile) : 0);
    std::vector<const W*> rows(static_cast<size_t>(cx + cy));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / tiles;
      const int64_t start = (item % tiles) * kCpuTile;
      const int64_t n = std::min(kCpuTile, length - start);
      for (int64_t r = 0; r < cx + cy; ++r) {
        const T* src = row_of(b, r) + start;
        if constexpr (is_16bit<T>) {
          float* dst = wide.data() + r * kCpuTile;
          widen_tile(k, src, dst, n);
          rows[r] = dst;
        } else {
          rows[r] = src;
        }
      }
      double* rec = partials.data() + item * L.size();
      if constexpr (std::is_same_v<W, double>) {
        k.stats_d(rows.data(), rows.data() + cx, cx, cy, n, rec);
      } else {
        k.stats_f(rows.data(), rows.data() + cx, cx, cy, n, rec);
      }
    }
  });

  out.assign(static_cast<size_t>(batch * L.size()), 0.0);
  std::vector<double> dmx(cx), dmy(cy);
  for (int64_t b = 0; b < batch; ++b) {
    double* acc = out.data() + b * L.size();
    const double* first = partials.data() + b * tiles * L.size();
    std::copy(first, first + L.size(), acc);
    double n_acc = static_cast<double>(std::min(kCpuTile, length));
    for (int64_t t = 1; t < tiles; ++t) {
      const double* rec = partials.data() + (b * tiles + t) * L.size();
      const double n_tile = static_cast<double>(std::min(kCpuTile, length - t * kCpuTile));
      const double n_new = n_acc + n_tile;
      const double f = n_acc * n_tile / n_new;
      const double w = n_tile / n_new;
      for (int64_t i = 0; i < cx; ++i) dmx[i] = rec[L.mx() + i] - acc[L.mx() + i];
      for (int64_t j = 0; j < cy; ++j) dmy[j] = rec[L.my() + j] - acc[L.my() + j];
      for (int64_t i = 0; i < cx; ++i) {
        for (int64_t j = 0; j < cy; ++j)
          acc[L.xy() + i * cy + j] += rec[L.xy() + i * cy + j] + dmx[i] * dmy[j] * f;
        acc[L.xx() + i] += rec[L.xx() + i] + dmx[i] * dmx[i] * f;
        acc[L.mx() + i] += dmx[i] * w;
      }
      for (int64_t j = 0; j < cy; ++j) {
        acc[L.yy() + j] += rec[L.yy() + j] + dmy[j] * dmy[j] * f;
        acc[L.my() + j] += dmy[j] * w;
      }
      n_acc = n_new;
    }
  }
}

}  // namespace ugr::cpu

// Every kernel instance the extension launches (csrc/cuda/ugr_fused_cuda.cu and
// ugr_cuda.cu), without ATen: compiled by tests/test_cuda_static.py with nvcc -Xptxas -v
// for registers, spills and the fp64 SASS budget. c10::Half / c10::BFloat16 are the
// types the extension dispatches to (header-only).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../../csrc/cuda/ugr_cuda_kernels.cuh"
#include "../../csrc/cuda/ugr_fused_cuda_kernels.cuh"

template <>
struct ugr_cuda::IsFp16<c10::Half> : std::true_type {};

namespace K = ugr_fused_cuda;
namespace U = ugr_cuda;

// Fused: the tile pass for NY reference rows, GX x rows per group (ugr_fused_cuda.cu).
#define UGR_TILE(T, GX, NY) \
  template __global__ void U::tile_stats_kernel<T, U::TileTraits<T>::acc_t, GX, NY>( \
      U::TileArgs<T, U::TileTraits<T>::acc_t>);
#define UGR_FUSED(T)                                                           \
  UGR_TILE(T, 2, 1) UGR_TILE(T, 3, 2) UGR_TILE(T, 4, 3) UGR_TILE(T, 5, 4)      \
  UGR_TILE(T, 4, 6) UGR_TILE(T, 3, 8)                                          \
  /* two-pass stats (ugr_cuda.cu): GX = NC up to 4, 3 for 8 */                 \
  UGR_TILE(T, 1, 1) UGR_TILE(T, 2, 2) UGR_TILE(T, 4, 4)                        \
  template __global__ void K::fused_backward_kernel<T>(K::BwdArgs<T>);         \
  template __global__ void U::combine_kernel<T, double, 1>(                    \
      const T*, const T*, const double*, const double*, const double*,         \
      const double*, T*, int, int, int64_t, int64_t, int64_t, bool);           \
  template __global__ void U::combine_kernel<T, double, 2>(                    \
      const T*, const T*, const double*, const double*, const double*,         \
      const double*, T*, int, int, int64_t, int64_t, int64_t, bool);           \
  template __global__ void U::combine_kernel<T, double, 4>(                    \
      const T*, const T*, const double*, const double*, const double*,         \
      const double*, T*, int, int, int64_t, int64_t, int64_t, bool);           \
  template __global__ void U::combine_kernel<T, double, 8>(                    \
      const T*, const T*, const double*, const double*, const double*,         \
      const double*, T*, int, int, int64_t, int64_t, int64_t, bool);

UGR_FUSED(c10::Half)
UGR_FUSED(c10::BFloat16)
UGR_FUSED(float)
UGR_FUSED(double)

template __global__ void K::fused_epilogue_kernel<float, float>(K::EpilogueArgs<float>,
                                                                K::EpilogueOut<float>);
template __global__ void K::fused_epilogue_kernel<double, double>(K::EpilogueArgs<double>,
                                                                  K::EpilogueOut<double>);
template __global__ void K::fused_normalise_kernel<float>(K::NormaliseArgs, K::EpilogueOut<float>);
template __global__ void K::fused_normalise_kernel<double>(K::NormaliseArgs, K::EpilogueOut<double>);
template __global__ void U::stats_merge_kernel<float>(const float*, double*, double*, double*,
                                                      double*, double*, int, int, int64_t,
                                                      int64_t, int64_t, bool);
template __global__ void U::stats_merge_kernel<double>(const double*, double*, double*, double*,
                                                       double*, double*, int, int, int64_t,
                                                       int64_t, int64_t, bool);

// The two T-sized passes of weighted SI-SDR (see ugr_kernels/backends/__init__.py).
//
// stats(x, y, zero_mean) -> (mx, my, sxy, sxx, syy)
//   x (B, Cx, T), y (B, Cy, T), same float dtype (fp16/bf16/fp32/fp64);
//   all outputs float64: mx (B, Cx), my (B, Cy) the means over T (zeros when
//   !zero_mean), sxy (B, Cx, Cy), sxx (B, Cx), syy (B, Cy) the centred (or raw
//   when !zero_mean) sums of products.
//
// combine(x, y, mx, my, g, h) -> out, x's shape and dtype:
//   out[b,i,t] = sum_j g[b,i,j] (y[b,j,t] - my[b,j]) + h[b,i] (x[b,i,t] - mx[b,i]).
//
// Every device implements both with these exact signatures; bindings.cpp binds
// the CUDA pair only when the extension is compiled with UGR_WITH_CUDA.
#pragma once

#include <string>
#include <tuple>

#include <ATen/ATen.h>

// The public functions live in the global namespace so that every translation
// unit (ugr_cpu.cpp, cuda/ugr_cuda.cu) defines exactly what bindings.cpp declares:
// include this header there.
using UgrStats = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

namespace ugr {
inline bool is_float_dtype(at::ScalarType s) {
  return s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble;
}

// Samples per work item of the CPU passes (bound as tile_size() for tests of tile edges).
constexpr int64_t kCpuTile = 2048;
}  // namespace ugr

UgrStats stats_cpu(const at::Tensor& x, const at::Tensor& y, bool zero_mean);
at::Tensor combine_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& mx,
                       const at::Tensor& my, const at::Tensor& g, const at::Tensor& h);

// Which copy of the CPU kernels runs ("ugr_base" or "ugr_avx2"), and a switch
// for tests and benchmarks ("auto", "base", "avx2").
std::string cpu_isa();
void set_cpu_isa(const std::string& name);

#ifdef UGR_WITH_CUDA
UgrStats stats_cuda(const at::Tensor& x, const at::Tensor& y, bool zero_mean);
at::Tensor combine_cuda(const at::Tensor& x, const at::Tensor& y, const at::Tensor& mx,
                        const at::Tensor& my, const at::Tensor& g, const at::Tensor& h);
#endif

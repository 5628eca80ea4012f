// CUDA implementation of the two T-sized passes (contract: csrc/ugr.h and
// ugr_kernels/backends/__init__.py); kernels in ugr_cuda_kernels.cuh and ugr_tile_kernel.cuh.
//
// stats_cuda: per-(example, tile, row group) records (float-float sums of the scaled,
// shifted samples for fp16/bf16/fp32: exact products, ~48-bit sums, no fp64 per sample;
// double sums for fp64), then a merge kernel in float64 with a fixed tile order, so
// results are bitwise repeatable for a given shape and device. combine_cuda: one
// elementwise-in-T pass in double. Both run on the current CUDA stream, never synchronise
// with the host, and are therefore safe under CUDA-graph capture. More than kMaxNC (8)
// sources per side fall back to ATen ops (float64, like the torch backend).
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ugr.h"
#include "ugr_cuda_kernels.cuh"

// fp16 needs no scale in the tile pass (ugr_tile_kernel.cuh).
template <>
struct ugr_cuda::IsFp16<c10::Half> : std::true_type {};

namespace {

using ugr_cuda::kMaxNC;
using ugr_cuda::kThreads;

int bound_nc(int64_t c) {
  if (c <= 1) return 1;
  if (c <= 2) return 2;
  if (c <= 4) return 4;
  if (c <= kMaxNC) return kMaxNC;
  return 0;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The T-tile of a block: the largest of 16384..4096 samples that still gives every SM
// about four blocks (bandwidth needs many blocks in flight); shorter signals: one tile.
// It depends only on (B, T, device), so the (tile-dependent) rounding of stats is the
// same on every call.
int multiprocessors() {
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms > 0 ? sms : 1;
}

int64_t pick_tile(int64_t batch, int64_t length) {
  const int sms = multiprocessors();
  int64_t chosen = 4096;
  for (int64_t tile : {16384, 8192, 4096}) {
    chosen = tile;
    if (batch * ceil_div(length, tile) >= 4LL * sms) break;
  }
  return length <= chosen ? length : chosen;
}

bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

void check_pair(const at::Tensor& x, const at::Tensor& y, const char* what) {
  TORCH_CHECK(x.is_cuda() && y.is_cuda(), what, ": x and y must be CUDA tensors");
  TORCH_CHECK(x.device() == y.device(), what, ": x and y must be on the same device, got ",
              x.device(), " and ", y.device());
  TORCH_CHECK(x.dim() == 3 && y.dim() == 3, what, ": x and y must be (B, C, T), got ",
              x.sizes(), " and ", y.sizes());
  TORCH_CHECK(x.size(0) == y.size(0) && x.size(2) == y.size(2), what,
              ": x and y must agree in batch and length, got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), what, ": x and y must have one dtype, got ",
              x.scalar_type(), " and ", y.scalar_type());
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              what, ": dtype must be float16, bfloat16, float32 or float64, got ", st);
  TORCH_CHECK(x.size(1) >= 1 && y.size(1) >= 1, what, ": need at least one channel");
  TORCH_CHECK(x.size(1) <= INT32_MAX && y.size(1) <= INT32_MAX, what, ": too many channels");
}

UgrStats stats_fallback(const at::Tensor& x, const at::Tensor& y, bool zero_mean) {
  auto x64 = x.to(at::kDouble);
  auto y64 = y.to(at::kDouble);
  at::Tensor mx, my;
  if (zero_mean) {
    mx = x64.mean(-1);
    my = y64.mean(-1);
    x64 = x64 - mx.unsqueeze(-1);
    y64 = y64 - my.unsqueeze(-1);
  } else {
    mx = at::zeros({x.size(0), x.size(1)}, x64.options());
    my = at::zeros({y.size(0), y.size(1)}, y64.options());
  }
  auto sxy = at::bmm(x64, y64.transpose(1, 2));
  return {mx, my, sxy, (x64 * x64).sum(-1), (y64 * y64).sum(-1)};
}

// x-row group GX for a bound NC of the rows: all x rows in one block up to 4, groups
// of 3 x rows for 8 (no spill).
template <typename scalar_t, int NC>
void launch_stats(const at::Tensor& x, const at::Tensor& y, at::Tensor& part, int cx, int cy,
                  int64_t length, int64_t tile, int64_t n_tiles, cudaStream_t stream) {
  using Tr = ugr_cuda::TileTraits<scalar_t>;
  using rec_t = typename Tr::acc_t;
  constexpr int GX = NC <= 4 ? NC : 3;
  ugr_cuda::TileArgs<scalar_t, rec_t> a{};
  a.x0 = x.const_data_ptr<scalar_t>();
  a.xm = nullptr;
  a.y = y.const_data_ptr<scalar_t>();
  a.part = part.mutable_data_ptr<rec_t>();
  a.cx0 = cx, a.cx = cx, a.cy = cy;
  a.groups = static_cast<int>(ceil_div(cx, GX));
  a.T = length, a.tile = tile, a.n_tiles = n_tiles;
  a.vec_ok = length % Tr::kVec == 0 && tile % Tr::kVec == 0 && aligned(a.x0, Tr::kBytes) &&
             aligned(a.y, Tr::kBytes);
  const int64_t blocks = x.size(0) * n_tiles * a.groups;
  TORCH_CHECK(blocks <= INT32_MAX, "stats_cuda: too many blocks (B * T / tile)");
  ugr_cuda::tile_stats_kernel<scalar_t, rec_t, GX, NC>
      <<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t, int NC>
void launch_combine(const at::Tensor& x, const at::Tensor& y, const at::Tensor& mx,
                    const at::Tensor& my, const at::Tensor& g, const at::Tensor& h,
                    at::Tensor& out, int cx, int cy, int64_t length, int64_t tile,
                    int64_t n_tiles, cudaStream_t stream) {
  constexpr int kVec = ugr_cuda::combine_vec<scalar_t, NC>();
  constexpr int kBytes = kVec * static_cast<int>(sizeof(scalar_t));
  const bool vec_ok = length % kVec == 0 && tile % kVec == 0 && aligned(x.data_ptr(), kBytes) &&
                      aligned(y.data_ptr(), kBytes) && aligned(out.data_ptr(), kBytes);
  const int64_t blocks = x.size(0) * n_tiles;
  ugr_cuda::combine_kernel<scalar_t, acc_t, NC>
      <<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), mx.data_ptr<double>(),
          my.data_ptr<double>(), g.data_ptr<double>(), h.data_ptr<double>(),
          out.data_ptr<scalar_t>(), cx, cy, length, tile, n_tiles, vec_ok);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

UgrStats stats_cuda(const at::Tensor& x_in, const at::Tensor& y_in, bool zero_mean) {
  check_pair(x_in, y_in, "stats_cuda");
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const int64_t batch = x.size(0), length = x.size(2);
  const int64_t cx64 = x.size(1), cy64 = y.size(1);
  const auto f64 = x.options().dtype(at::kDouble);
  if (batch == 0) {
    return {at::empty({0, cx64}, f64), at::empty({0, cy64}, f64), at::empty({0, cx64, cy64}, f64),
            at::empty({0, cx64}, f64), at::empty({0, cy64}, f64)};
  }
  TORCH_CHECK(length > 0, "stats_cuda: the signals are empty (T = 0)");
  const int nc = bound_nc(std::max(cx64, cy64));
  if (nc == 0) return stats_fallback(x, y, zero_mean);
  const int cx = static_cast<int>(cx64), cy = static_cast<int>(cy64);

  const int64_t tile = pick_tile(batch, length);
  const int64_t n_tiles = ceil_div(length, tile);
  const int64_t rec_size = ugr_cuda::RecLayout{cx, cy}.size();
  const bool f64_in = x.scalar_type() == at::kDouble;
  at::Tensor part = at::empty({batch * n_tiles * rec_size},
                              x.options().dtype(f64_in ? at::kDouble : at::kFloat));
  at::Tensor mx = at::empty({batch, cx64}, f64);
  at::Tensor my = at::empty({batch, cy64}, f64);
  at::Tensor sxy = at::empty({batch, cx64, cy64}, f64);
  at::Tensor sxx = at::empty({batch, cx64}, f64);
  at::Tensor syy = at::empty({batch, cy64}, f64);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ugr_stats_cuda", [&] {
    switch (nc) {
      case 1: launch_stats<scalar_t, 1>(x, y, part, cx, cy, length, tile, n_tiles, stream); break;
      case 2: launch_stats<scalar_t, 2>(x, y, part, cx, cy, length, tile, n_tiles, stream); break;
      case 4: launch_stats<scalar_t, 4>(x, y, part, cx, cy, length, tile, n_tiles, stream); break;
      default: launch_stats<scalar_t, kMaxNC>(x, y, part, cx, cy, length, tile, n_tiles, stream); break;
    }
  });
  const int nf = static_cast<int>(2 * cx64 + 2 * cy64 + cx64 * cy64);
  const int merge_threads = std::min(256, ((nf + 31) / 32) * 32);
  auto merge = [&](auto* rec) {
    ugr_cuda::stats_merge_kernel<<<static_cast<unsigned int>(batch), merge_threads, 0, stream>>>(
        rec, mx.data_ptr<double>(), my.data_ptr<double>(), sxy.data_ptr<double>(),
        sxx.data_ptr<double>(), syy.data_ptr<double>(), cx, cy, length, tile, n_tiles,
        zero_mean);
  };
  if (f64_in) merge(part.const_data_ptr<double>());
  else merge(part.const_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {mx, my, sxy, sxx, syy};
}

at::Tensor combine_cuda(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& mx_in,
                        const at::Tensor& my_in, const at::Tensor& g_in, const at::Tensor& h_in) {
  check_pair(x_in, y_in, "combine_cuda");
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const int64_t batch = x_in.size(0), length = x_in.size(2);
  const int64_t cx64 = x_in.size(1), cy64 = y_in.size(1);
  TORCH_CHECK(mx_in.dim() == 2 && mx_in.size(0) == batch && mx_in.size(1) == cx64,
              "combine_cuda: mx must be (B, Cx), got ", mx_in.sizes());
  TORCH_CHECK(my_in.dim() == 2 && my_in.size(0) == batch && my_in.size(1) == cy64,
              "combine_cuda: my must be (B, Cy), got ", my_in.sizes());
  TORCH_CHECK(g_in.dim() == 3 && g_in.size(0) == batch && g_in.size(1) == cx64 &&
                  g_in.size(2) == cy64,
              "combine_cuda: g must be (B, Cx, Cy), got ", g_in.sizes());
  TORCH_CHECK(h_in.dim() == 2 && h_in.size(0) == batch && h_in.size(1) == cx64,
              "combine_cuda: h must be (B, Cx), got ", h_in.sizes());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const auto f64 = x.options().dtype(at::kDouble);
  const at::Tensor mx = mx_in.to(f64).contiguous();
  const at::Tensor my = my_in.to(f64).contiguous();
  const at::Tensor g = g_in.to(f64).contiguous();
  const at::Tensor h = h_in.to(f64).contiguous();
  at::Tensor out = at::empty_like(x);  // x is contiguous, so is out
  if (x.numel() == 0) return out;

  const int nc = bound_nc(std::max(cx64, cy64));
  if (nc == 0) {
    // Many sources: float64 torch ops (the torch backend's arithmetic, zero-guarded).
    const auto yc = y.to(at::kDouble) - my.unsqueeze(-1);
    const auto xc = x.to(at::kDouble) - mx.unsqueeze(-1);
    const auto terms = at::where(g.unsqueeze(-1) != 0, g.unsqueeze(-1) * yc.unsqueeze(1),
                                 at::zeros({}, f64)).sum(2);
    const auto hh = h.unsqueeze(-1);
    out.copy_(terms + at::where(hh != 0, hh * xc, at::zeros({}, f64)));
    return out;
  }
  const int cx = static_cast<int>(cx64), cy = static_cast<int>(cy64);
  const int64_t tile = pick_tile(batch, length);
  const int64_t n_tiles = ceil_div(length, tile);
  TORCH_CHECK(batch * n_tiles <= INT32_MAX, "combine_cuda: too many blocks (B * T / tile)");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ugr_combine_cuda", [&] {
    // Double arithmetic for every dtype, rounded once at the store (see the kernel).
    using acc_t = double;
    switch (nc) {
      case 1: launch_combine<scalar_t, acc_t, 1>(x, y, mx, my, g, h, out, cx, cy, length, tile, n_tiles, stream); break;
      case 2: launch_combine<scalar_t, acc_t, 2>(x, y, mx, my, g, h, out, cx, cy, length, tile, n_tiles, stream); break;
      case 4: launch_combine<scalar_t, acc_t, 4>(x, y, mx, my, g, h, out, cx, cy, length, tile, n_tiles, stream); break;
      default: launch_combine<scalar_t, acc_t, kMaxNC>(x, y, mx, my, g, h, out, cx, cy, length, tile, n_tiles, stream); break;
    }
  });
  return out;
}

// CUDA kernels of the fused ops ugr::weighted_sisdr_fwd / ugr::weighted_sisdr_bwd
// (schemas: ugr_kernels/fused.py; CPU kernels, coef layout and the C++ autograd kernel
// registered for every device: csrc/ugr_fused_cpu.cpp). Kernels:
// ugr_fused_cuda_kernels.cuh and ugr_tile_kernel.cuh.
//
// Forward: three launches (the tile pass over (example, T-tile, row group), the
// per-example epilogue with one warp per example, the batch normaliser in one block);
// backward: one launch. All on the current stream, no host sync, no allocation-dependent
// host logic (CUDA-graph capturable; alpha is read by the epilogue from its device
// tensor), deterministic for a given shape and device (fixed-order reductions, the
// T-tile depends only on (B, T, device)).
//
// Differences from the CPU kernels, all forced by "no host sync": a non-finite
// alpha or bias is not raised here (its items drop out of the pmf; check_finite in
// ugr_kernels/fused.py raises from the one sync it already makes), and the backward
// does not check that perm is a permutation (a row no perm entry names gets 0).
// More than kMaxTileSources (8) sources (pit=False only) take float64 ATen statistics
// (already merged) before the same epilogue.
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ugr_fused_cuda_kernels.cuh"
#include "ugr_fused_inputs.h"

// fp16 needs no scale in the tile pass (ugr_tile_kernel.cuh).
template <>
struct ugr_cuda::IsFp16<c10::Half> : std::true_type {};

namespace {

namespace K = ugr_fused_cuda;
using FwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                             at::Tensor, at::Tensor>;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int multiprocessors(int device) {
  // Cached per device: cudaDeviceGetAttribute is cheap, but the value never changes.
  static int cache[64] = {0};
  if (device >= 0 && device < 64 && cache[device] > 0) return cache[device];
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  sms = sms > 0 ? sms : 1;
  if (device >= 0 && device < 64) cache[device] = sms;
  return sms;
}

// The T-tile: the largest of 16384..4096 samples that still gives every SM about two
// blocks (shorter signals: one tile). At least 4096 samples so that the per-block work
// that is not per sample (the float-float block reduction, the backward's per-row float64
// set-up) stays small against the samples: tests/test_cuda_static.py. It depends only on
// (B, T, device), so results repeat bitwise.
int64_t pick_tile(int64_t batch, int64_t length, int device) {
  const int64_t want = 2LL * multiprocessors(device);
  int64_t chosen = 4096;
  for (int64_t tile : {16384, 8192, 4096}) {
    chosen = tile;
    if (batch * ceil_div(length, tile) >= want) break;
  }
  return length <= chosen ? length : chosen;
}

bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// A grid/block bound of the tile kernels: at most 2^20 sources.
void check_sources(const at::Tensor& est, const char* fn) {
  TORCH_CHECK(est.is_cuda(), fn, ": expected est on a CUDA device, got ", est.device());
  TORCH_CHECK(est.size(1) <= 1 << 20, fn, ": too many sources (", est.size(1), ")");
}

int64_t stride_or_zero(const at::Tensor& t, int64_t dim) {
  return t.defined() && t.dim() > dim ? t.stride(dim) : 0;
}

// Reference-row bound NY of the register tile kernel, and its x-row group GX (est rows
// and the mixture; C + 1 <= GX for C <= 4: one group) chosen so that no instance spills.
int bound_sources(int64_t c) {
  if (c <= 1) return 1;
  if (c <= 2) return 2;
  if (c <= 3) return 3;
  if (c <= 4) return 4;
  if (c <= 6) return 6;
  if (c <= K::kMaxTileSources) return K::kMaxTileSources;
  return 0;
}

constexpr int group_rows(int ny) { return ny <= 4 ? ny + 1 : ny == 6 ? 4 : 3; }

template <typename scalar_t, int NY>
void launch_tile(const ugr_cuda::TileArgs<scalar_t, typename ugr_cuda::TileTraits<scalar_t>::acc_t>& a,
                 int64_t batch, cudaStream_t stream) {
  using rec_t = typename ugr_cuda::TileTraits<scalar_t>::acc_t;
  constexpr int GX = group_rows(NY);
  auto args = a;
  args.groups = static_cast<int>(ceil_div(args.cx, GX));
  const int64_t blocks = batch * args.n_tiles * args.groups;
  TORCH_CHECK(blocks <= INT32_MAX, "ugr::weighted_sisdr_fwd: too many blocks (B * T / tile)");
  ugr_cuda::tile_stats_kernel<scalar_t, rec_t, GX, NY>
      <<<static_cast<unsigned int>(blocks), K::kThreads, 0, stream>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Many sources: the merged statistics (Layout) from float64 ATen ops.
at::Tensor aten_records(const at::Tensor& est, const at::Tensor& ref, const at::Tensor& mix) {
  const int64_t batch = est.size(0), length = est.size(2);
  at::Tensor x = est.to(at::kDouble);
  if (mix.defined()) x = at::cat({x, mix.reshape({batch, 1, length}).to(at::kDouble)}, 1);
  const at::Tensor y = ref.to(at::kDouble);
  const at::Tensor mx = x.mean(-1), my = y.mean(-1);
  const at::Tensor xc = x - mx.unsqueeze(-1), yc = y - my.unsqueeze(-1);
  const at::Tensor sxy = at::bmm(xc, yc.transpose(1, 2)).reshape({batch, -1});
  return at::cat({mx, my, sxy, (xc * xc).sum(-1), (yc * yc).sum(-1)}, 1).contiguous();
}

FwdResult weighted_sisdr_fwd_cuda(const at::Tensor& est_in, const at::Tensor& ref_in,
                                  const std::optional<at::Tensor>& mixture_in,
                                  const at::Tensor& alpha_in,
                                  const std::optional<at::Tensor>& bias_in,
                                  const std::optional<at::Tensor>& mask_in, bool by_source,
                                  bool pit, bool zero_mean, double eps, double clamp_db) {
  constexpr const char* fn = "ugr::weighted_sisdr_fwd";
  const c10::cuda::CUDAGuard device_guard(est_in.device());
  const ugr::fused::ForwardInputs in = ugr::fused::forward_inputs(
      est_in, ref_in, mixture_in, alpha_in, bias_in, mask_in, by_source, pit, eps, clamp_db,
      K::kMaxPitSources, fn);
  check_sources(in.est, fn);
  const at::Device device = in.est.device();
  const at::Tensor &est = in.est, &ref = in.ref, &mix = in.mix, &bias = in.bias, &mask = in.mask;
  const int64_t batch = in.batch, c64 = in.c, length = in.length;
  const std::vector<int64_t>& item_shape = in.item_shape;
  // Read by the epilogue on the device (no sync); a no-op for the 0-d float64 device
  // tensor fused.py passes.
  const at::Tensor alpha = alpha_in.to(device, at::kDouble).reshape({});

  const int c = static_cast<int>(c64);
  const int cx = c + (mix.defined() ? 1 : 0);
  const int nf = K::Layout{cx, c}.size();
  const int64_t n_items = by_source ? batch * c64 : batch;
  const int ny = bound_sources(c64);
  const int64_t tile = ny > 0 ? pick_tile(batch, length, device.index()) : length;
  const int64_t n_tiles = ceil_div(length, tile);

  const auto f64 = est.options().dtype(at::kDouble);
  const bool out_f64 = est.scalar_type() == at::kDouble;
  const auto out_opts = est.options().dtype(out_f64 ? at::kDouble : at::kFloat);
  const K::Workspace ws_layout{batch, n_items, c, cx};
  at::Tensor ws = at::empty({ws_layout.size()}, f64);
  at::Tensor loss = at::empty({}, out_opts);
  at::Tensor sisdr = at::empty({batch, c64}, out_opts);
  at::Tensor sisdri = at::empty({batch, c64}, out_opts);
  at::Tensor weights = at::empty(item_shape, out_opts);
  at::Tensor perm = at::empty({batch, c64}, est.options().dtype(at::kLong));
  at::Tensor valid = at::empty({batch, c64}, est.options().dtype(at::kBool));
  at::Tensor coef = at::empty({batch, c64, K::kCoefWidth}, f64);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();

  // 1. tile records: float (fp16/bf16/fp32 inputs) or double (fp64), or merged ATen stats.
  at::Tensor part, merged0;
  if (ny > 0) {
    const int64_t rec_size = ugr_cuda::RecLayout{cx, c}.size();
    part = at::empty({batch * n_tiles * rec_size}, est.options().dtype(out_f64 ? at::kDouble : at::kFloat));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, est.scalar_type(),
                                    "ugr_fused_tile_cuda", [&] {
      using rec_t = typename ugr_cuda::TileTraits<scalar_t>::acc_t;
      constexpr int kVec = ugr_cuda::TileTraits<scalar_t>::kVec;
      constexpr int kBytes = ugr_cuda::TileTraits<scalar_t>::kBytes;
      ugr_cuda::TileArgs<scalar_t, rec_t> a{};
      a.x0 = est.const_data_ptr<scalar_t>();
      a.xm = mix.defined() ? mix.const_data_ptr<scalar_t>() : nullptr;
      a.y = ref.const_data_ptr<scalar_t>();
      a.part = part.mutable_data_ptr<rec_t>();
      a.cx0 = c, a.cx = cx, a.cy = c, a.groups = 1;
      a.T = length, a.tile = tile, a.n_tiles = n_tiles;
      a.vec_ok = length % kVec == 0 && tile % kVec == 0 && aligned(a.x0, kBytes) &&
                 aligned(a.y, kBytes) && (a.xm == nullptr || aligned(a.xm, kBytes));
      switch (ny) {
        case 1: launch_tile<scalar_t, 1>(a, batch, stream); break;
        case 2: launch_tile<scalar_t, 2>(a, batch, stream); break;
        case 3: launch_tile<scalar_t, 3>(a, batch, stream); break;
        case 4: launch_tile<scalar_t, 4>(a, batch, stream); break;
        case 6: launch_tile<scalar_t, 6>(a, batch, stream); break;
        default: launch_tile<scalar_t, K::kMaxTileSources>(a, batch, stream); break;
      }
    });
  } else {
    merged0 = aten_records(est, ref, mix);
  }

  // 2. per-example epilogue (a warp per example), 3. the batch normaliser (one block).
  auto fill = [&](auto& args) {
    args.ws = ws.mutable_data_ptr<double>();
    args.merged0 = merged0.defined() ? merged0.const_data_ptr<double>() : nullptr;
    args.alpha = alpha.const_data_ptr<double>();
    args.bias = bias.defined() ? bias.const_data_ptr<double>() : nullptr;
    args.bias_sb = stride_or_zero(bias, 0);
    args.bias_sc = stride_or_zero(bias, 1);
    args.mask = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
    args.mask_sb = stride_or_zero(mask, 0);
    args.mask_sc = stride_or_zero(mask, 1);
    args.batch = batch;
    args.T = length;
    args.tile = tile;
    args.n_tiles = n_tiles;
    args.c = c;
    args.cx = cx;
    args.by_source = by_source;
    args.pit = pit;
    args.zero_mean = zero_mean;
    args.eps = eps;
    args.tau = std::pow(10.0, -clamp_db / 10.0);   // clamp_db = +inf: no clamp (tau = 0)
  };
  const unsigned int epi_blocks = static_cast<unsigned int>(ceil_div(batch, K::kWarps));
  const K::NormaliseArgs nargs{ws.mutable_data_ptr<double>(), batch, n_items, c, cx, by_source};
  auto run = [&](auto out) {
    // float64 inputs: double records and outputs; fp16/bf16/fp32: float records and outputs.
    using out_t = std::remove_pointer_t<decltype(out.loss)>;
    K::EpilogueArgs<out_t> args{};
    fill(args);
    args.part = part.defined() ? part.const_data_ptr<out_t>() : nullptr;
    K::fused_epilogue_kernel<out_t, out_t><<<epi_blocks, K::kThreads, 0, stream>>>(args, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    K::fused_normalise_kernel<out_t><<<1, K::kThreads, 0, stream>>>(nargs, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (out_f64) {
    run(K::EpilogueOut<double>{loss.mutable_data_ptr<double>(), sisdr.mutable_data_ptr<double>(),
                               sisdri.mutable_data_ptr<double>(),
                               weights.mutable_data_ptr<double>(),
                               perm.mutable_data_ptr<int64_t>(), valid.mutable_data_ptr<bool>(),
                               coef.mutable_data_ptr<double>()});
  } else {
    run(K::EpilogueOut<float>{loss.mutable_data_ptr<float>(), sisdr.mutable_data_ptr<float>(),
                              sisdri.mutable_data_ptr<float>(), weights.mutable_data_ptr<float>(),
                              perm.mutable_data_ptr<int64_t>(), valid.mutable_data_ptr<bool>(),
                              coef.mutable_data_ptr<double>()});
  }
  return {loss, sisdr, sisdri, weights, perm, valid, coef};
}

// A gradient input as float or double on the device (the autograd engine hands the
// outputs' dtypes, float32 or float64: no copy); other dtypes are converted.
at::Tensor real_input(const at::Tensor& t, const at::Device& device) {
  if ((t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble) && t.device() == device)
    return t;
  return t.to(device, at::kDouble);
}

at::Tensor weighted_sisdr_bwd_cuda(const at::Tensor& grad_loss_in,
                                   const std::optional<at::Tensor>& grad_sisdr_in,
                                   const std::optional<at::Tensor>& grad_sisdri_in,
                                   const at::Tensor& est_in, const at::Tensor& ref_in,
                                   const at::Tensor& perm_in, const at::Tensor& coef_in) {
  constexpr const char* fn = "ugr::weighted_sisdr_bwd";
  ugr::fused::check_signals(est_in, ref_in, fn);
  check_sources(est_in, fn);
  const c10::cuda::CUDAGuard device_guard(est_in.device());
  const at::Device device = est_in.device();
  const at::Tensor est = est_in.contiguous();
  const at::Tensor ref = ref_in.contiguous();
  const int64_t batch = est.size(0), c64 = est.size(1), length = est.size(2);
  TORCH_CHECK(perm_in.sizes() == at::IntArrayRef({batch, c64}) &&
                  perm_in.scalar_type() == at::kLong,
              fn, ": expected perm int64 of shape (", batch, ", ", c64, "), got ",
              perm_in.scalar_type(), " ", perm_in.sizes());
  TORCH_CHECK(coef_in.sizes() == at::IntArrayRef({batch, c64, K::kCoefWidth}) &&
                  coef_in.scalar_type() == at::kDouble,
              fn, ": expected coef float64 of shape (", batch, ", ", c64, ", ", K::kCoefWidth,
              "), got ", coef_in.scalar_type(), " ", coef_in.sizes());
  TORCH_CHECK(grad_loss_in.numel() == 1 && ugr::is_float_dtype(grad_loss_in.scalar_type()), fn,
              ": expected a scalar float grad_loss, got shape ", grad_loss_in.sizes(), " of ",
              grad_loss_in.scalar_type());
  const at::Tensor perm = perm_in.to(device).contiguous();
  const at::Tensor coef = coef_in.to(device).contiguous();
  const at::Tensor grad_loss = real_input(grad_loss_in, device);
  auto grad_of = [&](const std::optional<at::Tensor>& g, const char* name) {
    if (!g.has_value() || !g->defined()) return at::Tensor();
    TORCH_CHECK(g->sizes() == at::IntArrayRef({batch, c64}), fn, ": expected ", name,
                " of shape (", batch, ", ", c64, "), got ", g->sizes());
    return real_input(*g, device);
  };
  const at::Tensor gs = grad_of(grad_sisdr_in, "grad_sisdr");
  const at::Tensor gsi = grad_of(grad_sisdri_in, "grad_sisdri");

  at::Tensor out = at::empty_like(est, at::MemoryFormat::Contiguous);
  if (est.numel() == 0) return out;
  const int64_t tile = pick_tile(batch, length, device.index());
  const int64_t n_tiles = ceil_div(length, tile);
  TORCH_CHECK(batch * n_tiles <= INT32_MAX, fn, ": too many blocks (B * T / tile)");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, est.scalar_type(),
                                  "ugr_fused_bwd_cuda", [&] {
    K::BwdArgs<scalar_t> args{};
    args.est = est.const_data_ptr<scalar_t>();
    args.ref = ref.const_data_ptr<scalar_t>();
    args.perm = perm.const_data_ptr<int64_t>();
    args.coef = coef.const_data_ptr<double>();
    args.grad_loss = grad_loss.const_data_ptr();
    args.grad_loss_f64 = grad_loss.scalar_type() == at::kDouble;
    args.grad_sisdr = gs.defined() ? gs.const_data_ptr() : nullptr;
    args.grad_sisdr_f64 = gs.defined() && gs.scalar_type() == at::kDouble;
    args.gs_sb = stride_or_zero(gs, 0);
    args.gs_sc = stride_or_zero(gs, 1);
    args.grad_sisdri = gsi.defined() ? gsi.const_data_ptr() : nullptr;
    args.grad_sisdri_f64 = gsi.defined() && gsi.scalar_type() == at::kDouble;
    args.gi_sb = stride_or_zero(gsi, 0);
    args.gi_sc = stride_or_zero(gsi, 1);
    args.out = out.mutable_data_ptr<scalar_t>();
    args.batch = batch;
    args.T = length;
    args.tile = tile;
    args.n_tiles = n_tiles;
    args.c = static_cast<int>(c64);
    constexpr int kVec = ugr_cuda::TileTraits<scalar_t>::kVec;
    constexpr int kBytes = ugr_cuda::TileTraits<scalar_t>::kBytes;
    args.vec_ok = length % kVec == 0 && tile % kVec == 0 && aligned(args.est, kBytes) &&
                  aligned(args.ref, kBytes) && aligned(args.out, kBytes);
    K::fused_backward_kernel<scalar_t>
        <<<static_cast<unsigned int>(batch * n_tiles), K::kThreads, 0, stream>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ugr, CUDA, m) {
  m.impl("weighted_sisdr_fwd", &weighted_sisdr_fwd_cuda);
  m.impl("weighted_sisdr_bwd", &weighted_sisdr_bwd_cuda);
}

// True: this build registers the fused ops' CUDA kernels (bound as _C.has_fused_cuda).
bool ugr_has_fused_cuda() { return true; }

// Input checks of the fused ops, shared by the CPU (ugr_fused_cpu.cpp) and CUDA
// (cuda/ugr_fused_cuda.cu) kernels so both reject the same inputs with the same
// messages. ATen only (compiled by the host compiler and by nvcc).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "ugr.h"

namespace ugr::fused {

using ugr::is_float_dtype;

// est and ref: (batch, sources, time), one device, one float dtype, one shape.
inline void check_signals(const at::Tensor& est, const at::Tensor& ref, const char* fn) {
  for (const auto* t : {&est, &ref}) {
    const char* name = t == &est ? "est" : "ref";
    TORCH_CHECK(t->dim() == 3, fn, ": expected ", name, " of shape (batch, sources, time), got ",
                t->sizes());
    TORCH_CHECK(is_float_dtype(t->scalar_type()), fn, ": expected ", name,
                " to be float16, bfloat16, float32 or float64, got ", t->scalar_type());
  }
  TORCH_CHECK(est.device() == ref.device(), fn, ": expected est and ref on one device, got ",
              est.device(), " and ", ref.device());
  TORCH_CHECK(est.sizes() == ref.sizes(), fn, ": expected est and ref of the same shape, got ",
              est.sizes(), " and ", ref.sizes());
  TORCH_CHECK(est.scalar_type() == ref.scalar_type(), fn,
              ": expected est and ref of the same dtype, got ", est.scalar_type(), " and ",
              ref.scalar_type());
}

// An item-shaped optional input ((B, C) or (B,)) in dtype on device (strides kept).
inline at::Tensor item_input(const std::optional<at::Tensor>& t, at::IntArrayRef shape,
                             at::ScalarType dtype, const at::Device& device, const char* fn,
                             const char* name) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK_VALUE(t->sizes() == shape, fn, ": expected ", name, " of shape ", shape, ", got ",
                    t->sizes());
  if (t->scalar_type() == dtype && t->device() == device) return *t;
  return t->to(device, dtype);
}

// The checked forward inputs: est, ref and the mixture contiguous; bias (float64)
// and mask (bool) item-shaped on est's device; alpha checked, left to the caller.
struct ForwardInputs {
  at::Tensor est, ref, mix, bias, mask;
  int64_t batch, c, length;
  std::vector<int64_t> item_shape;
};

inline ForwardInputs forward_inputs(const at::Tensor& est_in, const at::Tensor& ref_in,
                                    const std::optional<at::Tensor>& mixture_in,
                                    const at::Tensor& alpha,
                                    const std::optional<at::Tensor>& bias_in,
                                    const std::optional<at::Tensor>& mask_in, bool by_source,
                                    bool pit, double eps, double clamp_db,
                                    int64_t max_pit_sources, const char* fn) {
  check_signals(est_in, ref_in, fn);
  ForwardInputs in;
  in.est = est_in.contiguous();
  in.ref = ref_in.contiguous();
  in.batch = in.est.size(0), in.c = in.est.size(1), in.length = in.est.size(2);
  TORCH_CHECK(in.batch > 0 && in.c > 0 && in.length > 0, fn,
              ": expected non-empty est, got shape ", in.est.sizes());
  TORCH_CHECK_VALUE(!pit || in.c <= max_pit_sources, fn, ": exhaustive PIT handles C <= ",
                    max_pit_sources, " sources, got C=", in.c);
  TORCH_CHECK_VALUE(!std::isnan(clamp_db) && std::isfinite(eps) && eps >= 0.0, fn,
                    ": expected eps >= 0 finite and clamp_db not NaN, got eps=", eps,
                    ", clamp_db=", clamp_db);
  const at::Device device = in.est.device();
  if (mixture_in.has_value() && mixture_in->defined()) {
    const at::Tensor& m = *mixture_in;
    TORCH_CHECK(m.device() == device, fn, ": expected mixture on ", device, ", got ",
                m.device());
    TORCH_CHECK(m.scalar_type() == in.est.scalar_type(), fn, ": expected mixture of dtype ",
                in.est.scalar_type(), ", got ", m.scalar_type());
    const bool ok2 = m.dim() == 2 && m.size(0) == in.batch && m.size(1) == in.length;
    const bool ok3 = m.dim() == 3 && m.size(0) == in.batch && m.size(1) == 1 &&
                     m.size(2) == in.length;
    TORCH_CHECK(ok2 || ok3, fn, ": expected mixture of shape (", in.batch, ", ", in.length,
                ") or (", in.batch, ", 1, ", in.length, "), got ", m.sizes());
    in.mix = m.contiguous();
  }
  TORCH_CHECK(alpha.numel() == 1 && is_float_dtype(alpha.scalar_type()), fn,
              ": expected alpha as a 0-d float tensor, got shape ", alpha.sizes(), " of ",
              alpha.scalar_type());
  in.item_shape = by_source ? std::vector<int64_t>{in.batch, in.c}
                            : std::vector<int64_t>{in.batch};
  in.bias = item_input(bias_in, in.item_shape, at::kDouble, device, fn, "bias");
  in.mask = item_input(mask_in, in.item_shape, at::kBool, device, fn, "mask");
  return in;
}

}  // namespace ugr::fused

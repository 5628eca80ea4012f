// The whole weighted PIT SI-SDR(i) on the CPU in one call per direction:
//
//   ugr::weighted_sisdr_fwd(est, ref, mixture?, alpha, bias?, mask?, by_source, pit,
//                           zero_mean, eps, clamp_db)
//       -> (loss, sisdr, sisdri, weights, perm, valid, coef)
//   ugr::weighted_sisdr_bwd(grad_loss, grad_sisdr?, grad_sisdri?, est, ref, perm, coef)
//       -> d_est
//
// The schemas are defined in Python (ugr_kernels/fused.py, with the fake impls
// and the autograd glue) so that they exist with or without this extension (the
// Triton backend needs them too); this file registers the CPU kernels only
// (TORCH_LIBRARY_IMPL), which the dispatcher accepts before or after the schema.
//
// Forward: one tile pass over T reads est, ref and the mixture once (the mixture
// rides along as one more "estimate" row against the references) with the tile
// kernels of the stats pass (ugr_cpu_kernels.h, float64 centred partials), then per
// example the tiles are merged in order (Chan), and the epilogue runs here: SI-SDR
// matrix, exhaustive PIT, masks, F = alpha L + bias, the masked stable softmax over
// all items of the batch, the loss and the per-item backward coefficients (coef).
// Backward: one pass over T, d est from coef and the incoming gradients.
//
// coef (B, C, kCoefWidth) float64, per reference j of example b, k = perm[b, j]:
//   0 w      d loss / d SI-SDR(k, j): -p_j (source) or -p_b / count_b (example), 0 if masked
//   1 a      d SI-SDR(k, j) / d sxy[k, j]            (0 when the pair is invalid)
//   2 c      2 d SI-SDR(k, j) / d sxx[k]             (0 when the pair is invalid)
//   3 mx_k   mean of est row k (0 without zero_mean)
//   4 my_j   mean of ref row j (0 without zero_mean)
//   5 gate of grad_sisdr  (1: sisdr[b, j] is SI-SDR(k, j), 0: it is the constant 0)
//   6 gate of grad_sisdri (1: sisdri[b, j] = SI-SDR(k, j) - SI-SDR(mix, j), 0: constant)
//   7 1 if est row j holds NaN/inf (or float64 values too large to square), else 0
//   8 1 if ref row j does, else 0
//   9 1 if the mixture of example b does, else 0
// Backward: s_j = grad_loss w + gate5 grad_sisdr[b, j] + gate6 grad_sisdri[b, j],
// d est[b, k, t] = s_j a (ref[b, j, t] - my_j) + s_j c (est[b, k, t] - mx_k).
#include "ugr.h"
#include "ugr_cpu_dispatch.h"
#include "ugr_fused_inputs.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using ugr::kCpuTile;

using ugr::cpu::grain_items;
using ugr::cpu::is_16bit;
using ugr::cpu::Kernels;
using ugr::cpu::Layout;
using ugr::cpu::merged_stats;
using ugr::cpu::kernels;
using ugr::cpu::narrow_tile;
using ugr::cpu::num_tiles;
using ugr::cpu::widen_tile;

constexpr int64_t kCoefWidth = 10;
constexpr int64_t kMaxPitSources = 6;
constexpr double kDbPerNeper = 4.342944819032518;  // 10 / ln(10)

// SI-SDR of one (x, y) pair from its sums, without forming sxx * syy (which
// under/overflows across the float64 range):
//   rho = sxy / (sqrt(sxx) sqrt(syy)) in [-1, 1],  residual = (1 - rho)(1 + rho),
//   SI-SDR = 10 log10((rho2 + eps) / (residual + eps + tau (rho2 + eps))).
// a = d SI-SDR / d sxy, c = 2 d SI-SDR / d sxx (what d est needs).
struct PairSisdr {
  double value = 0.0, a = 0.0, c = 0.0;
  bool valid = false;
};

PairSisdr pair_sisdr(double sxy, double sxx, double syy, double eps, double tau,
                     bool collinear) {
  PairSisdr out;
  out.valid = sxx > 0.0 && syy > 0.0 && std::isfinite(sxx) && std::isfinite(syy) &&
              std::isfinite(sxy);
  if (!out.valid) return out;
  const double sx = std::sqrt(sxx), sy = std::sqrt(syy);
  double rho = std::min(1.0, std::max(-1.0, sxy / sx / sy));
  // One effective sample (T = 2 centred, or T = 1 raw): every pair is collinear,
  // SI-SDR is a constant and its exact gradient 0 (not 1/eps times rounding noise).
  if (collinear) rho = rho >= 0.0 ? 1.0 : -1.0;
  const double rho2 = rho * rho;
  const double num = rho2 + eps;
  const double den = (1.0 - rho) * (1.0 + rho) + eps + tau * num;
  out.value = 10.0 * std::log10(num / den);
  if (!collinear) {
    const double d_rho2 = kDbPerNeper * (1.0 / num + (1.0 - tau) / den);
    out.a = d_rho2 * 2.0 * rho / sx / sy;
    out.c = -2.0 * d_rho2 * rho2 / sxx;
  }
  return out;
}

struct FwdArgs {
  int64_t batch, c, length;
  bool has_mix, by_source, pit, zero_mean;
  double eps, tau, alpha;
  const double* bias;  // item-shaped, contiguous, or null
  const bool* mask;    // item-shaped, contiguous, or null
};

struct FwdOut {
  double* loss;     // 1 value (float64 scratch)
  double* sisdr;    // (B, C)
  double* sisdri;   // (B, C)
  double* weights;  // (B, C) or (B,)
  int64_t* perm;    // (B, C)
  bool* valid;      // (B, C)
  double* coef;     // (B, C, kCoefWidth)
};

// Everything after the tile pass, from the merged records (O(B C^2 + B C! C)).
void epilogue(const FwdArgs& A, const std::vector<double>& merged, const FwdOut& out) {
  const int64_t C = A.c;
  const int64_t cx = C + (A.has_mix ? 1 : 0);
  const Layout L{cx, C};
  const double n_all = static_cast<double>(A.length);
  const bool collinear = (A.zero_mean ? A.length - 1 : A.length) <= 1;
  const int64_t n_items = A.by_source ? A.batch * C : A.batch;

  std::vector<PairSisdr> pair(static_cast<size_t>(cx * C));
  std::vector<double> mxs(cx), mys(C), sxx(cx), syy(C), score(C * C);
  std::vector<int64_t> p(C), best(C);
  std::vector<double> item_loss(n_items), item_f(n_items);
  std::vector<char> item_ok(n_items);
  std::vector<int64_t> count(A.batch);
  std::vector<char> vpm(A.batch * C);  // pair (and mixture) valid, before the user mask

  for (int64_t b = 0; b < A.batch; ++b) {
    const double* rec = merged.data() + b * L.size();
    // Raw sums (zero_mean false) from the centred ones: S = C + n m m'.
    for (int64_t i = 0; i < cx; ++i) {
      const double m = rec[L.mx() + i];
      mxs[i] = A.zero_mean ? m : 0.0;
      sxx[i] = rec[L.xx() + i] + (A.zero_mean ? 0.0 : n_all * m * m);
    }
    for (int64_t j = 0; j < C; ++j) {
      const double m = rec[L.my() + j];
      mys[j] = A.zero_mean ? m : 0.0;
      syy[j] = rec[L.yy() + j] + (A.zero_mean ? 0.0 : n_all * m * m);
    }
    for (int64_t i = 0; i < cx; ++i) {
      const double tau = i < C ? A.tau : 0.0;  // the mixture's SI-SDR is never clamped
      for (int64_t j = 0; j < C; ++j) {
        const double sxy = rec[L.xy() + i * C + j] +
                           (A.zero_mean ? 0.0 : n_all * rec[L.mx() + i] * rec[L.my() + j]);
        pair[i * C + j] = pair_sisdr(sxy, sxx[i], syy[j], A.eps, tau, collinear);
      }
    }

    // PIT: the permutation maximising sum_j SI-SDR(p[j], j), invalid pairs
    // counting 0; permutations in lexicographic order, the first maximum wins.
    for (int64_t j = 0; j < C; ++j) p[j] = best[j] = j;
    if (A.pit && C > 1) {
      for (int64_t i = 0; i < C; ++i)
        for (int64_t j = 0; j < C; ++j) {
          const PairSisdr& q = pair[i * C + j];
          score[i * C + j] = q.valid ? q.value : 0.0;
        }
      double best_total = -std::numeric_limits<double>::infinity();
      do {
        double total = 0.0;
        for (int64_t j = 0; j < C; ++j) total += score[p[j] * C + j];
        if (total > best_total) {
          best_total = total;
          std::copy(p.begin(), p.end(), best.begin());
        }
      } while (std::next_permutation(p.begin(), p.end()));
    }

    int64_t n_valid = 0;
    double loss_sum = 0.0;
    for (int64_t j = 0; j < C; ++j) {
      const int64_t bj = b * C + j, k = best[j];
      const PairSisdr& q = pair[k * C + j];
      const PairSisdr* qm = A.has_mix ? &pair[C * C + j] : nullptr;
      const bool pm = q.valid && (qm == nullptr || qm->valid);
      const bool v = pm && !(A.by_source && A.mask != nullptr && !A.mask[bj]);
      const double sisdr = v ? q.value : 0.0;
      const double sisdri = (qm != nullptr && pm) ? q.value - qm->value : 0.0;
      const double l = -(qm != nullptr ? sisdri : sisdr);
      out.perm[bj] = k;
      out.sisdr[bj] = sisdr;
      out.sisdri[bj] = sisdri;
      out.valid[bj] = v;
      vpm[bj] = pm;
      double* cf = out.coef + bj * kCoefWidth;
      cf[1] = pm ? q.a : 0.0;
      cf[2] = pm ? q.c : 0.0;
      cf[3] = mxs[k];
      cf[4] = mys[j];
      cf[5] = v ? 1.0 : 0.0;
      cf[6] = (qm != nullptr && pm) ? 1.0 : 0.0;
      cf[7] = !(std::isfinite(rec[L.mx() + j]) && std::isfinite(sxx[j]));
      cf[8] = !(std::isfinite(rec[L.my() + j]) && std::isfinite(syy[j]));
      cf[9] = A.has_mix && !(std::isfinite(rec[L.mx() + C]) && std::isfinite(sxx[C]));
      if (A.by_source) {
        item_loss[bj] = l;
        item_ok[bj] = v;
      } else {
        n_valid += v;
        loss_sum += l;
      }
    }
    if (!A.by_source) {
      count[b] = n_valid;
      item_loss[b] = loss_sum / static_cast<double>(std::max<int64_t>(n_valid, 1));
      item_ok[b] = n_valid > 0 && !(A.mask != nullptr && !A.mask[b]);
      if (!item_ok[b])
        for (int64_t j = 0; j < C; ++j) out.valid[b * C + j] = false;
    }
  }

  // F = alpha L + bias; the masked stable softmax over all items of the batch;
  // items whose F is not finite take no part.
  double f_max = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n_items; ++i) {
    const double f = A.alpha * item_loss[i] + (A.bias != nullptr ? A.bias[i] : 0.0);
    item_f[i] = f;
    if (!std::isfinite(f)) item_ok[i] = false;
    if (item_ok[i] && f > f_max) f_max = f;
  }
  double total = 0.0;
  for (int64_t i = 0; i < n_items; ++i) {
    const double e = item_ok[i] ? std::exp(item_f[i] - f_max) : 0.0;
    out.weights[i] = e;
    total += e;
  }
  total = std::max(total, std::numeric_limits<double>::min());
  double loss = 0.0;
  for (int64_t i = 0; i < n_items; ++i) {
    out.weights[i] /= total;
    loss += out.weights[i] * item_loss[i];
  }
  *out.loss = loss;

  for (int64_t b = 0; b < A.batch; ++b)
    for (int64_t j = 0; j < C; ++j) {
      const int64_t bj = b * C + j;
      // Example granularity: L_b = mean of the valid items' losses.
      const double* cf = out.coef + bj * kCoefWidth;
      const double w = A.by_source ? -out.weights[bj]
                       : cf[5] != 0.0 ? -out.weights[b] / static_cast<double>(count[b])
                                      : 0.0;
      out.coef[bj * kCoefWidth] = w;
    }
}

using FwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                             at::Tensor, at::Tensor>;

FwdResult weighted_sisdr_fwd_cpu(const at::Tensor& est_in, const at::Tensor& ref_in,
                                 const std::optional<at::Tensor>& mixture_in,
                                 const at::Tensor& alpha_in,
                                 const std::optional<at::Tensor>& bias_in,
                                 const std::optional<at::Tensor>& mask_in, bool by_source,
                                 bool pit, bool zero_mean, double eps, double clamp_db) {
  constexpr const char* fn = "ugr::weighted_sisdr_fwd";
  const ugr::fused::ForwardInputs in = ugr::fused::forward_inputs(
      est_in, ref_in, mixture_in, alpha_in, bias_in, mask_in, by_source, pit, eps, clamp_db,
      kMaxPitSources, fn);
  const at::Tensor &est = in.est, &ref = in.ref, &mix = in.mix;
  const int64_t batch = in.batch, c = in.c, length = in.length;
  const std::vector<int64_t>& item_shape = in.item_shape;
  const at::Tensor bias = in.bias.defined() ? in.bias.contiguous() : in.bias;
  const at::Tensor mask = in.mask.defined() ? in.mask.contiguous() : in.mask;
  const double alpha = alpha_in.to(at::kCPU, at::kDouble).item<double>();
  TORCH_CHECK_VALUE(std::isfinite(alpha), "alpha must be finite, got ", alpha);
  if (bias.defined()) {
    const double* bp = bias.const_data_ptr<double>();
    for (int64_t i = 0; i < bias.numel(); ++i)
      TORCH_CHECK_VALUE(std::isfinite(bp[i]), "bias must be finite, got ", bp[i], " at item ",
                        i);
  }

  const auto f64 = est.options().dtype(at::kDouble);
  const auto out_opts = est.options().dtype(est.scalar_type() == at::kDouble ? at::kDouble
                                                                               : at::kFloat);
  at::Tensor sisdr64 = at::empty({batch, c}, f64);
  at::Tensor sisdri64 = at::empty({batch, c}, f64);
  at::Tensor weights64 = at::empty(item_shape, f64);
  at::Tensor perm = at::empty({batch, c}, est.options().dtype(at::kLong));
  at::Tensor valid = at::empty({batch, c}, est.options().dtype(at::kBool));
  at::Tensor coef = at::empty({batch, c, kCoefWidth}, f64);
  double loss64 = 0.0;

  const Kernels& k = kernels();
  std::vector<double> merged;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, est.scalar_type(), "ugr_fused_fwd", [&] {
    // Rows: the C estimates, the mixture (one more "estimate") when given, the C refs.
    const scalar_t* e = est.const_data_ptr<scalar_t>();
    const scalar_t* r = ref.const_data_ptr<scalar_t>();
    const scalar_t* m = mix.defined() ? mix.const_data_ptr<scalar_t>() : nullptr;
    const int64_t cx = c + (m != nullptr ? 1 : 0);
    merged_stats<scalar_t>(k, batch, cx, c, length, [&](int64_t b, int64_t row) {
      return row < c ? e + (b * c + row) * length
           : row < cx ? m + b * length
                      : r + (b * c + (row - cx)) * length;
    }, merged);
  });
  // clamp_db = +inf: no clamp (tau = 0).
  const double tau = std::pow(10.0, -clamp_db / 10.0);
  FwdArgs args{batch, c, length, mix.defined(), by_source, pit, zero_mean, eps, tau,
               alpha, bias.defined() ? bias.const_data_ptr<double>() : nullptr,
               mask.defined() ? mask.const_data_ptr<bool>() : nullptr};
  FwdOut out{&loss64, sisdr64.mutable_data_ptr<double>(), sisdri64.mutable_data_ptr<double>(),
             weights64.mutable_data_ptr<double>(), perm.mutable_data_ptr<int64_t>(),
             valid.mutable_data_ptr<bool>(), coef.mutable_data_ptr<double>()};
  epilogue(args, merged, out);

  at::Tensor loss = at::empty({}, out_opts);
  if (out_opts.dtype() == at::kDouble) {
    *loss.mutable_data_ptr<double>() = loss64;
    return {loss, sisdr64, sisdri64, weights64, perm, valid, coef};
  }
  *loss.mutable_data_ptr<float>() = static_cast<float>(loss64);
  return {loss, sisdr64.to(at::kFloat), sisdri64.to(at::kFloat), weights64.to(at::kFloat), perm,
          valid, coef};
}

// d est from the forward's coefficients: one pass over T.
template <typename T>
void backward_kernel(const Kernels& k, const T* est, const T* ref, const int64_t* perm,
                     const double* scale_a, const double* scale_c, const double* coef,
                     int64_t batch, int64_t c, int64_t length, T* out) {
  const int64_t tiles = num_tiles(length);
  const int64_t items = batch * tiles;
  at::parallel_for(0, items, grain_items(2 * c), [&](int64_t begin, int64_t end) {
    std::vector<float> wide(is_16bit<T> ? static_cast<size_t>(3 * kCpuTile) : 0);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / tiles;
      const int64_t start = (item % tiles) * kCpuTile;
      const int64_t n = std::min(kCpuTile, length - start);
      for (int64_t j = 0; j < c; ++j) {
        const int64_t bj = b * c + j;
        const int64_t row = b * c + perm[bj];
        const double* cf = coef + bj * kCoefWidth;
        const double a = scale_a[bj], cc = scale_c[bj];
        const T* x = est + row * length + start;
        const T* y = ref + bj * length + start;
        T* o = out + row * length + start;
        if constexpr (is_16bit<T>) {
          float* xw = wide.data();
          float* yw = xw + kCpuTile;
          float* ow = yw + kCpuTile;
          if (cc != 0.0) widen_tile(k, x, xw, n);
          if (a != 0.0) widen_tile(k, y, yw, n);
          k.grad_f(xw, yw, a, cf[4], cc, cf[3], n, ow);
          narrow_tile(k, ow, o, n);
        } else if constexpr (std::is_same_v<T, double>) {
          k.grad_d(x, y, a, cf[4], cc, cf[3], n, o);
        } else {
          k.grad_f(x, y, a, cf[4], cc, cf[3], n, o);
        }
      }
    }
  });
}

double scalar_of(const at::Tensor& t) {
  return t.to(at::kCPU, at::kDouble).item<double>();
}

at::Tensor weighted_sisdr_bwd_cpu(const at::Tensor& grad_loss,
                                  const std::optional<at::Tensor>& grad_sisdr_in,
                                  const std::optional<at::Tensor>& grad_sisdri_in,
                                  const at::Tensor& est_in, const at::Tensor& ref_in,
                                  const at::Tensor& perm_in, const at::Tensor& coef_in) {
  constexpr const char* fn = "ugr::weighted_sisdr_bwd";
  ugr::fused::check_signals(est_in, ref_in, fn);
  const at::Tensor est = est_in.contiguous();
  const at::Tensor ref = ref_in.contiguous();
  const int64_t batch = est.size(0), c = est.size(1), length = est.size(2);
  TORCH_CHECK(perm_in.sizes() == at::IntArrayRef({batch, c}) && perm_in.scalar_type() == at::kLong,
              fn, ": expected perm int64 of shape (", batch, ", ", c, "), got ",
              perm_in.scalar_type(), " ", perm_in.sizes());
  TORCH_CHECK(coef_in.sizes() == at::IntArrayRef({batch, c, kCoefWidth}) &&
                  coef_in.scalar_type() == at::kDouble,
              fn, ": expected coef float64 of shape (", batch, ", ", c, ", ", kCoefWidth,
              "), got ", coef_in.scalar_type(), " ", coef_in.sizes());
  TORCH_CHECK(grad_loss.numel() == 1, fn, ": expected a scalar grad_loss, got shape ",
              grad_loss.sizes());
  const at::Tensor perm = perm_in.to(at::kCPU).contiguous();
  const at::Tensor coef = coef_in.to(at::kCPU).contiguous();
  auto grad_of = [&](const std::optional<at::Tensor>& g, const char* name) {
    if (!g.has_value() || !g->defined()) return at::Tensor();
    TORCH_CHECK(g->sizes() == at::IntArrayRef({batch, c}), fn, ": expected ", name,
                " of shape (", batch, ", ", c, "), got ", g->sizes());
    return g->to(at::kCPU, at::kDouble).contiguous();
  };
  const at::Tensor gs = grad_of(grad_sisdr_in, "grad_sisdr");
  const at::Tensor gsi = grad_of(grad_sisdri_in, "grad_sisdri");
  const double gl = scalar_of(grad_loss);

  // Per (b, j): s_j, then the two row coefficients s_j a_j and s_j c_j. A term
  // with an exactly-zero factor is dropped (never 0 * NaN).
  const int64_t* pp = perm.const_data_ptr<int64_t>();
  const double* cf = coef.const_data_ptr<double>();
  const double* gsp = gs.defined() ? gs.const_data_ptr<double>() : nullptr;
  const double* gsip = gsi.defined() ? gsi.const_data_ptr<double>() : nullptr;
  std::vector<double> scale_a(batch * c), scale_c(batch * c);
  std::vector<char> seen(c);
  for (int64_t b = 0; b < batch; ++b) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t j = 0; j < c; ++j) {
      const int64_t bj = b * c + j, kk = pp[bj];
      TORCH_CHECK(kk >= 0 && kk < c && !seen[kk], fn, ": perm[", b,
                  "] is not a permutation of 0..", c - 1);
      seen[kk] = 1;
      const double* q = cf + bj * kCoefWidth;
      double s = 0.0;
      if (q[1] != 0.0 || q[2] != 0.0) {
        if (q[0] != 0.0) s += gl * q[0];
        if (gsp != nullptr && q[5] != 0.0) s += gsp[bj];
        if (gsip != nullptr && q[6] != 0.0) s += gsip[bj];
      }
      scale_a[bj] = (s != 0.0 && q[1] != 0.0) ? s * q[1] : 0.0;
      scale_c[bj] = (s != 0.0 && q[2] != 0.0) ? s * q[2] : 0.0;
    }
  }

  at::Tensor out = at::empty_like(est, at::MemoryFormat::Contiguous);
  const Kernels& k = kernels();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, est.scalar_type(), "ugr_fused_bwd", [&] {
    backward_kernel<scalar_t>(k, est.const_data_ptr<scalar_t>(), ref.const_data_ptr<scalar_t>(),
                              pp, scale_a.data(), scale_c.data(), cf, batch, c, length,
                              out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

// Autograd (every device, as torchvision's csrc/ops/autograd): the forward op below
// autograd, then the backward op from the saved coefficients. In C++ because the
// Python glue (torch.library.register_autograd) costs ~100 us per forward+backward.
using FwdSignature = FwdResult(const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, const at::Tensor&,
                               const std::optional<at::Tensor>&,
                               const std::optional<at::Tensor>&, bool, bool, bool, double,
                               double);
using BwdSignature = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&,
                                const std::optional<at::Tensor>&, const at::Tensor&,
                                const at::Tensor&, const at::Tensor&, const at::Tensor&);

// The schemas are defined from Python; look them up at first use.
const c10::TypedOperatorHandle<FwdSignature>& fwd_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ugr::weighted_sisdr_fwd", "")
                             .typed<FwdSignature>();
  return op;
}

const c10::TypedOperatorHandle<BwdSignature>& bwd_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ugr::weighted_sisdr_bwd", "")
                             .typed<BwdSignature>();
  return op;
}

class WeightedSisdrFunction : public torch::autograd::Function<WeightedSisdrFunction> {
 public:
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const at::Tensor& est, const at::Tensor& ref,
      const std::optional<at::Tensor>& mixture, const at::Tensor& alpha,
      const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mask,
      bool by_source, bool pit, bool zero_mean, double eps, double clamp_db) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, sisdr, sisdri, weights, perm, valid, coef] = fwd_op().call(
        est, ref, mixture, alpha, bias, mask, by_source, pit, zero_mean, eps, clamp_db);
    ctx->save_for_backward({est, ref, perm, coef});
    // The weights are constants in backward by design (stop-gradient).
    ctx->mark_non_differentiable({weights, perm, valid, coef});
    ctx->set_materialize_grads(false);
    return {loss, sisdr, sisdri, weights, perm, valid, coef};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!ctx->needs_input_grad(1) && !ctx->needs_input_grad(2),
                "ugr::weighted_sisdr_fwd differentiates est only; weighted_sisdr takes the "
                "two-pass path when ref or the mixture needs a gradient");
    torch::autograd::variable_list out(11);
    if (!ctx->needs_input_grad(0)) return out;
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_loss = grads[0];
    const bool any = grad_loss.defined() || grads[1].defined() || grads[2].defined();
    if (!any) return out;
    if (!grad_loss.defined()) grad_loss = at::zeros({}, saved[3].options());
    auto opt = [](const at::Tensor& t) {
      return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
    };
    out[0] = bwd_op().call(grad_loss, opt(grads[1]), opt(grads[2]), saved[0], saved[1],
                           saved[2], saved[3]);
    return out;
  }
};

FwdResult weighted_sisdr_fwd_autograd(const at::Tensor& est, const at::Tensor& ref,
                                      const std::optional<at::Tensor>& mixture,
                                      const at::Tensor& alpha,
                                      const std::optional<at::Tensor>& bias,
                                      const std::optional<at::Tensor>& mask, bool by_source,
                                      bool pit, bool zero_mean, double eps, double clamp_db) {
  auto r = WeightedSisdrFunction::apply(est, ref, mixture, alpha, bias, mask, by_source, pit,
                                        zero_mean, eps, clamp_db);
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6]};
}

}  // namespace

TORCH_LIBRARY_IMPL(ugr, CPU, m) {
  m.impl("weighted_sisdr_fwd", &weighted_sisdr_fwd_cpu);
  m.impl("weighted_sisdr_bwd", &weighted_sisdr_bwd_cpu);
}

TORCH_LIBRARY_IMPL(ugr, Autograd, m) {
  m.impl("weighted_sisdr_fwd", &weighted_sisdr_fwd_autograd);
}

int64_t fused_coef_width() {
  return kCoefWidth;
}

// Runs the fused CUDA kernels of csrc/cuda/ugr_fused_cuda_kernels.cuh (tile pass,
// per-example epilogue, batch normaliser, backward) on the CPU through the emulation
// shim cuda_runtime.h, on cases
// written by tests/test_cuda_kernels_emulated.py, which compares the outputs with the
// C++ CPU op (torch.ops.ugr.weighted_sisdr_fwd / _bwd).
//
//   check_fused IN OUT
//
// IN: cases one after the other, each: int64 header[16], double params[4], then
// float64 arrays (see read_case); OUT: per case float64 loss, sisdr, sisdri, weights,
// perm, valid, coef, d_est (in that order). Launch geometry and the choice of
// template instance follow csrc/cuda/ugr_fused_cuda.cu; the T-tile comes from the
// case (small tiles exercise the merge). dtype: 0 float64, 1 float32, 2 bfloat16,
// 3 float16.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "cuda_runtime.h"
#include "../../csrc/cuda/ugr_fused_cuda_kernels.cuh"

namespace K = ugr_fused_cuda;

// bfloat16 with round-to-nearest-even from float (c10::BFloat16's rounding).
struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  explicit bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) {
      bits = 0x7fc0;
    } else {
      bits = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
  }
  explicit operator float() const {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

// IEEE binary16 with round-to-nearest-even from float (c10::Half's rounding), via the
// binary32 bits: exact for the sums the tests need (the kernels only convert).
struct f16 {
  uint16_t bits = 0;
  f16() = default;
  explicit f16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) {                       // inf / NaN
      bits = static_cast<uint16_t>(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
      return;
    }
    const float af = std::fabs(f);
    if (af >= 65520.0f) {                         // rounds to inf
      bits = static_cast<uint16_t>(sign | 0x7c00u);
      return;
    }
    if (af < 6.103515625e-05f) {                  // denormal: multiples of 2^-24
      const float q = std::nearbyint(af * 16777216.0f);   // round half to even
      bits = static_cast<uint16_t>(sign | static_cast<uint32_t>(q));
      return;
    }
    uint32_t mant = a & 0x7fffffu;
    int32_t exp = static_cast<int32_t>(a >> 23) - 127 + 15;
    uint32_t m = mant >> 13;
    const uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (m & 1u))) ++m;
    if (m == 0x400u) m = 0, ++exp;
    bits = static_cast<uint16_t>(sign | (static_cast<uint32_t>(exp) << 10) | m);
  }
  explicit operator float() const {
    const uint32_t sign = (bits & 0x8000u) << 16;
    const uint32_t e = (bits >> 10) & 0x1fu, m = bits & 0x3ffu;
    if (e == 0) return (sign ? -1.0f : 1.0f) * static_cast<float>(m) * 5.9604644775390625e-08f;
    uint32_t u = sign | ((e == 31 ? 255u : e - 15 + 127) << 23) | (m << 13);
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

template <>
struct ugr_cuda::IsFp16<f16> : std::true_type {};

enum Header {
  kB, kC, kT, kHasMix, kBySource, kPit, kZeroMean, kHasBias, kHasMask, kDtype, kTile,
  kHasGs, kHasGsi, kGlF64, kNaiveStats, kBiasPerExample, kHeaderLen
};

struct Case {
  int64_t h[kHeaderLen];
  double eps, clamp_db, alpha, grad_loss;
  std::vector<double> est, ref, mix, bias, mask, gs, gsi;
};

bool read_doubles(FILE* f, std::vector<double>& v, int64_t n) {
  v.resize(static_cast<size_t>(n));
  return n == 0 || std::fread(v.data(), sizeof(double), v.size(), f) == v.size();
}

bool read_case(FILE* f, Case& c) {
  if (std::fread(c.h, sizeof(int64_t), kHeaderLen, f) != kHeaderLen) return false;
  double p[4];
  if (std::fread(p, sizeof(double), 4, f) != 4) return false;
  c.eps = p[0], c.clamp_db = p[1], c.alpha = p[2], c.grad_loss = p[3];
  const int64_t B = c.h[kB], C = c.h[kC], T = c.h[kT];
  const int64_t items = c.h[kBySource] ? B * C : B;
  const int64_t bias_n = c.h[kBiasPerExample] ? B : items;
  return read_doubles(f, c.est, B * C * T) && read_doubles(f, c.ref, B * C * T) &&
         read_doubles(f, c.mix, c.h[kHasMix] ? B * T : 0) &&
         read_doubles(f, c.bias, c.h[kHasBias] ? bias_n : 0) &&
         read_doubles(f, c.mask, c.h[kHasMask] ? items : 0) &&
         read_doubles(f, c.gs, c.h[kHasGs] ? B * C : 0) &&
         read_doubles(f, c.gsi, c.h[kHasGsi] ? B * C : 0);
}

template <typename S>
std::vector<S> narrow(const std::vector<double>& v) {
  std::vector<S> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<S>(static_cast<float>(v[i]));
  return out;
}

template <>
std::vector<double> narrow<double>(const std::vector<double>& v) {
  return v;
}

template <typename S, int NY>
void tile_pass(const S* est, const S* ref, const S* mix, typename ugr_cuda::TileTraits<S>::acc_t* part,
               int c, int cx, int64_t B, int64_t T, int64_t tile, int64_t n_tiles) {
  using rec_t = typename ugr_cuda::TileTraits<S>::acc_t;
  constexpr int GX = NY <= 4 ? NY + 1 : NY == 6 ? 4 : 3;   // ugr_fused_cuda.cu group_rows
  constexpr int kVec = ugr_cuda::TileTraits<S>::kVec;
  ugr_cuda::TileArgs<S, rec_t> a{};
  a.x0 = est, a.xm = mix, a.y = ref, a.part = part;
  a.cx0 = c, a.cx = cx, a.cy = c, a.groups = (cx + GX - 1) / GX;
  a.T = T, a.tile = tile, a.n_tiles = n_tiles;
  a.vec_ok = T % kVec == 0 && tile % kVec == 0;
  emu_launch(static_cast<unsigned>(B * n_tiles * a.groups), K::kThreads,
             [&] { ugr_cuda::tile_stats_kernel<S, rec_t, GX, NY>(a); });
}

// The launcher's ATen fallback (many sources), in plain double: one record per example.
template <typename S>
void naive_records(const S* est, const S* ref, const S* mix, double* part, int c, int cx,
                   int64_t B, int64_t T) {
  const K::Layout L{cx, c};
  for (int64_t b = 0; b < B; ++b) {
    double* rec = part + b * L.size();
    auto xrow = [&](int i) { return i < c ? est + (b * c + i) * T : mix + b * T; };
    auto yrow = [&](int j) { return ref + (b * c + j) * T; };
    std::vector<double> mx(cx), my(c);
    for (int i = 0; i < cx; ++i) {
      double s = 0.0;
      for (int64_t t = 0; t < T; ++t) s += K::to_double(xrow(i)[t]);
      mx[i] = s / static_cast<double>(T);
    }
    for (int j = 0; j < c; ++j) {
      double s = 0.0;
      for (int64_t t = 0; t < T; ++t) s += K::to_double(yrow(j)[t]);
      my[j] = s / static_cast<double>(T);
    }
    for (int i = 0; i < cx; ++i) rec[L.mx() + i] = mx[i];
    for (int j = 0; j < c; ++j) rec[L.my() + j] = my[j];
    for (int i = 0; i < cx; ++i) {
      double sxx = 0.0;
      for (int64_t t = 0; t < T; ++t) {
        const double d = K::to_double(xrow(i)[t]) - mx[i];
        sxx += d * d;
      }
      rec[L.xx() + i] = sxx;
      for (int j = 0; j < c; ++j) {
        double sxy = 0.0;
        for (int64_t t = 0; t < T; ++t)
          sxy += (K::to_double(xrow(i)[t]) - mx[i]) * (K::to_double(yrow(j)[t]) - my[j]);
        rec[L.xy() + i * c + j] = sxy;
      }
    }
    for (int j = 0; j < c; ++j) {
      double syy = 0.0;
      for (int64_t t = 0; t < T; ++t) {
        const double d = K::to_double(yrow(j)[t]) - my[j];
        syy += d * d;
      }
      rec[L.yy() + j] = syy;
    }
  }
}

template <typename S>
void run_case(const Case& cs, FILE* out) {
  const int64_t B = cs.h[kB], T = cs.h[kT];
  const int c = static_cast<int>(cs.h[kC]);
  const bool has_mix = cs.h[kHasMix] != 0, by_source = cs.h[kBySource] != 0;
  const int cx = c + (has_mix ? 1 : 0);
  const int64_t items = by_source ? B * c : B;
  const std::vector<S> est = narrow<S>(cs.est), ref = narrow<S>(cs.ref), mix = narrow<S>(cs.mix);
  const S* mp = has_mix ? mix.data() : nullptr;

  // 1. tile pass (or the many-sources fallback: merged statistics directly)
  using rec_t = typename ugr_cuda::TileTraits<S>::acc_t;
  const bool naive = cs.h[kNaiveStats] != 0 || c > K::kMaxTileSources;
  const int64_t tile = naive ? T : cs.h[kTile];
  const int64_t n_tiles = (T + tile - 1) / tile;
  const K::Layout L{cx, c};
  const ugr_cuda::RecLayout R{cx, c};
  std::vector<rec_t> part(static_cast<size_t>(B * n_tiles * R.size()), rec_t(-777));
  std::vector<double> merged0;
  if (naive) {
    merged0.assign(static_cast<size_t>(B * L.size()), -777.0);
    naive_records<S>(est.data(), ref.data(), mp, merged0.data(), c, cx, B, T);
  } else {
    const int ny = c <= 1 ? 1 : c <= 2 ? 2 : c <= 3 ? 3 : c <= 4 ? 4 : c <= 6 ? 6 : 8;
    switch (ny) {
      case 1: tile_pass<S, 1>(est.data(), ref.data(), mp, part.data(), c, cx, B, T, tile, n_tiles); break;
      case 2: tile_pass<S, 2>(est.data(), ref.data(), mp, part.data(), c, cx, B, T, tile, n_tiles); break;
      case 3: tile_pass<S, 3>(est.data(), ref.data(), mp, part.data(), c, cx, B, T, tile, n_tiles); break;
      case 4: tile_pass<S, 4>(est.data(), ref.data(), mp, part.data(), c, cx, B, T, tile, n_tiles); break;
      case 6: tile_pass<S, 6>(est.data(), ref.data(), mp, part.data(), c, cx, B, T, tile, n_tiles); break;
      default: tile_pass<S, 8>(est.data(), ref.data(), mp, part.data(), c, cx, B, T, tile, n_tiles); break;
    }
  }

  // 2. epilogue (a warp per example) and normaliser (one block)
  const K::Workspace W{B, items, c, cx};
  std::vector<double> ws(static_cast<size_t>(W.size()), -999.0);
  std::vector<double> bias = cs.bias;
  std::unique_ptr<bool[]> mask(new bool[static_cast<size_t>(items) + 1]);
  for (int64_t i = 0; i < static_cast<int64_t>(cs.mask.size()); ++i) mask[i] = cs.mask[i] != 0.0;
  const double alpha = cs.alpha;
  K::EpilogueArgs<rec_t> A{};
  A.part = naive ? nullptr : part.data();
  A.merged0 = naive ? merged0.data() : nullptr;
  A.ws = ws.data();
  A.alpha = &alpha;
  A.bias = cs.h[kHasBias] ? bias.data() : nullptr;
  A.bias_sb = cs.h[kBiasPerExample] || !by_source ? 1 : c;
  A.bias_sc = cs.h[kBiasPerExample] ? 0 : 1;
  A.mask = cs.h[kHasMask] ? mask.get() : nullptr;
  A.mask_sb = by_source ? c : 1;
  A.mask_sc = 1;
  A.batch = B;
  A.T = T;
  A.tile = tile;
  A.n_tiles = n_tiles;
  A.c = c;
  A.cx = cx;
  A.by_source = by_source;
  A.pit = cs.h[kPit] != 0;
  A.zero_mean = cs.h[kZeroMean] != 0;
  A.eps = cs.eps;
  A.tau = std::pow(10.0, -cs.clamp_db / 10.0);
  using out_t = std::conditional_t<sizeof(S) == 8, double, float>;
  out_t loss = out_t(-555);
  std::vector<out_t> sisdr(B * c, out_t(-555)), sisdri(B * c, out_t(-555)), weights(items, out_t(-555));
  std::vector<int64_t> perm(B * c, -5);
  std::unique_ptr<bool[]> valid(new bool[static_cast<size_t>(B * c)]);
  std::vector<double> coef(static_cast<size_t>(B * c * K::kCoefWidth), -555.0);
  K::EpilogueOut<out_t> O{&loss, sisdr.data(), sisdri.data(), weights.data(), perm.data(),
                          valid.get(), coef.data()};
  emu_launch(static_cast<unsigned>((B + K::kWarps - 1) / K::kWarps), K::kThreads,
             [&] { K::fused_epilogue_kernel<rec_t, out_t>(A, O); });
  const K::NormaliseArgs NA{ws.data(), B, items, c, cx, by_source};
  emu_launch(1, K::kThreads, [&] { K::fused_normalise_kernel<out_t>(NA, O); });

  // 3. backward
  const float gl32 = static_cast<float>(cs.grad_loss);
  const double gl64 = cs.grad_loss;
  const bool gl_f64 = cs.h[kGlF64] != 0;
  std::vector<float> gs32(cs.gs.begin(), cs.gs.end()), gsi32(cs.gsi.begin(), cs.gsi.end());
  K::BwdArgs<S> G{};
  G.est = est.data();
  G.ref = ref.data();
  G.perm = perm.data();
  G.coef = coef.data();
  G.grad_loss = gl_f64 ? static_cast<const void*>(&gl64) : static_cast<const void*>(&gl32);
  G.grad_loss_f64 = gl_f64;
  // grad_sisdr as float64 (strided: transposed storage), grad_sisdri as float32.
  std::vector<double> gs_t(cs.gs.size());
  for (int64_t b = 0; b < B && !cs.gs.empty(); ++b)
    for (int j = 0; j < c; ++j) gs_t[j * B + b] = cs.gs[b * c + j];
  G.grad_sisdr = cs.h[kHasGs] ? gs_t.data() : nullptr;
  G.grad_sisdr_f64 = true;
  G.gs_sb = 1;
  G.gs_sc = B;
  G.grad_sisdri = cs.h[kHasGsi] ? gsi32.data() : nullptr;
  G.grad_sisdri_f64 = false;
  G.gi_sb = c;
  G.gi_sc = 1;
  std::vector<S> dest(static_cast<size_t>(B * c * T), static_cast<S>(static_cast<float>(-777.0)));
  G.out = dest.data();
  G.batch = B;
  G.T = T;
  G.tile = cs.h[kTile];
  G.n_tiles = (T + G.tile - 1) / G.tile;
  G.c = c;
  G.vec_ok = T % ugr_cuda::TileTraits<S>::kVec == 0 && G.tile % ugr_cuda::TileTraits<S>::kVec == 0;
  emu_launch(static_cast<unsigned>(B * G.n_tiles), K::kThreads,
             [&] { K::fused_backward_kernel<S>(G); });

  std::vector<double> o;
  o.push_back(static_cast<double>(loss));
  for (auto v : sisdr) o.push_back(static_cast<double>(v));
  for (auto v : sisdri) o.push_back(static_cast<double>(v));
  for (auto v : weights) o.push_back(static_cast<double>(v));
  for (auto v : perm) o.push_back(static_cast<double>(v));
  for (int64_t i = 0; i < B * c; ++i) o.push_back(valid[i] ? 1.0 : 0.0);
  for (auto v : coef) o.push_back(v);
  for (auto v : dest) o.push_back(K::to_double(v));
  std::fwrite(o.data(), sizeof(double), o.size(), out);
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: check_fused IN OUT\n");
    return 2;
  }
  FILE* in = std::fopen(argv[1], "rb");
  FILE* out = std::fopen(argv[2], "wb");
  if (in == nullptr || out == nullptr) return 2;
  Case cs;
  int n = 0;
  while (read_case(in, cs)) {
    switch (cs.h[kDtype]) {
      case 0: run_case<double>(cs, out); break;
      case 1: run_case<float>(cs, out); break;
      case 2: run_case<bf16>(cs, out); break;
      default: run_case<f16>(cs, out); break;
    }
    ++n;
  }
  std::fclose(out);
  std::printf("%d cases\n", n);
  return n > 0 ? 0 : 1;
}

// Runs the CUDA kernels of csrc/cuda/ugr_cuda_kernels.cuh (the two-pass stats: the tile
// pass of ugr_tile_kernel.cuh and the merge; the combine pass) on the CPU (through the
// emulation shim cuda_runtime.h in this folder) against a naive float64 computation:
// the tile records, the merge, the combine pass, vector and scalar paths, tails,
// padded source counts, row groups (8 sources), DC offsets, large and tiny amplitudes.
// Built and run by tests/test_cuda_kernels_emulated.py.
#include <cmath>
#include <cstdio>
#include <random>
#include <utility>
#include <vector>
#include "cuda_runtime.h"
#include "../../csrc/cuda/ugr_cuda_kernels.cuh"
using namespace ugr_cuda;

template <typename T, typename A, int NC>
std::pair<double, double> run_case(int B, int cx, int cy, int64_t Tn, int64_t tile, bool zero_mean, bool unaligned, double offset, double amp = 1.0) {
  std::mt19937 rng(B * 1000 + cx * 100 + cy * 10 + Tn);
  std::normal_distribution<double> nd;
  const int pad = unaligned ? 1 : 0;
  std::vector<T> xs(B * cx * Tn + pad + 8), ys(B * cy * Tn + pad + 8);
  T* x = xs.data() + pad; T* y = ys.data() + pad;
  std::vector<double> xd(B * cx * Tn), yd(B * cy * Tn);
  for (auto& v : xd) v = nd(rng) + offset;
  for (auto& v : yd) v = nd(rng) - offset;
  for (int b = 0; b < B; ++b) for (int i = 0; i < std::min(cx, cy); ++i) for (int64_t t = 0; t < Tn; ++t)
    yd[(b * cy + i) * Tn + t] += 0.7 * xd[(b * cx + i) * Tn + t];
  for (int64_t i = 0; i < B * cx * Tn; ++i) x[i] = T(xd[i] * amp);
  for (int64_t i = 0; i < B * cy * Tn; ++i) y[i] = T(yd[i] * amp);
  const int vec = 16 / sizeof(T);
  const bool vec_ok = (Tn % vec == 0) && !unaligned;
  (void)vec;
  const int64_t n_tiles = (Tn + tile - 1) / tile;
  const int nf = 2 * cx + 2 * cy + cx * cy;
  // ugr_cuda.cu's launch_stats: x-row groups of GX, float-float (float records) or double.
  using rec_t = typename TileTraits<T>::acc_t;
  constexpr int GX = NC <= 4 ? NC : 3;
  std::vector<rec_t> part(B * n_tiles * RecLayout{cx, cy}.size());
  std::vector<double> mx(B * cx), my(B * cy), sxy(B * cx * cy), sxx(B * cx), syy(B * cy);
  TileArgs<T, rec_t> ta{};
  ta.x0 = x, ta.xm = nullptr, ta.y = y, ta.part = part.data();
  ta.cx0 = cx, ta.cx = cx, ta.cy = cy, ta.groups = (cx + GX - 1) / GX;
  ta.T = Tn, ta.tile = tile, ta.n_tiles = n_tiles;
  ta.vec_ok = vec_ok && Tn % TileTraits<T>::kVec == 0 && tile % TileTraits<T>::kVec == 0;
  emu_launch(B * n_tiles * ta.groups, kThreads, [&] { tile_stats_kernel<T, rec_t, GX, NC>(ta); });
  (void)nf;
  const int mt = std::min(256, ((nf + 31) / 32) * 32);
  emu_launch(B, mt, [&] { stats_merge_kernel<rec_t>(part.data(), mx.data(), my.data(), sxy.data(), sxx.data(), syy.data(), cx, cy, Tn, tile, n_tiles, zero_mean); });
  // naive double reference
  double worst = 0;
  for (int b = 0; b < B; ++b) {
    std::vector<double> rmx(cx, 0), rmy(cy, 0);
    if (zero_mean) {
      for (int i = 0; i < cx; ++i) { for (int64_t t = 0; t < Tn; ++t) rmx[i] += (double)x[(b*cx+i)*Tn+t]; rmx[i] /= Tn; }
      for (int j = 0; j < cy; ++j) { for (int64_t t = 0; t < Tn; ++t) rmy[j] += (double)y[(b*cy+j)*Tn+t]; rmy[j] /= Tn; }
    }
    std::vector<double> rxx(cx, 0), ryy(cy, 0), rxy(cx * cy, 0);
    for (int64_t t = 0; t < Tn; ++t) {
      for (int i = 0; i < cx; ++i) { double a = (double)x[(b*cx+i)*Tn+t] - rmx[i]; rxx[i] += a*a;
        for (int j = 0; j < cy; ++j) { double c = (double)y[(b*cy+j)*Tn+t] - rmy[j]; rxy[i*cy+j] += a*c; } }
      for (int j = 0; j < cy; ++j) { double c = (double)y[(b*cy+j)*Tn+t] - rmy[j]; ryy[j] += c*c; }
    }
    for (int i = 0; i < cx; ++i) {
      worst = std::max(worst, std::fabs(mx[b*cx+i] - rmx[i]) / (std::fabs(rmx[i]) + std::sqrt(rxx[i] / Tn) + 1e-300));
      worst = std::max(worst, std::fabs(sxx[b*cx+i] - rxx[i]) / (rxx[i] + 1e-300));
    }
    for (int j = 0; j < cy; ++j) {
      worst = std::max(worst, std::fabs(my[b*cy+j] - rmy[j]) / (std::fabs(rmy[j]) + std::sqrt(ryy[j] / Tn) + 1e-300));
      worst = std::max(worst, std::fabs(syy[b*cy+j] - ryy[j]) / (ryy[j] + 1e-300));
    }
    for (int i = 0; i < cx; ++i) for (int j = 0; j < cy; ++j)
      worst = std::max(worst, std::fabs(sxy[(b*cx+i)*cy+j] - rxy[i*cy+j]) / (std::sqrt(rxx[i]*ryy[j]) + 1e-300));
  }
  // combine
  std::vector<double> g(B * cx * cy), h(B * cx);
  for (auto& v : g) v = nd(rng); for (auto& v : h) v = nd(rng);
  std::vector<T> outs(B * cx * Tn + pad + 8); T* out = outs.data() + pad;
  emu_launch(B * n_tiles, kThreads, [&] { combine_kernel<T, double, NC>(x, y, mx.data(), my.data(), g.data(), h.data(), out, cx, cy, Tn, tile, n_tiles, vec_ok); });
  double cworst = 0;
  for (int b = 0; b < B; ++b) for (int i = 0; i < cx; ++i) for (int64_t t = 0; t < Tn; ++t) {
    double xc = (double)x[(b*cx+i)*Tn+t] - mx[b*cx+i];
    double want = h[b*cx+i] * xc, scale = std::fabs(h[b*cx+i] * xc);
    for (int j = 0; j < cy; ++j) { double yc = (double)y[(b*cy+j)*Tn+t] - my[b*cy+j]; want += g[(b*cx+i)*cy+j]*yc; scale += std::fabs(g[(b*cx+i)*cy+j]*yc); }
    cworst = std::max(cworst, std::fabs((double)out[(b*cx+i)*Tn+t] - want) / (scale + 1e-300));
  }
  // untouched guard elements past the end of out
  bool guard_ok = true;
  for (int k = 0; k < 8; ++k) guard_ok &= (outs[pad + B * cx * Tn + k] == T(0));
  std::printf("%-6s NC=%d B=%d cx=%d cy=%d T=%-5lld tile=%-5lld zm=%d unal=%d off=%g amp=%g: stats %.2e combine %.2e guard %s\n",
              sizeof(T) == 8 ? "double" : "float", NC, B, cx, cy, (long long)Tn, (long long)tile, zero_mean, unaligned, offset,
              amp, worst, cworst, guard_ok ? "ok" : "BAD");
  return {worst + (guard_ok ? 0 : 1), cworst + (guard_ok ? 0 : 1)};
}

int main() {
  // Worst relative errors: the stats (float-float for float inputs: ~1e-14 expected,
  // want < 1e-11) and the combine pass (double, rounded once to float: < 1e-6).
  double s32 = 0, c32 = 0, s64 = 0, c64 = 0;
  auto f32 = [&](std::pair<double, double> r) { s32 = std::max(s32, r.first); c32 = std::max(c32, r.second); };
  auto f64 = [&](std::pair<double, double> r) { s64 = std::max(s64, r.first); c64 = std::max(c64, r.second); };
  f32(run_case<float, float, 2>(2, 2, 2, 5000, 1024, true, false, 0.3));
  f32(run_case<float, float, 2>(2, 2, 2, 5000, 1024, false, false, 0.3));
  f32(run_case<float, float, 4>(1, 3, 2, 3077, 1024, true, true, 0.3));
  f32(run_case<float, float, 4>(2, 1, 4, 1025, 2048, true, false, 0.0));
  f32(run_case<float, float, 1>(3, 1, 1, 1, 1024, true, false, 0.3));
  f32(run_case<float, float, 1>(1, 1, 1, 7, 1024, false, false, 0.3));
  f32(run_case<float, float, 8>(1, 5, 6, 2051, 1024, true, false, 0.3));
  f32(run_case<float, float, 8>(1, 8, 8, 700, 256, true, false, 0.3));          // 3 row groups
  f32(run_case<float, float, 2>(1, 2, 2, 4096, 1024, true, false, 1000.0));     // DC offset
  f32(run_case<float, float, 2>(1, 2, 2, 2048, 512, true, false, 0.3, 1e30));   // huge
  f32(run_case<float, float, 2>(1, 2, 2, 2048, 512, true, false, 0.3, 1e-30));  // tiny
  f64(run_case<double, double, 2>(2, 2, 2, 3001, 512, true, false, 0.3));
  f64(run_case<double, double, 4>(2, 4, 3, 1024, 512, false, true, 0.3));
  f64(run_case<double, double, 1>(1, 1, 1, 1, 512, true, false, 0.3));
  f64(run_case<double, double, 8>(1, 7, 8, 300, 128, true, false, 0.3));
  std::printf("worst float: stats %.2e (want < 1e-11), combine %.2e (< 1e-6); "
              "double: stats %.2e, combine %.2e (< 1e-12)\n", s32, c32, s64, c64);
  return (s32 < 1e-11 && c32 < 1e-6 && s64 < 1e-12 && c64 < 1e-12) ? 0 : 1;
}

// Per-tile kernel of the fused CPU backward (ugr_fused_cpu.cpp). No include guard
// on purpose: ugr_cpu.cpp includes it twice, once per ISA copy (namespace UGR_NS),
// after ugr_cpu_kernels.h, and puts it in the shared table (ugr_cpu_dispatch.h).

namespace {  // internal linkage
namespace UGR_NS {

// out[t] = a (y[t] - my) + c (x[t] - mx), centred and multiplied in double and
// rounded once to T (float or double; 16-bit rows are widened first). A term
// whose coefficient is exactly 0 is not evaluated, so it contributes exactly 0
// even where its signal holds NaN or inf (a masked item's gradient is 0, not NaN).
template <typename T>
void fused_grad_row(const T* __restrict x, const T* __restrict y, double a, double my, double c,
                    double mx, int64_t n, T* __restrict out) {
  if (a != 0.0 && c != 0.0) {
    for (int64_t t = 0; t < n; ++t)
      out[t] = static_cast<T>(a * (static_cast<double>(y[t]) - my) +
                              c * (static_cast<double>(x[t]) - mx));
  } else if (a != 0.0) {
    for (int64_t t = 0; t < n; ++t) out[t] = static_cast<T>(a * (static_cast<double>(y[t]) - my));
  } else if (c != 0.0) {
    for (int64_t t = 0; t < n; ++t) out[t] = static_cast<T>(c * (static_cast<double>(x[t]) - mx));
  } else {
    for (int64_t t = 0; t < n; ++t) out[t] = T(0);
  }
}

}  // namespace UGR_NS
}  // namespace

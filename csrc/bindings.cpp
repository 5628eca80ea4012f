// Python bindings of ugr_kernels._C (see ugr.h for the contract).
#include <torch/extension.h>

#include "ugr.h"

// Defined in ugr_fused_cpu.cpp, which registers the fused ops' CPU kernels with
// the dispatcher (TORCH_LIBRARY_IMPL); their schemas live in ugr_kernels/fused.py.
int64_t fused_coef_width();
#ifdef UGR_WITH_CUDA
// Defined in cuda/ugr_fused_cuda.cu, which registers the fused ops' CUDA kernels.
bool ugr_has_fused_cuda();
#endif

namespace {

bool has_cuda() {
#ifdef UGR_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool has_fused_cuda() {
#ifdef UGR_WITH_CUDA
  return ugr_has_fused_cuda();
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "ugr_kernels._C: the stats / combine passes of weighted SI-SDR (C++/OpenMP, CUDA)";
  // The GIL is released: the kernels touch no Python object.
  m.def("stats_cpu", &stats_cpu, py::arg("x"), py::arg("y"), py::arg("zero_mean"),
        py::call_guard<py::gil_scoped_release>(),
        "(mx, my, sxy, sxx, syy) float64 of x (B, Cx, T) against y (B, Cy, T) on CPU");
  m.def("combine_cpu", &combine_cpu, py::arg("x"), py::arg("y"), py::arg("mx"), py::arg("my"),
        py::arg("g"), py::arg("h"), py::call_guard<py::gil_scoped_release>(),
        "sum_j g_ij (y_j - my_j) + h_i (x_i - mx_i) on CPU, x's shape and dtype");
  m.def("has_cuda", &has_cuda, "True when the extension was compiled with the CUDA kernels");
  m.def("has_fused_cuda", &has_fused_cuda,
        "True when the extension registers CUDA kernels of ugr::weighted_sisdr_fwd/_bwd");
  m.def("tile_size", []() { return ugr::kCpuTile; },
        "samples per (example, tile) work item of the CPU kernels");
  m.def("fused_coef_width", &fused_coef_width,
        "values per item in the coef output of ugr::weighted_sisdr_fwd (see ugr_fused_cpu.cpp)");
  m.def("cpu_isa", &cpu_isa, "which compiled copy of the CPU kernels runs (ugr_base, ugr_avx2)");
  m.def("set_cpu_isa", &set_cpu_isa, py::arg("name"),
        "choose the CPU kernels: 'auto' (best for this CPU), 'base' or 'avx2' (tests, benchmarks)");
#ifdef UGR_WITH_CUDA
  m.def("stats_cuda", &stats_cuda, py::arg("x"), py::arg("y"), py::arg("zero_mean"),
        py::call_guard<py::gil_scoped_release>(),
        "(mx, my, sxy, sxx, syy) float64 of x (B, Cx, T) against y (B, Cy, T) on CUDA");
  m.def("combine_cuda", &combine_cuda, py::arg("x"), py::arg("y"), py::arg("mx"), py::arg("my"),
        py::arg("g"), py::arg("h"), py::call_guard<py::gil_scoped_release>(),
        "sum_j g_ij (y_j - my_j) + h_i (x_i - mx_i) on CUDA, x's shape and dtype");
#endif
}

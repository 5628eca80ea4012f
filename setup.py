"""Build of the compiled extension ``ugr_kernels._C`` (metadata lives in pyproject.toml).

    pip install --no-build-isolation -e .        # editable, uses the installed torch
    python setup.py build_ext --inplace          # in-place build only

The C++/OpenMP CPU kernels are always built. When torch is a CUDA build and a
CUDA toolkit is found (``CUDA_HOME``), the CUDA kernels in ``csrc/cuda/*.cu``
are compiled in too and ``UGR_WITH_CUDA`` is defined (no GPU is needed to
build; set TORCH_CUDA_ARCH_LIST to choose the architectures). ``UGR_NO_CUDA=1``
forces a CPU-only build, ``UGR_DEBUG=1`` an -O0 -g one.

No ``-march=native``: the binary must run on other machines than the one that
built it. csrc/ugr_cpu.cpp compiles its kernels twice, for the baseline ISA
and (via a target pragma) for AVX2/FMA/F16C, and picks one at run time.
"""
import glob
import os

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - message for a build without torch
    raise SystemExit(
        "building ugr needs torch installed first; build with "
        "`pip install --no-build-isolation -e .` so that pip uses the installed torch"
    ) from exc

HERE = os.path.dirname(os.path.abspath(__file__))


def _rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


def _want_cuda() -> bool:
    if os.environ.get("UGR_NO_CUDA", "0") == "1":
        return False
    if torch.version.cuda is None or CUDA_HOME is None:
        return False
    if not glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")):
        return False
    return True


def cxx_flags():
    """Host-compiler flags of the extension's C++ sources (the C++ standard comes from torch)."""
    if os.environ.get("UGR_DEBUG", "0") == "1":
        return ["-O0", "-g", "-fopenmp"]
    return ["-O3", "-fopenmp", "-fno-math-errno"]


def nvcc_flags():
    """nvcc flags of csrc/cuda/*.cu (torch's BuildExtension adds its own common flags,
    the -gencode list from TORCH_CUDA_ARCH_LIST and -std). Also read by
    .ci/cuda_build.py, which compiles and links the CUDA objects on a CPU-only machine.

    No --use_fast_math: SI-SDR above 60 dB needs IEEE division/sqrt and no FTZ, and the
    compensated (float-float) sums of the kernels need exact fp32 rounding and FMA.
    """
    return ["-O3", "-DUGR_WITH_CUDA", "-lineinfo"]


def sources():
    """The C++ sources (always) and the CUDA sources (when built with CUDA), relative."""
    cpp = _rel([os.path.join(HERE, "csrc", "bindings.cpp"),
                os.path.join(HERE, "csrc", "ugr_cpu.cpp"),
                os.path.join(HERE, "csrc", "ugr_fused_cpu.cpp")])
    cu = _rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
    return cpp, cu


def _extension():
    cpp, cu = sources()
    include_dirs = [os.path.join(HERE, "csrc")]
    cxx = cxx_flags()
    if _want_cuda():
        return CUDAExtension(
            name="ugr_kernels._C",
            sources=cpp + cu,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + ["-DUGR_WITH_CUDA"], "nvcc": nvcc_flags()},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension(
        name="ugr_kernels._C",
        sources=cpp,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )


# Guarded so that .ci/cuda_build.py can import the flags; pip and `python setup.py`
# run this file as __main__.
if __name__ == "__main__":
    setup(
        ext_modules=[_extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )

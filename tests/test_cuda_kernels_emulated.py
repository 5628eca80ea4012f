"""The CUDA kernels (csrc/cuda/ugr_cuda_kernels.cuh), run on the CPU through a
thread-per-CUDA-thread emulation shim and checked against float64 sums.

This checks the kernels' arithmetic and indexing (tiles, tails, vector and scalar
loads, padded source counts, the merge, the combine pass) on machines without a
GPU; ``tests/test_gpu.py`` checks the compiled extension on a GPU.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "cuda_emulation"
CXX = shutil.which("g++") or shutil.which("clang++")


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or clang++) on PATH")
def test_cuda_kernels_match_float64_under_emulation(tmp_path):
    exe = tmp_path / "check_kernels"
    build = subprocess.run([CXX, "-std=c++20", "-O1", "-pthread", f"-I{HERE}",
                            str(HERE / "check_kernels.cc"), "-o", str(exe)],
                           capture_output=True, text=True)
    if build.returncode != 0 and "barrier" in build.stderr:
        pytest.skip("the C++ compiler lacks C++20 <barrier>")
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "guard BAD" not in run.stdout

#!/usr/bin/env bash
# CI: the extension's CUDA build on this CPU-only machine (no GPU needed to compile and
# link): every csrc/cuda/*.cu for sm_80 and sm_90 with -Xptxas -v, the C++ sources with
# -DUGR_WITH_CUDA, linked into one shared library, unresolved symbols checked; fails on
# any compile or link error or any register spill (details: .ci/cuda_build.py).
#
# nvcc: the one on PATH / in CUDA_HOME / /usr/local/cuda, else the CUDA 13.0 wheels
# from PyPI (nvidia-cuda-nvcc & co., ~100 MB, site-packages/nvidia/cu13; pinned to the
# versions this was checked with: nvcc 13.0.88 compiles for sm_75 .. sm_120).
set -euo pipefail
cd "$(dirname "$0")/.."
have_nvcc() {
    python - <<'PY'
import sys
sys.path.insert(0, "tests/cuda_emulation")
import cuda_tools
raise SystemExit(0 if cuda_tools.nvcc() and cuda_tools.cudart_dir() else 1)
PY
}
if ! have_nvcc; then
    echo "no nvcc: installing the CUDA 13.0 compiler wheels from PyPI"
    python -m pip install -q --no-deps nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 \
        nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85
    have_nvcc
fi
python .ci/cuda_build.py --arch 80 --arch 90 --out build/cuda_ci

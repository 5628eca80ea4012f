"""C++/OpenMP CPU backend: thin wrapper over the compiled extension ``ugr_kernels._C``.

Built by ``pip install --no-build-isolation -e .`` (or ``python setup.py build_ext
--inplace``) from ``csrc/ugr_cpu.cpp``. The kernels split T into (example, tile)
work items over torch's intra-op threads, accumulate centred sums in float64 per
tile and merge the tiles in order (Chan's update), so results are bitwise
independent of the thread count. See ``ugr_kernels.backends`` for the contract.
"""
from __future__ import annotations

import torch

from ._extension import extension, require


def is_available(device_type: str) -> bool:
    return device_type == "cpu" and extension() is not None


def stats(x: torch.Tensor, y: torch.Tensor, zero_mean: bool):
    return tuple(require("cpu").stats_cpu(x, y, bool(zero_mean)))


def combine(x, y, mx, my, g, h):
    return require("cpu").combine_cpu(x, y, mx, my, g, h)

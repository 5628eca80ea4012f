"""C++/OpenMP CPU backend: thin wrapper over the compiled extension ``ugr_kernels._C``.

Built by ``pip install --no-build-isolation -e .`` (or ``python setup.py build_ext
--inplace``) from ``csrc/ugr_cpu.cpp``. The kernels split T into (example, tile)
work items over torch's intra-op threads, accumulate centred sums in float64 per
tile and merge the tiles in order (Chan's update), so results are bitwise
independent of the thread count. See ``ugr_kernels.backends`` for the contract.
"""
from __future__ import annotations

from typing import Optional
from types import ModuleType

import torch

_EXT: Optional[ModuleType] = None
_TRIED = False


def _ext() -> Optional[ModuleType]:
    global _EXT, _TRIED
    if not _TRIED:
        _TRIED = True
        try:
            from .. import _C
        except ImportError:
            _C = None
        _EXT = _C
    return _EXT


def is_available(device_type: str) -> bool:
    return device_type == "cpu" and _ext() is not None


def _require():
    ext = _ext()
    if ext is None:
        raise RuntimeError("the C++ backend needs the compiled extension ugr_kernels._C: "
                           "build it with `pip install --no-build-isolation -e .`")
    return ext


def stats(x: torch.Tensor, y: torch.Tensor, zero_mean: bool):
    return tuple(_require().stats_cpu(x, y, bool(zero_mean)))


def combine(x, y, mx, my, g, h):
    return _require().combine_cpu(x, y, mx, my, g, h)

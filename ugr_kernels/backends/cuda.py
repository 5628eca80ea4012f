"""CUDA backend: thin wrapper over the CUDA kernels of ``ugr_kernels._C``.

Present only when the extension was compiled with CUDA (``csrc/cuda/*.cu``,
macro ``UGR_WITH_CUDA``); see ``ugr_kernels.backends`` for the contract.
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
        _EXT = _C if _C is not None and _C.has_cuda() else None
    return _EXT


def is_available(device_type: str) -> bool:
    return device_type == "cuda" and _ext() is not None and torch.cuda.is_available()


def _require():
    ext = _ext()
    if ext is None:
        raise RuntimeError("the CUDA backend needs ugr_kernels._C compiled with CUDA "
                           "(a CUDA build of torch and a CUDA toolkit at build time)")
    return ext


def stats(x: torch.Tensor, y: torch.Tensor, zero_mean: bool):
    return tuple(_require().stats_cuda(x, y, bool(zero_mean)))


def combine(x, y, mx, my, g, h):
    return _require().combine_cuda(x, y, mx, my, g, h)

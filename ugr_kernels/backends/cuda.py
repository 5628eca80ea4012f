"""CUDA backend: thin wrapper over the CUDA kernels of ``ugr_kernels._C``.

Present only when the extension was compiled with CUDA (``csrc/cuda/*.cu``,
macro ``UGR_WITH_CUDA``); see ``ugr_kernels.backends`` for the contract.
"""
from __future__ import annotations

import torch

from ._extension import extension, require


def is_available(device_type: str) -> bool:
    return (device_type == "cuda" and extension(need_cuda=True) is not None
            and torch.cuda.is_available())


def stats(x: torch.Tensor, y: torch.Tensor, zero_mean: bool):
    return tuple(require("cuda").stats_cuda(x, y, bool(zero_mean)))


def combine(x, y, mx, my, g, h):
    return require("cuda").combine_cuda(x, y, mx, my, g, h)

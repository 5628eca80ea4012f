"""Triton backend: the two T-sized passes as Triton kernels (``kernels.py``).

``stats``: kernel 1 (grid ``(B, n_tiles)``) writes per-tile means and centred sums
(accumulated in fp64 for every input dtype, see ``ACCUMULATE_F64``) to a float64
partials buffer; kernel 2
(grid ``(B,)``) merges them in float64 in a fixed order, so results are bitwise
repeatable. ``combine``: one elementwise-in-T kernel. No host synchronisation:
both are safe under CUDA-graph capture and run as opaque custom ops under
``torch.compile``.

Tile size: ``BLOCK_T`` below (or the environment variable ``UGR_TRITON_BLOCK_T``,
read at each call) overrides the default, 1024. It must be a power of two; tests
use small tiles to exercise the tile merge cheaply under the interpreter. On a GPU
both T-sized kernels hold a [CX padded to a power of two, tile] float64 block in
registers, so the tile is capped at ``TILE_ELEMENTS`` / CXP (1024 up to 4 rows, 256
at 16): no spill for any C (``bench/aot_triton.py`` checks every specialization).
Every launch uses a fixed configuration chosen from (CX, CY, dtype) alone: no
autotuning, no per-length compile, nothing that syncs or loads a module inside a
step, so both passes are safe under CUDA-graph capture (once compiled) and run as
opaque custom ops under ``torch.compile``. On CPU tensors the kernels run through
the Triton interpreter, which needs ``TRITON_INTERPRET=1`` set before triton is
first imported (torch imports it).
"""
from __future__ import annotations

import importlib
import os
import sys

import torch

#: Override of the T-tile of both kernels (a power of two); None: the default.
BLOCK_T = None
_DEFAULT_BLOCK_T = 1024
#: Warps of the stats tile and combine kernels on a GPU (the merge kernel uses 4).
STATS_NUM_WARPS = 4
#: Elements of one [CXP, tile] float64 block held in registers (4 warps: 32 per thread).
TILE_ELEMENTS = 4096
#: Tiles merged per step by the merge kernel (fixed: a new length compiles nothing).
MERGE_CHUNK = 32
#: Accumulate both passes in float64 for every input dtype. fp32 tile sums put
#: SI-SDR off above ~50 dB (90 dB read 120), overflow at 1e30 and flush 1e-30 to
#: zero; fp32 coefficients overflow at small amplitudes. False (fp32 for 16/32-bit
#: inputs) exists only so the GPU benchmark can measure what float64 costs.
ACCUMULATE_F64 = True

_this = sys.modules[__name__]
_triton_ok = None
_kernels = None


def _triton_importable() -> bool:
    global _triton_ok
    if _triton_ok is None:
        try:
            importlib.import_module("triton")
            importlib.import_module("triton.language")
            _triton_ok = True
        except Exception:  # ImportError, or a broken install
            _triton_ok = False
    return _triton_ok


def _interpreting() -> bool:
    """Was triton imported in interpreter mode? Decided at triton's import (torch
    imports it early), not by the variable now: triton's own library functions
    are decorated then, and the interpreter cannot call compiled ones."""
    if not _triton_importable():
        return False
    import triton.language.standard as standard
    return type(standard.sum).__name__ == "InterpretedFunction"


def is_available(device_type: str) -> bool:
    if not _triton_importable():
        return False
    if device_type == "cuda":
        return torch.cuda.is_available()
    if device_type == "cpu":
        # The kernels are decorated once: in interpreter mode only if the switch
        # was on when they were first imported.
        return _interpreting() and (_kernels is None or _kernels_interpreted())
    return False


def _kernels_interpreted() -> bool:
    fn = _kernels.stats_tile_kernel
    return type(fn).__name__ == "InterpretedFunction"


def _get_kernels():
    global _kernels
    if _kernels is None:
        from . import kernels as k
        _kernels = k
    return _kernels


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def block_t(cxp: int = 1) -> int:
    """The T-tile for a [cxp, tile] block: ``BLOCK_T``, else ``$UGR_TRITON_BLOCK_T``, else
    1024, capped at ``TILE_ELEMENTS // cxp`` (registers) but never below 16."""
    value = BLOCK_T
    if value is None:
        env = os.environ.get("UGR_TRITON_BLOCK_T")
        value = int(env) if env else _DEFAULT_BLOCK_T
    value = int(value)
    if value < 16 or value & (value - 1):
        raise ValueError(f"the Triton T-tile must be a power of two >= 16, got {value}")
    return max(16, min(value, TILE_ELEMENTS // _next_pow2(cxp)))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


_MAX_GRID_Y = 65535   # CUDA's limit on the second grid axis (the T-tiles)


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 3 or y.dim() != 3:
        raise ValueError(f"expected (B, C, T) tensors, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} differ in batch or length")
    if x.device != y.device:
        raise ValueError(f"x and y are on different devices: {x.device}, {y.device}")
    if x.shape[2] == 0:
        raise ValueError("the signals are empty (T = 0)")
    if x.device.type == "cpu" and not _interpreting():
        raise RuntimeError("the Triton backend runs CPU tensors only through the interpreter: "
                           "set TRITON_INTERPRET=1 before importing torch or triton")


def launch(kernel, grid, *args, wrap: bool = False, **kwargs) -> None:
    """Launch ``kernel[grid](*args, **kwargs)`` (through ``wrap_triton`` if ``wrap``).

    Every launch of this backend goes through here, looked up on the module at call
    time, so ``bench/aot_triton.py`` can swap in a recorder and collect, on fake CUDA
    tensors, every specialization the launch code requests.
    """
    if wrap:
        from torch.library import wrap_triton
        kernel = wrap_triton(kernel)
    kernel[grid](*args, **kwargs)


class _device_ctx:
    """Make x's GPU the current device for the launch (Triton uses the current one)."""

    def __init__(self, device: torch.device):
        self.ctx = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def stats(x: torch.Tensor, y: torch.Tensor, zero_mean: bool):
    _check(x, y)
    k = _get_kernels()
    x, y = x.contiguous(), y.contiguous()
    if y.dtype != x.dtype:
        common = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(common), y.to(common)
    batch, cx, length = x.shape
    cy = y.shape[1]
    acc64 = ACCUMULATE_F64 or x.dtype == torch.float64
    cxp, cyp = _next_pow2(cx), _next_pow2(cy)
    tile = block_t(cxp)
    n_tiles = _cdiv(length, tile)
    if n_tiles > _MAX_GRID_Y:
        raise ValueError(f"T = {length} needs {n_tiles} tiles of {tile} samples (at most "
                         f"{_MAX_GRID_Y}); set a larger Triton T-tile (UGR_TRITON_BLOCK_T)")
    nf = 2 * cx + 2 * cy + cx * cy
    f64 = dict(dtype=torch.float64, device=x.device)
    part = torch.empty((batch, nf, n_tiles), **f64)
    mx = torch.empty((batch, cx), **f64)
    my = torch.empty((batch, cy), **f64)
    sxy = torch.empty((batch, cx, cy), **f64)
    sxx = torch.empty((batch, cx), **f64)
    syy = torch.empty((batch, cy), **f64)
    if batch == 0:
        return mx, my, sxy, sxx, syy
    gpu = x.device.type == "cuda"
    warps = dict(num_warps=STATS_NUM_WARPS) if gpu else {}
    with _device_ctx(x.device):
        _this.launch(k.stats_tile_kernel, (batch, n_tiles), x, y, part, length, n_tiles,
                     CX=cx, CY=cy, CXP=cxp, BLOCK_T=tile, ACC_F64=acc64, **warps)
        _this.launch(k.stats_merge_kernel, (batch,), part, mx, my, sxy, sxx, syy, length,
                     n_tiles, CX=cx, CY=cy, CXP=cxp, CYP=cyp, BLOCK_T=tile,
                     CHUNK=MERGE_CHUNK, ZERO_MEAN=bool(zero_mean),
                     N_TILES_STATIC=0 if gpu else n_tiles,
                     **(dict(num_warps=4) if gpu else {}))
    return mx, my, sxy, sxx, syy


def combine(x, y, mx, my, g, h):
    _check(x, y)
    k = _get_kernels()
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    batch, cx, length = x.shape
    cy = y.shape[1]
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    f64 = dict(dtype=torch.float64, device=x.device)
    mx, my = mx.to(**f64).contiguous(), my.to(**f64).contiguous()
    g, h = g.to(**f64).contiguous(), h.to(**f64).contiguous()
    if batch == 0:
        return out
    acc64 = ACCUMULATE_F64 or x.dtype == torch.float64
    cxp = _next_pow2(cx)
    # One fixed configuration per (CX, CY, dtype): the output is the same to the bit
    # whatever the tile, and nothing is benchmarked (no sync, capture-safe).
    tile = block_t(cxp)
    gpu = x.device.type == "cuda"
    with _device_ctx(x.device):
        _this.launch(k.combine_kernel, (batch, _cdiv(length, tile)),
                     x, y, mx, my, g, h, out, length, CX=cx, CY=cy, CXP=cxp, BLOCK_T=tile,
                     ACC_F64=acc64, **(dict(num_warps=STATS_NUM_WARPS) if gpu else {}))
    return out

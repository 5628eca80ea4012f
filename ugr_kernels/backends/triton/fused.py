"""Fused weighted PIT SI-SDR(i) on Triton: launch code and ``torch.library`` registration.

Two plain functions with the argument order and outputs of the shared op schema
(``ugr::weighted_sisdr_fwd/_bwd``, documented at the top of ``ugr_kernels/fused.py``;
coef (B, C, 10) float64 per reference j, the same fields as the C++ CPU op):

``forward(est, ref, mixture, alpha, bias, mask, by_source, pit, zero_mean, eps, clamp_db)``
    -> (loss, sisdr, sisdri, weights, perm, valid, coef), three launches
    (``fused_kernels.py``): the tile pass (grid (B, n_tiles)), the per-example item
    kernel (grid (B,)) and the batch-wide normaliser (grid (1,), over B C scalars).
``backward(grad_loss, grad_sisdr, grad_sisdri, est, ref, perm, coef) -> grad_est``
    one launch (grid (B, n_tiles)).

Four launches per forward + backward, no host sync, no atomics, no per-length
autotuning: capturable in a CUDA graph. Every constexpr depends on C, the dtypes and
the flags only (never on B or T), so a new batch size or length compiles nothing.

They are registered as ``torch.library.triton_op`` ops with that schema
(``ugr::triton_weighted_sisdr_fwd/_bwd``) and in ``ugr_kernels.fused``'s registry with
its autograd glue; ``triton_op`` + ``wrap_triton`` let ``torch.compile`` see the kernels.

The T-tile is ``BLOCK_T`` here, else ``$UGR_TRITON_BLOCK_T``, else 1024 (512 above 3
sources plus mixture, to bound the float64 registers of a tile).
"""
from __future__ import annotations

import math
import os
import struct
from typing import Optional

import torch
from torch import Tensor
from torch.library import triton_op

from ...fused import COEF_WIDTH, register_backend
from . import _cdiv, _device_ctx, _interpreting
from . import _this as _tl
from . import fused_kernels as fk

#: Override of the T-tile (a power of two >= 16); None: ``$UGR_TRITON_BLOCK_T`` or default.
BLOCK_T = None
COEF_FIELDS = fk.COEF_FIELDS
assert COEF_FIELDS == COEF_WIDTH
#: coef slots flagging non-finite est, ref, mixture rows (read by ``check_finite``).
FINITE_FLAGS = slice(7, 10)
_MAX_GRID_Y = 65535
#: Tiles merged per step by the item kernel (a fixed constexpr: no per-length compile).
_MERGE_TILES = 32
#: Lanes of the normaliser's sweeps over the B C item scores.
_NORM_LANES = 1024
#: Permutations scored per step by PIT (<= 720 = 6!).
_PIT_BLOCK = 128
_MAX_PIT_SOURCES = 6


def _pow2(n: int, lo: int = 2) -> int:
    return max(lo, 1 << max(0, (int(n) - 1).bit_length()))


def block_t(rows: int) -> int:
    """The T-tile for ``rows`` signal rows (estimates + mixture) held in one tile."""
    value = BLOCK_T
    if value is None:
        env = os.environ.get("UGR_TRITON_BLOCK_T")
        value = int(env) if env else (1024 if rows <= 4 else 512)
    value = int(value)
    if value < 16 or value & (value - 1):
        raise ValueError(f"the Triton T-tile must be a power of two >= 16, got {value}")
    return value


def _f64_bits(value: float) -> int:
    # Triton passes Python floats as fp32; the kernel bit-casts these int64 bits back.
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def _launch_opts(device: torch.device, warps: int) -> dict:
    return dict(num_warps=warps) if device.type == "cuda" else {}


def _shape_only(t: Tensor) -> bool:
    """Under the interpreter: True for fake tensors (no launch), an error while tracing.

    ``wrap_triton`` hands interpreted kernels back unwrapped, so without this a fake
    implementation would run the interpreter on fake tensors, and a compiled graph
    would lose the launches. Compiled (GPU) kernels go through ``wrap_triton``'s
    higher-order op instead, which handles both.
    """
    if not _interpreting():
        return False
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    if isinstance(t, FunctionalTensor):
        raise RuntimeError("torch.compile cannot trace the fused Triton weighted SI-SDR while "
                           "its kernels are interpreted (TRITON_INTERPRET=1)")
    return isinstance(t, FakeTensor) or t.device.type == "meta"


def _item_arg(t: Optional[Tensor], items: tuple, dtype, name: str, device) -> Optional[Tensor]:
    if t is None:
        return None
    if t.device != device:
        # A hidden blocking copy inside a step (and a capture error) otherwise.
        raise ValueError(f"{name} is on {t.device} but est is on {device}: move it to est's "
                         "device first (once, outside the step)")
    if t.dtype != dtype or tuple(t.shape) != items:
        t = t.to(dtype).expand(items)
    return t


def forward(est: Tensor, ref: Tensor, mixture: Optional[Tensor], alpha: Tensor,
            bias: Optional[Tensor], mask: Optional[Tensor], by_source: bool, pit: bool,
            zero_mean: bool, eps: float, clamp_db: float):
    """``ugr::weighted_sisdr_fwd`` on Triton: (loss, sisdr, sisdri, weights, perm, valid, coef).

    Args (the shared schema): est, ref (B, C, T) of one float dtype; mixture (B, T) or
    (B, 1, T) or None; alpha a 0-d tensor on est's device; bias / mask of the item
    shape ((B, C) for ``by_source``, else (B,)) or None, on est's device; ``pit``:
    exhaustive PIT (C <= 6); ``clamp_db`` = inf for no clamp. Float outputs float64
    for float64 inputs, else float32; coef (B, C, 10) float64 per reference.
    """
    batch, n_src, length = est.shape
    device = est.device
    if alpha.device != device:
        raise ValueError(f"alpha is on {alpha.device} but est is on {device}: pass a 0-d "
                         "tensor on est's device")
    if pit and n_src > _MAX_PIT_SOURCES:
        raise ValueError(f"exhaustive PIT serves C <= {_MAX_PIT_SOURCES}, got C = {n_src}")
    items = (batch, n_src) if by_source else (batch,)
    bias = _item_arg(bias, items, torch.float64, "bias", device)
    mask = _item_arg(mask, items, torch.bool, "mask", device)
    est, ref = est.contiguous(), ref.contiguous()
    has_mix = mixture is not None
    if has_mix:
        mixture = mixture.to(est.dtype).reshape(batch, length).contiguous()
    rows = n_src + int(has_mix)
    tile = block_t(rows)
    n_tiles = _cdiv(length, tile)
    if n_tiles > _MAX_GRID_Y:
        raise ValueError(f"T = {length} needs {n_tiles} tiles of {tile} samples (at most "
                         f"{_MAX_GRID_Y}); set a larger Triton T-tile (UGR_TRITON_BLOCK_T)")
    odt = torch.float64 if est.dtype == torch.float64 else torch.float32
    n_fields = 2 * rows + 2 * n_src + rows * n_src
    pairs = rows * n_src
    n_items = batch * n_src if by_source else batch
    # float64 scratch: tile partials, per-example pair workspace, item F, L, count
    part = est.new_empty((max(1, batch * n_tiles * n_fields),), dtype=torch.float64)
    work = est.new_empty((max(1, batch * fk.WORKSPACE_PER_PAIR * pairs),),
                         dtype=torch.float64)
    item = est.new_empty((2 * n_items + batch + 1,), dtype=torch.float64)
    loss = est.new_empty((), dtype=odt)
    sisdr = est.new_empty((batch, n_src), dtype=odt)
    sisdri = est.new_empty((batch, n_src), dtype=odt)
    weights = est.new_empty(items, dtype=odt)
    perm = est.new_empty((batch, n_src), dtype=torch.int64)
    valid = est.new_empty((batch, n_src), dtype=torch.bool)
    coef = est.new_empty((batch, n_src, COEF_FIELDS), dtype=torch.float64)
    if batch == 0 or _shape_only(est):
        return loss, sisdr, sisdri, weights, perm, valid, coef
    n_perm = math.factorial(n_src) if pit else 1
    clamp_db = float(clamp_db)
    # (-0.0 for no clamp: the same arithmetic as 0, and int64 bits like every other tau)
    tau = -0.0 if math.isinf(clamp_db) and clamp_db > 0 else 10.0 ** (-clamp_db / 10.0)
    interp = _interpreting()
    with _device_ctx(device):
        # 1. tile pass: float64 tile means and centred (co-)moments
        _tl.launch(fk.fused_tile_kernel, (batch, n_tiles),
                   est, ref, mixture if has_mix else est, part, length, n_tiles,
                   C=n_src, CEP=_pow2(rows), HAS_MIX=has_mix, IN_F64=odt == torch.float64,
                   BLOCK_T=tile, wrap=True, **_launch_opts(device, 4))
        # 2. one program per example: merge, SI-SDR matrix, PIT, items, coef 1..9
        _tl.launch(fk.fused_item_kernel, (batch,),
                   part, work, item, alpha, bias if bias is not None else item,
                   mask if mask is not None else valid, sisdr, sisdri, perm, valid, coef,
                   batch, length, n_tiles,
                   int(bias is not None), bias.stride(0) if bias is not None else 0,
                   (bias.stride(1) if bias.dim() > 1 else 0) if bias is not None else 0,
                   int(mask is not None), mask.stride(0) if mask is not None else 0,
                   (mask.stride(1) if mask.dim() > 1 else 0) if mask is not None else 0,
                   int(bool(zero_mean)), _f64_bits(eps), _f64_bits(tau),
                   C=n_src, CP=_pow2(n_src), HAS_MIX=has_mix, QP=_pow2(pairs),
                   PIT=bool(pit) and n_src > 1, N_PERM=n_perm,
                   PB=min(_pow2(n_perm), _PIT_BLOCK), BY_SOURCE=bool(by_source),
                   BLOCK_T=tile, TC=_MERGE_TILES, NT_STATIC=n_tiles if interp else 0,
                   wrap=True, **_launch_opts(device, 4))
        # 3. the batch-wide softmax over the item scores: weights, loss, coef w
        _tl.launch(fk.fused_normalise_kernel, (1,), item, coef, weights, loss, batch,
                   C=n_src, BY_SOURCE=bool(by_source), NB=_NORM_LANES,
                   N_STATIC=n_items if interp else 0, wrap=True, **_launch_opts(device, 4))
    return loss, sisdr, sisdri, weights, perm, valid, coef


def backward(grad_loss: Tensor, grad_sisdr: Optional[Tensor], grad_sisdri: Optional[Tensor],
             est: Tensor, ref: Tensor, perm: Tensor, coef: Tensor) -> Tensor:
    """``ugr::weighted_sisdr_bwd`` on Triton: d est (est's shape and dtype), one launch."""
    batch, n_src, length = est.shape
    est, ref = est.contiguous(), ref.contiguous()
    perm, coef = perm.contiguous(), coef.contiguous()
    tile = block_t(n_src)
    n_tiles = _cdiv(length, tile)
    out = torch.empty_like(est, memory_format=torch.contiguous_format)
    if batch == 0 or _shape_only(est):
        return out
    with _device_ctx(est.device):
        _tl.launch(fk.fused_backward_kernel, (batch, n_tiles),
                   est, ref, perm, coef, grad_loss,
                   grad_sisdr if grad_sisdr is not None else grad_loss,
                   grad_sisdri if grad_sisdri is not None else grad_loss, out, length,
                   int(grad_sisdr is not None),
                   grad_sisdr.stride(0) if grad_sisdr is not None else 0,
                   grad_sisdr.stride(1) if grad_sisdr is not None else 0,
                   int(grad_sisdri is not None),
                   grad_sisdri.stride(0) if grad_sisdri is not None else 0,
                   grad_sisdri.stride(1) if grad_sisdri is not None else 0,
                   C=n_src, CP=_pow2(n_src), IN_F64=est.dtype == torch.float64,
                   BLOCK_T=tile, wrap=True, **_launch_opts(est.device, 4))
    return out


@triton_op("ugr::triton_weighted_sisdr_fwd", mutates_args=())
def weighted_sisdr_fwd(est: Tensor, ref: Tensor, mixture: Optional[Tensor], alpha: Tensor,
                       bias: Optional[Tensor], mask: Optional[Tensor], by_source: bool,
                       pit: bool, zero_mean: bool, eps: float, clamp_db: float
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``forward`` as an op with the schema of ``ugr::weighted_sisdr_fwd``."""
    return forward(est, ref, mixture, alpha, bias, mask, by_source, pit, zero_mean, eps,
                   clamp_db)


@triton_op("ugr::triton_weighted_sisdr_bwd", mutates_args=())
def weighted_sisdr_bwd(grad_loss: Tensor, grad_sisdr: Optional[Tensor],
                       grad_sisdri: Optional[Tensor], est: Tensor, ref: Tensor, perm: Tensor,
                       coef: Tensor) -> Tensor:
    """``backward`` as an op with the schema of ``ugr::weighted_sisdr_bwd``."""
    return backward(grad_loss, grad_sisdr, grad_sisdri, est, ref, perm, coef)


def fused_forward(est: Tensor, ref: Tensor, mixture: Optional[Tensor], alpha, bias, mask,
                  by_source: bool, pit: bool, zero_mean: bool, eps: float,
                  clamp_db: Optional[float]):
    """The op with autograd to ``est``, taking a Python-float alpha and ``clamp_db=None``."""
    if torch.is_grad_enabled() and ref.requires_grad:
        raise ValueError("the fused Triton weighted SI-SDR differentiates est only; "
                         "ref requires grad")
    if not isinstance(alpha, Tensor):
        alpha = torch.full((), float(alpha), dtype=torch.float64, device=est.device)
    return weighted_sisdr_fwd(est, ref, mixture, alpha, bias, mask, bool(by_source),
                              bool(pit), bool(zero_mean), float(eps),
                              math.inf if clamp_db is None else float(clamp_db))


# Autograd by the registry's glue (the same as for the shared ops). Interpreted kernels
# (CPU tests) cannot be traced: compiled code takes the two passes there.
register_backend("triton", weighted_sisdr_fwd, weighted_sisdr_bwd, autograd=True,
                 flags=FINITE_FLAGS, traceable=not _interpreting())

"""Fused weighted PIT SI-SDR(i) on Triton: launch code and ``torch.library`` registration.

``fused_forward(est, ref, mixture, alpha, bias, mask, by_source, pit, zero_mean, eps,
clamp_db)`` returns ``(loss, sisdr, sisdri, weights, perm, valid, coef)`` with autograd
to ``est`` wired through two ``torch.library.triton_op`` ops:

``ugr::triton_weighted_sisdr_fwd``
    two launches: the tile pass (grid (B, n_tiles), float64 partials) and the
    single-program epilogue (merge, SI-SDR, PIT, masks, softmax pmf over the whole
    batch, loss, backward coefficients); see ``fused_kernels.py``.
``ugr::triton_weighted_sisdr_bwd``
    one launch (grid (B, n_tiles)) writing d est from ``coef`` and the incoming
    gradients, which stay device tensors (no host sync, CUDA-graph capturable).

``triton_op`` + ``wrap_triton`` let ``torch.compile`` see the kernels; the op body
only allocates and launches, so it is its own fake implementation.

Semantics are those of ``weighted_sisdr(..., score_fn=None, process_group=None)``;
``coef`` is (B, C, 11) float64 indexed by *estimate* k, fields
``j, w, v1, v0, a, c, mx_k, my_j, nf_est, nf_ref, nf_mix`` (``fused_kernels`` explains
each; ``FINITE_FLAGS`` are the last three). The T-tile is
``BLOCK_T`` here, else ``$UGR_TRITON_BLOCK_T``, else 1024 (512 above 3 sources plus
mixture, to bound the float64 registers of a tile).
"""
from __future__ import annotations

import math
import os
import struct
from typing import Optional, Union

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ...fused import register_backend
from . import _cdiv, _device_ctx, _interpreting
from . import fused_kernels as fk

#: Override of the T-tile (a power of two >= 16); None: ``$UGR_TRITON_BLOCK_T`` or default.
BLOCK_T = None
COEF_FIELDS = fk.COEF_FIELDS
#: coef slots flagging non-finite est, ref, mixture rows (read by ``check_finite``).
FINITE_FLAGS = slice(8, 11)
_MAX_GRID_Y = 65535
#: Elements of one float64 working tile of the epilogue (registers per field).
_EPILOGUE_TILE = 2048


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


@triton_op("ugr::triton_weighted_sisdr_fwd", mutates_args=())
def weighted_sisdr_fwd(est: Tensor, ref: Tensor, mixture: Optional[Tensor], alpha: Tensor,
                       bias: Optional[Tensor], mask: Optional[Tensor],
                       perm_table: Optional[Tensor], by_source: bool, zero_mean: bool,
                       eps: float, clamp_db: float
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, sisdr, sisdri, weights, perm, valid, coef); PIT over ``perm_table`` rows if given."""
    batch, n_src, length = est.shape
    has_mix = mixture is not None
    rows = n_src + int(has_mix)
    tile = block_t(rows)
    n_tiles = _cdiv(length, tile)
    if n_tiles > _MAX_GRID_Y:
        raise ValueError(f"T = {length} needs {n_tiles} tiles of {tile} samples (at most "
                         f"{_MAX_GRID_Y}); set a larger Triton T-tile (UGR_TRITON_BLOCK_T)")
    out_f64 = est.dtype == torch.float64
    odt = torch.float64 if out_f64 else torch.float32
    n_fields = 2 * rows + 2 * n_src + rows * n_src
    pairs = rows * n_src
    work = fk.WORKSPACE_PER_PAIR * pairs + 2 * n_src + 1
    part = est.new_empty((batch * n_tiles * n_fields + batch * work,), dtype=torch.float64)
    loss = est.new_empty((), dtype=odt)
    sisdr = est.new_empty((batch, n_src), dtype=odt)
    sisdri = est.new_empty((batch, n_src), dtype=odt)
    weights = est.new_empty((batch, n_src) if by_source else (batch,), dtype=odt)
    perm = est.new_empty((batch, n_src), dtype=torch.int64)
    valid = est.new_empty((batch, n_src), dtype=torch.bool)
    coef = est.new_empty((batch, n_src, COEF_FIELDS), dtype=torch.float64)

    pit = perm_table is not None
    n_perm = math.factorial(n_src) if pit else 1
    qp = _pow2(pairs)
    tc = min(_pow2(n_tiles), 32)
    bb = max(2, min(_pow2(batch), _EPILOGUE_TILE // (qp * tc)))
    pb = min(_pow2(n_perm), max(2, _EPILOGUE_TILE // bb))
    tau = 0.0 if math.isinf(clamp_db) and clamp_db > 0 else 10.0 ** (-clamp_db / 10.0)
    interp = _interpreting()
    if _shape_only(est):
        return loss, sisdr, sisdri, weights, perm, valid, coef
    dummy = part
    with _device_ctx(est.device):
        wrap_triton(fk.fused_tile_kernel)[(batch, n_tiles)](
            est, ref, mixture if has_mix else est, part, length, n_tiles,
            C=n_src, CEP=_pow2(rows), HAS_MIX=has_mix, IN_F64=out_f64, BLOCK_T=tile,
            **_launch_opts(est.device, 4))
        wrap_triton(fk.fused_epilogue_kernel)[(1,)](
            part, alpha, bias if bias is not None else dummy,
            mask if mask is not None else dummy, perm_table if pit else dummy,
            loss, sisdr, sisdri, weights, perm, valid, coef,
            batch, length, n_tiles,
            bias.stride(0) if bias is not None else 0,
            (bias.stride(1) if bias.dim() > 1 else 0) if bias is not None else 0,
            mask.stride(0) if mask is not None else 0,
            (mask.stride(1) if mask.dim() > 1 else 0) if mask is not None else 0,
            _f64_bits(eps), _f64_bits(tau),
            C=n_src, CP=_pow2(n_src), HAS_MIX=has_mix, QP=qp, HAS_BIAS=bias is not None,
            HAS_MASK=mask is not None, PIT=pit, N_PERM=n_perm, PB=pb, BY_SOURCE=by_source,
            ZERO_MEAN=zero_mean, OUT_F64=out_f64, BLOCK_T=tile, BB=bb, TC=tc,
            B_STATIC=batch if interp else 0, NT_STATIC=n_tiles if interp else 0,
            **_launch_opts(est.device, 8))
    return loss, sisdr, sisdri, weights, perm, valid, coef


@triton_op("ugr::triton_weighted_sisdr_bwd", mutates_args=())
def weighted_sisdr_bwd(est: Tensor, ref: Tensor, coef: Tensor, grad_loss: Optional[Tensor],
                       grad_sisdr: Optional[Tensor], grad_sisdri: Optional[Tensor]) -> Tensor:
    """d est (est's shape and dtype) from ``coef`` and the incoming gradients (None = 0)."""
    batch, n_src, length = est.shape
    tile = block_t(n_src)
    n_tiles = _cdiv(length, tile)
    out = torch.empty_like(est, memory_format=torch.contiguous_format)
    if _shape_only(est):
        return out
    dummy = coef
    with _device_ctx(est.device):
        wrap_triton(fk.fused_backward_kernel)[(batch, n_tiles)](
            est, ref, coef, grad_loss if grad_loss is not None else dummy,
            grad_sisdr if grad_sisdr is not None else dummy,
            grad_sisdri if grad_sisdri is not None else dummy, out, length,
            grad_sisdr.stride(0) if grad_sisdr is not None else 0,
            grad_sisdr.stride(1) if grad_sisdr is not None else 0,
            grad_sisdri.stride(0) if grad_sisdri is not None else 0,
            grad_sisdri.stride(1) if grad_sisdri is not None else 0,
            C=n_src, CP=_pow2(n_src), HAS_GLOSS=grad_loss is not None,
            HAS_GSDR=grad_sisdr is not None, HAS_GSDRI=grad_sisdri is not None,
            IN_F64=est.dtype == torch.float64, BLOCK_T=tile, **_launch_opts(est.device, 4))
    return out


def _setup_context(ctx, inputs, output):
    est, ref = inputs[0], inputs[1]
    coef = output[6]
    ctx.save_for_backward(est, ref, coef)
    ctx.mark_non_differentiable(output[3], coef)    # weights are stop-gradient constants
    ctx.set_materialize_grads(False)                 # unused outputs: None, not zeros


def _backward(ctx, g_loss, g_sisdr, g_sisdri, g_weights, g_perm, g_valid, g_coef):
    if ctx.needs_input_grad[1]:
        raise NotImplementedError("the fused Triton weighted SI-SDR differentiates est only; "
                                  "ref needs the unfused path")
    d_est = None
    if ctx.needs_input_grad[0]:
        est, ref, coef = ctx.saved_tensors
        d_est = weighted_sisdr_bwd(est, ref, coef, g_loss, g_sisdr, g_sisdri)
    return d_est, None, None, None, None, None, None, None, None, None, None


weighted_sisdr_fwd.register_autograd(_backward, setup_context=_setup_context)


def fused_forward(est: Tensor, ref: Tensor, mixture: Optional[Tensor],
                  alpha: Union[float, Tensor], bias: Optional[Tensor], mask: Optional[Tensor],
                  by_source: bool, pit: bool, zero_mean: bool, eps: float,
                  clamp_db: Optional[float]):
    """``weighted_sisdr`` (no score_fn, no process group) in three Triton launches.

    Args:
        est, ref: (B, C, T), same float dtype and device; only ``est`` is differentiated.
        mixture: (B, T) or (B, 1, T) in est's dtype, or None.
        alpha: a 0-d float64 tensor on est's device (a Python float is converted, one op).
        bias: float64, (B, C) for ``by_source`` else (B,) (expanded views are fine), or None.
        mask: bool, the same shapes, or None.
        by_source: granularity "source" (True) or "example".
        pit: exhaustive PIT (C <= 6) over the cached ``permutation_table``; else identity.
        clamp_db: None or +inf for no clamp.

    Returns:
        (loss, sisdr, sisdri, weights, perm, valid, coef): float outputs float64 for
        float64 inputs else float32; sisdri is zeros without a mixture; valid is
        ``WeightedSISDRResult.mask``; coef (B, C, 11) float64 for the backward op.
    """
    if torch.is_grad_enabled() and ref.requires_grad:
        raise ValueError("the fused Triton weighted SI-SDR differentiates est only; "
                         "ref requires grad")
    batch, n_src = est.shape[0], est.shape[1]
    if not isinstance(alpha, Tensor):
        alpha = torch.full((), float(alpha), dtype=torch.float64, device=est.device)
    elif alpha.dtype != torch.float64 or alpha.device != est.device:
        alpha = alpha.to(device=est.device, dtype=torch.float64)
    if mixture is not None and mixture.dtype != est.dtype:
        mixture = mixture.to(est.dtype)
    item_shape = (batch, n_src) if by_source else (batch,)
    if bias is not None and (bias.dtype != torch.float64 or tuple(bias.shape) != item_shape):
        bias = bias.to(device=est.device, dtype=torch.float64).expand(item_shape)
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != item_shape):
        mask = mask.to(device=est.device, dtype=torch.bool).expand(item_shape)
    table = None
    if pit:
        from ...pit import permutation_table
        table = permutation_table(n_src, est.device)
    return weighted_sisdr_fwd(est.contiguous(), ref.contiguous(),
                              None if mixture is None else mixture.contiguous(), alpha, bias,
                              mask, table, bool(by_source), bool(zero_mean), float(eps),
                              math.inf if clamp_db is None else float(clamp_db))


def _registry_forward(est, ref, mixture, alpha, bias, mask, by_source, pit, zero_mean, eps,
                      clamp_db):
    """``fused_forward`` with the argument order of ``ugr_kernels.fused``'s registry."""
    return fused_forward(est, ref, mixture, alpha, bias, mask, by_source, pit, zero_mean, eps,
                         clamp_db)


# Interpreted kernels (CPU tests) cannot be traced: compiled code takes the two passes.
register_backend("triton", _registry_forward, None, autograd=False, flags=FINITE_FLAGS,
                 traceable=not _interpreting())

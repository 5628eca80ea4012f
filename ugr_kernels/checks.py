"""Argument checks of ``weighted_sisdr``, the one place for each: signal shapes, alpha,
per-item tensors (bias, mask) and the non-finite error.

Every check that needs no data is done on the host at call time, and raises
``ValueError`` naming the argument. Checks that need the data (NaN/inf in the
signals, the alpha tensor or the bias) are device flags read with one host sync
by ``raise_if_non_finite``.

Device placement is never fixed silently: a tensor argument on another device
than ``est`` (e.g. a CPU ``alpha`` or one-element ``bias`` with CUDA signals) is
an error, since moving it would be a blocking host-to-device copy that a CUDA
graph cannot capture. A Python float ``alpha`` is accepted on every device: it
becomes a fill kernel (``torch.full``), capture-safe, and under ``torch.compile``
a graph input rather than a constant (no recompile when it changes).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_NON_FINITE_SCORE = "every score F would be non-finite and no item would be trained"


def check_inputs(est, ref, mixture, granularity: str):
    """est, ref (B, C, T) and mixture (B, T) / (B, 1, T) -> (est, ref, mixture (B, 1, T))
    in their common float dtype, on one device."""
    if granularity not in ("source", "example"):
        raise ValueError(f"granularity must be 'source' or 'example', got {granularity!r}")
    for name, t in (("est", est), ("ref", ref)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{name} must have shape (batch, sources, time), got {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be float16/bfloat16/float32/float64, got {t.dtype}")
    if est.shape != ref.shape:
        raise ValueError(f"est and ref must have the same shape (batch, sources, time), "
                         f"got {tuple(est.shape)} and {tuple(ref.shape)}")
    if min(est.shape) < 1:
        raise ValueError(f"est has an empty dimension: {tuple(est.shape)}")
    if est.device != ref.device:
        raise ValueError(f"est and ref must be on the same device, got {est.device} and "
                         f"{ref.device}")
    if mixture is not None:
        if not isinstance(mixture, Tensor) or mixture.dtype not in FLOAT_DTYPES:
            raise ValueError("mixture must be a floating-point torch.Tensor")
        if mixture.dim() == 2:
            mixture = mixture.unsqueeze(1)
        if mixture.dim() != 3 or mixture.shape[1] != 1 or mixture.shape[0] != est.shape[0] \
                or mixture.shape[2] != est.shape[2]:
            raise ValueError(f"mixture must have shape ({est.shape[0]}, {est.shape[2]}) or "
                             f"({est.shape[0]}, 1, {est.shape[2]}), got {tuple(mixture.shape)}")
        if mixture.device != est.device:
            raise ValueError(f"mixture must be on {est.device}, got {mixture.device}")
    common = torch.promote_types(est.dtype, ref.dtype)
    if mixture is not None:
        mixture = mixture.to(common)
    return est.to(common), ref.to(common), mixture


def require_finite(name: str, value, context: str = "") -> None:
    """Eager check of a Python number: ``ValueError`` for NaN/inf.

    Skipped while ``torch.compile`` traces, where ``value`` may be a symbolic float
    (a graph input) whose value is unknown; there a non-finite alpha makes every
    score non-finite, so every item drops out of the pmf (weights 0, loss 0).
    """
    if torch.compiler.is_compiling():
        return
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}{context}: {_NON_FINITE_SCORE}")


def alpha_tensor(alpha, device) -> Tensor:
    """``alpha`` as a 0-d float64 tensor on ``device``: the form every path consumes.

    Accepts a real number (a fill kernel on ``device``, no host-to-device copy) or a
    one-element floating tensor already on ``device`` (a view, no copy; a CPU tensor
    with CUDA signals is a ``ValueError``, not a hidden blocking copy).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, Tensor, torch.SymFloat,
                                                         torch.SymInt)):
        raise ValueError(f"alpha must be a number or a 0-d torch.Tensor, got "
                         f"{type(alpha).__name__}")
    if isinstance(alpha, Tensor):
        if alpha.numel() != 1:
            raise ValueError(f"alpha must be a number or a 0-d tensor, got a tensor of shape "
                             f"{tuple(alpha.shape)}")
        _require_device("alpha", alpha, device, "or pass a Python float")
        if alpha.dtype != torch.float64:
            alpha = alpha.to(torch.float64)
        return alpha.reshape(()) if alpha.dim() else alpha
    require_finite("alpha", alpha)
    return torch.full((), alpha, dtype=torch.float64, device=device)


def item_tensor(name: str, value, items: tuple, dtype: torch.dtype, device) -> Optional[Tensor]:
    """``bias`` / ``mask``: None, or a tensor broadcastable to the items ((B, C) or (B,);
    a (B, 1) tensor also serves (B,)) on ``device``, returned as an ``items``-shaped
    (possibly expanded) view of ``dtype``."""
    if value is None:
        return None
    what = "(batch, sources)" if len(items) == 2 else "(batch,) for granularity='example'"
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor broadcastable to {what} = {items}, "
                         f"got {type(value).__name__}")
    if len(items) == 1 and value.dim() == 2 and value.shape[1] == 1:
        value = value[:, 0]              # (B, 1): one value per example
    try:
        ok = value.dim() <= len(items) and \
            tuple(torch.broadcast_shapes(value.shape, items)) == tuple(items)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be broadcastable to {what} = {items}, got shape "
                         f"{tuple(value.shape)}")
    _require_device(name, value, device)
    if value.dtype != dtype:
        value = value.to(dtype)
    return value.expand(items) if tuple(value.shape) != tuple(items) else value


def _require_device(name: str, value: Tensor, device, hint: str = "") -> None:
    if value.device != torch.device(device):
        raise ValueError(f"{name} must be on {device} like est, got {value.device} (moving "
                         f"it would be a blocking host-to-device copy: create it on "
                         f"{device}{', ' + hint if hint else ''})")


def raise_if_non_finite(names: Sequence[str], bad: Tensor) -> None:
    """``check_finite``: ``bad[k]`` flags NaN/inf in argument ``names[k]``; read with one
    host sync, raise ``ValueError`` naming the first bad argument."""
    for name, is_bad in zip(names, bad.tolist()):
        if not is_bad:
            continue
        if name in ("alpha", "bias"):
            raise ValueError(f"{name} contains NaN or inf values: {_NON_FINITE_SCORE}")
        raise ValueError(f"{name} contains NaN or inf values (or float64 values too large "
                         f"to square)")

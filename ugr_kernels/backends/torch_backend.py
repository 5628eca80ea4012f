"""Pure-torch implementation of the two passes (any device, float64 accumulation).

It is the fallback when no compiled or Triton backend is available, and the
readable statement of what the fast backends compute.
"""
from __future__ import annotations

import torch


def is_available(device_type: str) -> bool:
    return True


def stats(x: torch.Tensor, y: torch.Tensor, zero_mean: bool):
    x64, y64 = x.double(), y.double()
    if zero_mean:
        mx, my = x64.mean(-1), y64.mean(-1)
        x64 = x64 - mx.unsqueeze(-1)
        y64 = y64 - my.unsqueeze(-1)
    else:
        mx = x64.new_zeros(x64.shape[:-1])
        my = y64.new_zeros(y64.shape[:-1])
    sxy = torch.bmm(x64, y64.transpose(1, 2))
    sxx = (x64 * x64).sum(-1)
    syy = (y64 * y64).sum(-1)
    return mx, my, sxy, sxx, syy


def combine(x, y, mx, my, g, h):
    # Computed in float32 at least: the coefficients are float64, the signals may be half.
    work = torch.promote_types(x.dtype, torch.float32)
    yc = y.to(work) - my.to(work).unsqueeze(-1)
    xc = x.to(work) - mx.to(work).unsqueeze(-1)
    out = torch.bmm(g.to(work), yc) + h.to(work).unsqueeze(-1) * xc
    return out.to(x.dtype)

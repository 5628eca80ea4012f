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
    # In float64 whatever x is (the coefficients scale as 1/amplitude^2 and the
    # terms cancel when the SI-SDR saturates), rounded once to x's dtype. A zero
    # coefficient contributes exactly 0, even against a NaN/inf signal row.
    yc = y.double() - my.double().unsqueeze(-1)
    xc = x.double() - mx.double().unsqueeze(-1)
    g, h = g.double(), h.double().unsqueeze(-1)
    terms = torch.where(g.unsqueeze(-1) != 0, g.unsqueeze(-1) * yc.unsqueeze(1), 0.0).sum(2)
    out = terms + torch.where(h != 0, h * xc, 0.0)
    return out.to(x.dtype)

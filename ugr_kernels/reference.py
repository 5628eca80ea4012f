"""Pure-torch, autograd SI-SDR written the textbook way: the float64 oracle.

Nothing here shares code with the fast path: it forms the projection
``s = <x, y> / ||y||^2 * y`` and the residual ``e = x - s`` over T explicitly.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def pairwise_sisdr(est: Tensor, ref: Tensor, *, zero_mean: bool = True, eps: float = 1e-12,
                   clamp_db: Optional[float] = None) -> tuple[Tensor, Tensor]:
    r"""SI-SDR of every estimate against every reference.

    .. math::
        s = \frac{\langle x, y\rangle}{\|y\|^2} y,\quad e = x - s,\quad
        \text{SI-SDR} = 10\log_{10}\frac{\|s\|^2 + \epsilon\|x\|^2}
                                      {\|e\|^2 + \epsilon\|x\|^2 + \tau(\|s\|^2 + \epsilon\|x\|^2)}

    with ``tau = 10**(-clamp_db/10)`` (0 without ``clamp_db``). The relative
    epsilon keeps the value scale invariant and bounded by about
    ``+-10 log10(1/eps)`` dB.

    Args:
        est: (B, Ce, T) estimates x.
        ref: (B, Cr, T) references y.

    Returns:
        sisdr (B, Ce, Cr) in est's dtype (0 where invalid), and
        valid (B, Ce, Cr) bool: both signals have non-zero energy (after centring).
    """
    x = est.unsqueeze(2)   # (B, Ce, 1, T)
    y = ref.unsqueeze(1)   # (B, 1, Cr, T)
    if zero_mean:
        x = x - x.mean(-1, keepdim=True)
        y = y - y.mean(-1, keepdim=True)
    ex = (x * x).sum(-1)
    ey = (y * y).sum(-1)
    valid = (ex > 0) & (ey > 0) & torch.isfinite(ex) & torch.isfinite(ey)
    valid = valid.expand(est.shape[0], est.shape[1], ref.shape[1])
    safe_ey = torch.where(ey > 0, ey, torch.ones_like(ey))
    scale = (x * y).sum(-1, keepdim=True) / safe_ey.unsqueeze(-1)
    s = scale * y
    e = x - s
    s_energy = (s * s).sum(-1) + eps * ex
    e_energy = (e * e).sum(-1) + eps * ex
    if clamp_db is not None:
        e_energy = e_energy + 10.0 ** (-clamp_db / 10.0) * s_energy
    safe_num = torch.where(valid, s_energy, torch.ones_like(s_energy))
    safe_den = torch.where(valid, e_energy, torch.ones_like(e_energy))
    sisdr = 10.0 * torch.log10(safe_num / safe_den)
    return torch.where(valid, sisdr, torch.zeros_like(sisdr)), valid

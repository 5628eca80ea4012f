"""Normalisation layers used by SuDoRM-RF.

Both variants normalise a ``(batch, channels, time)`` feature map over *all*
of its channels and time steps (one mean / variance per example) and then
apply a per-channel affine transform.  The original model spells this
``nn.GroupNorm(1, C, eps=1e-8)``; the improved model calls it "global layer
norm" (gLN, from Conv-TasNet).  The two compute the same function; they are
kept as separate classes so that a checkpoint's parameter names say which
variant it came from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Epsilon used by every norm in the reference implementation.
NORM_EPS = 1e-8


class GlobalLayerNorm(nn.Module):
    r"""Global layer normalisation (gLN).

    .. math::
        y = \gamma \odot \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    where :math:`\mu, \sigma^2` are taken over the channel and time axes of
    each example, and :math:`\gamma, \beta` have one entry per channel.

    Args:
        num_channels: number of channels ``C``.
        eps: added to the variance for numerical stability.

    Shape:
        - Input: ``(batch, C, *)``
        - Output: same as input.
    """

    def __init__(self, num_channels: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # group_norm with a single group is exactly gLN and runs as one fused
        # kernel instead of a mean / var / normalise chain.
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


def make_norm(kind: str, num_channels: int) -> nn.Module:
    """Build the norm used by a SuDoRM-RF variant.

    Args:
        kind: ``"groupnorm"`` (original model) or ``"gln"`` (improved model).
        num_channels: channels of the feature map to normalise.
    """
    if kind == "groupnorm":
        return nn.GroupNorm(1, num_channels, eps=NORM_EPS)
    if kind == "gln":
        return GlobalLayerNorm(num_channels)
    raise ValueError(f"unknown norm kind {kind!r}; expected 'groupnorm' or 'gln'")

"""The original SuDoRM-RF mask estimator as a banded Toeplitz matrix product.

The paper's mask layer is ``nn.Conv2d(1, S, (N + 1, 1), padding=(N // 2, 0))``
applied to the ``(batch, 1, N, frames)`` separator output: an ``(N + 1)``-tap
kernel per source that slides along the basis axis ``N`` and mixes all basis
channels of one frame.  Written out, for source ``s`` and frame ``f``

.. math::
    y_{s, i, f} = b_s + \\sum_{j=0}^{N-1} w_s[j - i + N/2] \\, x_{j, f}
    = (T_s x)_{i, f} + b_s,

with :math:`T_s` the ``N x N`` banded Toeplitz matrix
:math:`T_s[i, j] = w_s[j - i + N/2]` where :math:`0 \\le j - i + N/2 \\le N`
and 0 elsewhere (a band of half-width ``N/2``: three quarters of the entries
are taps).  PyTorch's CPU convolution for that shape (one input channel, a
513 x 1 kernel over a 512 x frames "image") is very slow, its backward
especially; the same layer as one GEMM per source runs at matrix-product
speed on the CPU and on tensor cores.

:class:`BandedMaskConv` *is* an ``nn.Conv2d`` (same parameters, names, shapes,
initialisation and ``state_dict``) whose forward builds the band matrices from
its weight on every call and multiplies.  The band is a strided view of the
zero-padded kernel, so building it costs one ``S x N x N`` copy, no Python
loop and no host synchronisation; autograd takes the weight gradient back
through the view (the diagonal sums of ``dT_s``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def toeplitz_band(weight: torch.Tensor) -> torch.Tensor:
    """Band matrices of the mask kernel: ``(S, 1, N + 1, 1) -> (S, N, N)``.

    ``T[s, i, j] = weight[s, 0, j - i + N // 2, 0]`` when that index lies in
    ``[0, N]``, else 0.  ``N`` must be even (the ``(N + 1)``-tall kernel with
    padding ``N // 2`` keeps ``N`` rows only then).

    Construction: pad the kernel with ``N / 2`` zeros on both sides to
    ``wp`` of length ``2N + 1``, so that ``T[s, i, j] = wp[s, N - i + j]``.
    ``wp.unfold(-1, N, 1)`` is the Hankel view ``U[s, a, j] = wp[s, a + j]``;
    rows ``1 .. N`` of it, in reverse order, are ``T`` (row ``i`` is
    ``U[N - i]``).  The flip materialises the result (contiguous, ready for a
    GEMM); everything before it is a view.

    Example:
        >>> w = torch.arange(1.0, 6.0).view(1, 1, 5, 1)  # N = 4, taps 1..5
        >>> toeplitz_band(w)[0]
        tensor([[3., 4., 5., 0.],
                [2., 3., 4., 5.],
                [1., 2., 3., 4.],
                [0., 1., 2., 3.]])
    """
    taps = weight.shape[-2]
    n = taps - 1
    wp = F.pad(weight.reshape(weight.shape[0], taps), (n // 2, n // 2))
    return wp.unfold(-1, n, 1)[:, 1 : n + 1].flip(-2)


class BandedMaskConv(nn.Conv2d):
    """``nn.Conv2d(1, S, (N + 1, 1), padding=(N // 2, 0))`` computed as ``S`` GEMMs.

    Parameters, their names (``weight`` ``(S, 1, N + 1, 1)``, ``bias``
    ``(S,)``), their initialisation and the ``state_dict`` are those of the
    ``nn.Conv2d``, so checkpoints of either formulation load into the other.

    Args:
        enc_channels: basis size ``N`` (even).
        num_sources: number of output masks ``S``.
        gemm: ``True`` (default) for the banded matrix product, ``False`` for
            ``nn.Conv2d.forward`` (the paper's formulation; the benchmark and
            the tests compare the two).  A plain attribute, switchable later.

    Shape:
        - Input: ``(batch, 1, N, frames)``
        - Output: ``(batch, S, N, frames)``, ``out[:, s] = T_s @ x[:, 0] + b_s``
          (see :func:`toeplitz_band`).

    Cost per call: ``2 * S * N^2 * batch * frames`` FLOPs forward (a quarter
    of them on the zero corners of the band, as the convolution spends a
    quarter of its ``N + 1`` taps on its zero padding) plus an ``S * N^2`` copy
    to build the band.
    """

    def __init__(self, enc_channels: int, num_sources: int, gemm: bool = True) -> None:
        if enc_channels % 2:
            raise ValueError(f"BandedMaskConv needs an even enc_channels, got {enc_channels}")
        super().__init__(1, num_sources, (enc_channels + 1, 1), padding=(enc_channels // 2, 0))
        self.gemm = gemm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gemm:
            return super().forward(x)
        s, n = self.out_channels, self.kernel_size[0] - 1
        band = toeplitz_band(self.weight).reshape(s * n, n)  # (S*N, N)
        out = torch.matmul(band, x.squeeze(1))  # (B, S*N, F)
        out = out.unflatten(1, (s, n))  # (B, S, N, F)
        return out + self.bias.view(s, 1, 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gemm={self.gemm}"

"""The unfused weighted PIT SI-SDR loss, written the way users write it today.

This is the baseline of the fused-vs-unfused A/B (``python -m train`` without
``--fused``): pairwise SI-SDR formed over time with plain torch ops in the
input dtype, PIT over the permutations, the same softmax pmf as
``ugr_kernels.weighted_sisdr`` (detached, masked, global over ranks: the library's
helpers), and autograd for the backward. It materialises (B, C, C, T) projections and keeps
them for backward; that memory traffic is what the fused kernels remove.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ugr_kernels import pairwise_sisdr, weighted_pit_loss


class UnfusedResult(NamedTuple):
    loss: Tensor
    sisdr: Tensor
    sisdri: Optional[Tensor]
    weights: Tensor
    mask: Tensor


def unfused_weighted_sisdr(est: Tensor, ref: Tensor, mixture: Optional[Tensor] = None, *,
                           alpha=0.0, bias: Optional[Tensor] = None, granularity: str = "source",
                           clamp_db: Optional[float] = None, process_group=None) -> UnfusedResult:
    """``sum_i sg(p_i) L_i`` with ``L = -SI-SDRi`` (``-SI-SDR`` without a mixture),
    ``p = softmax(alpha L + bias)`` over valid items; est, ref (B, C, T), mixture (B, T).

    The pairwise SI-SDR is the textbook projection over T (``ugr_kernels.reference``)
    in est's dtype with autograd; PIT, granularity and the pmf are the library's torch
    epilogue (``ugr_kernels.weighted_pit_loss``, small, on (B, C, C)).
    """
    ref = ref.to(est.dtype)
    pair, pair_valid = pairwise_sisdr(est, ref, clamp_db=clamp_db)
    base = base_valid = None
    if mixture is not None:
        with torch.no_grad():
            mix = mixture.to(est.dtype).reshape(est.shape[0], 1, -1)
            base, base_valid = (t[:, 0] for t in pairwise_sisdr(mix, ref))
    out = weighted_pit_loss(pair, pair_valid, base, base_valid, alpha=alpha, bias=bias,
                            granularity=granularity, process_group=process_group)
    return UnfusedResult(out.loss, out.sisdr, out.sisdri, out.weights, out.mask)

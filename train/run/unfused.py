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

from ugr_kernels.api import pit_best_perm
from ugr_kernels.pmf import weighted_item_loss
from ugr_kernels.reference import pairwise_sisdr


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
    in est's dtype with autograd; PIT and the pmf are the library's (small, (B, C, C)).
    """
    ref = ref.to(est.dtype)
    pair, pair_valid = pairwise_sisdr(est, ref, clamp_db=clamp_db)
    perm = pit_best_perm(pair, pair_valid).unsqueeze(1)                # (B, 1, C)
    sisdr = pair.gather(1, perm).squeeze(1)                             # (B, C)
    valid = pair_valid.gather(1, perm).squeeze(1)
    sisdri = None
    if mixture is not None:
        with torch.no_grad():
            mix = mixture.to(est.dtype).reshape(est.shape[0], 1, -1)
            base, base_valid = pairwise_sisdr(mix, ref)
        valid = valid & base_valid[:, 0]
        sisdri = torch.where(valid, sisdr - base[:, 0], torch.zeros_like(sisdr))
    sisdr = torch.where(valid, sisdr, torch.zeros_like(sisdr))
    item_loss = -(sisdri if sisdri is not None else sisdr)
    item_valid = valid
    if granularity == "example":
        count = valid.sum(1)
        item_loss = item_loss.sum(1) / count.clamp(min=1)
        item_valid = count > 0
    loss, weights, _ = weighted_item_loss(item_loss, item_valid, alpha=alpha, bias=bias,
                                          process_group=process_group)
    mask = valid if granularity == "source" else valid & item_valid.unsqueeze(1)
    return UnfusedResult(loss, sisdr, sisdri, weights, mask)

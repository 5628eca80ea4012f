"""The numerically stable, masked softmax pmf over a batch (optionally over all ranks)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def softmax_pmf(scores: Tensor, mask: Optional[Tensor] = None, process_group=None) -> Tensor:
    r"""Masked softmax over *all* elements of ``scores``, detached.

    .. math::
        p_i = \frac{m_i \exp(F_i - F_{max})}{\sum_j m_j \exp(F_j - F_{max})},
        \qquad F_{max} = \max_{j: m_j} F_j

    Items whose mask is False or whose score is not finite get ``p_i = 0`` and
    never enter the max or the sum, so one broken item cannot dominate the pmf.
    If no item is valid, every weight is 0 (the loss is then 0, not NaN).

    Args:
        scores: F, any shape (e.g. ``(B,)`` or ``(B, C)``); treated as constants.
        mask: bool tensor broadcastable to ``scores``; True = take part.
        process_group: a ``torch.distributed`` group (or ``torch.distributed.group.WORLD``).
            When given, the pmf is normalised over the union of all ranks' items
            with two all-reduces (max, then sum of exponentials), so N ranks with
            B items each produce exactly the weights of one process with N*B items.
            Under DDP, whose gradient is the *mean* over ranks, multiply the local
            weighted loss by the world size (``weighted_sisdr`` does this) so that
            the averaged gradient equals ``sum_i p_i grad L_i`` over the global batch.

    Returns:
        p with the shape of ``scores``, dtype of ``scores``, no gradient.
    """
    f = scores.detach()
    valid = torch.isfinite(f)
    if mask is not None:
        valid = valid & mask.to(torch.bool).expand_as(f)
    neg_inf = torch.full_like(f, float("-inf"))
    masked = torch.where(valid, f, neg_inf)
    fmax = masked.amax() if masked.numel() else f.new_tensor(float("-inf"))
    if process_group is not None:
        fmax = _all_reduce(fmax.clone(), "max", process_group)
    # All items masked: fmax is -inf; any finite shift works since every term is 0.
    fmax = torch.where(torch.isfinite(fmax), fmax, torch.zeros_like(fmax))
    expf = torch.where(valid, torch.exp(masked - fmax), torch.zeros_like(f))
    total = expf.sum()
    if process_group is not None:
        total = _all_reduce(total.clone(), "sum", process_group)
    return expf / torch.clamp(total, min=torch.finfo(f.dtype).tiny)


def _all_reduce(t: Tensor, op: str, group) -> Tensor:
    import torch.distributed as dist

    reduce_op = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
    dist.all_reduce(t, op=reduce_op, group=group)
    return t


def world_size(process_group) -> int:
    """Number of ranks in ``process_group`` (1 when None)."""
    if process_group is None:
        return 1
    import torch.distributed as dist

    return dist.get_world_size(process_group)

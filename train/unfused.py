"""The unfused weighted PIT SI-SDR loss, written the way users write it today.

This is the baseline of the fused-vs-unfused A/B (``python -m train`` without
``--fused``): pairwise SI-SDR formed over time with plain torch ops in the
input dtype, PIT over the permutations, the same softmax pmf as
``ugr_kernels.weighted_sisdr`` (detached, masked, global over ranks), and
autograd for the backward. It materialises (B, C, C, T) projections and keeps
them for backward; that memory traffic is what the fused kernels remove.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
from torch import Tensor


class UnfusedResult(NamedTuple):
    loss: Tensor
    sisdr: Tensor
    sisdri: Optional[Tensor]
    weights: Tensor
    mask: Tensor


def pairwise_sisdr(est: Tensor, ref: Tensor, eps: float = 1e-12,
                   clamp_db: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """SI-SDR (dB) of every estimate i against every reference j: (B, Ce, Cr), and validity.

    ``s = <x, y>/||y||^2 y``, ``e = x - s``, ``10 log10((||s||^2 + eps||x||^2) /
    (||e||^2 + eps||x||^2))`` after removing the means; the relative eps matches
    ``ugr_kernels`` so both losses give the same values. Silent signals are invalid.
    """
    x = est - est.mean(-1, keepdim=True)
    y = ref - ref.mean(-1, keepdim=True)
    x, y = x.unsqueeze(2), y.unsqueeze(1)           # (B, Ce, 1, T), (B, 1, Cr, T)
    ex, ey = (x * x).sum(-1), (y * y).sum(-1)
    valid = ((ex > 0) & (ey > 0)).expand(est.shape[0], est.shape[1], ref.shape[1])
    safe_ey = torch.where(ey > 0, ey, torch.ones_like(ey))
    scale = (x * y).sum(-1, keepdim=True) / safe_ey.unsqueeze(-1)
    s = scale * y
    e = x - s
    num = (s * s).sum(-1) + eps * ex
    den = (e * e).sum(-1) + eps * ex
    if clamp_db is not None:
        den = den + 10.0 ** (-clamp_db / 10.0) * num
    ones = torch.ones_like(num)
    value = 10.0 * torch.log10(torch.where(valid, num, ones) / torch.where(valid, den, ones))
    return torch.where(valid, value, torch.zeros_like(value)), valid


_PERMS: dict = {}


def _permutations(n: int, device: torch.device) -> Tensor:
    """All n! permutations, copied to the device once (a fresh copy per step would
    be a blocking host-to-device transfer); built in the graph when compiling."""
    if torch.compiler.is_compiling():
        return torch.tensor(list(itertools.permutations(range(n))), device=device)
    key = (n, str(device))
    if key not in _PERMS:
        _PERMS[key] = torch.tensor(list(itertools.permutations(range(n))), device=device)
    return _PERMS[key]


def _pit(pair: Tensor, valid: Tensor) -> Tensor:
    """perm (B, C): perm[b, j] = estimate for reference j maximising the summed SI-SDR."""
    n = pair.shape[1]
    perms = _permutations(n, pair.device)                              # (P, C)
    scores = torch.where(valid, pair.detach(), torch.zeros_like(pair))
    cols = torch.arange(n, device=pair.device)
    total = scores[:, perms, cols].sum(-1)                              # (B, P)
    return perms[total.argmax(1)]


def _pmf(score: Tensor, valid: Tensor, group) -> Tensor:
    """Detached softmax of ``score`` over the valid items of all ranks."""
    f = score.detach()
    valid = valid & torch.isfinite(f)
    masked = torch.where(valid, f, torch.full_like(f, float("-inf")))
    fmax = masked.amax()
    if group is not None:
        dist.all_reduce(fmax, op=dist.ReduceOp.MAX, group=group)
    fmax = torch.where(torch.isfinite(fmax), fmax, torch.zeros_like(fmax))
    expf = torch.where(valid, torch.exp(masked - fmax), torch.zeros_like(f))
    total = expf.sum()
    if group is not None:
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return expf / torch.clamp(total, min=torch.finfo(f.dtype).tiny)


def unfused_weighted_sisdr(est: Tensor, ref: Tensor, mixture: Optional[Tensor] = None, *,
                           alpha=0.0, bias: Optional[Tensor] = None, granularity: str = "source",
                           clamp_db: Optional[float] = None, process_group=None) -> UnfusedResult:
    """``sum_i sg(p_i) L_i`` with ``L = -SI-SDRi`` (``-SI-SDR`` without a mixture),
    ``p = softmax(alpha L + bias)`` over valid items; est, ref (B, C, T), mixture (B, T)."""
    ref = ref.to(est.dtype)
    pair, pair_valid = pairwise_sisdr(est, ref, clamp_db=clamp_db)
    perm = _pit(pair, pair_valid).unsqueeze(1)                          # (B, 1, C)
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
    score = item_loss.detach() * alpha
    if bias is not None:
        score = score + bias.to(score.dtype).expand_as(score)
    weights = _pmf(score, item_valid, process_group)
    world = dist.get_world_size(process_group) if process_group is not None else 1
    loss = (weights * item_loss).sum() * world
    mask = valid if granularity == "source" else valid & item_valid.unsqueeze(1)
    return UnfusedResult(loss, sisdr, sisdri, weights, mask)

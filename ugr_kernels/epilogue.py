r"""The torch epilogue: from pairwise SI-SDR to the weighted loss, on (B, C, C) tensors.

The readable reference of what the fused kernels do between their two passes over T,
and the fallback wherever they do not apply (a ``score_fn``, gradients for ``ref``
or the mixture, PIT beyond 6 sources, a process group). Three callers share it:
``weighted_sisdr``'s two-pass path (pairwise SI-SDR from the sufficient statistics),
the fused path under a process group (from the op's per-reference SI-SDR), and the
unfused baseline ``train.run.unfused`` (pairwise SI-SDR formed over T with autograd).

The steps, for one batch::

    sufficient statistics ─► pair (B, C, C) = SI-SDR(est i, ref j)      sisdr_from_stats
    pair ─► perm (B, C) ─► sisdr[b, j] = pair[b, perm[b, j], j]        pit_items
          (- SI-SDR(mixture, ref j) ─► sisdri)
    L per item: (B, C) for "source", mean over valid sources (B,) for "example"
    F = alpha L + bias + score_fn(L) ─► masked softmax p ─► sum_i p_i L_i  weighted_items

All of it is vectorised, free of host syncs and ``torch.compile(fullgraph=True)``
traceable; gradients flow to ``pair`` (and so to the signals) through ``L`` only, the
weights being detached (``ugr_kernels.pmf``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .pit import identity_perm, pit_best_perm
from .pmf import weighted_item_loss


def sisdr_from_stats(sxy: Tensor, sxx: Tensor, syy: Tensor, *, eps: float = 1e-12,
                     clamp_db: Optional[float] = None) -> tuple[Tensor, Tensor]:
    r"""SI-SDR matrix (B, Cx, Cy) in dB from the sufficient statistics, and its validity mask.

    ``rho = sxy / sqrt(sxx) / sqrt(syy)`` is the correlation, formed without the
    product ``sxx * syy`` so it neither underflows nor overflows anywhere in the
    float64 range (amplitudes 1e-150 .. 1e150 give the same SI-SDR as 1);

    .. math::
        \text{SI-SDR} = 10\log_{10}\frac{\rho^2 + \epsilon}
            {(1 - \rho)(1 + \rho) + \epsilon\ [+\ \tau(\rho^2 + \epsilon)]},
        \qquad \tau = 10^{-\text{clamp\_db}/10}.

    ``(1 - rho)(1 + rho)`` is exact to rounding near |rho| = 1 (about 100 dB of range
    with float64 statistics). Valid: both energies positive and all three finite.

    Args:
        sxy: (B, Cx, Cy) centred cross sums; sxx: (B, Cx), syy: (B, Cy) centred energies.

    Returns:
        (sisdr (B, Cx, Cy), 0 where invalid; valid (B, Cx, Cy) bool).
    """
    finite_x = torch.isfinite(sxx) & (sxx > 0)
    finite_y = torch.isfinite(syy) & (syy > 0)
    valid = finite_x.unsqueeze(2) & finite_y.unsqueeze(1) & torch.isfinite(sxy)
    norm_x = torch.sqrt(torch.where(finite_x, sxx, torch.ones_like(sxx))).unsqueeze(2)
    norm_y = torch.sqrt(torch.where(finite_y, syy, torch.ones_like(syy))).unsqueeze(1)
    safe_sxy = torch.where(valid, sxy, torch.zeros_like(sxy))
    rho = torch.clamp(safe_sxy / norm_x / norm_y, -1.0, 1.0)
    num = rho * rho + eps
    den = (1.0 - rho) * (1.0 + rho) + eps
    if clamp_db is not None:
        den = den + 10.0 ** (-clamp_db / 10.0) * num
    sisdr = 10.0 * torch.log10(num / den)
    return torch.where(valid, sisdr, torch.zeros_like(sisdr)), valid


class WeightedSISDRResult(NamedTuple):
    """What ``weighted_sisdr`` returns; items are indexed by *reference* source.

    Attributes:
        loss: scalar, ``sum_i p_i L_i`` (times the world size under a process group).
        sisdr: (B, C) SI-SDR in dB of the estimate assigned to reference j (0 where masked).
        sisdri: (B, C) SI-SDR improvement over the mixture, or None without a mixture.
        weights: the pmf p actually used: (B, C) for ``granularity="source"``, (B,) for
            ``"example"``; 0 for masked items; sums to 1 over the (global) batch.
        perm: (B, C) int64, ``perm[b, j]`` = index of the estimate assigned to reference j,
            so ``est.gather(1, perm[..., None].expand_as(est))`` is aligned with ``ref``.
        mask: (B, C) bool, the (example, source) pairs that took part.
    """

    loss: Tensor
    sisdr: Tensor
    sisdri: Optional[Tensor]
    weights: Tensor
    perm: Tensor
    mask: Tensor


def weighted_pit_loss(pair: Tensor, pair_valid: Tensor, mix_sisdr: Optional[Tensor] = None,
                      mix_valid: Optional[Tensor] = None, *, alpha=0.0,
                      bias: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                      granularity: str = "source", pit: bool = True,
                      score_fn: Optional[Callable[[Tensor], Tensor]] = None,
                      process_group=None) -> WeightedSISDRResult:
    """PIT, SI-SDRi, masks, granularity and the pmf from the pairwise SI-SDR.

    Args:
        pair, pair_valid: (B, C, C) SI-SDR of estimate i against reference j and its
            validity (``sisdr_from_stats`` or ``reference.pairwise_sisdr``).
        mix_sisdr, mix_valid: (B, C) SI-SDR of the mixture against each reference,
            or None (then L = -SI-SDR, else L = -SI-SDRi).
        alpha: number or 0-d tensor; bias: broadcastable to the items; mask: bool,
            the item shape ((B, C) for ``"source"``, (B,) for ``"example"``) or None.
        pit: best permutation (``pit_best_perm``), else the identity.
        score_fn, process_group: see ``ugr_kernels.weighted_sisdr``.

    Returns:
        ``WeightedSISDRResult`` in the dtype of ``pair`` (``weighted_sisdr`` casts it).
    """
    sisdr, sisdri, perm, valid = pit_items(pair, pair_valid, mix_sisdr, mix_valid, pit=pit)
    if sisdri is not None:          # reported for user-masked items too, like the fused op
        sisdri = torch.where(valid, sisdri, torch.zeros_like(sisdri))
    if mask is not None and granularity == "source":
        valid = valid & mask
    sisdr = torch.where(valid, sisdr, torch.zeros_like(sisdr))
    example_mask = mask if granularity == "example" else None
    loss, weights, item_valid = weighted_items(
        sisdr, sisdri, valid, granularity=granularity, example_mask=example_mask, alpha=alpha,
        bias=bias, score_fn=score_fn, process_group=process_group)
    if granularity == "example":
        valid = valid & item_valid.unsqueeze(1)
    return WeightedSISDRResult(loss, sisdr, sisdri, weights, perm, valid)


def pit_items(pair: Tensor, pair_valid: Tensor, mix_sisdr: Optional[Tensor],
              mix_valid: Optional[Tensor], *, pit: bool = True):
    """(sisdr, sisdri or None, perm, valid), all (B, C) per reference j, estimate
    ``perm[b, j]``: ``sisdr[b, j] = pair[b, perm[b, j], j]``, ``sisdri = sisdr - mix_sisdr``,
    valid where the pair (and the mixture's pair) is. Values are not yet masked."""
    batch, n_src = pair.shape[0], pair.shape[1]
    perm = pit_best_perm(pair, pair_valid) if pit else identity_perm(batch, n_src, pair.device)
    index = perm.unsqueeze(1)                                           # (B, 1, C)
    sisdr = pair.gather(1, index).squeeze(1)
    valid = pair_valid.gather(1, index).squeeze(1)
    sisdri = None
    if mix_sisdr is not None:
        valid = valid & mix_valid
        sisdri = sisdr - mix_sisdr
    return sisdr, sisdri, perm, valid


def weighted_items(sisdr: Tensor, sisdri: Optional[Tensor], valid: Tensor, *,
                   granularity: str = "source", example_mask: Optional[Tensor] = None,
                   alpha=0.0, bias: Optional[Tensor] = None,
                   score_fn: Optional[Callable[[Tensor], Tensor]] = None,
                   process_group=None) -> tuple[Tensor, Tensor, Tensor]:
    """Item losses by granularity, then the weighted loss (``pmf.weighted_item_loss``).

    ``L[b, j] = -sisdri[b, j]`` (``-sisdr`` without a mixture) where ``valid`` (B, C);
    for ``"example"`` ``L[b] = mean over valid j``, an example with no valid source (or
    False in ``example_mask`` (B,)) being masked.

    Returns:
        (loss: 0-d, weights: the item shape, item_valid: the item shape, bool).
    """
    item_loss = -(sisdri if sisdri is not None else sisdr)
    item_loss = torch.where(valid, item_loss, torch.zeros_like(item_loss))
    item_valid = valid
    if granularity == "example":
        count = valid.sum(1)
        item_loss = item_loss.sum(1) / count.clamp(min=1)
        item_valid = count > 0
        if example_mask is not None:
            item_valid = item_valid & example_mask
    return weighted_item_loss(item_loss, item_valid, alpha=alpha, bias=bias,
                              score_fn=score_fn, process_group=process_group)

"""The numerically stable, masked softmax pmf over a batch (optionally over all ranks),
and ``reweight``: unified gradient reweighting of any per-item loss.

>>> import torch, ugr_kernels as uk
>>> losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> out = uk.reweight(losses, uk.Robust(1.0))
>>> out.weights
tensor([0.0900, 0.2447, 0.6652])
>>> out.loss.backward(); losses.grad
tensor([0.0900, 0.2447, 0.6652])
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from .checks import require_finite
from .weighting import Robust, Uniform, Weighting, WeightingTerms


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


# --------------------------------------------------------------------------- reweight
class Reweighted(NamedTuple):
    """What ``reweight`` returns.

    Attributes:
        loss: scalar ``sum_i p_i L_i`` (times the world size under a process group),
            with gradient ``sum_i p_i grad L_i``.
        weights: the pmf p, shaped like the item losses, detached; 0 for masked items.
        mask: bool, shaped like the item losses: the items that took part.
    """

    loss: Tensor
    weights: Tensor
    mask: Tensor


def reweight(item_losses: Tensor, weighting: Union[Weighting, float, None] = None, *,
             step: int = 0, epoch: int = 0, labels: Optional[Tensor] = None,
             mask: Optional[Tensor] = None, process_group=None) -> Reweighted:
    r"""Unified gradient reweighting of any per-item loss (spectral, cross-entropy, ...).

    With ``F = weighting(L, step, epoch, labels)`` per item (see ``ugr_kernels.weighting``),

    .. math::
        p = \operatorname{softmax}(F)\ \text{over unmasked items},\qquad
        \text{loss} = \sum_i \operatorname{sg}(p_i)\, L_i ,

    so the gradient is exactly ``sum_i p_i grad L_i``. This is the tail of
    ``weighted_sisdr`` on its own: the same schemes, schedules, masking and global pmf.

    Args:
        item_losses: the per-item losses L, any shape with at least one dimension
            ((B,) for a classifier, (B, C) for per-source losses); lower is better.
            float16/bfloat16 losses are weighted in float32.
        weighting: a scheme (``Uniform()``, ``Robust(0.1)``, ``Curriculum(...)``,
            ``ClassBias(...)``, ``Custom(fn)`` or a sum of them), a plain float alpha
            (``F = alpha * L``), or None (uniform: the plain mean over valid items).
        step, epoch: training position that the scheme's schedules read.
        labels: class indices shaped like (or broadcastable to) ``item_losses``,
            needed by ``ClassBias``.
        mask: bool, broadcastable to ``item_losses``; False removes an item.
        process_group: normalise the pmf over the items of all ranks of this group and
            multiply the loss by the world size, so DDP's gradient *mean* over ranks is
            the single-process update on the global batch.

    Items with a non-finite loss are masked too: weight 0, they do not enter the
    normaliser, and the gradient reaching their entry of ``item_losses`` is exactly 0
    (whatever produced a NaN upstream may still yield NaN when multiplied by that 0,
    as anywhere in autograd; mask such items before computing them if that matters).

    Returns:
        ``Reweighted(loss, weights, mask)``.

    Raises:
        ValueError: naming the argument, for a non-tensor or 0-d ``item_losses``, labels
            or mask that do not broadcast to it, or a non-finite alpha.
    """
    if not isinstance(item_losses, Tensor) or not item_losses.is_floating_point():
        raise ValueError(f"item_losses must be a floating-point torch.Tensor, got "
                         f"{getattr(item_losses, 'dtype', type(item_losses).__name__)}")
    if item_losses.dim() == 0:
        raise ValueError("item_losses must have at least one dimension (the items), got a "
                         "0-d tensor; pass the per-item losses before any mean (reduction='none')")
    shape = item_losses.shape
    if labels is not None:
        labels = _broadcast_to("labels", labels, shape, item_losses.device)
    valid = torch.ones(shape, dtype=torch.bool, device=item_losses.device)
    if mask is not None:
        valid = _broadcast_to("mask", mask, shape, item_losses.device).to(torch.bool)
    terms = weighting_terms(weighting, step=step, epoch=epoch, labels=labels)
    if terms.bias is not None:
        terms.bias = _broadcast_to("labels", terms.bias, shape, item_losses.device)
    acc = torch.promote_types(item_losses.dtype, torch.float32)
    loss, weights, valid = weighted_item_loss(
        item_losses.to(acc), valid, alpha=terms.alpha, bias=terms.bias,
        score_fn=terms.score_fn(), process_group=process_group)
    return Reweighted(loss, weights, valid)


def weighting_terms(weighting: Union[Weighting, float, None], *, step: int = 0, epoch: int = 0,
                    labels: Optional[Tensor] = None) -> WeightingTerms:
    """The pieces of F for this call from a scheme, a plain float alpha, or None (uniform).

    Shared by ``reweight`` and ``WeightedSISDRLoss``; raises ``ValueError`` for a
    non-finite alpha (from a float or a schedule; in eager mode only, see
    ``checks.require_finite``) and for an unknown kind of weighting. Under
    ``torch.compile`` ``alpha`` stays a Python (symbolic) float: a schedule stepping
    with ``step`` recompiles at most once (when ``step`` becomes dynamic).
    """
    if weighting is None:
        weighting = Uniform()
    elif isinstance(weighting, (int, float)) and not isinstance(weighting, bool):
        require_finite("weighting alpha", weighting)
        weighting = Robust(float(weighting))
    elif not isinstance(weighting, Weighting):
        raise ValueError(f"weighting must be a ugr_kernels Weighting scheme, a float alpha or "
                         f"None, got {type(weighting).__name__}")
    terms = weighting.terms(step=step, epoch=epoch, labels=labels)
    # Schedules check their parameters once, at construction; this eager check catches a
    # user's schedule going non-finite and costs nothing (skipped) under torch.compile.
    if not torch.compiler.is_compiling():
        require_finite("weighting alpha", terms.alpha,
                       f" from {weighting!r} at step {step}, epoch {epoch}")
    return terms


def weighted_item_loss(item_loss: Tensor, valid: Tensor, *, alpha=0.0,
                       bias: Optional[Tensor] = None,
                       score_fn: Optional[Callable[[Tensor], Tensor]] = None,
                       process_group=None) -> tuple[Tensor, Tensor, Tensor]:
    """``F = alpha * L + bias + score_fn(L)`` -> masked softmax pmf p -> ``sum_i p_i L_i``.

    The common tail of ``weighted_sisdr`` and ``reweight``. ``item_loss`` and ``valid``
    have the same shape; items with a non-finite loss are dropped from ``valid`` and
    from the sum (``torch.where``, so their gradient is exactly 0, never NaN).

    Returns:
        (loss: scalar, times the world size under ``process_group``; weights: detached,
        shaped like ``item_loss``; valid: the bool mask actually used).
    """
    valid = valid & torch.isfinite(item_loss.detach())
    safe_loss = torch.where(valid, item_loss, torch.zeros_like(item_loss))
    score = score_items(safe_loss.detach(), alpha, bias, score_fn)
    weights = softmax_pmf(score, valid, process_group)
    loss = (weights * safe_loss).sum() * world_size(process_group)
    return loss, weights, valid


def score_items(loss: Tensor, alpha, bias: Optional[Tensor],
                score_fn: Optional[Callable[[Tensor], Tensor]]) -> Tensor:
    """F per item from the detached item losses (see ``weighted_item_loss``)."""
    # Always the product: a branch on alpha's value would be a guard under torch.compile
    # (a recompile when a schedule reaches 0). ``loss`` is finite here.
    score = loss * alpha
    if bias is not None:
        score = score + bias.to(device=loss.device, dtype=loss.dtype).expand_as(loss)
    if score_fn is not None:
        score = score + score_fn(loss).to(device=loss.device, dtype=loss.dtype).expand_as(loss)
    return score


def _broadcast_to(name: str, t, shape: torch.Size, device) -> Tensor:
    """``t`` as a tensor of ``shape`` on ``device``; a ValueError naming it if it cannot be."""
    t = torch.as_tensor(t, device=device)
    try:
        return t.expand(shape) if t.shape != shape else t
    except RuntimeError:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, which does not broadcast to the "
                         f"item losses' shape {tuple(shape)}") from None

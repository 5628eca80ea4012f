"""``weighted_sisdr``: batched (PIT) SI-SDR / SI-SDRi with a softmax pmf over the batch.

The flow::

    est, ref (B, C, T) -> sufficient statistics per (b, i, j)      [one pass over T]
                       -> SI-SDR matrix (B, C, C) -> PIT perm -> L per item
                       -> F = alpha * L + bias (+ score_fn(L)) -> masked softmax pmf p
                       -> loss = sum_i p_i L_i
    backward: per-item coefficients -> d est                         [one pass over T]

Where the backend has them (``ugr_kernels.fused``: C++, Triton) the whole forward is
one op and the backward another. Otherwise (a ``score_fn``, gradients for ``ref`` or
the mixture, PIT beyond 6 sources) only the two passes are ops (``ugr_kernels.ops``)
and the middle is the torch epilogue (``epilogue.py``), on (B, C, C) tensors in float64,
vectorised and free of host syncs.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor

from . import backends, fused
from .checks import alpha_tensor, check_inputs, item_tensor, raise_if_non_finite
from .epilogue import WeightedSISDRResult, sisdr_from_stats, weighted_pit_loss
from .ops import sufficient_stats
from .pit import MAX_PIT_SOURCES, permutation_table, pit_best_perm
from .reference import pairwise_sisdr

__all__ = ["WeightedSISDRResult", "weighted_sisdr", "MAX_PIT_SOURCES", "permutation_table",
           "pit_best_perm", "sisdr_from_stats"]


def weighted_sisdr(
    est: Tensor,
    ref: Tensor,
    *,
    mixture: Optional[Tensor] = None,
    alpha: Union[float, Tensor] = 0.0,
    bias: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    granularity: str = "source",
    pit: bool = True,
    zero_mean: bool = True,
    eps: float = 1e-12,
    clamp_db: Optional[float] = None,
    backend: str = "auto",
    score_fn: Optional[Callable[[Tensor], Tensor]] = None,
    process_group=None,
    check_finite: bool = True,
) -> WeightedSISDRResult:
    r"""Weighted, permutation-invariant negative SI-SDR(i) loss (unified gradient reweighting).

    For estimate x and reference y (centred when ``zero_mean``),

    .. math::
        \text{SI-SDR}(x, y) = 10\log_{10}\frac{\langle x,y\rangle^2 + \epsilon\|x\|^2\|y\|^2}
            {\|x\|^2\|y\|^2 - \langle x,y\rangle^2 + \epsilon\|x\|^2\|y\|^2}

    which equals the textbook ``10 log10(||s||^2 / ||e||^2)`` with ``s = <x,y>/||y||^2 y``,
    ``e = x - s`` up to the relative ``eps`` (bounds the value to about +-120 dB
    for the default, independent of amplitude). PIT picks per example the
    permutation maximising the mean SI-SDR over sources (exhaustive for C <= 6, an
    exact batched assignment solver on the device beyond).
    The item loss is ``L = -SI-SDR`` (``-SI-SDRi`` when a mixture is given), the
    weighting score ``F = alpha * L + bias + score_fn(L)``, and

    .. math::
        p_i = \operatorname{softmax}_i(F)\ \text{over unmasked items},\qquad
        \text{loss} = \sum_i \operatorname{sg}(p_i)\, L_i .

    The weights are constants in backward (stop-gradient ``sg``): the gradient is
    exactly ``sum_i p_i grad L_i``. With ``F = t L`` this is the gradient of tilted
    ERM ``(1/t) log mean exp(t L)``; the non-detached variant would instead give
    ``p_i (1 + t (L_i - sum_j p_j L_j))`` and is not UGR. ``alpha = 0`` with no
    bias is the plain mean PIT loss.

    Args:
        est: (B, C, T) estimates, float16/bfloat16/float32/float64.
        ref: (B, C, T) references, same device; treated like ``est`` if it needs grad.
        mixture: (B, T) or (B, 1, T); when given, L uses SI-SDRi.
        alpha: coefficient of L in F (> 0: hard examples, < 0: easy examples): a number
            (made a 0-d tensor on est's device by a fill, no host-to-device copy; under
            ``torch.compile`` a graph input, so a changing value recompiles at most once)
            or a 0-d floating tensor on est's device (another device is a ``ValueError``:
            moving it would be a blocking copy that a CUDA graph cannot capture).
        bias: per-item additive score on est's device, broadcastable to (B, C) for
            ``"source"`` granularity or (B,) for ``"example"`` (e.g. a class bias
            gamma[label]).
        mask: bool on est's device, broadcastable to (B, C) (or (B,)): False removes an
            item from the pmf.
        granularity: ``"source"``: the pmf is over the B*C (example, source) pairs after
            PIT; ``"example"``: over the B mixtures with L = mean over sources.
        pit: search the best permutation (else estimate i is matched to reference i).
        zero_mean: centre both signals over T first (standard SI-SDR).
        eps: relative regulariser, see above.
        clamp_db: soft upper bound of SI-SDR like an SNR_max: the error energy gets
            ``10**(-clamp_db/10) * ||s||^2`` added, so SI-SDR < clamp_db smoothly.
        backend: ``"auto"`` (triton/cuda on GPU, cpp on CPU, falling back to torch),
            ``"torch"``, ``"cpp"``, ``"triton"``, ``"cuda"``, or ``"reference"``
            (textbook autograd over T, the float64 oracle).
        score_fn: extra score term computed from the detached item losses.
        process_group: normalise the pmf over all ranks of this group and scale the
            loss by the world size, so DDP's gradient averaging yields the global update.
        check_finite: raise ``ValueError`` on NaN/inf inputs. The fast backends check
            their float64 statistics (a NaN/inf anywhere in a signal makes its mean and
            energy non-finite), which costs one host sync on (B, C) tensors instead of
            extra passes over T. Skipped while compiling, where non-finite items are
            masked out of the pmf instead; pass False for CUDA-graph capture.

    Items with a silent (zero-energy after centring) reference or estimate, or a
    silent mixture, are masked: they report SI-SDR 0, weight 0 and get zero gradient.

    Returns:
        ``WeightedSISDRResult(loss, sisdr, sisdri, weights, perm, mask)``; float
        tensors are float64 for float64 inputs and float32 otherwise.

    Example:
        >>> import torch, ugr_kernels as uk
        >>> ref = torch.randn(4, 2, 8000)
        >>> est = (ref.flip(1) + 0.1 * torch.randn_like(ref)).requires_grad_()
        >>> out = uk.weighted_sisdr(est, ref, mixture=ref.sum(1), alpha=0.1)
        >>> out.loss.backward()
        >>> out.perm[0].tolist(), tuple(out.sisdri.shape), round(float(out.weights.sum()), 6)
        ([1, 0], (4, 2), 1.0)
    """
    check = check_finite and not torch.compiler.is_compiling()
    est, ref, mixture = check_inputs(est, ref, mixture, granularity)
    batch, n_src = est.shape[0], est.shape[1]
    items = (batch, n_src) if granularity == "source" else (batch,)
    device = est.device
    alpha = alpha_tensor(alpha, device)
    bias = item_tensor("bias", bias, items, torch.float64, device)
    mask = item_tensor("mask", mask, items, torch.bool, device)
    out_dtype = torch.float64 if est.dtype == torch.float64 else torch.float32

    if backend != "reference" and score_fn is None:
        # One fused op forward and one backward where the backend has them (fused.py).
        ops = fused.ops_for(backends.resolve(backend, device.type), device.type)
        if ops is not None and not ref.requires_grad \
                and not (mixture is not None and mixture.requires_grad) \
                and not (pit and n_src > MAX_PIT_SOURCES):
            return WeightedSISDRResult(*fused.fused_weighted_sisdr(
                ops, est, ref, mixture, alpha, bias, mask, granularity, pit, zero_mean, eps,
                clamp_db, check, process_group))

    # The mixture's SI-SDR is differentiated like the estimates' when ref (or the
    # mixture) needs grad: SI-SDRi depends on ref through both terms.
    finite = []   # (name, 0-d bool tensor "has NaN/inf"): all read with one host sync
    mix_sisdr = mix_valid = None
    if backend == "reference":
        if check:
            finite += [(name, ~torch.isfinite(t).all()) for name, t in
                       (("est", est), ("ref", ref), ("mixture", mixture)) if t is not None]
        pair, pair_valid = pairwise_sisdr(est.double(), ref.double(), zero_mean=zero_mean,
                                          eps=eps, clamp_db=clamp_db)
        if mixture is not None:
            m, m_valid = pairwise_sisdr(mixture.double(), ref.double(),
                                        zero_mean=zero_mean, eps=eps)
            mix_sisdr, mix_valid = m[:, 0], m_valid[:, 0]
    else:
        name = backends.resolve(backend, device.type)
        mx, my, sxy, sxx, syy = sufficient_stats(est, ref, zero_mean, name)
        if check:
            finite += [("est", _stats_non_finite(mx, sxx)), ("ref", _stats_non_finite(my, syy))]
        pair, pair_valid = sisdr_from_stats(sxy, sxx, syy, eps=eps, clamp_db=clamp_db)
        if mixture is not None:
            mm, _, mxy, mxx, myy = sufficient_stats(mixture, ref, zero_mean, name)
            m, m_valid = sisdr_from_stats(mxy, mxx, myy, eps=eps)
            if check:
                finite.append(("mixture", _stats_non_finite(mm, mxx)))
            mix_sisdr, mix_valid = m[:, 0], m_valid[:, 0]
    if check:
        finite.append(("alpha", ~torch.isfinite(alpha)))
        if bias is not None:
            finite.append(("bias", ~torch.isfinite(bias).all()))
        raise_if_non_finite([n for n, _ in finite], torch.stack([bad for _, bad in finite]))

    out = weighted_pit_loss(pair, pair_valid, mix_sisdr, mix_valid, alpha=alpha, bias=bias,
                            mask=mask, granularity=granularity, pit=pit, score_fn=score_fn,
                            process_group=process_group)
    return WeightedSISDRResult(
        loss=out.loss.to(out_dtype),
        sisdr=out.sisdr.to(out_dtype),
        sisdri=None if out.sisdri is None else out.sisdri.to(out_dtype),
        weights=out.weights.to(out_dtype),
        perm=out.perm,
        mask=out.mask,
    )


def _stats_non_finite(mean: Tensor, energy: Tensor) -> Tensor:
    """A NaN/inf anywhere in a signal makes its mean and energy non-finite."""
    return ~(torch.isfinite(mean).all() & torch.isfinite(energy).all())

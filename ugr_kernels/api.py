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
and the middle is the readable torch code below, on (B, C, C) tensors in float64,
vectorised and free of host syncs.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import backends, fused
from .ops import sufficient_stats
from .pmf import weighted_item_loss
from .reference import pairwise_sisdr

# PIT: exhaustive search for C <= MAX_PIT_SOURCES, the exact batched Hungarian solver
# (ugr_kernels.assignment) above. Measured crossover (bench/bench_pit.py, B=16, 2-core
# CPU): C = 7, where both take ~1.8 ms; exhaustive is 6x faster at C = 6, the solver
# 15-40x faster at C = 8 (C! = 40320 permutations: 90 ms).
MAX_PIT_SOURCES = 6
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
        alpha: coefficient of L in F (> 0: hard examples, < 0: easy examples).
            A float or a 0-d tensor (a tensor avoids recompiles under torch.compile).
        bias: per-item additive score, broadcastable to (B, C) for ``"source"``
            granularity or (B,) for ``"example"`` (e.g. a class bias gamma[label]).
        mask: bool, broadcastable to (B, C) (or (B,)): False removes an item from the pmf.
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
    est, ref, mixture = _check_inputs(est, ref, mixture, granularity)
    batch, n_src = est.shape[0], est.shape[1]
    items = (batch, n_src) if granularity == "source" else (batch,)
    alpha = _check_alpha(alpha)
    bias = _check_items("bias", bias, items, est.device)
    mask = _check_items("mask", mask, items, est.device)
    out_dtype = torch.float64 if est.dtype == torch.float64 else torch.float32
    finite_checks = []   # (name, 0-d bool tensor): all read with one host sync below

    if backend != "reference" and score_fn is None:
        # One fused op forward and one backward where the backend has them (fused.py).
        ops = fused.ops_for(backends.resolve(backend, est.device.type))
        if ops is not None and not ref.requires_grad \
                and not (mixture is not None and mixture.requires_grad) \
                and not (pit and n_src > MAX_PIT_SOURCES):
            return WeightedSISDRResult(*fused.fused_weighted_sisdr(
                ops, est, ref, mixture, alpha, bias, mask, granularity, pit, zero_mean, eps,
                clamp_db, check, process_group))

    # The mixture's SI-SDR is differentiated like the estimates' when ref (or the
    # mixture) needs grad: SI-SDRi depends on ref through both terms.
    if backend == "reference":
        if check:
            finite_checks += [(name, torch.isfinite(t).all()) for name, t in
                              (("est", est), ("ref", ref), ("mixture", mixture)) if t is not None]
        pair, pair_valid = pairwise_sisdr(est.double(), ref.double(), zero_mean=zero_mean,
                                          eps=eps, clamp_db=clamp_db)
        mix_sisdr = mix_valid = None
        if mixture is not None:
            m, m_valid = pairwise_sisdr(mixture.double(), ref.double(),
                                        zero_mean=zero_mean, eps=eps)
            mix_sisdr, mix_valid = m[:, 0], m_valid[:, 0]
    else:
        name = backends.resolve(backend, est.device.type)
        mx, my, sxy, sxx, syy = sufficient_stats(est, ref, zero_mean, name)
        if check:
            finite_checks += [("est", _stats_finite(mx, sxx)), ("ref", _stats_finite(my, syy))]
        pair, pair_valid = sisdr_from_stats(sxy, sxx, syy, eps=eps, clamp_db=clamp_db)
        mix_sisdr = mix_valid = None
        if mixture is not None:
            mm, _, mxy, mxx, myy = sufficient_stats(mixture, ref, zero_mean, name)
            m, m_valid = sisdr_from_stats(mxy, mxx, myy, eps=eps)
            if check:
                finite_checks.append(("mixture", _stats_finite(mm, mxx)))
            mix_sisdr, mix_valid = m[:, 0], m_valid[:, 0]
    if check:
        if isinstance(alpha, Tensor):
            finite_checks.append(("alpha", torch.isfinite(alpha).all()))
        if bias is not None:
            finite_checks.append(("bias", torch.isfinite(bias).all()))
        _raise_if_non_finite(finite_checks)

    perm = pit_best_perm(pair, pair_valid) if pit else _identity_perm(batch, n_src, est.device)
    sisdr = pair.gather(1, perm.unsqueeze(1)).squeeze(1)              # (B, C)
    valid = pair_valid.gather(1, perm.unsqueeze(1)).squeeze(1)
    sisdri = None
    if mix_sisdr is not None:
        valid = valid & mix_valid
        sisdri = torch.where(valid, sisdr - mix_sisdr, torch.zeros_like(sisdr))
    if mask is not None and granularity == "source":
        valid = valid & mask.to(torch.bool).expand(batch, n_src)
    sisdr = torch.where(valid, sisdr, torch.zeros_like(sisdr))

    item_loss = -(sisdri if sisdri is not None else sisdr)
    item_valid = valid
    if granularity == "example":
        count = valid.sum(1)
        item_loss = item_loss.sum(1) / count.clamp(min=1)
        item_valid = count > 0
        if mask is not None:
            item_valid = item_valid & mask.to(torch.bool).reshape(-1).expand(batch)
    loss, weights, _ = weighted_item_loss(item_loss, item_valid, alpha=alpha, bias=bias,
                                          score_fn=score_fn, process_group=process_group)

    return WeightedSISDRResult(
        loss=loss.to(out_dtype),
        sisdr=sisdr.to(out_dtype),
        sisdri=None if sisdri is None else sisdri.to(out_dtype),
        weights=weights.to(out_dtype),
        perm=perm,
        mask=valid if granularity == "source" else valid & item_valid.unsqueeze(1),
    )


def sisdr_from_stats(sxy: Tensor, sxx: Tensor, syy: Tensor, *, eps: float = 1e-12,
                     clamp_db: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """SI-SDR matrix (B, Cx, Cy) in dB from the sufficient statistics, and its validity mask.

    ``rho = sxy / sqrt(sxx) / sqrt(syy)`` is the correlation, formed without the
    product ``sxx * syy`` so it neither underflows nor overflows anywhere in the
    float64 range (amplitudes 1e-150 .. 1e150 give the same SI-SDR as 1);
    SI-SDR = 10 log10((rho^2 + eps) / ((1 - rho)(1 + rho) + eps [+ tau (rho^2 + eps)])).
    ``(1 - rho)(1 + rho)`` is exact to rounding near |rho| = 1 (about 100 dB of range
    with float64 statistics). Valid: both energies positive and all three finite.
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


_PERM_CACHE: dict = {}


def permutation_table(n_src: int, device: torch.device) -> Tensor:
    """All n_src! permutations as a (P, n_src) int64 tensor on ``device`` (cached)."""
    if torch.compiler.is_compiling():
        return torch.tensor(list(itertools.permutations(range(n_src))), dtype=torch.long,
                            device=device)
    key = (n_src, str(device))
    if key not in _PERM_CACHE:
        _PERM_CACHE[key] = torch.tensor(list(itertools.permutations(range(n_src))),
                                        dtype=torch.long, device=device)
    return _PERM_CACHE[key]


def pit_best_perm(pair: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """PIT on a (B, C, C) score matrix ``pair[b, i, j]`` (estimate i, reference j).

    Exhaustive search over the C! permutations for C <= ``MAX_PIT_SOURCES``; beyond,
    the exact batched assignment solver ``ugr_kernels.assignment.best_assignment``
    (same optimum; ties may resolve to a different permutation of equal total).

    Returns ``perm`` (B, C) int64 with ``perm[b, j]`` the estimate for reference j that
    maximises ``sum_j pair[b, perm[b, j], j]``; invalid entries count as 0. All on the
    device, no host sync (ties resolve to the first permutation in lexicographic order).
    """
    batch, n_src = pair.shape[0], pair.shape[1]
    if n_src > MAX_PIT_SOURCES:
        from .assignment import best_assignment  # exact batched Hungarian, on the device
        return best_assignment(pair, valid)
    scores = pair.detach()
    if valid is not None:
        scores = torch.where(valid, scores, torch.zeros_like(scores))
    table = permutation_table(n_src, pair.device)                      # (P, C)
    cols = torch.arange(n_src, device=pair.device)
    flat_index = (table * n_src + cols).reshape(-1)                     # row-major (i, j)
    per_perm = scores.reshape(batch, n_src * n_src)[:, flat_index]
    total = per_perm.reshape(batch, -1, n_src).sum(-1)                  # (B, P)
    return table[total.argmax(dim=1)]


def _identity_perm(batch: int, n_src: int, device) -> Tensor:
    return torch.arange(n_src, device=device).expand(batch, n_src).contiguous()


def _stats_finite(mean: Tensor, energy: Tensor) -> Tensor:
    """A NaN/inf anywhere in a signal makes its mean and energy non-finite."""
    return torch.isfinite(mean).all() & torch.isfinite(energy).all()


def _raise_if_non_finite(checks) -> None:
    """One host sync for all the finite checks of a call."""
    if not checks:
        return
    device = checks[0][1].device
    flags = torch.stack([flag.to(device) for _, flag in checks]).cpu().tolist()
    for (name, _), ok in zip(checks, flags):
        if not ok:
            if name in ("alpha", "bias"):
                raise ValueError(f"{name} contains NaN or inf values: every score F would be "
                                 f"non-finite and no item would be trained")
            raise ValueError(f"{name} contains NaN or inf values (or float64 values too large "
                             f"to square)")


def _check_alpha(alpha):
    """alpha: a finite real number or a 0-d (or one-element) floating tensor."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, Tensor)):
        raise ValueError(f"alpha must be a number or a 0-d torch.Tensor, got "
                         f"{type(alpha).__name__}")
    if isinstance(alpha, Tensor):
        if alpha.numel() != 1:
            raise ValueError(f"alpha must be a number or a 0-d tensor, got a tensor of shape "
                             f"{tuple(alpha.shape)}")
        if not alpha.is_floating_point():
            alpha = alpha.to(torch.float64)
        return alpha if alpha.dim() == 0 else alpha.reshape(())
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha}: every score F would be "
                         f"non-finite and no item would be trained")
    return alpha


def _check_items(name: str, value, items: tuple, device) -> Optional[Tensor]:
    """bias / mask: None or a tensor broadcastable to the items ((B, C) or (B,))."""
    if value is None:
        return None
    what = "(batch, sources)" if len(items) == 2 else "(batch,) for granularity='example'"
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor broadcastable to {what} = {items}, "
                         f"got {type(value).__name__}")
    if len(items) == 1 and value.dim() == 2 and value.shape[1] == 1:
        value = value[:, 0]              # (B, 1): one value per example
    try:
        torch.broadcast_shapes(value.shape, items)
        ok = value.dim() <= len(items)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be broadcastable to {what} = {items}, got shape "
                         f"{tuple(value.shape)}")
    if value.device != device and value.numel() > 1:
        raise ValueError(f"{name} must be on {device} like est, got {value.device}")
    if name == "bias" and not value.is_floating_point():
        value = value.to(torch.float64)
    return value


def _check_inputs(est, ref, mixture, granularity):
    if granularity not in ("source", "example"):
        raise ValueError(f"granularity must be 'source' or 'example', got {granularity!r}")
    for name, t in (("est", est), ("ref", ref)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{name} must have shape (batch, sources, time), got {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be float16/bfloat16/float32/float64, got {t.dtype}")
    if est.shape != ref.shape:
        raise ValueError(f"est and ref must have the same shape (batch, sources, time), "
                         f"got {tuple(est.shape)} and {tuple(ref.shape)}")
    if min(est.shape) < 1:
        raise ValueError(f"est has an empty dimension: {tuple(est.shape)}")
    if est.device != ref.device:
        raise ValueError(f"est and ref must be on the same device, got {est.device} and "
                         f"{ref.device}")
    if mixture is not None:
        if not isinstance(mixture, Tensor) or mixture.dtype not in _FLOAT_DTYPES:
            raise ValueError("mixture must be a floating-point torch.Tensor")
        if mixture.dim() == 2:
            mixture = mixture.unsqueeze(1)
        if mixture.dim() != 3 or mixture.shape[1] != 1 or mixture.shape[0] != est.shape[0] \
                or mixture.shape[2] != est.shape[2]:
            raise ValueError(f"mixture must have shape ({est.shape[0]}, {est.shape[2]}) or "
                             f"({est.shape[0]}, 1, {est.shape[2]}), got {tuple(mixture.shape)}")
        if mixture.device != est.device:
            raise ValueError(f"mixture must be on {est.device}, got {mixture.device}")
    common = torch.promote_types(est.dtype, ref.dtype)
    if mixture is not None:
        mixture = mixture.to(common)
    return est.to(common), ref.to(common), mixture

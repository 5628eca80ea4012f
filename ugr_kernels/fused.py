"""The fused path: the whole weighted PIT SI-SDR(i) as one op forward and one op backward.

``weighted_sisdr`` (``api.py``) takes this path when the resolved backend has fused ops
(``FUSED_BACKENDS``), ``score_fn`` is None (with a ``process_group`` the pmf is then
formed over the ranks in torch, see ``fused_weighted_sisdr``), PIT is exhaustive
(C <= 6 or ``pit=False``) and neither ``ref`` nor ``mixture`` needs a gradient; everything
else goes through the two passes and the torch epilogue (the readable reference path).

The ops (schemas defined here, once; kernels registered per device: the C++ CPU
kernels by ``csrc/ugr_fused_cpu.cpp`` with ``TORCH_LIBRARY_IMPL(ugr, CPU)``, the CUDA
kernels, when the extension is built with CUDA, by ``csrc/cuda/ugr_fused_cuda.cu`` with
``TORCH_LIBRARY_IMPL(ugr, CUDA)``: backend name "cuda", three launches per forward +
backward, no host sync; there a non-finite alpha or bias is not raised by the op, its
items drop out of the pmf, and ``check_finite`` raises)::

    ugr::weighted_sisdr_fwd(Tensor est, Tensor ref, Tensor? mixture, Tensor alpha,
        Tensor? bias, Tensor? mask, bool by_source, bool pit, bool zero_mean, float eps,
        float clamp_db) -> (Tensor loss, Tensor sisdr, Tensor sisdri, Tensor weights,
        Tensor perm, Tensor valid, Tensor coef)
    ugr::weighted_sisdr_bwd(Tensor grad_loss, Tensor? grad_sisdr, Tensor? grad_sisdri,
        Tensor est, Tensor ref, Tensor perm, Tensor coef) -> Tensor

Forward inputs: est, ref (B, C, T) of one float dtype; mixture (B, T) (or (B, 1, T)) of
that dtype or None; alpha a 0-d float64 tensor on est's device (a tensor, never a Python
float, so that a schedule does not recompile); bias float64 and mask bool of the item
shape ((B, C) when ``by_source``, else (B,)) or None; ``clamp_db = inf`` for no clamp;
``eps`` relative. Non-finite alpha or bias raise ``ValueError``.

Forward outputs: loss 0-d; sisdr, sisdri (B, C) (sisdri all 0 without a mixture);
weights of the item shape; float outputs float64 for float64 inputs, else float32; perm
(B, C) int64 (``perm[b, j]`` = estimate for reference j); valid (B, C) bool (the result's
``mask``); coef (B, C, COEF_WIDTH) float64, per reference j of example b with
k = perm[b, j]:

    0 w       d loss / d SI-SDR(k, j): -p_j (source) or -p_b / count_b (example), 0 if masked
    1 a       d SI-SDR(k, j) / d sxy[k, j]        (0 when the pair is invalid)
    2 c       2 d SI-SDR(k, j) / d sxx[k]         (0 when the pair is invalid)
    3 mx_k    mean of est row k (0 without zero_mean)
    4 my_j    mean of ref row j (0 without zero_mean)
    5 1 when sisdr[b, j] depends on est (grad_sisdr gate), else 0
    6 1 when sisdri[b, j] depends on est (grad_sisdri gate), else 0
    7, 8, 9   1 when est row j, ref row j, the mixture of example b hold NaN/inf
              (or float64 values too large to square), else 0: ``check_finite``
              reads these with one host sync

Backward: ``grad_sisdr`` / ``grad_sisdri`` may be None (the autograd glue does not
materialise zeros; ``grad_loss`` is always a 0-d tensor). Per (b, j), s_j = grad_loss w
+ [gate5] grad_sisdr[b, j] + [gate6] grad_sisdri[b, j], and
``d est[b, k, t] = s_j a (ref[b, j, t] - my_j) + s_j c (est[b, k, t] - mx_k)``, centred
and multiplied in float64, rounded once to est's dtype; a term whose factor is exactly 0
contributes exactly 0 (masked items get zero gradient even if they hold NaN).

Autograd of these two ops is registered in C++ by the extension
(``TORCH_LIBRARY_IMPL(ugr, Autograd)``, for every device), or here in Python when the
extension is not built. Another backend plugs in with ``register_backend(name, fwd_op,
bwd_op)``: either its own ops of the same signatures (e.g. ``torch.library.triton_op``;
this module's ``register_autograd`` glue is put on them), or a device kernel registered
on these ops (``torch.library.register_kernel("ugr::weighted_sisdr_fwd", "cuda", ...)``)
and ``register_backend(name, WEIGHTED_SISDR_FWD, WEIGHTED_SISDR_BWD, autograd=False)``.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

COEF_WIDTH = 10
_COEF_FLAGS = slice(7, 10)
_FLAG_NAMES = ("est", "ref", "mixture")

FWD_SCHEMA = ("(Tensor est, Tensor ref, Tensor? mixture, Tensor alpha, Tensor? bias, "
              "Tensor? mask, bool by_source, bool pit, bool zero_mean, float eps, "
              "float clamp_db) -> (Tensor loss, Tensor sisdr, Tensor sisdri, Tensor weights, "
              "Tensor perm, Tensor valid, Tensor coef)")
BWD_SCHEMA = ("(Tensor grad_loss, Tensor? grad_sisdr, Tensor? grad_sisdri, Tensor est, "
              "Tensor ref, Tensor perm, Tensor coef) -> Tensor")

# Defined in Python (a FRAGMENT of the ``ugr`` namespace, like ops.py's custom ops) so the
# schemas exist with or without the compiled extension; its TORCH_LIBRARY_IMPL kernels
# may be registered before or after these definitions.
_LIB = torch.library.Library("ugr", "FRAGMENT")
_LIB.define("weighted_sisdr_fwd" + FWD_SCHEMA)
_LIB.define("weighted_sisdr_bwd" + BWD_SCHEMA)
WEIGHTED_SISDR_FWD = torch.ops.ugr.weighted_sisdr_fwd.default
WEIGHTED_SISDR_BWD = torch.ops.ugr.weighted_sisdr_bwd.default


@torch.library.register_fake("ugr::weighted_sisdr_fwd")
def _fwd_fake(est, ref, mixture, alpha, bias, mask, by_source, pit, zero_mean, eps, clamp_db):
    batch, n_src = est.shape[0], est.shape[1]
    out = torch.float64 if est.dtype == torch.float64 else torch.float32
    items = (batch, n_src) if by_source else (batch,)
    return (est.new_empty((), dtype=out), est.new_empty((batch, n_src), dtype=out),
            est.new_empty((batch, n_src), dtype=out), est.new_empty(items, dtype=out),
            est.new_empty((batch, n_src), dtype=torch.int64),
            est.new_empty((batch, n_src), dtype=torch.bool),
            est.new_empty((batch, n_src, COEF_WIDTH), dtype=torch.float64))


@torch.library.register_fake("ugr::weighted_sisdr_bwd")
def _bwd_fake(grad_loss, grad_sisdr, grad_sisdri, est, ref, perm, coef):
    return torch.empty_like(est, memory_format=torch.contiguous_format)


class FusedOps(NamedTuple):
    fwd: Callable
    bwd: Optional[Callable]
    #: coef slots of the non-finite flags of est, ref, mixture (read by check_finite).
    flags: slice = _COEF_FLAGS
    #: False: torch.compile cannot trace these ops (interpreted Triton kernels).
    traceable: bool = True


FUSED_BACKENDS: dict = {}
# Set False (or use ``disabled()``) to force the two-pass path, e.g. to benchmark it.
enabled = True


@contextlib.contextmanager
def disabled():
    """Within this block ``weighted_sisdr`` uses the two-pass path and the torch epilogue."""
    global enabled
    before, enabled = enabled, False
    try:
        yield
    finally:
        enabled = before


def register_backend(name: str, fwd: Callable, bwd: Optional[Callable], *,
                     autograd: bool = True, flags: slice = _COEF_FLAGS,
                     traceable: bool = True) -> None:
    """Let backend ``name`` take the fused path with ops of the signatures above.

    ``autograd=True`` registers this module's autograd formula on ``fwd`` (calling
    ``bwd``); pass False when ``fwd`` already has it (e.g. the ops defined here, or
    the Triton ops, which carry their own). ``flags``: where ``fwd``'s coef holds the
    non-finite flags of est, ref and the mixture.
    """
    if autograd:
        _register_autograd(fwd, bwd)
    FUSED_BACKENDS[name] = FusedOps(fwd, bwd, flags, traceable)


def ops_for(backend: str) -> Optional[FusedOps]:
    """The fused ops of a resolved backend name, or None (then: the two-pass path)."""
    if not enabled:
        return None
    if backend == "triton" and backend not in FUSED_BACKENDS:
        # Imported on first use (triton is heavy); the module registers itself.
        from .backends.triton import fused as _triton_fused  # noqa: F401
    ops = FUSED_BACKENDS.get(backend)
    if ops is not None and not ops.traceable and torch.compiler.is_compiling():
        return None
    return ops


def _register_autograd(fwd, bwd) -> None:
    def setup_context(ctx, inputs, output):
        est, ref = inputs[0], inputs[1]
        _, _, _, weights, perm, valid, coef = output
        ctx.save_for_backward(est, ref, perm, coef)
        # The weights are constants in backward by design (stop-gradient).
        ctx.mark_non_differentiable(weights, perm, valid, coef)
        ctx.set_materialize_grads(False)
        ctx.ref_or_mix_needs_grad = (isinstance(ref, Tensor) and ref.requires_grad) or (
            isinstance(inputs[2], Tensor) and inputs[2].requires_grad)

    def backward(ctx, grad_loss, grad_sisdr, grad_sisdri, *_):
        if ctx.ref_or_mix_needs_grad:
            raise RuntimeError("the fused weighted SI-SDR ops differentiate est only; "
                               "weighted_sisdr uses the two-pass path when ref or the mixture "
                               "needs a gradient")
        est, ref, perm, coef = ctx.saved_tensors
        d_est = None
        if ctx.needs_input_grad[0] and not (grad_loss is None and grad_sisdr is None
                                            and grad_sisdri is None):
            if grad_loss is None:
                grad_loss = coef.new_zeros(())
            d_est = bwd(grad_loss, grad_sisdr, grad_sisdri, est, ref, perm, coef)
        return (d_est,) + (None,) * 10

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


def _load_extension():
    from .backends._extension import extension
    return extension()


# The compiled extension registers these ops' autograd in C++ (the Python glue costs
# ~100 us per forward+backward, more than the whole CPU loss at training shapes);
# without it (a device kernel registered on these ops from Python) the glue below.
register_backend("cpp", WEIGHTED_SISDR_FWD, WEIGHTED_SISDR_BWD,
                 autograd=_load_extension() is None)


def has_fused_cuda() -> bool:
    """The extension registers CUDA kernels on these ops (``csrc/cuda/ugr_fused_cuda.cu``)."""
    ext = _load_extension()
    return (ext is not None and getattr(ext, "has_fused_cuda", lambda: False)()
            and torch._C._dispatch_has_kernel_for_dispatch_key(
                "ugr::weighted_sisdr_fwd", "CUDA"))


# The CUDA kernels are registered on the same ops (dispatch key CUDA), and the
# extension's C++ autograd kernel serves every device: no Python glue.
if has_fused_cuda():
    register_backend("cuda", WEIGHTED_SISDR_FWD, WEIGHTED_SISDR_BWD, autograd=False)


def fused_weighted_sisdr(ops: FusedOps, est: Tensor, ref: Tensor, mixture: Optional[Tensor],
                         alpha, bias, mask, granularity: str, pit: bool, zero_mean: bool,
                         eps: float, clamp_db: Optional[float], check: bool,
                         process_group=None):
    """The fields of ``WeightedSISDRResult`` from one fused forward (inputs already checked
    by ``api._check_inputs``); ``check``: raise on non-finite inputs (one host sync).

    With a ``process_group`` the pmf must span every rank: the op's local weights and
    loss are dropped and the epilogue splits at the two all-reduces (``softmax_pmf``),
    the loss taking its gradient through the op's sisdr / sisdri outputs, so the
    backward is still the one fused pass (with the same per-item factors as one process
    holding the whole batch).
    """
    batch, n_src = est.shape[0], est.shape[1]
    by_source = granularity == "source"
    items = (batch, n_src) if by_source else (batch,)
    device = est.device
    alpha = _alpha_tensor(alpha, device)
    bias = _item_tensor(bias, items, torch.float64, "bias", device)
    loss, sisdr, sisdri, weights, perm, valid, coef = ops.fwd(
        est, ref, mixture, alpha, bias, _item_tensor(mask, items, torch.bool, "mask", device),
        by_source, pit, zero_mean, float(eps),
        math.inf if clamp_db is None else float(clamp_db))
    if check:
        _raise_if_non_finite(coef[:, :, ops.flags], alpha, bias)
    sisdri = sisdri if mixture is not None else None
    if process_group is not None:
        loss, weights = _group_loss(sisdr, sisdri, valid, by_source, alpha, bias, process_group)
    return loss, sisdr, sisdri, weights, perm, valid


def _raise_if_non_finite(flags: Tensor, alpha: Tensor, bias: Optional[Tensor]) -> None:
    """check_finite: the op's row flags, alpha and bias, read with one host sync."""
    bad = [flags.amax(dim=(0, 1)) != 0, ~torch.isfinite(alpha).reshape(1)]
    if bias is not None:
        bad.append((~torch.isfinite(bias)).any().reshape(1))
    bad = torch.cat(bad).tolist()
    for name, is_bad in zip(_FLAG_NAMES, bad):
        if is_bad:
            raise ValueError(f"{name} contains NaN or inf values (or float64 values too "
                             f"large to square)")
    for name, is_bad in zip(("alpha", "bias"), bad[3:]):
        if is_bad:
            raise ValueError(f"{name} contains NaN or inf values: every score F would be "
                             f"non-finite and no item would be trained")


def _group_loss(sisdr, sisdri, valid, by_source, alpha, bias, group):
    """The pmf over all ranks of ``group`` and the loss (times the world size)."""
    from .pmf import weighted_item_loss

    item_loss = -(sisdri if sisdri is not None else sisdr).double()
    item_valid = valid
    if not by_source:
        count = valid.sum(1)         # valid is False for a whole example masked by the user
        item_loss = item_loss.sum(1) / count.clamp(min=1)
        item_valid = count > 0
    loss, weights, _ = weighted_item_loss(item_loss, item_valid, alpha=alpha, bias=bias,
                                          process_group=group)
    return loss.to(sisdr.dtype), weights.to(sisdr.dtype)


def _alpha_tensor(alpha, device) -> Tensor:
    if isinstance(alpha, Tensor):
        if alpha.numel() != 1 or not alpha.is_floating_point():
            raise ValueError(f"alpha must be a float or a 0-d float tensor, got a "
                             f"{alpha.dtype} tensor of shape {tuple(alpha.shape)}")
        if alpha.dtype != torch.float64 or alpha.device != device:
            alpha = alpha.to(device=device, dtype=torch.float64)
        return alpha.reshape(()) if alpha.dim() else alpha
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha}")
    if torch.device(device).type == "cpu":
        return torch.tensor(alpha, dtype=torch.float64)
    # On a GPU a fill kernel, not a blocking host-to-device copy: CUDA-graph capturable.
    return torch.full((), alpha, dtype=torch.float64, device=device)


def _item_tensor(t, items: tuple, dtype, name: str, device) -> Optional[Tensor]:
    """``t`` as an item-shaped tensor of ``dtype`` on ``device``; no op when it already is."""
    if t is None:
        return None
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t)
    shape = tuple(t.shape)
    if shape != items:
        if len(items) == 1 and len(shape) == 2 and shape[1] == 1:
            t, shape = t[:, 0], shape[:1]           # (B, 1) for per-example items
        try:
            ok = tuple(torch.broadcast_shapes(shape, items)) == items
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{name} must be broadcastable to {items} (granularity "
                             f"{'source' if len(items) == 2 else 'example'}), got shape {shape}")
        t = t.expand(items)
    if t.dtype != dtype or t.device != device:
        t = t.to(device=device, dtype=dtype)
    return t

"""The fused path: the whole weighted PIT SI-SDR(i) as one op forward and one op backward.

``weighted_sisdr`` (``api.py``) takes this path when the resolved backend serves the
fused ops on the device (``backends.REGISTRY``), ``score_fn`` is None (with a
``process_group`` the pmf is then formed over the ranks by the torch epilogue, see
``fused_weighted_sisdr``), PIT is exhaustive (C <= 6 or ``pit=False``) and neither
``ref`` nor ``mixture`` needs a gradient; everything else goes through the two passes
and the torch epilogue (``epilogue.py``, the readable reference path).

The ops (schemas defined here, once; a kernel per device, see below)::

    ugr::weighted_sisdr_fwd(Tensor est, Tensor ref, Tensor? mixture, Tensor alpha,
        Tensor? bias, Tensor? mask, bool by_source, bool pit, bool zero_mean, float eps,
        float clamp_db) -> (Tensor loss, Tensor sisdr, Tensor sisdri, Tensor weights,
        Tensor perm, Tensor valid, Tensor coef)
    ugr::weighted_sisdr_bwd(Tensor grad_loss, Tensor? grad_sisdr, Tensor? grad_sisdri,
        Tensor est, Tensor ref, Tensor perm, Tensor coef) -> Tensor

Forward inputs: est, ref (B, C, T) of one float dtype; mixture (B, T) (or (B, 1, T)) of
that dtype or None; alpha a 0-d float64 tensor on est's device (``checks.alpha_tensor``
makes a Python float a device fill, so a changing alpha is data, not a constant of a
compiled graph); bias float64 and mask bool of the item shape ((B, C) when
``by_source``, else (B,)) or None, on est's device; ``clamp_db = inf`` for no clamp;
``eps`` relative. The CPU kernels raise ``ValueError`` for a non-finite alpha or bias;
the CUDA kernels cannot without a sync: there those items drop out of the pmf, and
``check_finite`` raises (the extension's CUDA forward + backward is four launches (tile pass,
per-example epilogue, batch normaliser, backward), no host sync).

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

One schema, a kernel per device (torchvision's pattern):

- **CPU**: the extension's C++ kernels (``csrc/ugr_fused_cpu.cpp``,
  ``TORCH_LIBRARY_IMPL(ugr, CPU)``), backend name ``"cpp"``.
- **CUDA**: one of two implementations serves the ops' CUDA dispatch key, a
  process-wide choice (``use_cuda_kernel``):

  - ``"triton"`` (the default where triton is installed): the Triton kernels'
    ``backends/triton/fused.py: forward / backward`` (the schemas' argument order and
    coef layout), registered from Python with
    ``torch.library.Library("ugr", "IMPL").impl(name, fn, "CUDA", allow_override=True)``
    over the extension's CUDA kernels; backend name ``"triton"``.
  - ``"extension"``: the extension's CUDA kernels (``csrc/cuda/ugr_fused_cuda.cu``,
    ``TORCH_LIBRARY_IMPL(ugr, CUDA)``), the fallback without triton; backend name
    ``"cuda"``. Choosing it drops the Triton registration, which uncovers them again.

  A user picks with ``$UGR_CUDA_KERNEL=triton|extension`` (read when the CUDA kernel
  is first needed, and by ``backend="auto"``), with ``use_cuda_kernel(name)``, or per
  call with ``backend="triton"`` / ``backend="cuda"``, which switch the process-wide
  registration when it differs (the last explicit choice wins; under
  ``torch.compile`` the switch happens once, at trace time).
- **Autograd** once for every device: the extension's C++ kernel
  (``TORCH_LIBRARY_IMPL(ugr, Autograd)``), or, without the extension, this module's
  formula (``_setup_context`` / ``_make_backward``) registered on the ops.
- **Triton on CPU tensors** (``backend="triton"`` with ``TRITON_INTERPRET=1``, the
  tests): the CPU key belongs to the C++ kernels, so the fused path calls the same
  Triton ``forward`` / ``backward`` directly through ``torch.autograd.Function`` with
  the same autograd formula. Interpreted kernels cannot be traced: under
  ``torch.compile`` that route takes the two passes.

Another backend plugs in with ``register_backend(name, fwd, bwd)``: ops of the same
signatures (this module's autograd formula is put on them unless ``autograd=False``).
Until the Triton module provides ``forward`` / ``backward``, it registers its own
``ugr::triton_weighted_sisdr_*`` op pair this way (coef layout of its own, flags in
``FusedOps.flags``); that transitional route is used in preference when present.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import os
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from . import backends
from .checks import alpha_tensor, item_tensor, raise_if_non_finite
from .epilogue import weighted_items

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
    """How the fused path calls a backend: ``fwd`` with the forward schema's arguments."""

    fwd: Callable
    bwd: Optional[Callable]
    #: coef slots of the non-finite flags of est, ref, mixture (read by check_finite).
    flags: slice = _COEF_FLAGS
    #: False: torch.compile cannot trace these ops (interpreted Triton kernels).
    traceable: bool = True


#: The ``ugr::weighted_sisdr_fwd/_bwd`` ops: the dispatcher picks the device's kernel.
SCHEMA_OPS = FusedOps(WEIGHTED_SISDR_FWD, WEIGHTED_SISDR_BWD)
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


# ----------------------------------------------------------------- autograd, once
def _setup_context(ctx, inputs, output):
    est, ref = inputs[0], inputs[1]
    _, _, _, weights, perm, valid, coef = output
    ctx.save_for_backward(est, ref, perm, coef)
    # The weights are constants in backward by design (stop-gradient).
    ctx.mark_non_differentiable(weights, perm, valid, coef)
    ctx.set_materialize_grads(False)
    ctx.ref_or_mix_needs_grad = (isinstance(ref, Tensor) and ref.requires_grad) or (
        isinstance(inputs[2], Tensor) and inputs[2].requires_grad)


def _make_backward(bwd: Callable) -> Callable:
    """The backward formula of the forward op, calling ``bwd`` (the backward schema)."""

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

    return backward


def _register_autograd(fwd, bwd) -> None:
    torch.library.register_autograd(fwd, _make_backward(bwd), setup_context=_setup_context)


def register_backend(name: str, fwd: Callable, bwd: Optional[Callable], *,
                     autograd: bool = True, flags: slice = _COEF_FLAGS,
                     traceable: bool = True, devices: tuple = ("cpu", "cuda")) -> None:
    """Let backend ``name`` take the fused path on ``devices`` with ops of the schemas'
    signatures (an entry of ``backends.REGISTRY``, its two passes kept if it had any).

    ``autograd=True`` registers this module's autograd formula on ``fwd`` (calling
    ``bwd``); pass False when ``fwd`` already has it. ``flags``: where ``fwd``'s coef
    holds the non-finite flags of est, ref and the mixture.
    """
    if autograd:
        _register_autograd(fwd, bwd)
    entry = backends.REGISTRY.get(name, backends.Backend(None))
    backends.register(name, entry._replace(fused_on=tuple(devices),
                                           fused_ops=FusedOps(fwd, bwd, flags, traceable)))


def _load_extension():
    from .backends._extension import extension
    return extension()


# The compiled extension registers these ops' autograd in C++ for every device (the
# Python glue costs ~100 us per forward+backward, more than the whole CPU loss at
# training shapes); without it, the same formula in Python.
if _load_extension() is None:
    _register_autograd(WEIGHTED_SISDR_FWD, WEIGHTED_SISDR_BWD)


def has_fused_cuda() -> bool:
    """The extension has CUDA kernels for these ops (``csrc/cuda/ugr_fused_cuda.cu``)."""
    ext = _load_extension()
    return ext is not None and bool(getattr(ext, "has_fused_cuda", lambda: False)())


# ----------------------------------------------------------------- the CUDA kernel
CUDA_KERNELS = ("triton", "extension")
_TRITON_FUSED = "ugr_kernels.backends.triton.fused"
_triton_cuda_lib = None    # the Library whose CUDA kernels are the Triton ones, or None


def triton_kernels() -> Optional[tuple]:
    """The Triton fused kernels ``(forward, backward)`` with the schemas' argument order
    and coef layout, or None (no triton, or a Triton module without them)."""
    try:
        module = importlib.import_module(_TRITON_FUSED)
    except ImportError:
        return None
    fwd, bwd = getattr(module, "forward", None), getattr(module, "backward", None)
    return None if fwd is None or bwd is None else (fwd, bwd)


def cuda_kernel() -> Optional[str]:
    """Which implementation serves the ops' CUDA key now: "triton", "extension" or None."""
    if _triton_cuda_lib is not None:
        return "triton"
    return "extension" if has_fused_cuda() else None


def use_cuda_kernel(name: Optional[str] = None) -> Optional[str]:
    """Make ``name`` ("triton" or "extension") the CUDA kernel of the fused ops.

    ``None``: ``$UGR_CUDA_KERNEL`` if set, else "triton" where its kernels exist, else
    "extension". Returns the kernel now in use, None when the wanted one is missing
    (then the fused path is off on CUDA and ``weighted_sisdr`` takes the two passes).
    A registration only (no device work): call it before capturing or compiling.
    """
    global _triton_cuda_lib
    if name is None:
        name = os.environ.get("UGR_CUDA_KERNEL") or (
            "triton" if triton_kernels() is not None else "extension")
    if name not in CUDA_KERNELS:
        raise ValueError(f"the CUDA kernel must be one of {CUDA_KERNELS} (UGR_CUDA_KERNEL), "
                         f"got {name!r}")
    if name == cuda_kernel():
        return name
    if name == "extension":
        if _triton_cuda_lib is not None:
            _triton_cuda_lib._destroy()      # uncovers the extension's CUDA kernels
            _triton_cuda_lib = None
        return cuda_kernel()
    kernels = triton_kernels()
    if kernels is None:
        return None
    lib = torch.library.Library("ugr", "IMPL")
    lib.impl("weighted_sisdr_fwd", kernels[0], "CUDA", allow_override=True)
    lib.impl("weighted_sisdr_bwd", kernels[1], "CUDA", allow_override=True)
    _triton_cuda_lib = lib
    return name


# Under torch.compile: evaluated once at trace time, constants of the graph.
_select_cuda_kernel = torch.compiler.assume_constant_result(use_cuda_kernel)


@torch.compiler.assume_constant_result
def _triton_loaded() -> bool:
    return triton_kernels() is not None


class _InterpretedTriton(torch.autograd.Function):
    """Triton ``forward`` / ``backward`` on CPU tensors (interpreter), with the ops'
    autograd formula: the route of ``backend="triton"`` on the CPU."""

    @staticmethod
    def forward(*args):
        return triton_kernels()[0](*args)

    setup_context = staticmethod(_setup_context)

    @staticmethod
    def backward(ctx, *grads):
        return _make_backward(triton_kernels()[1])(ctx, *grads)


_INTERPRETED_TRITON = FusedOps(_InterpretedTriton.apply, None, traceable=False)


def ops_for(backend: str, device_type: str) -> Optional[FusedOps]:
    """How the fused path calls a resolved backend on ``device_type``, or None (then: the
    two-pass path)."""
    entry = backends.REGISTRY.get(backend)
    if not enabled or entry is None or device_type not in entry.fused_on:
        return None
    if backend == "triton":
        has_kernels = _triton_loaded()   # imports the module (the transitional one registers)
        entry = backends.REGISTRY[backend]
    if entry.fused_ops is not None:
        ops = entry.fused_ops
    elif device_type == "cuda":
        wanted = "triton" if backend == "triton" else "extension"
        ops = SCHEMA_OPS if _select_cuda_kernel(wanted) == wanted else None
    elif backend == "triton":
        ops = _INTERPRETED_TRITON if has_kernels else None
    else:
        ops = SCHEMA_OPS
    if ops is not None and not ops.traceable and torch.compiler.is_compiling():
        return None
    return ops


# ----------------------------------------------------------------- the call
def fused_weighted_sisdr(ops: FusedOps, est: Tensor, ref: Tensor, mixture: Optional[Tensor],
                         alpha, bias, mask, granularity: str, pit: bool, zero_mean: bool,
                         eps: float, clamp_db: Optional[float], check: bool,
                         process_group=None):
    """The fields of ``WeightedSISDRResult`` from one fused forward (inputs already checked
    by ``checks.check_inputs``); ``check``: raise on non-finite inputs (one host sync).

    ``alpha``: a number or a 0-d tensor on est's device; ``bias``, ``mask``: broadcastable
    to the items, on est's device, or None (``checks.alpha_tensor`` / ``item_tensor``).

    With a ``process_group`` the pmf must span every rank: the op's local weights and
    loss are dropped and the torch epilogue (``epilogue.weighted_items``) splits at the
    two all-reduces, the loss taking its gradient through the op's sisdr / sisdri
    outputs, so the backward is still the one fused pass (with the same per-item factors
    as one process holding the whole batch).
    """
    batch, n_src = est.shape[0], est.shape[1]
    by_source = granularity == "source"
    items = (batch, n_src) if by_source else (batch,)
    device = est.device
    alpha = alpha_tensor(alpha, device)
    bias = item_tensor("bias", bias, items, torch.float64, device)
    mask = item_tensor("mask", mask, items, torch.bool, device)
    loss, sisdr, sisdri, weights, perm, valid, coef = ops.fwd(
        est, ref, mixture, alpha, bias, mask, by_source, pit, zero_mean, float(eps),
        math.inf if clamp_db is None else float(clamp_db))
    if check:
        bad = [coef[:, :, ops.flags].amax(dim=(0, 1)) != 0, ~torch.isfinite(alpha).reshape(1)]
        if bias is not None:
            bad.append((~torch.isfinite(bias)).any().reshape(1))
        raise_if_non_finite(_FLAG_NAMES + ("alpha", "bias"), torch.cat(bad))
    sisdri = sisdri if mixture is not None else None
    if process_group is not None:
        # valid is False for a whole example masked by the user: no example_mask needed.
        loss, weights, _ = weighted_items(sisdr.double(), None if sisdri is None
                                          else sisdri.double(), valid,
                                          granularity=granularity, alpha=alpha, bias=bias,
                                          process_group=process_group)
        loss, weights = loss.to(sisdr.dtype), weights.to(sisdr.dtype)
    return loss, sisdr, sisdri, weights, perm, valid

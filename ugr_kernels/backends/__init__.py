"""Backends: the one registry of what computes weighted SI-SDR on which device.

``REGISTRY`` lists every backend and what it provides:

=========  ==========================  ================================================
name       two passes (``module``)     fused ops ``ugr::weighted_sisdr_fwd/_bwd`` on
=========  ==========================  ================================================
torch      torch_backend (any device)  (none: the torch epilogue, ``epilogue.py``)
cpp        cpp (CPU, the extension)    cpu: the extension's CPU kernels
cuda       cuda (the extension + CUDA) cuda: the extension's CUDA kernels
triton     triton (CUDA; CPU through   cuda: the Triton kernels, registered from Python as
           the interpreter)            the ops' CUDA kernels; cpu: the same functions
                                       under the interpreter (tests), see ``fused.py``
=========  ==========================  ================================================

``resolve`` maps ``"auto"`` to the first available backend of ``AUTO_ORDER``; on CUDA
``$UGR_CUDA_KERNEL=extension`` puts the extension before Triton (see ``fused.py``).
Another backend plugs in with ``register`` (``fused.register_backend`` for fused ops).
Backend modules are imported by name on first use, so nothing here imports them (no
import circle with the modules that look a backend up).

Every backend module exposes ``is_available(device_type)`` and the two passes;
everything between them (SI-SDR matrix, PIT, pmf, weighted loss) is tiny and shared
(``ugr_kernels.epilogue``).

``stats(x, y, zero_mean) -> (mx, my, sxy, sxx, syy)``
    x: (B, Cx, T), y: (B, Cy, T), any float dtype (fp16/bf16/fp32/fp64).
    Returns float64 tensors on x.device:
    mx (B, Cx), my (B, Cy): the means over T (zeros when ``zero_mean`` is False);
    sxy (B, Cx, Cy) = sum_t (x_i - mx_i)(y_j - my_j);
    sxx (B, Cx) = sum_t (x_i - mx_i)^2;  syy (B, Cy) = sum_t (y_j - my_j)^2.
    One pass over x and y, accumulated at fp32 or wider with centred partials.

``combine(x, y, mx, my, g, h) -> out``
    out[b, i, t] = sum_j g[b, i, j] (y[b, j, t] - my[b, j]) + h[b, i] (x[b, i, t] - mx[b, i])
    with g (B, Cx, Cy), h (B, Cx) float64; out has x's shape and dtype.
    This is the backward of ``stats``: d sxy_ij / d x_i = y~_j, d sxx_i / d x_i = 2 x~_i.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any, NamedTuple, Optional

import torch


class Backend(NamedTuple):
    """One entry of ``REGISTRY``."""

    #: Module with ``is_available(device_type)``, ``stats`` and ``combine``.
    module: Optional[str]
    #: Device types on which it serves the fused ops (``ugr_kernels.fused``).
    fused_on: tuple = ()
    #: Explicit fused ops (a ``fused.FusedOps``) of a plugged-in backend; None: the
    #: ``ugr::weighted_sisdr_fwd/_bwd`` ops themselves.
    fused_ops: Any = None
    #: Why it may be unavailable (appended to the error).
    needs: str = ""


REGISTRY: dict = {
    "torch": Backend("ugr_kernels.backends.torch_backend"),
    "cpp": Backend("ugr_kernels.backends.cpp", ("cpu",),
                   needs=" (the compiled extension ugr_kernels._C is missing: "
                         "build it with `pip install --no-build-isolation -e .`)"),
    "cuda": Backend("ugr_kernels.backends.cuda", ("cuda",),
                    needs=" (needs the extension built with CUDA and a CUDA device)"),
    "triton": Backend("ugr_kernels.backends.triton", ("cuda", "cpu"),
                      needs=" (needs triton and a CUDA device, or on CPU TRITON_INTERPRET=1 "
                            "set before torch or triton is first imported)"),
}
BACKENDS = tuple(REGISTRY)
#: ``"auto"``: the first available of these, per device type.
AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpp", "torch")}

_LOADED: dict = {}


def register(name: str, entry: Backend) -> None:
    """Add or replace a backend (e.g. fused ops of the same schemas, ``fused.register_backend``)."""
    REGISTRY[name] = entry


def get_backend(name: str) -> ModuleType:
    """Import a backend's two-pass module by name (``ValueError`` for unknown names)."""
    module = _LOADED.get(name)
    if module is None:
        entry = REGISTRY.get(name)
        if entry is None or entry.module is None:
            raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
        module = _LOADED[name] = importlib.import_module(entry.module)
    return module


def is_available(name: str, device_type: str) -> bool:
    """True when backend ``name`` can run on tensors of ``device_type``."""
    try:
        module = get_backend(name)
    except ImportError:
        return False
    return bool(module.is_available(device_type))


def auto_order(device_type: str) -> tuple:
    """Candidates of ``"auto"``; ``$UGR_CUDA_KERNEL=extension`` prefers the extension on CUDA."""
    order = AUTO_ORDER.get(device_type, ("torch",))
    if device_type == "cuda" and os.environ.get("UGR_CUDA_KERNEL") == "extension":
        order = ("cuda",) + tuple(b for b in order if b != "cuda")
    return order


@torch.compiler.assume_constant_result
def resolve(name: str, device_type: str) -> str:
    """Map ``"auto"`` to the fastest available backend for the device.

    Evaluated once at trace time under ``torch.compile`` (a constant of the graph).
    """
    if name != "auto":
        if name not in REGISTRY or REGISTRY[name].module is None:
            raise ValueError(f"unknown backend {name!r}; expected 'auto' or one of {BACKENDS}")
        if not is_available(name, device_type):
            raise ValueError(f"backend {name!r} is not available for {device_type} tensors"
                             f"{REGISTRY[name].needs}")
        return name
    for candidate in auto_order(device_type):
        if is_available(candidate, device_type):
            return candidate
    return "torch"

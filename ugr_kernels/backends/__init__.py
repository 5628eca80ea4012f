"""Backends: the two T-sized passes of weighted SI-SDR.

Every backend module exposes the same two functions; everything between them
(SI-SDR matrix, PIT, pmf, weighted loss) is tiny and shared (``ugr_kernels.api``).

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
from types import ModuleType

import torch

BACKENDS = ("torch", "cpp", "triton", "cuda")

_MODULES = {
    "torch": "ugr_kernels.backends.torch_backend",
    "cpp": "ugr_kernels.backends.cpp",
    "triton": "ugr_kernels.backends.triton",
    "cuda": "ugr_kernels.backends.cuda",
}


_LOADED: dict = {}


def get_backend(name: str) -> ModuleType:
    """Import a backend module by name (``ValueError`` for unknown names)."""
    module = _LOADED.get(name)
    if module is None:
        if name not in _MODULES:
            raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
        module = _LOADED[name] = importlib.import_module(_MODULES[name])
    return module


def is_available(name: str, device_type: str) -> bool:
    """True when backend ``name`` can run on tensors of ``device_type``."""
    try:
        module = get_backend(name)
    except ImportError:
        return False
    return bool(module.is_available(device_type))


@torch.compiler.assume_constant_result
def resolve(name: str, device_type: str) -> str:
    """Map ``"auto"`` to the fastest available backend for the device.

    Evaluated once at trace time under ``torch.compile`` (a constant of the graph).
    """
    if name != "auto":
        if name not in _MODULES:
            raise ValueError(f"unknown backend {name!r}; expected 'auto' or one of {BACKENDS}")
        if not is_available(name, device_type):
            raise ValueError(f"backend {name!r} is not available for {device_type} tensors"
                             f"{_why_unavailable(name)}")
        return name
    order = ("triton", "cuda", "torch") if device_type == "cuda" else ("cpp", "torch")
    for candidate in order:
        if is_available(candidate, device_type):
            return candidate
    return "torch"


def _why_unavailable(name: str) -> str:
    if name == "cpp":
        return (" (the compiled extension ugr_kernels._C is missing: "
                "build it with `pip install --no-build-isolation -e .`)")
    if name == "triton":
        return (" (needs triton and a CUDA device, or on CPU TRITON_INTERPRET=1 set before "
                "torch or triton is first imported)")
    if name == "cuda":
        return " (needs the extension built with CUDA and a CUDA device)"
    return ""

"""Access to the compiled extension ``ugr_kernels._C`` shared by the cpp and cuda backends."""
from __future__ import annotations

from types import ModuleType
from typing import Optional

_HOW_TO_BUILD = {
    "cpu": "build it with `pip install --no-build-isolation -e .`",
    "cuda": "it must be compiled with CUDA (a CUDA build of torch and a CUDA toolkit at "
            "build time)",
}


def extension(need_cuda: bool = False) -> Optional[ModuleType]:
    """The extension module, or None when it is not built (or lacks CUDA kernels)."""
    try:
        from .. import _C
    except ImportError:
        return None
    if need_cuda and not _C.has_cuda():
        return None
    return _C


def require(device_type: str) -> ModuleType:
    ext = extension(need_cuda=device_type == "cuda")
    if ext is None:
        raise RuntimeError(f"the {device_type} kernels need the compiled extension "
                           f"ugr_kernels._C: {_HOW_TO_BUILD[device_type]}")
    return ext

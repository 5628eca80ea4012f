"""ugr_kernels: weighted (PIT) SI-SDR for unified gradient reweighting.

>>> import torch, ugr_kernels
>>> est, ref = torch.randn(4, 2, 8000, requires_grad=True), torch.randn(4, 2, 8000)
>>> out = ugr_kernels.weighted_sisdr(est, ref, alpha=0.1)
>>> out.loss.backward()
"""
from __future__ import annotations

import warnings

from . import backends
from .api import WeightedSISDRResult, weighted_sisdr
from .epilogue import sisdr_from_stats, weighted_pit_loss
from .loss import WeightedSISDRLoss
from .pit import permutation_table, pit_best_perm
from .pmf import Reweighted, reweight, softmax_pmf
from .reference import pairwise_sisdr
from .weighting import (
    ClassBias,
    Constant,
    Cosine,
    Curriculum,
    Custom,
    Exponential,
    InverseTemperature,
    Linear,
    Robust,
    Schedule,
    Step,
    Uniform,
    Weighting,
)

__version__ = "0.1.0"

try:
    from . import _C  # noqa: F401  (compiled C++/CUDA extension)
except ImportError:
    _C = None
    warnings.warn("ugr_kernels._C is not built, the C++ backend is off (torch backend used); "
                  "build it with `pip install --no-build-isolation -e .`", stacklevel=2)

__all__ = [
    "weighted_sisdr", "WeightedSISDRResult", "WeightedSISDRLoss", "softmax_pmf",
    "reweight", "Reweighted",
    "pairwise_sisdr", "pit_best_perm", "permutation_table", "sisdr_from_stats", "weighted_pit_loss",
    "backends",
    "Weighting", "Uniform", "Robust", "Curriculum", "ClassBias", "Custom",
    "Schedule", "Constant", "Linear", "Cosine", "Exponential", "Step", "InverseTemperature",
]

"""Separation models.  Knows nothing of losses or data."""

from .mask_conv import BandedMaskConv, toeplitz_band
from .norms import GlobalLayerNorm
from .sudormrf import (
    MODEL_CONFIGS,
    VARIANTS,
    SuDORMRF,
    UConvBlock,
    build_model,
    count_parameters,
)

__all__ = [
    "BandedMaskConv",
    "MODEL_CONFIGS",
    "VARIANTS",
    "GlobalLayerNorm",
    "SuDORMRF",
    "UConvBlock",
    "build_model",
    "count_parameters",
    "toeplitz_band",
]

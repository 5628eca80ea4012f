"""Shared test setup.

Triton kernels are decorated at import time, so the interpreter switch must be
set before anything imports them: on a machine without CUDA every Triton
kernel runs through ``TRITON_INTERPRET=1``.
"""
import os
import warnings
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

warnings.filterwarnings("ignore", message="ugr_kernels._C is not built")

import pytest  # noqa: E402

DATA_DIR = Path(os.environ.get("UGR_DATA_DIR",
                               Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir():
    """The real 8 kHz audio (../shared/data); tests that need it skip when it is absent."""
    if not (DATA_DIR / "esc50" / "meta.csv").exists():
        pytest.skip(f"real audio not found at {DATA_DIR} (set UGR_DATA_DIR)")
    return DATA_DIR

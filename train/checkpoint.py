"""Atomic checkpoints: write to a temporary file in the same folder, fsync, rename.

A crash (or Ctrl-C) during a save leaves the previous checkpoint intact, never
a half-written one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or damaged (the message says which)."""


def save_checkpoint(state: dict[str, Any], path: os.PathLike) -> Path:
    """Save ``state`` with ``torch.save`` atomically at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (clear error if missing/corrupt)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for a damaged file
        raise CheckpointError(f"checkpoint {path} is unreadable ({exc})") from exc

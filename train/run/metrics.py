"""Metrics of the training step, kept on the device and read once per logging window.

``StepMetrics`` sums the window's loss, SI-SDRi and finite steps, and counts the run's
skipped steps, with device ops only; ``read`` is the window's one host read (and,
under torchrun, its one collective). The log file itself is the run folder's
(``train.run_folder.MetricsLog``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import distributed as D


class StepMetrics:
    """Device-side sums of a logging window, plus the run's count of skipped steps."""

    # slots of ``sums``: summed loss, finite steps, summed SI-SDRi, SI-SDRi items
    FIELDS = 4

    def __init__(self, device: torch.device, skipped: int = 0):
        self.sums = torch.zeros(self.FIELDS, dtype=torch.float64, device=device)
        self.skipped = torch.tensor(skipped, dtype=torch.int64, device=device)

    def add(self, ok: Tensor, loss: Tensor, sisdri: Optional[Tensor], mask: Tensor) -> None:
        okf = ok.to(torch.float64)
        loss = torch.where(ok, loss.detach().to(torch.float64), torch.zeros((), dtype=torch.float64,
                                                                            device=loss.device))
        if sisdri is not None:
            valid = mask & ok
            s = torch.where(valid, sisdri.detach().to(torch.float64), 0.0).sum()
            n = valid.sum().to(torch.float64)
        else:
            s = n = torch.zeros((), dtype=torch.float64, device=loss.device)
        self.sums += torch.stack([loss, okf, s, n])
        self.skipped += (~ok).to(torch.int64)

    def read(self, dist: D.DistInfo, interrupted: bool = False) -> dict:
        """Window means over all ranks and Ctrl-C agreement: the logging step's one sync."""
        packed = torch.cat([self.sums, self.skipped.to(torch.float64).reshape(1)])
        values, stop = D.reduce_window(packed, interrupted, dist)
        loss_sum, finite, s, n, skipped = values
        world = dist.world_size if dist.enabled else 1
        self.sums.zero_()
        return {"loss": loss_sum / finite if finite else None,   # local losses are x world
                "sisdri": s / n if n else None,
                "finite_steps": finite / world,
                "non_finite_steps": int(round(skipped / world)),
                "interrupted": stop}

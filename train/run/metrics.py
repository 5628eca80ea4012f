"""Metrics of the training step, kept on the device and read once per logging window.

``StepMetrics`` sums the window's loss, SI-SDRi and finite steps, and counts the run's
skipped steps, with device ops only; ``read`` is the window's one host read (and,
under torchrun, its one summing collective, plus a max for the largest weight).

pmf diagnostics, what the reweighting did: for each step of the window the device keeps
the pmf's sum of squares ``sum p^2``, its item count ``n`` (unmasked items, over all ranks
once summed) and its largest weight, and, for class schemes, the weight per class. After
the read, the window's few numbers give the effective sample size as a fraction of the
items, ``ESS = 1 / (n sum p^2)`` per step (1: uniform; 1/n: one item takes all), its mean,
min and max over the window, the largest weight, and each class's share of the weight.
The log file itself is the run folder's (``train.run_folder.MetricsLog``).
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

    def __init__(self, device: torch.device, skipped: int = 0, window: int = 1,
                 num_classes: int = 0):
        self.sums = torch.zeros(self.FIELDS, dtype=torch.float64, device=device)
        self.skipped = torch.tensor(skipped, dtype=torch.int64, device=device)
        # One row per step of the logging window (a ring if a window runs longer):
        # sum p^2, items, largest weight; a skipped step leaves a row of zeros.
        self.pmf = torch.zeros(max(1, window), 3, dtype=torch.float64, device=device)
        self.pos = 0                   # steps added since the last read (a host counter)
        self.class_weight = (torch.zeros(num_classes, dtype=torch.float64, device=device)
                             if num_classes else None)

    def add(self, ok: Tensor, loss: Tensor, sisdri: Optional[Tensor], mask: Tensor,
            weights: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> None:
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
        if weights is not None:
            self._add_pmf(ok, weights.detach(), mask, labels)

    def _add_pmf(self, ok: Tensor, weights: Tensor, mask: Tensor,
                 labels: Optional[Tensor]) -> None:
        valid = mask.reshape(weights.shape) & ok
        w = torch.where(valid, weights.to(torch.float64), 0.0)
        row = torch.stack([(w * w).sum(), valid.sum().to(torch.float64), w.max()])
        self.pmf[self.pos % self.pmf.shape[0]] = row       # a device copy, no sync
        self.pos += 1
        if self.class_weight is not None and labels is not None:
            if w.dim() < labels.dim():   # granularity "example": a mixture's weight, shared
                w = (w[:, None] / labels.shape[1]).expand(labels.shape)
            self.class_weight.index_add_(0, labels.reshape(-1).to(torch.long), w.reshape(-1))

    def read(self, dist: D.DistInfo, interrupted: bool = False) -> dict:
        """Window means over all ranks and Ctrl-C agreement: the logging step's one sync."""
        rows = min(self.pos, self.pmf.shape[0])
        pmf = self.pmf[:rows]
        if dist.enabled and rows:
            # The largest weight is a max over ranks; summing it would be wrong, so it
            # travels apart (a device collective) and is divided back after the sum.
            largest = pmf[:, 2].clone()
            D.all_reduce_max(largest, dist)
            pmf = torch.cat([pmf[:, :2], largest[:, None] / dist.world_size], dim=1)
        parts = [self.sums, self.skipped.to(torch.float64).reshape(1), pmf.reshape(-1)]
        if self.class_weight is not None:
            parts.append(self.class_weight)
        values, stop = D.reduce_window(torch.cat(parts), interrupted, dist)
        loss_sum, finite, s, n, skipped = values[:5]
        world = dist.world_size if dist.enabled else 1
        self.sums.zero_()
        self.pmf.zero_()
        self.pos = 0
        out = {"loss": loss_sum / finite if finite else None,   # local losses are x world
               "sisdri": s / n if n else None,
               "finite_steps": finite / world,
               "non_finite_steps": int(round(skipped / world)),
               "interrupted": stop}
        out.update(pmf_summary(values[5:5 + 3 * rows]))
        if self.class_weight is not None:
            per_class = values[5 + 3 * rows:]
            total = sum(per_class)
            self.class_weight.zero_()
            out["pmf_class_share"] = [w / total for w in per_class] if total > 0 else None
        return out


def pmf_summary(rows: list) -> dict:
    """The window's pmf diagnostics from its rows (sum p^2, items, largest weight) per step."""
    ess, largest = [], []
    for k in range(0, len(rows), 3):
        squares, items, top = rows[k], rows[k + 1], rows[k + 2]
        if items > 0 and squares > 0:   # a skipped step has no pmf
            ess.append(1.0 / (items * squares))
            largest.append(top)
    if not ess:
        return {"pmf_ess": None, "pmf_ess_min": None, "pmf_ess_max": None,
                "pmf_max_weight": None}
    return {"pmf_ess": sum(ess) / len(ess), "pmf_ess_min": min(ess), "pmf_ess_max": max(ess),
            "pmf_max_weight": max(largest)}

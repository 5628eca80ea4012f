"""One training step with no host sync: forward, weighted loss, backward, clip, Adam.

Nothing here reads a device value on the host. A bad step (non-finite model
output, loss or gradient norm) is decided on the device: the flag becomes
fused Adam's ``found_inf``, with which Adam leaves parameters, moments and
step counts exactly unchanged (CPU and CUDA alike). The running loss, SI-SDRi
and the count of skipped steps are summed on the device (``StepMetrics``) and
read once per logging interval. Schedule values reach the loss as a 0-d
device tensor, so a compiled step sees an input change, not a new constant.

With ``compile`` the forward and the loss are one ``torch.compile`` graph
(fullgraph in one process); AOTAutograd compiles their backward with them.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

import ugr_kernels as uk

from . import distributed as D
from .config import RunConfig
from .metrics import StepMetrics
from .unfused import unfused_weighted_sisdr


def make_loss(config: RunConfig, group) -> Callable:
    """``loss(est, ref, mix, alpha, bias) -> result`` with ``loss, sisdri, mask``."""
    if config.backend == "unfused":
        def loss(est, ref, mix, alpha, bias):
            return unfused_weighted_sisdr(est, ref, mix, alpha=alpha, bias=bias,
                                          granularity=config.granularity,
                                          clamp_db=config.clamp_db, process_group=group)
    else:
        def loss(est, ref, mix, alpha, bias):
            # check_finite=False: the trainer's own device-side flag handles bad values.
            return uk.weighted_sisdr(est, ref, mixture=mix, alpha=alpha, bias=bias,
                                     granularity=config.granularity, clamp_db=config.clamp_db,
                                     backend=config.backend, process_group=group,
                                     check_finite=False)
    return loss


class TrainStep:
    """The step of ``Trainer``: call it with device tensors; it never syncs.

    ``model`` is what the step calls for the estimates (the DDP wrapper under torchrun):
    tests replace it to inject faults.
    """

    def __init__(self, model: torch.nn.Module, params: list, optimizer: torch.optim.Optimizer,
                 config: RunConfig, device: torch.device, dist: D.DistInfo,
                 metrics: StepMetrics):
        self.model = model                 # the DDP wrapper under torchrun
        self.params = params
        self.optimizer = optimizer
        self.config = config
        self.device = device
        self.dist = dist
        self.metrics = metrics
        self.loss = make_loss(config, dist.group)
        self.amp = config.amp and device.type == "cuda"
        self.alpha = torch.zeros((), dtype=torch.float64, device=device)
        # Fused Adam skips its update (and un-counts the step) where found_inf != 0.
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        optimizer.found_inf = self.found_inf
        self.compute = self._forward_loss
        if config.compile:
            self.compute = torch.compile(
                self._forward_loss, dynamic=False, fullgraph=not dist.enabled,
                mode="reduce-overhead" if config.cuda_graphs else None)

    def _forward_loss(self, mix: Tensor, ref: Tensor, bias: Optional[Tensor], alpha: Tensor):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            est = self.model(mix)
        est = est.float()
        out = self.loss(est, ref, mix, alpha, bias)
        finite = torch.isfinite(out.loss) & torch.isfinite(est.detach()).all()
        return out.loss, out.sisdri, out.mask, out.weights, finite

    def __call__(self, mix: Tensor, ref: Tensor, bias: Optional[Tensor], alpha: float,
                 lr: float, labels: Optional[Tensor] = None) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.alpha.fill_(alpha)            # a device fill, no copy and no sync
        if self.config.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        loss, sisdri, mask, weights, finite = self.compute(mix, ref, bias, self.alpha)
        loss.backward()
        if self.config.clip_grad > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_grad)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params
                                                  if p.grad is not None])
        # DDP made the gradients (so the norm) equal on all ranks; the loss and
        # output flags are per rank, hence the one control all-reduce.
        ok = D.agree_ok(finite & torch.isfinite(norm), self.dist)
        self.found_inf.copy_(~ok)
        self.optimizer.step()
        self.metrics.add(ok, loss, sisdri, mask, weights, labels)

"""Data-parallel setup and control under ``torchrun`` (gloo for CPU tensors, NCCL for CUDA).

The weighted loss normalises its pmf over the *global* batch (all ranks) and
scales the local loss by the world size, so DDP's gradient averaging gives
exactly the update of one process on the combined batch.

Control between ranks travels in device tensors, never as Python values:

* ``agree_ok`` — the one collective a training step adds to DDP's own: one
  int32 all-reduce of the rank's "this step is finite" flag, so that every
  rank skips (or takes) the same updates without the host reading anything.
* ``reduce_window`` — at logging steps only: the metric sums of the window and
  each rank's Ctrl-C flag in one tensor and one all-reduce, read once. All
  ranks stop at the same logging step when any of them was interrupted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    enabled: bool = False  # launched by torchrun (even with one rank): DDP and collectives on

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def group(self):
        """The process group for the global pmf (None when not distributed)."""
        return dist.group.WORLD if self.enabled else None


def process_group_backend(device_type: str) -> str:
    """gloo on CPU; on GPU NCCL for CUDA tensors with gloo beside it for CPU ones."""
    return "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(process_group_backend(device_type))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank,
                    int(os.environ.get("LOCAL_WORLD_SIZE", 1)), enabled=True)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def agree_ok(ok: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``ok`` (0-d bool, on the device) and-ed over all ranks, still on the device."""
    if not info.enabled:
        return ok
    bad = (~ok).to(torch.int32)
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad == 0


def all_reduce_max(t: torch.Tensor, info: DistInfo) -> None:
    """``t`` becomes its elementwise max over ranks, in place, on the device (no host read)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)


def reduce_window(sums: torch.Tensor, interrupted: bool, info: DistInfo) -> tuple[list, bool]:
    """Sum the window's metric sums over ranks, with the ranks' Ctrl-C flags, and read them.

    One collective and one device-to-host read: call it at logging steps only.
    Returns the summed values and whether any rank was interrupted.
    """
    packed = torch.cat([sums.to(torch.float64),
                        sums.new_full((1,), float(interrupted), dtype=torch.float64)])
    if info.enabled:
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    values = packed.tolist()
    return values[:-1], values[-1] > 0


def broadcast_float(value: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (a validation result: once per validation)."""
    if not info.enabled:
        return float(value)
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def device_for(info: DistInfo, requested: Optional[str]) -> torch.device:
    if requested:
        dev = torch.device(requested)
        if dev.type == "cuda" and info.enabled:
            return torch.device("cuda", info.local_rank)
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")

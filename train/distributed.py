"""Data-parallel setup under ``torchrun`` (gloo on CPU, NCCL on GPU).

The weighted loss normalises its pmf over the *global* batch (all ranks) and
scales the local loss by the world size, so DDP's gradient averaging gives
exactly the update of one process on the combined batch.
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

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def group(self):
        """The process group for the global pmf (None when not distributed)."""
        return dist.group.WORLD if self.enabled else None


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is True on any rank (e.g. Ctrl-C or a bad step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def device_for(info: DistInfo, requested: Optional[str]) -> torch.device:
    if requested:
        dev = torch.device(requested)
        if dev.type == "cuda" and info.enabled:
            return torch.device("cuda", info.local_rank)
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")

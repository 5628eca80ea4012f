"""The trainer on a GPU: no sync in a step (CUDA's sync debug mode), NCCL under torchrun.

Skipped without a CUDA device.
"""
import os
from pathlib import Path

import pytest
import torch

from train.commands.train import parse_args
from train.run.trainer import Trainer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device (torch.cuda.is_available() is False)")]

ROOT = Path(__file__).resolve().parents[3]
QUICK = ["--model", "sudormrf-0.25x", "--segment-seconds", "0.5", "--batch-size", "4",
         "--val-items", "4", "--test-items", "4", "--eval-batch-size", "4",
         "--no-progress", "--fused", "--device", "cuda", "--num-workers", "0"]


@pytest.mark.parametrize("extra", [[], ["--amp", "--weighting", "robust"],
                                   ["--backend", "unfused", "--weighting", "curriculum"]])
def test_a_non_logging_step_does_not_synchronize_the_gpu(tmp_path, extra):
    t = Trainer(parse_args(QUICK + ["--run-dir", str(tmp_path / "run")] + extra))
    pinned = lambda s: {k: v.pin_memory() for k, v in  # noqa: E731
                        t.data.train.batch(range(4 * s, 4 * s + 4)).items()}
    t.train_step(pinned(0))
    t.step = 1
    batch = pinned(1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        t.train_step(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert t.metrics.read(t.dist)["finite_steps"] == 2


def test_torchrun_with_nccl(tmp_path, torchrun):
    proc = torchrun(*QUICK, "--steps", "4", "--log-every", "2", "--eval-every", "0",
                    "--no-test", "--run-dir", tmp_path / "run", nproc=1, timeout=600,
                    env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 4 and ckpt["non_finite_steps"] == 0

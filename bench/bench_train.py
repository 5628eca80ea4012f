"""Train-step throughput of the ``Trainer``'s own step: eager vs compiled, fused vs unfused.

    pytest bench/bench_train.py --benchmark-only --benchmark-json bench/results/train-cpu.json

One step is ``Trainer.train_step``: batch to the device, forward, weighted PIT SI-SDRi
loss (robust, alpha=0.1), backward, clip, fused Adam with the device-side skip flag.
``unfused`` is the textbook torch loss the trainer uses without ``--fused``;
``fused`` is ``ugr_kernels`` (backend auto). ``extra_info['examples_per_s']`` is
batch / mean step time. On a GPU the same file runs on CUDA with ``--amp``.
"""
import tempfile

import pytest
import torch

from train.commands.train import parse_args
from train.run.trainer import Trainer

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [("sudormrf-tiny", 8, 1.0), ("sudormrf-0.25x", 4, 2.0)]
if DEVICE == "cuda":
    CASES += [("sudormrf-1.0x", 28, 4.0)]


def make_step(model, batch, seconds, compiled, fused):
    argv = ["--model", model, "--batch-size", str(batch), "--segment-seconds", str(seconds),
            "--val-items", "1", "--test-items", "1", "--no-progress", "--num-workers", "0",
            "--weighting", "robust", "--alpha", "0.1", "--device", DEVICE,
            "--run-dir", tempfile.mkdtemp(prefix="bench-train-")]
    argv += (["--fused"] if fused else []) + (["--compile"] if compiled else [])
    argv += ["--amp"] if DEVICE == "cuda" else []
    trainer = Trainer(parse_args(argv))
    data = trainer.data.train.batch(range(batch))
    if DEVICE == "cuda":
        data = {k: v.pin_memory() for k, v in data.items()}

    def step():
        trainer.train_step(data)
        trainer.step += 1
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    return step


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-B{c[1]}-{c[2]}s")
@pytest.mark.parametrize("loss", ["fused", "unfused"])
@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_train_step(benchmark, case, loss, mode):
    name, batch, seconds = case
    torch._dynamo.reset()
    step = make_step(name, batch, seconds, mode == "compiled", loss == "fused")
    for _ in range(2):  # compile and warm up outside the timing
        step()
    benchmark.group = f"train-step {name} B{batch} {seconds}s {DEVICE}"
    benchmark.pedantic(step, rounds=5, iterations=1)
    benchmark.extra_info.update(mode=mode, loss=loss, model=name, batch=batch, seconds=seconds,
                                examples_per_s=batch / benchmark.stats.stats.mean)

"""Train-step throughput: SuDoRM-RF + weighted loss + Adam, eager vs torch.compile.

    pytest bench/bench_train.py --benchmark-only --benchmark-json bench/results/train-cpu.json

One step = forward, weighted PIT SI-SDRi loss (alpha=0.1), backward, clip, Adam.
``extra_info['examples_per_s']`` is batch / mean step time. On a GPU the same file
runs on CUDA (bf16 autocast for the model) when available.
"""
import pytest
import torch

import ugr_kernels as uk
from model import build_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [("sudormrf-tiny", 8, 8000), ("sudormrf-0.25x", 4, 16000)]
if DEVICE == "cuda":
    CASES += [("sudormrf-1.0x", 28, 32000)]


def _step_fn(model_name, batch, length, compiled, backend):
    torch.manual_seed(0)
    model = build_model(model_name).to(DEVICE)
    forward = torch.compile(model, dynamic=False) if compiled else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ref = torch.randn(batch, 2, length, device=DEVICE)
    mix = ref.sum(1)

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
            est = forward(mix)
        loss = uk.weighted_sisdr(est.float(), ref, mixture=mix, alpha=0.1, backend=backend,
                                 check_finite=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    return step


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-B{c[1]}-T{c[2]}")
@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_train_step(benchmark, case, mode):
    name, batch, length = case
    step = _step_fn(name, batch, length, mode == "compiled", "auto")
    for _ in range(2):  # compile and warm up outside the timing
        step()
    benchmark.group = f"train-step {name} B{batch} T{length} {DEVICE}"
    benchmark.pedantic(step, rounds=5, iterations=1)
    benchmark.extra_info.update(mode=mode, model=name, batch=batch, length=length,
                                examples_per_s=batch / benchmark.stats.stats.mean)

"""SuDoRM-RF forward and train step: the paper's mask Conv2d vs the banded GEMM.

    pytest bench/bench_model.py --benchmark-only --benchmark-json bench/results/model-cpu.json

Rows, for ``sudormrf-tiny``, ``sudormrf-0.25x`` and ``sudormrf-1.0x`` (2 sources),
each with ``mask=conv2d`` (``build_model(..., mask_gemm=False)``: the original
``nn.Conv2d(1, S, (N + 1, 1))`` forward) and ``mask=gemm`` (the default
:class:`model.BandedMaskConv`), same weights:

  forward  ``model(mix)`` under ``torch.inference_mode()``
  train    one step: zero_grad, forward, weighted PIT SI-SDRi loss
           (``ugr_kernels.weighted_sisdr``, alpha=0.1, backend auto), backward, Adam

``extra_info``: ``examples_per_s`` = batch / median time, ``gflop`` and
``gflop_per_s``.  FLOPs (2 per multiply-add) of the convolutions, transposed
convolutions and matrix products of one **forward** are counted by
``torch.utils.flop_counter.FlopCounterMode`` on the **Conv2d formulation**;
elementwise ops, norms, softmax, the loss and Adam count 0.  A train step counts
3x the forward (each layer's backward computes an input gradient and a weight
gradient, each as many FLOPs as its forward) minus the encoder's forward (its
input, the mixture, needs no gradient).  The counter's own backward numbers are
not used: torch 2.13 counts a grouped convolution's backward as if it were dense
(129x the forward for a depthwise conv of 128 channels).  Both rows of a pair
divide the same count by their own time ("effective" GFLOP/s), so their ratio is
the speed-up.  The GEMM does N multiply-adds per mask entry where the Conv2d's
count is N + 1 (both include the zero corners of the band / the zero padding).
On CUDA the same file gives GPU rows (plus a larger 1.0x batch).
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import ugr_kernels as uk
from model import build_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SAMPLE_RATE = 8000
CASES = [("sudormrf-tiny", 8, 1.0), ("sudormrf-0.25x", 4, 2.0), ("sudormrf-1.0x", 4, 2.0)]
if DEVICE == "cuda":
    CASES += [("sudormrf-1.0x", 16, 4.0)]


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _setup(name, batch, seconds, mask):
    torch.manual_seed(0)
    model = build_model(name, num_sources=2, mask_gemm=mask == "gemm").to(DEVICE)
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(batch, 2, int(seconds * SAMPLE_RATE), generator=g).to(DEVICE)
    return model, ref, ref.sum(1)


def _passes(model, ref, mix):
    """``(forward, train_step)`` closures over one model and batch."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def forward():
        with torch.inference_mode():
            model(mix)
        _sync()

    def train():
        opt.zero_grad(set_to_none=True)
        est = model(mix)
        uk.weighted_sisdr(est, ref, mixture=mix, alpha=0.1, check_finite=False).loss.backward()
        opt.step()
        _sync()

    return {"forward": forward, "train": train}


def _count_flops(name, batch, seconds, which):
    """Counted FLOPs of one pass of the Conv2d formulation (see the module docstring)."""
    # Count on a short clip and scale: every counted op is linear in the frames.
    short = min(seconds, 0.2)
    model, ref, mix = _setup(name, batch, short, "conv2d")
    with FlopCounterMode(display=False) as counter:
        _passes(model, ref, mix)["forward"]()
    forward = counter.get_total_flops()
    if which == "train":
        encoder = sum(counter.get_flop_counts()["SuDORMRF.encoder"].values())
        forward = 3 * forward - encoder
    return forward * (seconds / short)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-B{c[1]}-{c[2]}s")
@pytest.mark.parametrize("mask", ["conv2d", "gemm"])
@pytest.mark.parametrize("which", ["forward", "train"])
def test_model(benchmark, case, mask, which):
    name, batch, seconds = case
    torch._dynamo.reset()
    model, ref, mix = _setup(name, batch, seconds, mask)
    fn = _passes(model, ref, mix)[which]
    slow = mask == "conv2d" and which == "train" and name != "sudormrf-tiny"
    benchmark.group = f"{which} {name} B{batch} {seconds}s {DEVICE}"
    benchmark.pedantic(fn, rounds=3 if slow else 7, iterations=1, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: ran once as a smoke test
        return
    flops = _count_flops(name, batch, seconds, which)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        pass_=which, mask=mask, model=name, batch=batch, seconds=seconds, device=DEVICE,
        threads=torch.get_num_threads(), examples_per_s=batch / median,
        gflop=flops / 1e9, gflop_per_s=flops / 1e9 / median,
    )

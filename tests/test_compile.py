"""torch.compile(fullgraph=True) traces around the custom ops and matches eager."""
import pytest
import torch

import ugr_kernels as uk
from ugr_kernels import backends

BACKENDS = [b for b in ("torch", "cpp") if backends.is_available(b, "cpu")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_loss_and_gradient_match_eager(backend):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 2, 1000, generator=g)
    mix = ref.sum(1)
    est = (ref.flip(1) + 0.5 * torch.randn(3, 2, 1000, generator=g)).requires_grad_(True)
    alpha = torch.tensor(0.2)

    def step(e, r, m, a):
        out = uk.weighted_sisdr(e, r, mixture=m, alpha=a, backend=backend)
        return out.loss, out.sisdri, out.weights

    compiled = torch.compile(step, fullgraph=True)
    loss_c, sisdri_c, w_c = compiled(est, ref, mix, alpha)
    (grad_c,) = torch.autograd.grad(loss_c, est)
    loss_e, sisdri_e, w_e = step(est, ref, mix, alpha)
    (grad_e,) = torch.autograd.grad(loss_e, est)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sisdri_c, sisdri_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w_c, w_e)
    torch.testing.assert_close(grad_c, grad_e, rtol=1e-4, atol=1e-7)


def test_custom_op_schema_is_sound():
    x, y = torch.randn(2, 2, 50), torch.randn(2, 2, 50)
    torch.library.opcheck(torch.ops.ugr.sufficient_stats, (x, y, True, "torch"))
    outs = torch.ops.ugr.sufficient_stats(x, y, True, "torch")
    args = (x, y, outs[0], outs[1], torch.randn(2, 2, 2, dtype=torch.float64),
            torch.randn(2, 2, dtype=torch.float64), "torch")
    torch.library.opcheck(torch.ops.ugr.stats_backward, args)


# --------------------------------------------------------------------------------------
# Issue 16, item 7: a Python-float alpha and a stepping schedule make one graph.
# Dynamo specialises a new Python number on the first call and makes it a graph input
# (a symbolic float / int) on the second: so at most one recompile, never a graph break.

def _signals(seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(3, 2, 400, generator=g)
    est = ref.flip(1) + 0.5 * torch.randn(3, 2, 400, generator=g)
    return est, ref, ref.sum(1)


def _compile_and_count(fn, calls, fullgraph=True):
    """Run ``fn`` compiled over ``calls`` (kwargs): (frames compiled, graph breaks, outputs)."""
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    counter = CompileCounter()
    compiled = torch.compile(fn, fullgraph=fullgraph, backend=counter)
    outs = [compiled(**kw) for kw in calls]
    return counter.frame_count, sum(counters["graph_break"].values()), outs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fullgraph", [True, False])
def test_python_float_alpha_compiles_once(backend, fullgraph):
    est, ref, mix = _signals()

    def step(alpha):
        out = uk.weighted_sisdr(est, ref, mixture=mix, alpha=alpha, backend=backend)
        return out.loss, out.weights

    alphas = [0.05 * k - 0.2 for k in range(10)]
    frames, breaks, outs = _compile_and_count(step, [dict(alpha=a) for a in alphas], fullgraph)
    assert breaks == 0
    assert frames <= 2, f"{frames} frames for 10 alphas (at most one recompile)"
    for alpha, (loss, weights) in zip(alphas, outs):
        want = step(alpha)
        torch.testing.assert_close(loss, want[0])
        torch.testing.assert_close(weights, want[1])
    torch._dynamo.reset()


@pytest.mark.parametrize("schedule", [
    uk.Linear(-0.2, 0.0, 6), uk.Cosine(-0.2, 0.1, 6), uk.Exponential(0.3, 0.0, 3.0),
    uk.InverseTemperature(t_start=8.0, t_min=2.0, unit="step"),
], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("scheme", [uk.Curriculum, uk.Robust])
def test_stepping_schedule_compiles_once(schedule, scheme):
    est, ref, mix = _signals(1)
    criterion = uk.WeightedSISDRLoss(scheme(schedule), backend=BACKENDS[-1])
    steps = [dict(est=est, ref=ref, mixture=mix, step=k) for k in range(10)]
    frames, breaks, outs = _compile_and_count(criterion, steps)
    assert breaks == 0
    assert frames <= 2, f"{frames} frames for 10 steps (at most one recompile)"
    for kw, got in zip(steps, outs):
        torch.testing.assert_close(got, criterion(**kw))
    # The schedule really moves: the losses are not all the same.
    assert len({round(float(x), 6) for x in outs}) > 1
    torch._dynamo.reset()


def test_reweight_with_a_schedule_compiles_once():
    losses = torch.linspace(-3.0, 4.0, 8)
    weighting = uk.Curriculum(uk.Linear(-0.5, 0.0, 5))

    def fn(step):
        return uk.reweight(losses, weighting, step=step).weights

    frames, breaks, outs = _compile_and_count(fn, [dict(step=k) for k in range(10)])
    assert breaks == 0 and frames <= 2
    for k, got in enumerate(outs):
        torch.testing.assert_close(got, fn(k))
    torch._dynamo.reset()


def test_non_finite_alpha_is_still_an_error_in_eager_mode():
    est, ref, mix = _signals()
    with pytest.raises(ValueError, match="alpha must be finite, got nan"):
        uk.weighted_sisdr(est, ref, alpha=float("nan"), backend="torch")
    with pytest.raises(ValueError, match="weighting alpha must be finite"):
        uk.reweight(torch.ones(3), float("inf"))

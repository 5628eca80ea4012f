"""GPU checks: the GPU backends agree at training sizes, repeat bitwise, and work
under ``torch.compile(fullgraph=True)`` and CUDA-graph capture.

Every test is skipped without a CUDA device (run ``bench/gpu_check.sh`` on a GPU
machine).
"""
import copy

import pytest
import torch

import ugr_kernels as uk
from ugr_kernels import backends
from ugr_kernels.backends import torch_backend

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device (torch.cuda.is_available() is False)")]


def _cuda_extension_ready() -> bool:
    """The compiled extension with its CUDA kernels (``_C.has_cuda()``) is usable."""
    return backends.is_available("cuda", "cuda")


def _gpu_backends():
    names = []
    if torch.cuda.is_available() and backends.is_available("triton", "cuda"):
        names.append("triton")
    if torch.cuda.is_available() and _cuda_extension_ready():
        names.append("cuda")
    names.append("torch")
    return names


GPU_BACKENDS = _gpu_backends()
SHAPES = [(16, 2, 32000), (4, 4, 64000)]
SHAPE_IDS = [f"B{b}-C{c}-T{t}" for b, c, t in SHAPES]


def test_cuda_backend_is_built():
    # Visible in the report: without it the cuda backend is left out of every test here.
    if not _cuda_extension_ready():
        pytest.skip("the cuda backend is unavailable: ugr_kernels._C was not built with CUDA "
                    "(pip install --no-build-isolation -e . on a machine with nvcc)")
    assert "cuda" in GPU_BACKENDS


def _batch(b, c, t, dtype=torch.float32, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    ref = torch.randn(b, c, t, device="cuda", generator=g)
    noise = torch.randn(b, c, t, device="cuda", generator=g)
    # SI-SDR from ~30 dB down to ~-10 dB: fp32 tile sums are good to ~1e-4 dB at 30 dB
    # (the error grows like 1 / (1 - rho^2), ~0.04 dB at 60 dB).
    level = torch.logspace(-1.5, 0.5, b, device="cuda").view(b, 1, 1)
    est = ref.roll(1, dims=1) + level * noise + 0.05                     # permuted, DC offset
    mix = ref.sum(1)
    return est.to(dtype), ref.to(dtype), mix.to(dtype)


def _rel_err(got, want, scale):
    return ((got.double() - want.double()).abs() / scale).max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_stats_and_combine_match_float64(backend, shape, dtype):
    est, ref, _ = _batch(*shape, dtype=dtype)
    mod = backends.get_backend(backend)
    for zero_mean in (True, False):
        got = mod.stats(est, ref, zero_mean)
        want = torch_backend.stats(est, ref, zero_mean)                # same values, float64
        mx, my, sxy, sxx, syy = got
        wmx, wmy, wsxy, wsxx, wsyy = want
        assert all(t.dtype == torch.float64 and t.is_cuda for t in got)
        assert _rel_err(sxx, wsxx, wsxx.abs()) < 1e-5
        assert _rel_err(syy, wsyy, wsyy.abs()) < 1e-5
        scale = (wsxx.unsqueeze(2) * wsyy.unsqueeze(1)).sqrt()
        assert _rel_err(sxy, wsxy, scale) < 1e-5
        n = shape[2]
        assert _rel_err(mx, wmx, wmx.abs() + (wsxx / n).sqrt()) < 1e-5
        assert _rel_err(my, wmy, wmy.abs() + (wsyy / n).sqrt()) < 1e-5
    b, c, _ = shape
    g = torch.Generator(device="cuda").manual_seed(1)
    coef_g = torch.randn(b, c, c, device="cuda", dtype=torch.float64, generator=g)
    coef_h = torch.randn(b, c, device="cuda", dtype=torch.float64, generator=g)
    out = mod.combine(est, ref, wmx, wmy, coef_g, coef_h)
    assert out.dtype == est.dtype and out.shape == est.shape
    want = torch_backend.combine(est.double(), ref.double(), wmx, wmy, coef_g, coef_h)
    xc, yc = est.double() - wmx.unsqueeze(-1), ref.double() - wmy.unsqueeze(-1)
    scale = torch.bmm(coef_g.abs(), yc.abs()) + coef_h.abs().unsqueeze(-1) * xc.abs()
    tol = 1e-5 if dtype == torch.float32 else 2.0 ** -8                # one bf16 rounding
    assert _rel_err(out, want, scale + 1e-30) < tol


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_weighted_sisdr_matches_float64_reference(backend, shape):
    est0, ref, mix = _batch(*shape)
    bias = torch.linspace(-1, 1, shape[0], device="cuda").unsqueeze(1)
    out, grads = {}, {}
    for name in (backend, "reference"):
        est = est0.clone().requires_grad_(True)
        res = uk.weighted_sisdr(est, ref, mixture=mix, alpha=0.1, bias=bias, backend=name)
        res.loss.backward()
        out[name], grads[name] = res, est.grad
    got, want = out[backend], out["reference"]
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.sisdr, want.sisdr, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got.sisdri, want.sisdri, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got.weights, want.weights, rtol=1e-4, atol=1e-6)
    assert torch.equal(got.perm, want.perm)
    scale = grads["reference"].abs().max()
    assert ((grads[backend] - grads["reference"]).abs() <= 1e-4 * scale).all()


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_gpu_backends_agree_with_each_other(shape):
    est0, ref, mix = _batch(*shape, seed=2)
    results = {}
    for name in GPU_BACKENDS:
        est = est0.clone().requires_grad_(True)
        res = uk.weighted_sisdr(est, ref, mixture=mix, alpha=0.1, backend=name)
        res.loss.backward()
        results[name] = (res, est.grad)
    base_res, base_grad = results["torch"]
    for name, (res, grad) in results.items():
        torch.testing.assert_close(res.loss, base_res.loss, rtol=1e-5, atol=1e-4, msg=name)
        torch.testing.assert_close(res.sisdri, base_res.sisdri, rtol=1e-5, atol=1e-3, msg=name)
        assert ((grad - base_grad).abs() <= 1e-4 * base_grad.abs().max()).all(), name


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_bitwise_deterministic(backend):
    est0, ref, mix = _batch(16, 2, 32000, seed=3)
    runs = []
    for _ in range(2):
        est = est0.clone().requires_grad_(True)
        res = uk.weighted_sisdr(est, ref, mixture=mix, alpha=0.1, backend=backend)
        res.loss.backward()
        stats = backends.get_backend(backend).stats(est0, ref, True)
        runs.append((res.loss.detach(), res.sisdri, res.weights, est.grad, *stats))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


class _TinySeparator(torch.nn.Module):
    def __init__(self, n_src=2):
        super().__init__()
        self.n_src = n_src
        self.enc = torch.nn.Conv1d(1, 16, 9, padding=4)
        self.dec = torch.nn.Conv1d(16, n_src, 9, padding=4)

    def forward(self, mix):
        return self.dec(torch.relu(self.enc(mix.unsqueeze(1))))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_compiled_train_step_matches_eager(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model_e = _TinySeparator().cuda()
    model_c = copy.deepcopy(model_e)
    opt_e = torch.optim.SGD(model_e.parameters(), lr=1e-3)
    opt_c = torch.optim.SGD(model_c.parameters(), lr=1e-3)
    _, ref, mix = _batch(8, 2, 8000, seed=4)
    alpha = torch.tensor(0.1, device="cuda")

    def loss_fn(model, m, r, a):
        out = uk.weighted_sisdr(model(m), r, mixture=m, alpha=a, backend=backend)
        return out.loss, out.weights

    compiled = torch.compile(loss_fn, fullgraph=True)
    for step in range(3):
        for model, opt, fn in ((model_e, opt_e, loss_fn), (model_c, opt_c, compiled)):
            opt.zero_grad(set_to_none=True)
            loss, weights = fn(model, mix, ref, alpha)
            loss.backward()
            opt.step()
            if fn is loss_fn:
                loss_e, w_e = loss.detach(), weights
            else:
                loss_c, w_c = loss.detach(), weights
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-5, msg=f"step {step}")
        torch.testing.assert_close(w_c, w_e, rtol=1e-4, atol=1e-6)
    for p_e, p_c in zip(model_e.parameters(), model_c.parameters()):
        torch.testing.assert_close(p_c, p_e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_graph_capture_matches_eager(backend):
    b, c, t = 8, 2, 16000
    est_static = torch.zeros(b, c, t, device="cuda", requires_grad=True)
    ref_static = torch.zeros(b, c, t, device="cuda")
    mix_static = torch.zeros(b, t, device="cuda")

    def step():
        out = uk.weighted_sisdr(est_static, ref_static, mixture=mix_static, alpha=0.1,
                                backend=backend, check_finite=False)
        (grad,) = torch.autograd.grad(out.loss, est_static)
        return out.loss, out.sisdri, grad

    def load(seed):
        est, ref, mix = _batch(b, c, t, seed=seed)
        with torch.no_grad():
            est_static.copy_(est)
            ref_static.copy_(ref)
            mix_static.copy_(mix)
        return est, ref, mix

    load(10)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):                       # warm up: compile, autotune, caches
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss, static_sisdri, static_grad = step()

    for seed in (11, 12):
        est, ref, mix = load(seed)
        graph.replay()
        torch.cuda.synchronize()
        est_e = est.clone().requires_grad_(True)
        out = uk.weighted_sisdr(est_e, ref, mixture=mix, alpha=0.1, backend=backend)
        (grad_e,) = torch.autograd.grad(out.loss, est_e)
        torch.testing.assert_close(static_loss, out.loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(static_sisdri, out.sisdri, rtol=1e-5, atol=1e-5)
        grad_tol = 1e-4 * grad_e.abs().max().item()
        torch.testing.assert_close(static_grad, grad_e, rtol=1e-4, atol=grad_tol)


# ---------------------------------------------------------------------------------------
# The fused ops' CUDA kernels (csrc/cuda/ugr_fused_cuda.cu): backend "cuda" takes the
# fused path (one forward op, one backward op, four launches, no host sync).

def _fused_cuda_ready() -> bool:
    from ugr_kernels import fused
    return _cuda_extension_ready() and fused.has_fused_cuda()


fused_cuda = pytest.mark.skipif(not _fused_cuda_ready(),
                                reason="the extension has no CUDA kernels of the fused ops")

_FUSED_CASES = [
    # (B, C, T, mixture, granularity, pit, dtype)
    (8, 2, 16000, True, "source", True, torch.float32),
    (4, 3, 5001, False, "source", True, torch.float64),
    (6, 1, 777, True, "example", True, torch.float32),
    (3, 4, 9000, True, "example", True, torch.bfloat16),
    (4, 2, 3001, True, "source", True, torch.float16),
    (2, 6, 4000, True, "source", True, torch.float32),
    (300, 2, 50, True, "source", True, torch.float32),      # more items than threads
    (2, 8, 3000, True, "source", False, torch.float32),     # register tile, 9 x rows
    (2, 9, 3000, True, "example", False, torch.float64),    # ATen statistics fallback
    (3, 2, 1, False, "source", True, torch.float64),        # T = 1
    (3, 2, 2, True, "source", True, torch.float32),         # T = 2: collinear
]


def _fused_inputs(b, c, t, dtype, seed=0, low=None):
    g = torch.Generator(device="cuda").manual_seed(seed)
    ref = torch.randn(b, c, t, device="cuda", generator=g, dtype=torch.float64)
    # SI-SDR from about -6 dB up to 40 dB (70 dB for float64 inputs).
    if low is None:
        low = -3.5 if dtype == torch.float64 else -2.0
    level = torch.logspace(low, 0.3, b, device="cuda", dtype=torch.float64).view(b, 1, 1)
    est = ref.roll(1, dims=1) + level * torch.randn(b, c, t, device="cuda", generator=g,
                                                     dtype=torch.float64) + 0.05
    mix = ref.sum(1) + 0.3 * torch.randn(b, t, device="cuda", generator=g, dtype=torch.float64)
    if b > 2 and t > 2:
        est[0, 0] = 0.0                               # silent estimate: masked
        ref[1, c - 1] = 0.0                           # silent reference: masked
        est[2, 0, t // 2] = float("nan")              # NaN row: masked
    return est.to(dtype), ref.to(dtype), mix.to(dtype)


def _assert_close_scaled(got, want, rel, what):
    """|got - want| <= rel * max|want| over finite values; NaN and inf where want has them."""
    got, want = got.double(), want.double()
    fin = torch.isfinite(want)
    assert torch.equal(torch.isnan(got), torch.isnan(want)), what
    assert torch.equal(got[~fin & ~torch.isnan(want)], want[~fin & ~torch.isnan(want)]), what
    if fin.any():
        err = (got[fin] - want[fin]).abs().max().item()
        scale = want[fin].abs().max().item()
        assert err <= rel * scale + 1e-300, f"{what}: error {err:.3e}, scale {scale:.3e}"


@fused_cuda
@pytest.mark.parametrize("case", _FUSED_CASES, ids=lambda c: f"B{c[0]}-C{c[1]}-T{c[2]}-"
                         f"{'mix' if c[3] else 'nomix'}-{c[4]}-{'pit' if c[5] else 'nopit'}-"
                         f"{str(c[6]).split('.')[-1]}")
def test_fused_cuda_op_matches_cpu_op(case):
    """The CUDA kernels of ugr::weighted_sisdr_fwd/_bwd against the C++ CPU kernels."""
    b, c, t, with_mix, granularity, pit, dtype = case
    est, ref, mix = _fused_inputs(b, c, t, dtype)
    by_source = granularity == "source"
    g = torch.Generator(device="cuda").manual_seed(1)
    # Strided item inputs: a per-example bias expanded over sources, a transposed mask.
    bias = torch.randn(b, 1, device="cuda", dtype=torch.float64, generator=g).expand(b, c) \
        if by_source else torch.randn(b, device="cuda", dtype=torch.float64, generator=g)
    mask = (torch.rand(c, b, device="cuda", generator=g) > 0.2).t() if by_source else \
        torch.rand(b, device="cuda", generator=g) > 0.2
    alpha = torch.tensor(0.3, device="cuda", dtype=torch.float64)
    args = (bool(by_source), bool(pit), True, 1e-12, float("inf"))
    mix_arg = mix if with_mix else None
    got = torch.ops.ugr.weighted_sisdr_fwd(est, ref, mix_arg, alpha, bias, mask, *args)
    want = torch.ops.ugr.weighted_sisdr_fwd(
        est.cpu(), ref.cpu(), None if mix_arg is None else mix_arg.cpu(), alpha.cpu(),
        bias.cpu(), mask.cpu(), *args)
    assert all(x.is_cuda for x in got)
    names = ("loss", "sisdr", "sisdri", "weights", "perm", "valid", "coef")
    for name, x, y in zip(names, got, want):
        assert x.dtype == y.dtype and x.shape == y.shape, name
    loss, sisdr, sisdri, weights, perm, valid, coef = (x.cpu() for x in got)
    w_loss, w_sisdr, w_sisdri, w_weights, w_perm, w_valid, w_coef = want
    assert torch.equal(perm, w_perm)
    assert torch.equal(valid, w_valid)
    assert torch.equal(coef[..., 5:], w_coef[..., 5:])
    # float64: the two devices sum in different orders; near 70 dB SI-SDR amplifies that
    # rounding by 1 / (1 - rho^2) ~ 1e7.
    tol = {"rtol": 1e-7, "atol": 1e-7} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(loss, w_loss, **tol)
    torch.testing.assert_close(sisdr, w_sisdr, **tol)
    torch.testing.assert_close(sisdri, w_sisdri, **tol)
    torch.testing.assert_close(weights, w_weights, **tol)
    for slot in range(5):
        _assert_close_scaled(coef[..., slot], w_coef[..., slot], 1e-6, f"coef[{slot}]")

    grad_loss = torch.tensor(1.7, device="cuda", dtype=loss.dtype)
    gs = torch.randn(c, b, device="cuda", dtype=sisdr.dtype, generator=g).t()  # strided
    gsi = torch.randn(b, c, device="cuda", dtype=sisdr.dtype, generator=g)
    for grads in ((gs, gsi), (None, None), (gs, None)):
        d = torch.ops.ugr.weighted_sisdr_bwd(grad_loss, *grads, est, ref, got[4], got[6])
        w_d = torch.ops.ugr.weighted_sisdr_bwd(
            grad_loss.cpu(), *(None if x is None else x.cpu() for x in grads), est.cpu(),
            ref.cpu(), want[4], want[6])
        assert d.dtype == est.dtype and d.shape == est.shape and d.is_cuda
        rel = {torch.float64: 1e-6, torch.float32: 1e-5, torch.float16: 2 ** -10,
               torch.bfloat16: 2 ** -7}[dtype]
        _assert_close_scaled(d.cpu(), w_d, rel, "d_est")


@fused_cuda
@pytest.mark.parametrize("granularity", ["source", "example"])
@pytest.mark.parametrize("with_mix", [True, False], ids=["mix", "nomix"])
def test_fused_cuda_matches_float64_reference(granularity, with_mix):
    est0, ref, mix = _fused_inputs(8, 3, 12000, torch.float32, seed=5)
    est0, ref, mix = (x.nan_to_num() for x in (est0, ref, mix))
    bias = torch.linspace(-1, 1, 8, device="cuda")
    bias = bias.view(8, 1) if granularity == "source" else bias
    out, grads = {}, {}
    for name in ("cuda", "reference"):
        est = est0.clone().requires_grad_(True)
        res = uk.weighted_sisdr(est, ref, mixture=mix if with_mix else None,
                                alpha=torch.tensor(0.2, device="cuda"), bias=bias,
                                granularity=granularity, backend=name)
        (res.loss + 0.01 * res.sisdr.sum()).backward()
        out[name], grads[name] = res, est.grad
    got, want = out["cuda"], out["reference"]
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.sisdr, want.sisdr, rtol=1e-5, atol=1e-4)
    if with_mix:
        torch.testing.assert_close(got.sisdri, want.sisdri, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.weights, want.weights, rtol=1e-5, atol=1e-7)
    assert torch.equal(got.perm, want.perm)
    assert torch.equal(got.mask, want.mask)
    scale = grads["reference"].abs().max()
    assert ((grads["cuda"] - grads["reference"]).abs() <= 1e-4 * scale).all()


@fused_cuda
def test_fused_cuda_four_launches_and_no_sync():
    """Forward + backward: the tile pass, the per-example epilogue, the batch normaliser,
    the backward; nothing else."""
    from torch.profiler import ProfilerActivity, profile

    est0, ref, mix = _fused_inputs(8, 2, 16000, torch.float32, seed=6)
    alpha = torch.tensor(0.1, device="cuda", dtype=torch.float64)
    est = est0.nan_to_num().clone().requires_grad_(True)
    seed = torch.ones((), device="cuda")
    for _ in range(2):                        # warm-up (lazy init, allocator)
        res = uk.weighted_sisdr(est, ref, mixture=mix, alpha=alpha, backend="cuda",
                                check_finite=False)
        torch.autograd.grad(res.loss, est, grad_outputs=seed)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")   # any host sync raises
    try:
        res = uk.weighted_sisdr(est, ref, mixture=mix, alpha=alpha, backend="cuda",
                                check_finite=False)
        torch.autograd.grad(res.loss, est, grad_outputs=seed)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        res = uk.weighted_sisdr(est, ref, mixture=mix, alpha=alpha, backend="cuda",
                                check_finite=False)
        torch.autograd.grad(res.loss, est, grad_outputs=seed)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "emcpy" not in e.name and "emset" not in e.name]
    if not kernels:
        pytest.skip("the profiler recorded no CUDA kernels (CUPTI unavailable)")
    ours = [k for k in kernels if "ugr_fused_cuda" in k or "ugr_cuda" in k]
    assert len(ours) == 4, kernels
    assert len(kernels) <= 4, kernels


@fused_cuda
def test_fused_cuda_graph_capture_reads_alpha_from_the_device():
    b, c, t = 8, 2, 16000
    est_static = torch.zeros(b, c, t, device="cuda", requires_grad=True)
    ref_static = torch.zeros(b, c, t, device="cuda")
    mix_static = torch.zeros(b, t, device="cuda")
    alpha_static = torch.zeros((), device="cuda", dtype=torch.float64)

    def step():
        out = uk.weighted_sisdr(est_static, ref_static, mixture=mix_static, alpha=alpha_static,
                                backend="cuda", check_finite=False)
        (grad,) = torch.autograd.grad(out.loss, est_static)
        return out.loss, out.weights, grad

    def load(seed, alpha):
        est, ref, mix = _fused_inputs(b, c, t, torch.float32, seed=seed)
        est, ref, mix = (x.nan_to_num() for x in (est, ref, mix))
        with torch.no_grad():
            est_static.copy_(est)
            ref_static.copy_(ref)
            mix_static.copy_(mix)
            alpha_static.fill_(alpha)
        return est, ref, mix

    load(20, 0.1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss, static_weights, static_grad = step()

    for seed, alpha in ((21, 0.5), (22, -1.0)):
        est, ref, mix = load(seed, alpha)
        graph.replay()
        torch.cuda.synchronize()
        est_e = est.clone().requires_grad_(True)
        out = uk.weighted_sisdr(est_e, ref, mixture=mix, alpha=alpha, backend="cuda")
        (grad_e,) = torch.autograd.grad(out.loss, est_e)
        # The same kernels on the same inputs: bitwise equal.
        assert torch.equal(static_loss, out.loss)
        assert torch.equal(static_weights, out.weights)
        assert torch.equal(static_grad, grad_e)


@fused_cuda
def test_fused_cuda_bitwise_repeatable_and_non_finite_alpha():
    est, ref, mix = (x.nan_to_num() for x in _fused_inputs(16, 3, 20000, torch.float32, seed=7))
    alpha = torch.tensor(0.4, device="cuda", dtype=torch.float64)
    args = (True, True, True, 1e-12, float("inf"))
    a = torch.ops.ugr.weighted_sisdr_fwd(est, ref, mix, alpha, None, None, *args)
    b = torch.ops.ugr.weighted_sisdr_fwd(est, ref, mix, alpha, None, None, *args)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    # No host sync, so no raise in the op: every item drops out of the pmf ...
    nan_alpha = torch.tensor(float("nan"), device="cuda", dtype=torch.float64)
    out = torch.ops.ugr.weighted_sisdr_fwd(est, ref, mix, nan_alpha, None, None, *args)
    assert (out[3] == 0).all() and out[0].item() == 0.0
    # ... and check_finite raises, from the one sync it makes.
    with pytest.raises(ValueError, match="alpha"):
        uk.weighted_sisdr(est, ref, mixture=mix, alpha=nan_alpha, backend="cuda")


@fused_cuda
@pytest.mark.parametrize("granularity", ["source", "example"])
def test_fused_cuda_opcheck_and_gradcheck(granularity):
    from ugr_kernels import fused

    assert fused.use_cuda_kernel("extension") == "extension"   # the ops' CUDA key: csrc/cuda
    est, ref, mix = (x.nan_to_num() for x in _fused_inputs(3, 2, 301, torch.float64, seed=8,
                                                           low=-1.5))
    by_source = granularity == "source"
    items = (3, 2) if by_source else (3,)
    alpha = torch.tensor(0.5, device="cuda", dtype=torch.float64)
    bias = torch.linspace(-1, 1, 3, device="cuda", dtype=torch.float64)
    bias = bias.view(3, 1).expand(items).contiguous() if by_source else bias
    mask = torch.ones(items, device="cuda", dtype=torch.bool)
    est_g = est.clone().requires_grad_(True)
    args = (est_g, ref, mix, alpha, bias, mask, by_source, True, True, 1e-12, float("inf"))
    torch.library.opcheck(fused.WEIGHTED_SISDR_FWD, args)
    _, _, _, _, perm, _, coef = fused.WEIGHTED_SISDR_FWD(*args)
    torch.library.opcheck(fused.WEIGHTED_SISDR_BWD,
                          (torch.tensor(1.0, device="cuda"), None,
                           torch.randn(3, 2, device="cuda"), est.float(), ref.float(), perm,
                           coef))
    # alpha = 0: the weights (stop-gradient by design) do not depend on est.
    for fn in (lambda e: uk.weighted_sisdr(e, ref, mixture=mix, alpha=0.0, bias=bias,
                                           granularity=granularity, backend="cuda").loss,
               lambda e: uk.weighted_sisdr(e, ref, backend="cuda", clamp_db=25.0).sisdr):
        assert torch.autograd.gradcheck(fn, (est_g,))

"""The fused path (ugr_kernels/fused.py, csrc/ugr_fused_cpu.cpp) against the float64 reference.

``weighted_sisdr(backend="cpp")`` takes the fused ops whenever it can; every check
here compares it with ``backend="reference"`` (textbook autograd over T in float64)
on values, weights, perm and gradients, over the nasty list: silent items, T = 1, 2,
tile edges, B = 1, C up to 6, every dtype, 60-90 dB, NaN with check_finite=False.
Then the op contracts: opcheck, gradcheck, torch.compile without recompiles, the
number of dispatched operators per forward+backward, import order, fallbacks.
"""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ugr_kernels as uk
from ugr_kernels import backends, fused

if not backends.is_available("cpp", "cpu"):
    pytest.skip("ugr_kernels._C is not built", allow_module_level=True)

from ugr_kernels import _C  # noqa: E402

TILE = _C.tile_size()
ROOT = Path(__file__).resolve().parents[1]
FWD, BWD = fused.WEIGHTED_SISDR_FWD, fused.WEIGHTED_SISDR_BWD


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def batch(b=3, c=2, t=301, seed=0):
    ref = rand(b, c, t, seed=seed)
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(seed))
    est = ref[:, perm] + 0.7 * rand(b, c, t, seed=seed + 1)
    return est, ref, ref.sum(1) + 0.3 * rand(b, t, seed=seed + 2)


def run(est, ref, backend, grad=True, **kw):
    """Result and d loss / d est (None when est is not differentiable)."""
    est = est.detach().clone().requires_grad_(grad)
    out = uk.weighted_sisdr(est, ref, backend=backend, **kw)
    g = torch.autograd.grad(out.loss, est, allow_unused=True)[0] if grad else None
    return out, g


def assert_matches_reference(est, ref, *, rtol=1e-9, atol=1e-9, grad_rtol=1e-8, **kw):
    got, g_got = run(est, ref, "cpp", **kw)
    want, g_want = run(est.double(), ref.double(), "reference",
                       **{k: (v.double() if k == "mixture" and v is not None else v)
                          for k, v in kw.items()})
    assert torch.equal(got.perm, want.perm)
    assert torch.equal(got.mask, want.mask)
    for f in ("loss", "sisdr", "sisdri", "weights"):
        a, b = getattr(got, f), getattr(want, f)
        if b is None:
            assert a is None
            continue
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol, msg=f)
    scale = g_want.abs().max().clamp(min=1e-300)
    err = (g_got.double() - g_want).abs().max() / scale
    assert err <= grad_rtol, f"gradient: max error {err:.3g} of the largest entry"
    return got, g_got


def uses_fused(**kw):
    est, ref, _ = batch(2, 2, 50)
    out = uk.weighted_sisdr(est.requires_grad_(True), ref, backend="cpp", **kw)
    return type(out.loss.grad_fn).__name__ == "CppFunction"


# ----------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("granularity", ["source", "example"])
@pytest.mark.parametrize("with_mix", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.3, "tensor"])
def test_matches_reference(granularity, with_mix, alpha):
    est, ref, mix = batch(4, 3, 700, seed=3)
    a = torch.tensor(-0.4, dtype=torch.float64) if alpha == "tensor" else alpha
    bias = rand(4, 3, seed=9) if granularity == "source" else rand(4, seed=9)
    assert_matches_reference(est, ref, mixture=mix if with_mix else None, alpha=a, bias=bias,
                             granularity=granularity)


@pytest.mark.parametrize("granularity", ["source", "example"])
def test_mask_and_bias_shapes(granularity):
    est, ref, mix = batch(4, 2, 300, seed=5)
    if granularity == "source":
        mask = torch.tensor([[True, False], [True, True], [False, False], [True, True]])
        bias = rand(2, seed=4)                      # broadcast over the batch
    else:
        mask = torch.tensor([[True], [False], [True], [True]])
        bias = rand(4, seed=4).float()              # cast to float64
    got, g = assert_matches_reference(est, ref, mixture=mix, alpha=0.2, bias=bias, mask=mask,
                                      granularity=granularity)
    assert (got.weights[~mask.reshape(got.weights.shape[0], -1).squeeze(-1)] == 0).all()


def test_wrong_shapes_and_non_finite_weighting_are_value_errors():
    est, ref, _ = batch(3, 2, 40)
    with pytest.raises(ValueError, match="bias"):
        uk.weighted_sisdr(est, ref, bias=torch.zeros(3, 3), backend="cpp")
    with pytest.raises(ValueError, match="mask"):
        uk.weighted_sisdr(est, ref, mask=torch.ones(3, 2, dtype=torch.bool),
                          granularity="example", backend="cpp")
    for alpha in (float("nan"), float("inf"), torch.tensor(float("nan"))):
        with pytest.raises(ValueError, match="alpha"):
            uk.weighted_sisdr(est, ref, alpha=alpha, backend="cpp")
    with pytest.raises(ValueError, match="bias"):
        uk.weighted_sisdr(est, ref, bias=torch.tensor([[0.0, float("-inf")]] * 3), backend="cpp")


@pytest.mark.parametrize("c", [1, 2, 3, 4, 5, 6])
def test_pit_up_to_six_sources_and_b1(c):
    est, ref, mix = batch(1 if c % 2 else 2, c, 120, seed=c)
    assert_matches_reference(est, ref, mixture=mix, alpha=0.1)


def test_pit_ties_take_the_first_permutation():
    ref = rand(2, 4, 64)
    est = ref.sum(1, keepdim=True).expand(2, 4, 64).contiguous()   # all permutations tie
    got, _ = run(est, ref, "cpp")
    want, _ = run(est, ref, "reference")
    assert torch.equal(got.perm, want.perm)
    assert torch.equal(got.perm, torch.arange(4).expand(2, 4))


@pytest.mark.parametrize("t", [TILE - 1, TILE, TILE + 1, 3 * TILE + 5])
def test_tile_edges(t):
    est, ref, mix = batch(2, 2, t, seed=t)
    assert_matches_reference(est + 3.0, ref - 1.0, mixture=mix, alpha=0.2)


def test_silent_items_are_masked_with_zero_gradient():
    est, ref, mix = batch(3, 2, 128, seed=1)
    ref[1, 0] = 0.0
    est[2] = 0.5                     # constant: silent after centring
    got, g = assert_matches_reference(est, ref, mixture=mix, alpha=0.2)
    assert not got.mask[1, 0] and not got.mask[2].any() and got.mask[0].all()
    assert (g[2] == 0).all() and (g[1, got.perm[1, 0]] == 0).all()
    assert torch.isfinite(g).all()


def test_t1_and_t2():
    # T = 1 centred: everything silent, loss 0, gradient 0.
    est, ref, _ = batch(2, 2, 1)
    out, g = run(est, ref, "cpp")
    assert not out.mask.any() and out.loss.item() == 0.0 and (g == 0).all()
    # T = 2 centred, T = 1 raw: one effective sample, every pair collinear, SI-SDR
    # constant (about 120 dB): exactly zero gradient, not 1/eps times rounding noise.
    for t, zero_mean in ((2, True), (1, False)):
        est, ref, mix = batch(2, 2, t, seed=4)
        for dtype in (torch.float64, torch.float32, torch.float16):
            out, g = run(est.to(dtype), ref.to(dtype), "cpp", zero_mean=zero_mean)
            want, _ = run(est.to(dtype).double(), ref.to(dtype).double(), "reference",
                          zero_mean=zero_mean)
            assert out.mask.all() and (g == 0).all()
            torch.testing.assert_close(out.sisdr.double(), want.sisdr, rtol=0, atol=0.01)


@pytest.mark.parametrize("dtype, rtol, grad_rtol", [
    (torch.float32, 1e-6, 1e-6), (torch.float16, 1e-6, 2e-3), (torch.bfloat16, 1e-6, 1e-2)])
@pytest.mark.parametrize("granularity", ["source", "example"])
def test_low_precision_inputs(dtype, rtol, grad_rtol, granularity):
    est, ref, mix = batch(3, 2, 3 * TILE + 7, seed=13)
    est, ref, mix = est.to(dtype), ref.to(dtype), mix.to(dtype)
    # The statistics are exact float64 sums of the rounded inputs, so only the float32
    # outputs and the rounded gradient differ from the float64 reference.
    got, g = assert_matches_reference(est, ref, mixture=mix, alpha=0.1, granularity=granularity,
                                      rtol=rtol, atol=1e-5, grad_rtol=grad_rtol)
    assert got.loss.dtype == torch.float32 and g.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("db", [60.0, 75.0, 90.0])
def test_high_sisdr(dtype, db):
    ref = rand(2, 1, 16000, seed=3) + 0.2
    noise = rand(2, 1, 16000, seed=4)
    noise = noise - noise.mean(-1, keepdim=True)
    est = ref + noise * ref.std() * 10 ** (-db / 20)
    est, ref = est.to(dtype), ref.to(dtype)
    got, g = run(est, ref, "cpp")
    want, g_want = run(est.double(), ref.double(), "reference")
    torch.testing.assert_close(got.sisdr.double(), want.sisdr, rtol=0, atol=0.01)
    assert (got.sisdr > db - 1).all()
    err = (g.double() - g_want).abs().max() / g_want.abs().max()
    assert err < (1e-6 if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("scale", [1e-150, 1e-100, 1e100, 1e150])
def test_float64_extreme_amplitudes(scale):
    est, ref, mix = batch(2, 2, 400, seed=12)
    base, g = run(est, ref, "cpp", mixture=mix)
    out, g_scaled = run(est * scale, ref / scale, "cpp", mixture=mix * scale)
    assert out.mask.all()
    torch.testing.assert_close(out.sisdri, base.sisdri, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g_scaled * scale, g, rtol=1e-8, atol=0)


def test_float32_gradient_with_large_dc_offset_is_exact():
    est, ref, _ = batch(2, 2, 5000, seed=21)
    est32 = (1e4 + 1e-3 * est).float()
    ref32 = ref.float()
    _, g = run(est32, ref32, "cpp")
    _, g_want = run(est32.double(), ref32.double(), "reference")
    assert (g.double() - g_want).abs().max() / g_want.abs().max() < 1e-6


@pytest.mark.parametrize("with_mix", [False, True])
def test_nan_item_unchecked_is_masked_with_exactly_zero_gradient(with_mix):
    est, ref, mix = batch(3, 2, 100, seed=3)
    est[1, 0, 5] = float("nan")
    est[2, 1, 7] = float("inf")
    out, g = run(est, ref, "cpp", mixture=mix if with_mix else None, alpha=0.2,
                 check_finite=False)
    assert torch.isfinite(out.loss) and torch.isfinite(out.weights).all()
    for b, k in ((1, 0), (2, 1)):
        j = int((out.perm[b] == k).nonzero())
        assert not out.mask[b, j] and out.weights[b, j] == 0
        assert (g[b, k] == 0).all()
    assert torch.isfinite(g).all() and out.mask[0].all()
    # The unaffected items match the reference on the same items.
    want, _ = run(est[:1], ref[:1], "reference", mixture=mix[:1] if with_mix else None)
    torch.testing.assert_close(out.sisdr[0], want.sisdr[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["est", "ref", "mixture"])
def test_checked_non_finite_input_names_the_argument(name):
    t = {"est": rand(2, 2, 50), "ref": rand(2, 2, 50, seed=1), "mixture": rand(2, 50, seed=2)}
    t[name].view(-1)[7] = float("nan")
    with pytest.raises(ValueError, match=f"{name} contains NaN"):
        uk.weighted_sisdr(t["est"], t["ref"], mixture=t["mixture"], backend="cpp")


def test_sisdr_and_sisdri_gradients_are_gated_like_the_reference():
    est, ref, mix = batch(3, 2, 90, seed=8)
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    est[2, 0] = 0.0
    outs = {}
    for backend in ("cpp", "reference"):
        e = est.clone().requires_grad_(True)
        out = uk.weighted_sisdr(e, ref, mixture=mix, mask=mask, alpha=0.3, backend=backend)
        w = rand(3, 2, seed=1)
        total = out.loss + (w * out.sisdr).sum() + (w.flip(0) * out.sisdri).sum()
        outs[backend] = torch.autograd.grad(total, e)[0]
    torch.testing.assert_close(outs["cpp"], outs["reference"], rtol=1e-8, atol=1e-12)


def test_clamp_and_no_zero_mean_and_no_pit():
    est, ref, mix = batch(3, 3, 500, seed=17)
    assert_matches_reference(est, ref, mixture=mix, clamp_db=20.0, alpha=0.1)
    assert_matches_reference(est + 0.5, ref, zero_mean=False, alpha=0.1)
    assert_matches_reference(est, ref, pit=False, mixture=mix, alpha=-0.2)


# ----------------------------------------------------------------- dispatch and fallback


def test_fused_path_is_taken_only_where_it_applies():
    assert uses_fused()
    assert uses_fused(alpha=torch.tensor(0.5))
    assert not uses_fused(score_fn=lambda loss: 0.1 * loss)
    with fused.disabled():
        assert not uses_fused()
    assert uses_fused()


def test_ref_and_mixture_gradients_fall_back_to_two_passes():
    est, ref, mix = batch(2, 2, 80, seed=2)
    for which in ("ref", "mixture"):
        e, r, m = est.clone(), ref.clone(), mix.clone()
        leaf = {"ref": r, "mixture": m}[which].requires_grad_(True)
        out = uk.weighted_sisdr(e.requires_grad_(True), r, mixture=m, backend="cpp")
        assert type(out.loss.grad_fn).__name__ != "CppFunction"
        g = torch.autograd.grad(out.loss, leaf, allow_unused=True)[0]
        assert which == "mixture" or torch.isfinite(g).all()


def test_two_pass_path_agrees_with_fused():
    est, ref, mix = batch(4, 3, 1000, seed=30)
    bias = rand(4, 3, seed=31)
    fast, g_fast = run(est, ref, "cpp", mixture=mix, alpha=0.2, bias=bias)
    with fused.disabled():
        slow, g_slow = run(est, ref, "cpp", mixture=mix, alpha=0.2, bias=bias)
    for f in ("loss", "sisdr", "sisdri", "weights"):
        torch.testing.assert_close(getattr(fast, f), getattr(slow, f), rtol=1e-9, atol=1e-9)
    assert torch.equal(fast.perm, slow.perm) and torch.equal(fast.mask, slow.mask)
    torch.testing.assert_close(g_fast, g_slow, rtol=1e-8, atol=1e-12)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", [
    "cpp",
    pytest.param("triton", marks=pytest.mark.skipif(
        not uk.backends.is_available("triton", "cpu"), reason="Triton interpreter unavailable")),
])
def test_dispatched_operators_per_forward_backward(backend):
    # Issue 8's count: B=4, C=2, T=3000, mixture, check_finite=False, alpha a 0-d tensor
    # (198 operators before the fused ops).
    est, ref, mix = batch(4, 2, 3000, seed=1)
    est, ref, mix = est.float().requires_grad_(True), ref.float(), mix.float()
    alpha = torch.tensor(0.1, dtype=torch.float64)

    def step():
        est.grad = None
        out = uk.weighted_sisdr(est, ref, mixture=mix, alpha=alpha, backend=backend,
                                check_finite=False)
        out.loss.backward()

    step()
    with _CountOps() as counter:
        step()
    assert len(counter.ops) <= 12, counter.ops
    assert not [op for op in counter.ops if "_local_scalar_dense" in op or "item" in op]
    assert est.grad is not None and torch.isfinite(est.grad).all()


# ----------------------------------------------------------------- op contracts


def _fwd_args(granularity="source", with_mix=True, dtype=torch.float64, grad=True):
    est, ref, mix = batch(2, 3, 40, seed=6)
    est = est.to(dtype).requires_grad_(grad)
    by_source = granularity == "source"
    items = (2, 3) if by_source else (2,)
    return (est, ref.to(dtype), mix.to(dtype) if with_mix else None,
            torch.tensor(0.3, dtype=torch.float64), rand(*items, seed=2),
            torch.ones(items, dtype=torch.bool), by_source, True, True, 1e-12, float("inf"))


@pytest.mark.parametrize("granularity", ["source", "example"])
@pytest.mark.parametrize("with_mix", [False, True])
def test_opcheck_forward(granularity, with_mix):
    torch.library.opcheck(FWD, _fwd_args(granularity, with_mix))


def test_opcheck_backward():
    args = _fwd_args(grad=False)
    _, _, _, _, perm, _, coef = FWD(*args)
    est, ref = args[0], args[1]
    torch.library.opcheck(BWD, (torch.tensor(1.0), rand(2, 3, seed=3), None, est, ref, perm,
                                coef))
    torch.library.opcheck(BWD, (torch.tensor(0.5, dtype=torch.float64), None, rand(2, 3, seed=4),
                                est.float(), ref.float(), perm, coef))


def test_coef_width_agrees():
    assert _C.fused_coef_width() == fused.COEF_WIDTH


def test_gradcheck_float64():
    est, ref, mix = batch(2, 2, 23, seed=5)
    est.requires_grad_(True)
    mask = torch.tensor([[True, False], [True, True]])
    for kw in (dict(mixture=mix), dict(mixture=mix, mask=mask), dict(clamp_db=25.0)):
        assert torch.autograd.gradcheck(
            lambda e, kw=kw: uk.weighted_sisdr(e, ref, backend="cpp", **kw).sisdr, (est,))
    assert torch.autograd.gradcheck(
        lambda e: uk.weighted_sisdr(e, ref, mixture=mix, backend="cpp").sisdri, (est,))
    assert torch.autograd.gradcheck(
        lambda e: uk.weighted_sisdr(e, ref, backend="cpp", granularity="example").loss, (est,))


def test_compile_fullgraph_alpha_tensor_does_not_recompile():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    est, ref, mix = batch(3, 2, 500, seed=0)
    est, ref, mix = est.float(), ref.float(), mix.float()

    def step(e, r, m, a):
        out = uk.weighted_sisdr(e, r, mixture=m, alpha=a, backend="cpp")
        return out.loss, out.sisdri, out.weights

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    frames = []
    for a in (0.1, -0.3, 0.7):
        alpha = torch.tensor(a, dtype=torch.float64)
        e1 = est.clone().requires_grad_(True)
        e2 = est.clone().requires_grad_(True)
        got = compiled(e1, ref, mix, alpha)
        want = step(e2, ref, mix, alpha)
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y)
        torch.testing.assert_close(torch.autograd.grad(got[0], e1)[0],
                                   torch.autograd.grad(want[0], e2)[0])
        frames.append(counter.frame_count)
    # Frames compiled by the first call only (resolve()'s constant is a frame of its own).
    assert frames[0] == frames[-1]
    assert any("weighted_sisdr_fwd" in g.code for g in counter.graphs)


# ----------------------------------------------------------------- registration


@pytest.mark.parametrize("first", ["library", "package"])
def test_import_order(first):
    so = Path(_C.__file__)
    code = textwrap.dedent(f"""
        import torch
        if {first!r} == "library":
            torch.ops.load_library({str(so)!r})
        import ugr_kernels as uk
        from ugr_kernels import _C
        est = torch.randn(2, 2, 100, requires_grad=True)
        out = uk.weighted_sisdr(est, torch.randn(2, 2, 100), backend="cpp")
        out.loss.backward()
        assert type(out.loss.grad_fn).__name__ == "CppFunction"
        assert torch.isfinite(est.grad).all()
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_python_autograd_glue_for_other_backends():
    """register_backend's Python autograd (what a Triton op pair gets) on ops that
    call the C++ kernels, against the C++ autograd."""
    from typing import Optional

    from torch import Tensor

    @torch.library.custom_op("ugr_test::fwd", mutates_args=())
    def test_fwd(est: Tensor, ref: Tensor, mixture: Optional[Tensor], alpha: Tensor,
                 bias: Optional[Tensor], mask: Optional[Tensor], by_source: bool, pit: bool,
                 zero_mean: bool, eps: float, clamp_db: float
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        return tuple(FWD(est, ref, mixture, alpha, bias, mask, by_source, pit, zero_mean, eps,
                         clamp_db))

    @torch.library.custom_op("ugr_test::bwd", mutates_args=())
    def test_bwd(grad_loss: Tensor, grad_sisdr: Optional[Tensor], grad_sisdri: Optional[Tensor],
                 est: Tensor, ref: Tensor, perm: Tensor, coef: Tensor) -> Tensor:
        return BWD(grad_loss, grad_sisdr, grad_sisdri, est, ref, perm, coef)

    test_fwd.register_fake(fused._fwd_fake)
    test_bwd.register_fake(fused._bwd_fake)
    fused.register_backend("test-python-glue", test_fwd, test_bwd)
    try:
        ops = fused.ops_for("test-python-glue", "cpu")
        assert ops.fwd is test_fwd
        est, ref, mix = batch(3, 2, 200, seed=40)
        for gran in ("source", "example"):
            e1 = est.clone().requires_grad_(True)
            r1 = fused.fused_weighted_sisdr(ops, e1, ref, mix, 0.2, None, None, gran, True,
                                            True, 1e-12, None, True)
            assert not r1[3].requires_grad
            w = rand(3, 2, seed=41)
            g1, = torch.autograd.grad(r1[0] + (w * r1[1]).sum() + (w * r1[2]).sum(), e1)
            e2 = est.clone().requires_grad_(True)
            r2 = uk.weighted_sisdr(e2, ref, mixture=mix, alpha=0.2, granularity=gran,
                                   backend="cpp")
            g2, = torch.autograd.grad(r2.loss + (w * r2.sisdr).sum() + (w * r2.sisdri).sum(), e2)
            torch.testing.assert_close(g1, g2, rtol=0, atol=0)
        torch.library.opcheck(test_fwd, _fwd_args())
    finally:
        backends.REGISTRY.pop("test-python-glue", None)


def _group_worker(rank, world, port, granularity, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        est, ref, mix = batch(4, 2, 300, seed=50)
        bias = rand(4, 2, seed=51) if granularity == "source" else rand(4, seed=51)
        part = slice(2 * rank, 2 * rank + 2)
        e = est[part].clone().requires_grad_(True)
        res = uk.weighted_sisdr(e, ref[part], mixture=mix[part], alpha=0.3, bias=bias[part],
                                granularity=granularity, backend="cpp",
                                process_group=dist.group.WORLD)
        g, = torch.autograd.grad(res.loss, e)
        out[rank] = (res.loss.detach(), res.weights, g)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("granularity", ["source", "example"])
def test_process_group_equals_one_process_on_the_whole_batch(granularity):
    """With a process group the pmf spans both ranks (the epilogue splits at the two
    all-reduces); each rank's loss is scaled by the world size for DDP's mean."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_group_worker, args=(2, port, granularity, out), nprocs=2, join=True)
    est, ref, mix = batch(4, 2, 300, seed=50)
    bias = rand(4, 2, seed=51) if granularity == "source" else rand(4, seed=51)
    want, g_want = run(est, ref, "cpp", mixture=mix, alpha=0.3, bias=bias,
                       granularity=granularity)
    torch.testing.assert_close(out[0][0] + out[1][0], 2 * want.loss)
    torch.testing.assert_close(torch.cat([out[0][1], out[1][1]]), want.weights)
    torch.testing.assert_close(torch.cat([out[0][2], out[1][2]]) / 2, g_want, rtol=1e-9,
                               atol=1e-15)


# ----------------------------------------------------------------- one schema, a kernel per device
# Stand-ins for the Triton kernels (``backends/triton/fused.py: forward / backward``, the
# schemas' argument order and coef layout): they record the call and compute with the
# CPU kernels, so the registration and routing are checked without a GPU or Triton.

def _stand_in_kernels(calls):
    def forward(*args):
        calls.append("fwd")
        return tuple(FWD(*args))

    def backward(*args):
        calls.append("bwd")
        return BWD(*args)

    return forward, backward


def test_triton_kernels_are_registered_as_the_ops_cuda_kernels(monkeypatch):
    calls = []
    monkeypatch.setattr(fused, "triton_kernels", lambda: _stand_in_kernels(calls))
    cuda = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    args = _fwd_args(grad=False)
    try:
        assert fused.use_cuda_kernel("triton") == "triton" == fused.cuda_kernel()
        assert torch._C._dispatch_has_kernel_for_dispatch_key("ugr::weighted_sisdr_fwd", "CUDA")
        # The CUDA key's kernel, called on CPU tensors (the dispatcher only looks at the key).
        got = FWD.redispatch(cuda, *args)
        want = FWD(*args)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        perm, coef = got[4], got[6]
        BWD.redispatch(cuda, torch.tensor(1.0), None, None, args[0], args[1], perm, coef)
        assert calls == ["fwd", "bwd"]
    finally:
        fused.use_cuda_kernel("extension")
    # Dropping the Triton registration uncovers the extension's CUDA kernels (none here).
    assert fused.cuda_kernel() == ("extension" if fused.has_fused_cuda() else None)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(
        "ugr::weighted_sisdr_fwd", "CUDA") == fused.has_fused_cuda()


def test_cuda_kernel_choice(monkeypatch):
    with pytest.raises(ValueError, match="UGR_CUDA_KERNEL"):
        fused.use_cuda_kernel("cudnn")
    monkeypatch.setenv("UGR_CUDA_KERNEL", "triton")
    monkeypatch.setattr(fused, "triton_kernels", lambda: None)    # triton missing
    assert fused.use_cuda_kernel() is None and fused.cuda_kernel() != "triton"
    monkeypatch.setenv("UGR_CUDA_KERNEL", "extension")
    assert backends.auto_order("cuda")[0] == "cuda"
    monkeypatch.delenv("UGR_CUDA_KERNEL")
    assert backends.auto_order("cuda")[0] == "triton"


def test_triton_on_cpu_tensors_calls_the_kernels_with_the_ops_autograd(monkeypatch):
    """backend="triton" on CPU tensors (the interpreter): the CPU key belongs to the C++
    kernels, so the fused path calls Triton's forward / backward directly, with the
    same autograd formula; under torch.compile it takes the two passes."""
    calls = []
    monkeypatch.setattr(fused, "triton_kernels", lambda: _stand_in_kernels(calls))
    monkeypatch.setitem(backends.REGISTRY, "triton",
                        backends.REGISTRY["triton"]._replace(fused_ops=None))
    ops = fused.ops_for("triton", "cpu")
    assert ops is not None and not ops.traceable
    est, ref, mix = batch(3, 2, 200, seed=60)
    w = rand(3, 2, seed=61)
    for gran in ("source", "example"):
        e1 = est.clone().requires_grad_(True)
        r1 = fused.fused_weighted_sisdr(ops, e1, ref, mix, 0.2, None, None, gran, True, True,
                                        1e-12, None, True)
        g1, = torch.autograd.grad(r1[0] + (w * r1[1]).sum() + (w * r1[2]).sum(), e1)
        e2 = est.clone().requires_grad_(True)
        r2 = uk.weighted_sisdr(e2, ref, mixture=mix, alpha=0.2, granularity=gran, backend="cpp")
        g2, = torch.autograd.grad(r2.loss + (w * r2.sisdr).sum() + (w * r2.sisdri).sum(), e2)
        torch.testing.assert_close(r1[0], r2.loss, rtol=0, atol=0)
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    assert calls == ["fwd", "bwd"] * 2

"""The C++ CPU backend (ugr_kernels._C via backends/cpp.py) against the torch backend.

Both passes are checked on fresh random inputs over shapes that cross the tile
edges, every input dtype, both ISA copies of the kernels (baseline and AVX2),
extreme amplitudes, constant signals, SI-SDR accuracy at 80-120 dB,
determinism across calls and thread counts, input checks, and end to end
through ``weighted_sisdr`` (values, gradients, gradcheck).
"""
import math

import numpy as np
import pytest
import torch

import ugr_kernels
from ugr_kernels import backends
from ugr_kernels.backends import torch_backend

try:
    from ugr_kernels import _C
except ImportError:  # pragma: no cover - depends on the build
    _C = None

if _C is None:
    pytest.skip("ugr_kernels._C is not built (build it with "
                "`pip install --no-build-isolation -e .`)", allow_module_level=True)

from ugr_kernels.backends import cpp  # noqa: E402

TILE = _C.tile_size()
LENGTHS = [1, 7, TILE - 1, TILE + 1, 3 * TILE + 5, 40000]
CHANNELS = [(1, 1), (2, 2), (3, 3), (6, 6), (1, 2), (2, 3), (6, 1), (3, 6)]


def _isas():
    out = ["base"]
    try:
        _C.set_cpu_isa("avx2")
        out.append("avx2")
    except RuntimeError:
        pass
    finally:
        _C.set_cpu_isa("auto")
    return out


ISAS = _isas()
BEST = ISAS[-1]


@pytest.fixture(params=ISAS)
def isa(request):
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa("auto")


def _grid(batches, channels, lengths):
    """(isa, batch, cx, cy, length): everything on the best kernels, and a
    reduced grid on the baseline copy (run by CPUs without AVX2)."""
    cases = []
    for isa in ISAS:
        for batch in batches:
            for cx, cy in channels:
                for length in lengths:
                    if isa != BEST and (length not in (7, TILE + 1, 3 * TILE + 5)
                                        or (cx, cy) not in ((1, 1), (2, 2), (2, 3), (6, 1))):
                        continue
                    cases.append(pytest.param(isa, batch, cx, cy, length,
                                              id=f"{isa}-B{batch}-{cx}x{cy}-T{length}"))
    return cases


def _inputs(batch, cx, cy, length, dtype, seed, scale=1.0, offset=0.3):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, cx, length, generator=gen, dtype=torch.float64) + offset) * scale
    y = (torch.randn(batch, cy, length, generator=gen, dtype=torch.float64) - offset) * scale
    return x.to(dtype), y.to(dtype)


def _assert_stats_close(got, want, rtol, x, y):
    """Means within rtol of the signal amplitude, sums within rtol of sqrt(sxx syy)."""
    mx, my, sxy, sxx, syy = got
    wmx, wmy, wsxy, wsxx, wsyy = want
    for g, w in zip(got, want):
        assert g.dtype == torch.float64 and g.device.type == "cpu" and g.is_contiguous()
        assert g.shape == w.shape
    amp_x = float(x.double().abs().max()) if x.numel() else 0.0
    amp_y = float(y.double().abs().max()) if y.numel() else 0.0
    torch.testing.assert_close(mx, wmx, rtol=0, atol=rtol * amp_x)
    torch.testing.assert_close(my, wmy, rtol=0, atol=rtol * amp_y)
    scale_xy = (wsxx.unsqueeze(2) * wsyy.unsqueeze(1)).clamp(min=0).sqrt()
    err = (sxy - wsxy).abs()
    assert torch.all(err <= rtol * scale_xy), f"sxy: max error {err.max()}, scale {scale_xy.min()}"
    torch.testing.assert_close(sxx, wsxx, rtol=rtol, atol=0)
    torch.testing.assert_close(syy, wsyy, rtol=rtol, atol=0)


def _coefficients(batch, cx, cy, seed):
    gen = torch.Generator().manual_seed(seed + 1)
    g = torch.randn(batch, cx, cy, generator=gen, dtype=torch.float64)
    h = torch.randn(batch, cx, generator=gen, dtype=torch.float64)
    return g, h


# --------------------------------------------------------------------- availability


def test_available_and_resolved_on_cpu():
    assert cpp.is_available("cpu")
    assert not cpp.is_available("cuda")
    assert backends.resolve("auto", "cpu") == "cpp"
    assert _C.cpu_isa() in ("ugr_base", "ugr_avx2")
    from ugr_kernels.backends import cuda
    assert cuda.is_available("cuda") == (bool(_C.has_cuda()) and torch.cuda.is_available())
    assert not cuda.is_available("cpu")


# --------------------------------------------------------------------- stats


@pytest.mark.parametrize("isa,batch,cx,cy,length", _grid([1, 3], CHANNELS, LENGTHS),
                         indirect=["isa"])
def test_stats_float64(isa, batch, cx, cy, length):
    x, y = _inputs(batch, cx, cy, length, torch.float64, seed=length + 10 * cx + cy)
    for zero_mean in (True, False):
        _assert_stats_close(cpp.stats(x, y, zero_mean), torch_backend.stats(x, y, zero_mean),
                            1e-10, x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("length", [7, TILE + 1, 3 * TILE + 5])
@pytest.mark.parametrize("cx,cy", [(1, 1), (2, 2), (1, 2), (3, 6)])
def test_stats_low_precision(isa, dtype, cx, cy, length):
    # Same (rounded) input for both: the sums are accumulated in float64 by both.
    x, y = _inputs(3, cx, cy, length, dtype, seed=length + cx)
    for zero_mean in (True, False):
        _assert_stats_close(cpp.stats(x, y, zero_mean), torch_backend.stats(x, y, zero_mean),
                            1e-10, x, y)


@pytest.mark.parametrize("scale", [1e15, 1e-15])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stats_extreme_amplitudes(isa, scale, dtype):
    x, y = _inputs(2, 2, 2, 3 * TILE + 5, dtype, seed=3, scale=scale)
    for zero_mean in (True, False):
        _assert_stats_close(cpp.stats(x, y, zero_mean), torch_backend.stats(x, y, zero_mean),
                            1e-10, x, y)


def test_stats_constant_signal(isa):
    length = 3 * TILE + 5
    x = torch.full((2, 2, length), 0.1, dtype=torch.float32)
    _, y = _inputs(2, 2, 2, length, torch.float32, seed=4)
    mx, my, sxy, sxx, syy = cpp.stats(x, y, True)
    assert torch.all(sxx == 0) and torch.all(sxy == 0)
    assert torch.all(mx == torch.tensor(0.1, dtype=torch.float32).double())
    # float64: the tile means round, so not exactly zero, but at rounding level.
    x64 = torch.full((2, 2, length), 0.1, dtype=torch.float64)
    _, _, sxy, sxx, _ = cpp.stats(x64, y.double(), True)
    assert torch.all(sxx.abs() <= 1e-28 * length)
    # Raw sums: n c^2.
    _, _, _, sxx_raw, _ = cpp.stats(x, y, False)
    torch.testing.assert_close(sxx_raw, torch.full_like(sxx_raw, length * 0.1 ** 2),
                               rtol=1e-6, atol=0)


def test_stats_large_offset(isa):
    # A DC offset 1e4 times the signal: centring per tile keeps the sums exact.
    x, y = _inputs(2, 2, 2, 3 * TILE + 5, torch.float64, seed=5, offset=0.0)
    x, y = x + 1e4, y - 3e4
    _assert_stats_close(cpp.stats(x, y, True), torch_backend.stats(x, y, True), 1e-10, x, y)


def test_stats_tile_start_outliers(isa):
    # Each tile's sums are taken around the mean of its first samples: make those
    # samples huge outliers (the worst case of that shift) and the rest a DC step.
    x, y = _inputs(2, 2, 2, 3 * TILE + 5, torch.float64, seed=14, offset=0.0)
    for t0 in range(0, x.shape[-1], TILE):
        x[..., t0:t0 + 16] += 1e6
        y[..., t0:t0 + 16] -= 3e5
    x[..., TILE // 2:] += 50.0
    _assert_stats_close(cpp.stats(x, y, True), torch_backend.stats(x, y, True), 1e-10, x, y)
    xf, yf = x.float(), y.float()
    _assert_stats_close(cpp.stats(xf, yf, True), torch_backend.stats(xf, yf, True), 1e-10, xf, yf)


def test_stats_empty_and_noncontiguous():
    x = torch.zeros(2, 2, 0)
    mx, my, sxy, sxx, syy = cpp.stats(x, x, True)
    assert sxy.shape == (2, 2, 2) and torch.all(sxy == 0) and torch.all(mx == 0)
    assert cpp.stats(torch.zeros(0, 2, 5), torch.zeros(0, 3, 5), True)[2].shape == (0, 2, 3)
    base, y = _inputs(2, 2, 2, 2 * TILE + 3, torch.float32, seed=6)
    x = base.transpose(0, 1).contiguous().transpose(0, 1)   # non-contiguous view
    assert not x.is_contiguous()
    _assert_stats_close(cpp.stats(x, y, True), torch_backend.stats(x, y, True), 1e-10, x, y)


def _textbook_sisdr(x, y, zero_mean=True):
    """Float64 numpy SI-SDR of x (C, T) against y (C, T), pairwise diagonal."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if zero_mean:
        x = x - x.mean(-1, keepdims=True)
        y = y - y.mean(-1, keepdims=True)
    alpha = (x * y).sum(-1, keepdims=True) / (y * y).sum(-1, keepdims=True)
    s = alpha * y
    e = x - s
    return 10 * np.log10((s * s).sum(-1) / (e * e).sum(-1))


@pytest.mark.parametrize("dtype,noise,offset", [
    (torch.float64, 1e-4, 0.0),      # ~80 dB
    (torch.float64, 1e-4, 5.0),      # ~80 dB with a DC offset
    (torch.float64, 1e-6, 1.0),      # ~120 dB
    (torch.float32, 1e-4, 0.5),      # ~80 dB in fp32 (the truth is the rounded input)
])
def test_high_sisdr_accuracy(isa, dtype, noise, offset):
    gen = torch.Generator().manual_seed(7)
    length = 40000
    y = torch.randn(2, 2, length, generator=gen, dtype=torch.float64)
    x = y + noise * torch.randn(2, 2, length, generator=gen, dtype=torch.float64) + offset
    x, y = x.to(dtype), y.to(dtype)
    _, _, sxy, sxx, syy = cpp.stats(x, y, True)
    d = torch.diagonal(sxy, dim1=1, dim2=2)
    ours = 10 * torch.log10(d * d / (sxx * syy - d * d))
    for b in range(2):
        want = _textbook_sisdr(x[b].double().numpy(), y[b].double().numpy())
        assert np.all(want > 60)
        np.testing.assert_allclose(ours[b].numpy(), want, rtol=0, atol=0.01)


# --------------------------------------------------------------------- combine


def _combine_both(x, y, zero_mean=True, seed=0):
    mx, my, *_ = torch_backend.stats(x, y, zero_mean)
    g, h = _coefficients(x.shape[0], x.shape[1], y.shape[1], seed)
    return cpp.combine(x, y, mx, my, g, h), torch_backend.combine(x, y, mx, my, g, h)


@pytest.mark.parametrize("isa,batch,cx,cy,length", _grid([1, 3], CHANNELS, LENGTHS),
                         indirect=["isa"])
def test_combine_float64(isa, batch, cx, cy, length):
    x, y = _inputs(batch, cx, cy, length, torch.float64, seed=length + cx)
    got, want = _combine_both(x, y, seed=length)
    assert got.dtype == torch.float64 and got.shape == x.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10 * float(want.abs().max()))


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float16, 2e-3),
                                        (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("length", [1, 7, TILE + 1, 3 * TILE + 5])
@pytest.mark.parametrize("cx,cy", [(1, 1), (2, 2), (2, 1), (3, 6)])
def test_combine_low_precision(isa, dtype, rtol, cx, cy, length):
    x, y = _inputs(3, cx, cy, length, dtype, seed=length + cy)
    for zero_mean in (True, False):
        got, want = _combine_both(x, y, zero_mean, seed=cx)
        assert got.dtype == dtype and got.shape == x.shape
        # Both compute in float32 and round once; only the summation order may differ.
        torch.testing.assert_close(got.double(), want.double(), rtol=0,
                                   atol=rtol * float(want.double().abs().max()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cx,cy", [(2, 2), (3, 3), (2, 5)])
def test_combine_sparse_coefficients_as_pit_leaves_them(isa, dtype, cx, cy):
    # Zero g_ij rows are skipped (not read); the result must not change, including a
    # whole estimate with no active reference and a reference no estimate uses.
    x, y = _inputs(2, cx, cy, 3 * TILE + 5, dtype, seed=cx * 7 + cy)
    g, h = _coefficients(2, cx, cy, seed=cy)
    g[:, :, 1:] = 0.0
    g[1, 0, :] = 0.0
    mx, my = x.double().mean(-1), y.double().mean(-1)
    got = cpp.combine(x, y, mx, my, g, h)
    want = torch_backend.combine(x, y, mx, my, g, h)
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=0,
                               atol=tol * float(want.double().abs().max()))


def test_combine_coefficients_broadcast_checked():
    x, y = _inputs(2, 2, 3, 100, torch.float32, seed=8)
    mx, my, *_ = torch_backend.stats(x, y, True)
    g, h = _coefficients(2, 2, 3, 8)
    # float32 coefficients are accepted (converted to float64) ...
    out = cpp.combine(x, y, mx.float(), my.float(), g.float(), h.float())
    torch.testing.assert_close(out, cpp.combine(x, y, mx, my, g, h), rtol=1e-6, atol=1e-6)
    # ... non-contiguous ones too.
    gt = g.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(cpp.combine(x, y, mx, my, gt, h), cpp.combine(x, y, mx, my, g, h))


# --------------------------------------------------------------------- ISA copies, determinism


def test_isa_copies_agree():
    if len(ISAS) < 2:
        pytest.skip("only the baseline kernels can run on this CPU")
    x, y = _inputs(3, 2, 3, 3 * TILE + 5, torch.float32, seed=9)
    results = {}
    try:
        for name in ISAS:
            _C.set_cpu_isa(name)
            results[name] = (cpp.stats(x, y, True), _combine_both(x, y)[0])
    finally:
        _C.set_cpu_isa("auto")
    (sa, ca), (sb, cb) = results["base"], results["avx2"]
    _assert_stats_close(sa, sb, 1e-12, x, y)
    torch.testing.assert_close(ca, cb, rtol=1e-6, atol=1e-6)


def test_set_cpu_isa_rejects_unknown():
    with pytest.raises(RuntimeError, match="expected 'auto', 'base' or 'avx2'"):
        _C.set_cpu_isa("sse9")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_deterministic_across_calls_and_threads(isa, dtype):
    x, y = _inputs(1, 2, 2, 40000, dtype, seed=10)
    x3, y3 = _inputs(3, 3, 2, 3 * TILE + 5, dtype, seed=11)
    old = torch.get_num_threads()

    def run():
        out = []
        for a, b in ((x, y), (x3, y3)):
            stats = cpp.stats(a, b, True)
            g, h = _coefficients(a.shape[0], a.shape[1], b.shape[1], 0)
            out += list(stats) + [cpp.combine(a, b, stats[0], stats[1], g, h)]
        return out

    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two, again = run(), run()
    finally:
        torch.set_num_threads(old)
    for a, b, c in zip(one, two, again):
        assert torch.equal(a, b) and torch.equal(b, c)


# --------------------------------------------------------------------- input checks


@pytest.mark.parametrize("x,y,match", [
    (torch.zeros(2, 8), torch.zeros(2, 1, 8), "3-D"),
    (torch.zeros(2, 1, 8), torch.zeros(3, 1, 8), "same batch size and length"),
    (torch.zeros(2, 1, 8), torch.zeros(2, 1, 9), "same batch size and length"),
    (torch.zeros(2, 1, 8, dtype=torch.int32), torch.zeros(2, 1, 8, dtype=torch.int32),
     "float16, bfloat16, float32 or float64"),
    (torch.zeros(2, 1, 8), torch.zeros(2, 1, 8, dtype=torch.float64), "same dtype"),
    (torch.zeros(2, 1, 8, device="meta"), torch.zeros(2, 1, 8), "CPU tensor"),
])
def test_stats_rejects_bad_inputs(x, y, match):
    with pytest.raises(RuntimeError, match=match):
        _C.stats_cpu(x, y, True)
    with pytest.raises(RuntimeError, match=match):
        _C.combine_cpu(x, y, torch.zeros(2, 1, dtype=torch.float64),
                       torch.zeros(2, 1, dtype=torch.float64),
                       torch.zeros(2, 1, 1, dtype=torch.float64),
                       torch.zeros(2, 1, dtype=torch.float64))


def test_combine_rejects_bad_coefficients():
    x, y = torch.zeros(2, 2, 8), torch.zeros(2, 3, 8)
    mx, my = torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    g, h = torch.zeros(2, 2, 3, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"expected g of shape \[2, 2, 3\]"):
        _C.combine_cpu(x, y, mx, my, g.transpose(1, 2), h)
    with pytest.raises(RuntimeError, match=r"expected my of shape \[2, 3\]"):
        _C.combine_cpu(x, y, mx, mx, g, h)
    with pytest.raises(RuntimeError, match="expected h to be a floating-point"):
        _C.combine_cpu(x, y, mx, my, g, h.long())


# --------------------------------------------------------------------- end to end


def _e2e_inputs(dtype, batch=4, n_src=2, length=3 * TILE + 5, seed=12):
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randn(batch, n_src, length, generator=gen, dtype=torch.float64)
    mix = ref.sum(1)
    # Estimates of varied quality (and a swapped pair, so PIT matters).
    noise = torch.randn(batch, n_src, length, generator=gen, dtype=torch.float64)
    level = torch.logspace(-2, 0.5, batch * n_src, dtype=torch.float64).reshape(batch, n_src, 1)
    est = ref + level * noise + 0.1 * mix.unsqueeze(1)
    est[0] = est[0].flip(0)
    return est.to(dtype), ref.to(dtype), mix.to(dtype)


@pytest.mark.parametrize("granularity", ["source", "example"])
@pytest.mark.parametrize("zero_mean", [True, False])
def test_weighted_sisdr_matches_reference(granularity, zero_mean):
    est, ref, mix = _e2e_inputs(torch.float64)
    outs, grads = {}, {}
    for backend in ("cpp", "reference"):
        e = est.clone().requires_grad_(True)
        out = ugr_kernels.weighted_sisdr(e, ref, mixture=mix, alpha=0.1, backend=backend,
                                         granularity=granularity, zero_mean=zero_mean)
        out.loss.backward()
        outs[backend], grads[backend] = out, e.grad
    a, b = outs["cpp"], outs["reference"]
    assert torch.equal(a.perm, b.perm) and torch.equal(a.mask, b.mask)
    for name in ("loss", "sisdr", "sisdri", "weights"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grads["cpp"], grads["reference"], rtol=1e-8,
                               atol=1e-8 * float(grads["reference"].abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weighted_sisdr_low_precision_matches_reference(dtype):
    est, ref, mix = _e2e_inputs(dtype)
    outs, grads = {}, {}
    for backend in ("cpp", "reference"):
        e = est.clone().requires_grad_(True)
        out = ugr_kernels.weighted_sisdr(e, ref, mixture=mix, alpha=0.1, backend=backend)
        out.loss.backward()
        outs[backend], grads[backend] = out, e.grad
    a, b = outs["cpp"], outs["reference"]
    # Same rounded inputs, float64 statistics in both: the values agree closely;
    # the gradient is computed in float32 (and rounded to the input dtype).
    torch.testing.assert_close(a.sisdr, b.sisdr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-5)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    ga, gb = grads["cpp"].double(), grads["reference"].double()
    torch.testing.assert_close(ga, gb, rtol=0, atol=tol * float(gb.abs().max()))


def test_gradcheck_sisdr_and_unweighted_loss():
    gen = torch.Generator().manual_seed(13)
    ref = torch.randn(2, 2, 16, generator=gen, dtype=torch.float64)
    est = (ref + 0.5 * torch.randn(2, 2, 16, generator=gen, dtype=torch.float64))
    est.requires_grad_(True)
    ref_g = ref.clone().requires_grad_(True)

    def sisdr(e):
        return ugr_kernels.weighted_sisdr(e, ref, backend="cpp").sisdr

    def both(e, r):
        return ugr_kernels.weighted_sisdr(e, r, backend="cpp", alpha=0.0).loss

    assert torch.autograd.gradcheck(sisdr, (est,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(both, (est, ref_g), eps=1e-6, atol=1e-6)


def test_sisdr_math_matches_stats():
    # The stats feed SI-SDR = 10 log10(sxy^2 / (sxx syy - sxy^2)) as in BRIEF section 2.
    est, ref, _ = _e2e_inputs(torch.float64, batch=2, length=5000)
    out = ugr_kernels.weighted_sisdr(est, ref, backend="cpp", pit=False, eps=0.0)
    for b in range(2):
        want = _textbook_sisdr(est[b].numpy(), ref[b].numpy())
        np.testing.assert_allclose(out.sisdr[b].numpy(), want, rtol=1e-9, atol=1e-9)
    assert math.isfinite(float(out.loss))

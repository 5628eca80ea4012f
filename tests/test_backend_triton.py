"""The Triton backend matches the pure-torch backend and the float64 oracle.

On a machine without CUDA the kernels run through the Triton interpreter
(``conftest.py`` sets ``TRITON_INTERPRET=1``) on CPU tensors with a small T-tile,
so the tile edges and the tile merge are exercised cheaply; with a GPU the same
tests run the compiled kernels with the default tile.
"""
import pytest
import torch

import ugr_kernels as uk
from ugr_kernels import backends
from ugr_kernels.backends import torch_backend

pytestmark = pytest.mark.skipif(not backends.is_available("triton", "cuda")
                                and not backends.is_available("triton", "cpu"),
                                reason="triton is not importable, or no CUDA device and "
                                       "TRITON_INTERPRET is not 1")

tb = backends.get_backend("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu"
BLOCK = 64 if INTERPRETED else tb.block_t()


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    # The interpreter is slow: a 64-sample tile keeps T small while crossing tiles.
    if INTERPRETED:
        monkeypatch.setattr(tb, "BLOCK_T", BLOCK)
    yield


# (B, Cx, Cy, T): every tile edge, Cx != Cy, and Cx = 1 (the mixture pass).
CASES = [
    (1, 1, 1, 1),
    (2, 2, 2, 7),
    (3, 3, 3, BLOCK - 1),
    (2, 4, 4, BLOCK + 1),
    (5, 2, 2, 3 * BLOCK + 5),
    (2, 3, 2, 3 * BLOCK + 5),
    (2, 1, 4, BLOCK + 1),
]
CASE_IDS = [f"B{b}-Cx{cx}-Cy{cy}-T{t}" for b, cx, cy, t in CASES]


def _signals(b, cx, cy, t, dtype, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cx, t, generator=g, dtype=torch.float64) + offset
    y = torch.randn(b, cy, t, generator=g, dtype=torch.float64) - 0.5 * offset
    y[:, : min(cx, cy)] += 0.7 * x[:, : min(cx, cy)]                 # correlated pairs
    return x.to(dtype).to(DEVICE), y.to(dtype).to(DEVICE)


def _assert_stats_close(got, want, rel):
    mx, my, sxy, sxx, syy = got
    for tensor in got:
        assert tensor.dtype == torch.float64 and tensor.device.type == DEVICE
    wmx, wmy, wsxy, wsxx, wsyy = want
    assert mx.shape == wmx.shape and my.shape == wmy.shape and sxy.shape == wsxy.shape
    # Scales: the energies for the sums of products, |mean| + sqrt(energy) for the means.
    std_x = (wsxx.clamp(min=0)).sqrt()
    std_y = (wsyy.clamp(min=0)).sqrt()
    tiny = 1e-300
    assert ((sxx - wsxx).abs() <= rel * wsxx.abs() + tiny).all(), (sxx - wsxx).abs().max()
    assert ((syy - wsyy).abs() <= rel * wsyy.abs() + tiny).all(), (syy - wsyy).abs().max()
    scale_xy = std_x.unsqueeze(2) * std_y.unsqueeze(1)
    assert ((sxy - wsxy).abs() <= rel * scale_xy + tiny).all(), (sxy - wsxy).abs().max()
    assert ((mx - wmx).abs() <= rel * (wmx.abs() + std_x) + tiny).all()
    assert ((my - wmy).abs() <= rel * (wmy.abs() + std_y) + tiny).all()


@pytest.mark.parametrize("zero_mean", [True, False])
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-9), (torch.float32, 1e-5)],
                         ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_stats_matches_torch_backend(case, dtype, rel, zero_mean):
    x, y = _signals(*case, dtype, offset=0.3)
    got = tb.stats(x, y, zero_mean)
    want = torch_backend.stats(x, y, zero_mean)
    _assert_stats_close(got, want, rel)
    if not zero_mean:
        assert torch.equal(got[0], torch.zeros_like(got[0]))
        assert torch.equal(got[1], torch.zeros_like(got[1]))


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-9), (torch.float32, 1e-5)],
                         ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_combine_matches_torch_backend(case, dtype, rel):
    b, cx, cy, t = case
    x, y = _signals(*case, dtype, seed=1, offset=0.2)
    g = torch.Generator().manual_seed(2)
    coef_g = torch.randn(b, cx, cy, generator=g, dtype=torch.float64).to(DEVICE)
    coef_h = torch.randn(b, cx, generator=g, dtype=torch.float64).to(DEVICE)
    mx, my = x.double().mean(-1), y.double().mean(-1)
    got = tb.combine(x, y, mx, my, coef_g, coef_h)
    want = torch_backend.combine(x, y, mx, my, coef_g, coef_h)
    assert got.shape == x.shape and got.dtype == x.dtype and got.device == x.device
    # Scale of each output element: the sum of the magnitudes of its terms.
    xc, yc = x.double() - mx.unsqueeze(-1), y.double() - my.unsqueeze(-1)
    scale = torch.bmm(coef_g.abs(), yc.abs()) + coef_h.abs().unsqueeze(-1) * xc.abs()
    assert ((got.double() - want.double()).abs() <= rel * scale + 1e-300).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_inputs(dtype):
    b, cx, cy, t = 3, 2, 2, 2 * BLOCK + 3
    x, y = _signals(b, cx, cy, t, dtype, seed=3, offset=0.1)
    got = tb.stats(x, y, True)
    # The same half values, summed in float64: the fp32 accumulation must be close.
    _assert_stats_close(got, torch_backend.stats(x, y, True), 1e-5)
    _assert_stats_close(tb.stats(x, y, False), torch_backend.stats(x, y, False), 1e-5)

    mx, my = got[0], got[1]
    coef_g = torch.randn(b, cx, cy, dtype=torch.float64).to(DEVICE)
    coef_h = torch.randn(b, cx, dtype=torch.float64).to(DEVICE)
    out = tb.combine(x, y, mx, my, coef_g, coef_h)
    assert out.dtype == dtype and out.shape == x.shape
    want = torch_backend.combine(x.float(), y.float(), mx, my, coef_g, coef_h)
    # One rounding to the half format (the interpreter truncates to bf16, a GPU rounds).
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    assert ((out.float() - want).abs() <= ulp * want.abs() + 1e-6).all()


def test_silent_and_constant_reference_channels():
    b, c, t = 2, 3, 2 * BLOCK + 9
    x, y = _signals(b, c, c, t, torch.float32, seed=4)
    y[:, 1] = 0.0
    y[:, 2] = 0.7                                                      # silent after centring
    mx, my, sxy, sxx, syy = tb.stats(x, y, True)
    assert torch.equal(syy[:, 1], torch.zeros_like(syy[:, 1]))
    assert torch.equal(sxy[:, :, 1], torch.zeros_like(sxy[:, :, 1]))
    assert (syy[:, 2].abs() <= 1e-10 * t).all()
    assert (my[:, 2] - 0.7).abs().max() <= 1e-7
    assert torch.isfinite(sxy).all() and torch.isfinite(sxx).all()


def test_large_dc_offset_keeps_precision():
    # fp32 inputs whose mean is 1e5 times their spread: centred per-tile partials
    # (with the residual-mean correction) keep the centred sums accurate.
    g = torch.Generator().manual_seed(5)
    x = (1000.0 + 1e-2 * torch.randn(2, 2, 3 * BLOCK + 5, generator=g, dtype=torch.float64))
    y = (-300.0 + 1e-2 * torch.randn(2, 2, 3 * BLOCK + 5, generator=g, dtype=torch.float64))
    x, y = x.float().to(DEVICE), y.float().to(DEVICE)
    y = y + 0.5 * x
    stats = tb.stats(x, y, True)
    _assert_stats_close(stats, torch_backend.stats(x, y, True), 1e-5)
    # The backward pass centres on the float64 means without rounding them to fp32.
    mx, my = stats[0], stats[1]
    coef_g = torch.randn(2, 2, 2, dtype=torch.float64).to(DEVICE)
    coef_h = torch.randn(2, 2, dtype=torch.float64).to(DEVICE)
    out = tb.combine(x, y, mx, my, coef_g, coef_h)
    xc, yc = x.double() - mx.unsqueeze(-1), y.double() - my.unsqueeze(-1)
    exact = torch.bmm(coef_g, yc) + coef_h.unsqueeze(-1) * xc
    scale = torch.bmm(coef_g.abs(), yc.abs()) + coef_h.abs().unsqueeze(-1) * xc.abs()
    assert ((out.double() - exact).abs() <= 1e-5 * scale).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_weighted_sisdr_end_to_end_matches_reference(dtype):
    b, c, t = 4, 2, 2 * BLOCK + 3
    g = torch.Generator().manual_seed(6)
    ref = torch.randn(b, c, t, generator=g, dtype=torch.float64)
    mix = ref.sum(1)
    noise = torch.randn(b, c, t, generator=g, dtype=torch.float64)
    est0 = ref.flip(1) + torch.linspace(0.2, 1.5, b, dtype=torch.float64).view(b, 1, 1) * noise
    ref, mix, est0 = (v.to(dtype).to(DEVICE) for v in (ref, mix, est0))
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, True]],
                        device=DEVICE)
    bias = torch.tensor([0.0, 0.5, -0.5, 0.0], device=DEVICE).unsqueeze(1)
    results, grads = {}, {}
    for backend in ("triton", "reference"):
        est = est0.clone().requires_grad_(True)
        out = uk.weighted_sisdr(est, ref, mixture=mix, alpha=0.1, bias=bias, mask=mask,
                                backend=backend)
        out.loss.backward()
        results[backend], grads[backend] = out, est.grad
    got, want = results["triton"], results["reference"]
    rel = 1e-5
    torch.testing.assert_close(got.loss, want.loss, rtol=rel, atol=rel)
    torch.testing.assert_close(got.sisdr, want.sisdr, rtol=rel, atol=rel)
    torch.testing.assert_close(got.sisdri, want.sisdri, rtol=rel, atol=rel)
    torch.testing.assert_close(got.weights, want.weights, rtol=rel, atol=1e-7)
    assert torch.equal(got.perm, want.perm) and torch.equal(got.mask, want.mask)
    assert (got.perm == torch.tensor([1, 0], device=DEVICE)).all()
    gscale = grads["reference"].abs().max()
    assert ((grads["triton"] - grads["reference"]).abs() <= 1e-4 * gscale).all()
    assert grads["triton"].dtype == dtype


def test_weighted_sisdr_silent_reference_is_masked():
    b, c, t = 2, 2, BLOCK + 5
    g = torch.Generator().manual_seed(7)
    ref = torch.randn(b, c, t, generator=g).to(DEVICE)
    ref[1, 0] = 0.0
    est = (ref + 0.3 * torch.randn(b, c, t, generator=g).to(DEVICE)).requires_grad_(True)
    out = uk.weighted_sisdr(est, ref, alpha=0.1, backend="triton")
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(est.grad).all()
    assert not out.mask[1, 0] and out.weights[1, 0] == 0
    est_r = est.detach().clone().requires_grad_(True)
    want = uk.weighted_sisdr(est_r, ref, alpha=0.1, backend="reference")
    want.loss.backward()
    torch.testing.assert_close(out.loss, want.loss, rtol=1e-5, atol=1e-5)
    assert ((est.grad - est_r.grad).abs() <= 1e-4 * est_r.grad.abs().max()).all()


def test_deterministic_bitwise():
    x, y = _signals(3, 2, 2, 3 * BLOCK + 5, torch.float32, seed=8, offset=0.1)
    first = tb.stats(x, y, True)
    second = tb.stats(x, y, True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    coef_g = torch.randn(3, 2, 2, dtype=torch.float64).to(DEVICE)
    coef_h = torch.randn(3, 2, dtype=torch.float64).to(DEVICE)
    o1 = tb.combine(x, y, first[0], first[1], coef_g, coef_h)
    o2 = tb.combine(x, y, first[0], first[1], coef_g, coef_h)
    assert torch.equal(o1, o2)


def test_tile_setting_is_validated(monkeypatch):
    monkeypatch.setattr(tb, "BLOCK_T", 100)
    with pytest.raises(ValueError, match="power of two"):
        tb.block_t()
    monkeypatch.setattr(tb, "BLOCK_T", None)
    monkeypatch.setenv("UGR_TRITON_BLOCK_T", "256")
    assert tb.block_t() == 256
    monkeypatch.delenv("UGR_TRITON_BLOCK_T")
    assert tb.block_t() == 1024


def test_availability():
    assert tb.is_available("cuda") == torch.cuda.is_available()
    assert not tb.is_available("mps")
    assert backends.resolve("triton", DEVICE) == "triton"

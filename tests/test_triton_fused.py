"""The fused Triton weighted SI-SDR (three launches per forward + backward) against the
float64 oracle ``weighted_sisdr(..., backend="reference")``.

Without CUDA the kernels run through the Triton interpreter (``conftest.py`` sets
``TRITON_INTERPRET=1``) on CPU tensors with a 16-sample tile, so tile edges and the
tile merge are crossed with tiny T; on a GPU the same tests run the compiled kernels.
"""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ugr_kernels as uk
from ugr_kernels import backends

pytestmark = pytest.mark.skipif(not backends.is_available("triton", "cuda")
                                and not backends.is_available("triton", "cpu"),
                                reason="triton is not importable, or no CUDA device and "
                                       "TRITON_INTERPRET is not 1")

if pytestmark.args[0]:
    fused = None
else:
    from ugr_kernels.backends.triton import fused

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu"
BLOCK = 16 if INTERPRETED else 1024
F64 = torch.float64


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    if INTERPRETED:
        monkeypatch.setattr(fused, "BLOCK_T", BLOCK)
    yield


def _problem(b, c, t, dtype=F64, seed=0, snr_spread=(0.2, 1.5)):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(b, c, t, generator=g, dtype=F64)
    noise = torch.randn(b, c, t, generator=g, dtype=F64)
    scale = torch.linspace(*snr_spread, b * c, dtype=F64).view(b, c, 1)
    est = ref.roll(1, dims=1) + scale * noise + 0.3          # a DC offset and a permutation
    mix = ref.sum(1) + 0.1 * torch.randn(b, t, generator=g, dtype=F64)
    return tuple(v.to(dtype).to(DEVICE) for v in (est, ref, mix))


def _both(est0, ref, *, mixture=None, alpha=0.0, bias=None, mask=None, granularity="source",
          pit=True, zero_mean=True, eps=1e-12, clamp_db=None, grad_outputs=False):
    """(fused outputs, fused d est), (reference result, reference d est)."""
    by_source = granularity == "source"
    est = est0.clone().requires_grad_(True)
    got = fused.fused_forward(est, ref, mixture, alpha, bias, mask, by_source, pit, zero_mean,
                              eps, clamp_db)
    est_r = est0.clone().requires_grad_(True)
    want = uk.weighted_sisdr(est_r, ref, mixture=mixture, alpha=alpha, bias=bias, mask=mask,
                             granularity=granularity, pit=pit, zero_mean=zero_mean, eps=eps,
                             clamp_db=clamp_db, backend="reference", check_finite=False)
    if grad_outputs:
        gs = torch.linspace(-1, 1, ref.shape[0] * ref.shape[1], device=ref.device)
        gs = gs.view(ref.shape[0], ref.shape[1])
        total = got[0] + (got[1] * gs).sum() + (0.3 * got[2] ** 2).sum()
        total_r = want.loss + (want.sisdr * gs).sum()
        if want.sisdri is not None:
            total_r = total_r + (0.3 * want.sisdri ** 2).sum()
        total.backward()
        total_r.backward()
    else:
        got[0].backward()
        want.loss.backward()
    return (got, est.grad), (want, est_r.grad)


def _assert_match(got_pair, want_pair, *, rtol, gtol, has_mix):
    (got, grad), (want, grad_r) = got_pair, want_pair
    loss, sisdr, sisdri, weights, perm, valid, coef = got
    out_dtype = F64 if grad.dtype == F64 else torch.float32
    assert loss.dtype == sisdr.dtype == weights.dtype == out_dtype and loss.dim() == 0
    assert perm.dtype == torch.int64 and valid.dtype == torch.bool and coef.dtype == F64
    assert torch.equal(perm, want.perm), (perm, want.perm)
    assert torch.equal(valid, want.mask), (valid, want.mask)
    torch.testing.assert_close(loss.double(), want.loss.double(), rtol=rtol, atol=rtol)
    torch.testing.assert_close(sisdr.double(), want.sisdr.double(), rtol=rtol, atol=rtol)
    if has_mix:
        torch.testing.assert_close(sisdri.double(), want.sisdri.double(), rtol=rtol, atol=rtol)
    else:
        assert torch.equal(sisdri, torch.zeros_like(sisdri))
    torch.testing.assert_close(weights.double(), want.weights.double(), rtol=rtol, atol=rtol)
    assert grad.dtype == grad_r.dtype and grad.shape == grad_r.shape
    scale = grad_r.double().abs().max().clamp(min=1e-300)
    err = (grad.double() - grad_r.double()).abs().max()
    assert err <= gtol * scale, (err, scale)


@pytest.mark.parametrize("alpha_kind", ["float", "tensor"])
@pytest.mark.parametrize("granularity", ["source", "example"])
@pytest.mark.parametrize("with_mix", [False, True], ids=["nomix", "mix"])
def test_matches_reference_float64(with_mix, granularity, alpha_kind):
    b, c, t = 5, 3, 3 * BLOCK + 5                                    # T not a tile multiple
    est, ref, mix = _problem(b, c, t, seed=1)
    by_source = granularity == "source"
    mask = torch.ones((b, c) if by_source else (b,), dtype=torch.bool, device=DEVICE)
    mask[1] = False if not by_source else mask[1]
    if by_source:
        mask[1, 2] = False
    bias = torch.linspace(-0.5, 0.5, b * c if by_source else b, dtype=F64, device=DEVICE)
    bias = bias.view(b, c) if by_source else bias
    alpha = 0.7 if alpha_kind == "float" else torch.tensor(0.7, dtype=F64, device=DEVICE)
    pair = _both(est, ref, mixture=mix if with_mix else None, alpha=alpha, bias=bias,
                 mask=mask, granularity=granularity, grad_outputs=True)
    _assert_match(*pair, rtol=1e-10, gtol=1e-10, has_mix=with_mix)
    weights = pair[0][0][3]
    assert abs(float(weights.sum()) - 1.0) < 1e-12


@pytest.mark.parametrize("granularity", ["source", "example"])
def test_expanded_bias_and_mask_and_negative_alpha(granularity):
    b, c, t = 4, 2, 2 * BLOCK + 1
    est, ref, mix = _problem(b, c, t, seed=2)
    by_source = granularity == "source"
    shape = (b, c) if by_source else (b,)
    bias = torch.tensor([0.0, 1.0, -1.0, 0.5], dtype=F64, device=DEVICE)
    bias = bias.view(b, 1).expand(shape) if by_source else bias
    mask = torch.tensor([True, False, True, True], device=DEVICE)
    mask = mask.view(b, 1).expand(shape) if by_source else mask
    pair = _both(est, ref, mixture=mix, alpha=-0.4, bias=bias, mask=mask,
                 granularity=granularity)
    _assert_match(*pair, rtol=1e-10, gtol=1e-10, has_mix=True)


@pytest.mark.parametrize("n_src", [1, 2, 3, 4, 5, 6])
def test_source_counts_pit(n_src):
    b, t = 2, BLOCK + 3
    est, ref, mix = _problem(b, n_src, t, seed=10 + n_src)
    pair = _both(est, ref, mixture=mix, alpha=0.5)
    _assert_match(*pair, rtol=1e-10, gtol=1e-10, has_mix=True)
    if n_src > 1:
        want_perm = torch.arange(n_src, device=DEVICE).roll(-1).expand(b, n_src)
        assert torch.equal(pair[0][0][4], want_perm)


@pytest.mark.parametrize("dtype,rtol,gtol", [(torch.float16, 2e-3, 2e-3),
                                              (torch.bfloat16, 1e-2, 1.6e-2),
                                              (torch.float32, 1e-5, 1e-6),
                                              (F64, 1e-10, 1e-10)],
                         ids=["f16", "bf16", "f32", "f64"])
def test_dtypes(dtype, rtol, gtol):
    b, c, t = 3, 2, 2 * BLOCK + 7
    est, ref, mix = _problem(b, c, t, dtype=dtype, seed=3)
    pair = _both(est, ref, mixture=mix, alpha=0.2, granularity="example")
    # The reference sees the same half values (upcast); outputs round once.
    _assert_match(*pair, rtol=rtol, gtol=gtol, has_mix=True)
    assert pair[0][1].dtype == dtype


def test_pit_off_zero_mean_off_and_clamp():
    b, c, t = 3, 3, 2 * BLOCK + 2
    est, ref, mix = _problem(b, c, t, seed=4, snr_spread=(0.001, 0.01))   # 40-60 dB
    for kwargs in (dict(pit=False), dict(zero_mean=False), dict(clamp_db=30.0),
                   dict(clamp_db=30.0, mixture=mix, granularity="example")):
        pair = _both(est, ref, alpha=0.3, **kwargs)
        _assert_match(*pair, rtol=1e-9, gtol=1e-9, has_mix="mixture" in kwargs)


def test_batch_of_one_and_many_chunks():
    for b in (1, 37):                                     # 37 > one epilogue chunk
        est, ref, mix = _problem(b, 2, BLOCK + 1, seed=5)
        pair = _both(est, ref, mixture=mix, alpha=1.5)
        _assert_match(*pair, rtol=1e-10, gtol=1e-10, has_mix=True)


def test_silent_items_are_masked():
    b, c, t = 4, 2, 2 * BLOCK + 3
    est, ref, mix = _problem(b, c, t, seed=6)
    ref[0, 1] = 0.0                      # silent reference
    est[1, 0] = 0.25                     # constant estimate: silent after centring
    mix[2] = -1.0                        # silent mixture: the whole example is masked
    for with_mix in (False, True):
        pair = _both(est, ref, mixture=mix if with_mix else None, alpha=0.3)
        _assert_match(*pair, rtol=1e-10, gtol=1e-10, has_mix=with_mix)
        (got, grad), _ = pair
        assert torch.isfinite(grad).all()
        if with_mix:
            assert not got[5][2].any() and torch.equal(grad[2], torch.zeros_like(grad[2]))


def test_all_items_masked_gives_zero_loss():
    est, ref, _ = _problem(2, 2, BLOCK, seed=7)
    mask = torch.zeros(2, 2, dtype=torch.bool, device=DEVICE)
    pair = _both(est, ref, alpha=0.3, mask=mask)
    _assert_match(*pair, rtol=1e-12, gtol=1e-12, has_mix=False)
    (got, grad), _ = pair
    assert float(got[0].detach()) == 0.0 and torch.equal(grad, torch.zeros_like(grad))


def test_t1_and_t2():
    # T = 1: every centred signal is silent; T = 2: SI-SDR is constant, gradient exactly 0.
    est, ref, mix = _problem(3, 2, 1, seed=8)
    pair = _both(est, ref, mixture=mix, alpha=0.3)
    _assert_match(*pair, rtol=1e-12, gtol=1e-12, has_mix=True)
    assert not pair[0][0][5].any() and float(pair[0][0][0].detach()) == 0.0
    for dtype in (torch.float32, F64):
        est, ref, mix = _problem(3, 2, 2, dtype=dtype, seed=9)
        (got, grad), (want, _) = _both(est, ref, mixture=mix, alpha=0.3)
        assert torch.equal(grad, torch.zeros_like(grad))
        torch.testing.assert_close(got[1].double(), want.sisdr.double(), rtol=1e-6, atol=1e-6)
        # Every pair scores the same ~120 dB: PIT is a tie decided by rounding.
        assert torch.equal(got[5], want.mask)
    est, ref, _ = _problem(2, 2, 1, seed=9)                 # raw T = 1: one dimension
    (got, grad), (want, _) = _both(est, ref, alpha=0.3, zero_mean=False)
    assert torch.equal(grad, torch.zeros_like(grad)) and torch.equal(got[5], want.mask)


def test_ties_resolve_to_first_permutation():
    est, ref, _ = _problem(2, 3, BLOCK + 2, seed=10)
    est = est[:, :1].expand(2, 3, -1).contiguous()          # identical estimates: all ties
    (got, _), (want, _) = _both(est, ref, alpha=0.1)
    assert torch.equal(got[4], want.perm)
    assert torch.equal(got[4], torch.arange(3, device=DEVICE).expand(2, 3))


@pytest.mark.parametrize("db", [60.0, 80.0, 90.0])
def test_high_sisdr_float32(db):
    # A centred, scaled reference plus an orthogonal error exactly db below it.
    b, c, t = 2, 2, 4 * BLOCK
    g = torch.Generator().manual_seed(11)
    ref = torch.randn(b, c, t, generator=g, dtype=F64)
    ref = ref - ref.mean(-1, keepdim=True)
    err = torch.randn(b, c, t, generator=g, dtype=F64)
    err = err - err.mean(-1, keepdim=True)
    err = err - (err * ref).sum(-1, keepdim=True) / (ref * ref).sum(-1, keepdim=True) * ref
    err = err * ((ref * ref).sum(-1, keepdim=True) / (err * err).sum(-1, keepdim=True)
                 * 10 ** (-db / 10)).sqrt()
    est = (0.8 * ref + 0.8 * err).float().to(DEVICE)
    ref = ref.float().to(DEVICE)
    (got, grad), (want, grad_r) = _both(est, ref, alpha=0.1)
    assert (got[1] - db).abs().max() <= 0.01, got[1]
    torch.testing.assert_close(got[1].double(), want.sisdr.double(), rtol=0, atol=2e-4)
    assert torch.isfinite(grad).all()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")   # denormal: d est > 3e38
@pytest.mark.parametrize("amplitude", [1e30, 1e-30, 1e-41], ids=["1e30", "1e-30", "denormal"])
def test_float32_extreme_amplitudes(amplitude):
    # float64 tile sums hold the squares of any float32 (issue 13 item 10).
    b, c, t = 2, 2, BLOCK + 5
    est, ref, mix = _problem(b, c, t, seed=12)
    est, ref, mix = ((v.double() * amplitude).float() for v in (est, ref, mix))
    assert torch.isfinite(est).all() and (est != 0).any()
    (got, grad), (want, grad_r) = _both(est, ref, mixture=mix, alpha=0.3)
    assert got[5].all()                                        # nothing masked as silent
    torch.testing.assert_close(got[1].double(), want.sisdr.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2].double(), want.sisdri.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0].double(), want.loss.double(), rtol=1e-5, atol=1e-5)
    if amplitude > 1e-38:            # below, the true gradient (~1/amplitude) overflows
        assert torch.isfinite(grad).all() and (grad != 0).any()
        scale = grad_r.double().abs().max()
        assert (grad.double() - grad_r.double()).abs().max() <= 1e-6 * scale


def test_nan_estimate_is_masked_with_zero_gradient():
    b, c, t = 3, 2, 2 * BLOCK + 3
    est, ref, mix = _problem(b, c, t, seed=13)
    bad = est.clone()
    bad[1, 0, 5] = float("nan")
    silent = est.clone()
    silent[1, 0] = 0.0                   # the same item, masked as silent: the oracle
    for granularity in ("source", "example"):
        e = bad.clone().requires_grad_(True)
        got = fused.fused_forward(e, ref, mix, 0.3, None, None, granularity == "source", True,
                                  True, 1e-12, None)
        got[0].backward()
        assert torch.isfinite(got[0]) and torch.isfinite(e.grad).all()
        assert torch.equal(e.grad[1, 0], torch.zeros_like(e.grad[1, 0]))
        pair = _both(silent, ref, mixture=mix, alpha=0.3, granularity=granularity)
        (want_got, want_grad), _ = pair
        for a, w in zip(got[:6], want_got[:6]):
            assert torch.equal(a, w)
        assert torch.equal(e.grad, want_grad)


def test_deterministic_bitwise():
    est, ref, mix = _problem(4, 3, 3 * BLOCK + 1, torch.float32, seed=14)
    first = _both(est, ref, mixture=mix, alpha=0.5)[0]
    second = _both(est, ref, mixture=mix, alpha=0.5)[0]
    assert all(torch.equal(a, b) for a, b in zip(first[0], second[0]))
    assert torch.equal(first[1], second[1])


def test_ref_requiring_grad_is_refused():
    est, ref, _ = _problem(2, 2, BLOCK, seed=15)
    with pytest.raises(ValueError, match="est only"):
        fused.fused_forward(est, ref.requires_grad_(True), None, 0.0, None, None, True, True,
                            True, 1e-12, None)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_dispatched_ops_per_forward_backward():
    b, c, t = 4, 2, 3000 if not INTERPRETED else 4 * BLOCK
    est, ref, mix = _problem(b, c, t, torch.float32, seed=16)
    est.requires_grad_(True)
    alpha = torch.tensor(0.3, dtype=F64, device=DEVICE)
    fused.fused_forward(est, ref, mix, alpha, None, None, True, True, True, 1e-12, None)
    est.grad = None                                          # warm: the permutation table
    with _CountOps() as counter:
        out = fused.fused_forward(est, ref, mix, alpha, None, None, True, True, True, 1e-12,
                                  None)
        out[0].backward()
    assert len(counter.names) <= 12, counter.names
    assert not any("_local_scalar_dense" in n or "item" in n for n in counter.names)
    assert sum("triton_weighted_sisdr" in n for n in counter.names) == 2, counter.names


def test_opcheck():
    est, ref, mix = _problem(2, 2, BLOCK + 3, seed=17)
    alpha = torch.tensor(0.3, dtype=F64, device=DEVICE)
    bias = torch.tensor([[0.0, 0.5], [1.0, -1.0]], dtype=F64, device=DEVICE)
    mask = torch.tensor([[True, True], [False, True]], device=DEVICE)
    args = (est.requires_grad_(True), ref, mix, alpha, bias, mask, True, True, True, 1e-12,
            math.inf)
    # aot_dispatch traces into the kernels, which needs compiled (GPU) Triton.
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if not INTERPRETED:
        utils += ("test_aot_dispatch_dynamic",)
    torch.library.opcheck(torch.ops.ugr.triton_weighted_sisdr_fwd.default, args,
                          test_utils=utils)
    got = fused.fused_forward(est, ref, mix, alpha, bias, mask, True, True, True, 1e-12, None)
    perm, coef = got[4].detach(), got[6].detach()
    g = torch.tensor(1.0, device=DEVICE)
    gs = torch.ones(2, 2, device=DEVICE)
    torch.library.opcheck(torch.ops.ugr.triton_weighted_sisdr_bwd.default,
                          (g, gs, None, est.detach(), ref, perm, coef),
                          test_utils=utils[:1] + utils[2:])


@pytest.mark.parametrize("amplitude", [1e-100, 1e100])
def test_float64_extreme_amplitudes(amplitude):
    # The correlation is formed as sxy / (sqrt(sxx) sqrt(syy)), never sxx * syy.
    est, ref, mix = _problem(2, 2, BLOCK + 5, seed=18)
    est, ref, mix = (v * amplitude for v in (est, ref, mix))
    (got, grad), (want, grad_r) = _both(est, ref, mixture=mix, alpha=0.3)
    assert got[5].all() and torch.isfinite(got[0])
    torch.testing.assert_close(got[1], want.sisdr, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[0], want.loss, rtol=1e-10, atol=1e-10)
    assert (grad - grad_r).abs().max() <= 1e-9 * grad_r.abs().max()


def test_float32_large_dc_offset_backward():
    # The float64 means are subtracted in float64 (no rounding of the mean to float32).
    g = torch.Generator().manual_seed(19)
    t = 3 * BLOCK + 3
    ref = (1e4 + 1e-3 * torch.randn(2, 2, t, generator=g, dtype=F64)).float().to(DEVICE)
    est = (1e4 + 1e-3 * torch.randn(2, 2, t, generator=g, dtype=F64)).float().to(DEVICE)
    est = (est.double() + 0.5 * (ref.double() - 1e4)).float()
    (got, grad), (want, grad_r) = _both(est, ref, alpha=0.3)
    torch.testing.assert_close(got[1].double(), want.sisdr.double(), rtol=1e-5, atol=1e-5)
    scale = grad_r.double().abs().max()
    assert (grad.double() - grad_r.double()).abs().max() <= 1e-6 * scale
    assert grad.double().sum(-1).abs().max() <= 1e-6 * scale * t


def test_torch_compile_fullgraph():
    # Interpreted kernels cannot be traced into (wrap_triton passes them through), so
    # the interpreter checks dynamo's graph capture with the eager backend; a GPU
    # compiles with inductor, which sees the kernels through triton_op.
    est, ref, mix = _problem(3, 2, 2 * BLOCK + 1, torch.float32, seed=20)
    alpha = torch.tensor(0.4, dtype=F64, device=DEVICE)

    def step(e):
        out = fused.fused_forward(e, ref, mix, alpha, None, None, True, True, True, 1e-12,
                                  None)
        return out[0], out[1], out[3], out[4]

    compiled = torch.compile(step, fullgraph=True,
                             backend="eager" if INTERPRETED else "inductor")
    e1 = est.clone().requires_grad_(True)
    e2 = est.clone().requires_grad_(True)
    eager_out = step(e1)
    compiled_out = compiled(e2)
    eager_out[0].backward()
    compiled_out[0].backward()
    for a, b in zip(eager_out, compiled_out):
        assert torch.equal(a, b)
    assert torch.equal(e1.grad, e2.grad)


@pytest.mark.skipif(INTERPRETED, reason="CUDA graphs need a GPU")
def test_cuda_graph_capture():                                # pragma: no cover (GPU)
    est, ref, mix = _problem(4, 2, 4 * BLOCK + 3, torch.float32, seed=21)
    alpha = torch.tensor(0.4, dtype=F64, device=DEVICE)
    est = est.clone().requires_grad_(True)

    def step():
        out = fused.fused_forward(est, ref, mix, alpha, None, None, True, True, True, 1e-12,
                                  None)
        grad, = torch.autograd.grad(out[0], est)
        return out[0], grad

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        want = step()                                        # warm-up: compile, cache
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    alpha.fill_(-0.2)
    graph.replay()
    torch.cuda.synchronize()
    fresh = step()
    assert torch.equal(captured[0], fresh[0]) and torch.equal(captured[1], fresh[1])
    assert not torch.equal(captured[0], want[0])


# ---- the shared op contract: forward / backward against the C++ CPU op -------------------
def _cpu_op_available():
    return torch._C._dispatch_has_kernel_for_dispatch_key("ugr::weighted_sisdr_fwd", "CPU")


def _contract_case(name, dtype):
    g = torch.Generator().manual_seed(31)
    b, c, t = 3, 3, 2 * BLOCK + 5
    ref = torch.randn(b, c, t, generator=g, dtype=F64)
    est = ref.roll(1, dims=1) + 0.5 * torch.randn(b, c, t, generator=g, dtype=F64)
    mix = ref.sum(1) + 0.1 * torch.randn(b, t, generator=g, dtype=F64)
    if name == "silent":
        est[0, 1] = 0.0
        ref[1, 2] = 0.0
    elif name == "identical":
        est = ref.clone()
    elif name == "tiny":
        est, ref, mix = est * 1e-30, ref * 1e-30, mix * 1e-30
    elif name == "huge":
        est, ref, mix = est * 1e30, ref * 1e30, mix * 1e30
    elif name == "denormal":
        scale = 1e-310 if dtype == F64 else 1e-40
        est, ref, mix = est * scale, ref * scale, mix * scale
    elif name == "dc":
        est, ref, mix = est + 1e4, ref + 1e4, mix + 1e4
    elif name == "db90":
        est = ref + 10 ** (-90 / 20) * torch.randn(b, c, t, generator=g, dtype=F64)
    elif name == "nan":
        est[1, 0, 3] = math.nan
    elif name == "t2":
        est, ref, mix = est[..., :2], ref[..., :2], mix[..., :2]
    elif name == "t1":
        est, ref, mix = est[..., :1], ref[..., :1], mix[..., :1]
    return tuple(v.to(dtype).contiguous() for v in (est, ref, mix))


CONTRACT_CASES = ["random", "silent", "identical", "tiny", "huge", "denormal", "dc", "db90",
                  "nan", "t2", "t1"]


@pytest.mark.skipif(not INTERPRETED, reason="compares CPU tensors under the interpreter")
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CONTRACT_CASES)
def test_forward_backward_match_the_cpu_op(case, dtype):
    """Element for element the outputs and coef (B, C, 10) of ``ugr::weighted_sisdr_fwd``."""
    if not _cpu_op_available():
        pytest.skip("the C++ extension (CPU kernel of ugr::weighted_sisdr_fwd) is not built")
    if dtype in (torch.float16, torch.bfloat16) and case in ("tiny", "huge", "identical",
                                                            "t1", "nan"):
        pytest.skip("outside the 16-bit range, or covered by the float32/64 cases")
    est, ref, mix = _contract_case(case, dtype)
    b, c = est.shape[:2]
    alpha = torch.tensor(0.7, dtype=F64)
    flags = [(True, True, True, False), (False, True, False, True), (True, False, True, True),
             (False, False, True, False)]
    if dtype != F64:
        flags = flags[:2]
    for by_source, pit, zero_mean, with_mix in flags:
        items = (b, c) if by_source else (b,)
        bias = torch.linspace(-1, 1, math.prod(items), dtype=F64).view(items)
        mask = (torch.arange(math.prod(items)) % 4 != 3).view(items)
        args = (est, ref, mix if with_mix else None, alpha, bias, mask, by_source, pit,
                zero_mean, 1e-8, 30.0 if by_source else math.inf)
        want = torch.ops.ugr.weighted_sisdr_fwd(*args)
        got = fused.forward(*args)
        for field, g_, w_ in zip(("loss", "sisdr", "sisdri", "weights", "perm", "valid",
                                  "coef"), got, want):
            assert g_.dtype == w_.dtype and g_.shape == w_.shape, field
            if field in ("perm", "valid"):
                assert torch.equal(g_, w_), field
            elif field == "coef":
                # gates and non-finite flags exactly; the rest to rounding (merge order)
                assert torch.equal(g_[..., 5:], w_[..., 5:]), (case, g_, w_)
                # (w, a, c carry the conditioning 1 / (1 - rho^2) of SI-SDR: ~1e9 at 90 dB)
                rtol = 1e-5 if case in ("db90", "identical") else 1e-7
                for f in range(5):
                    scale = float(w_[..., f].nan_to_num(0.0).abs().max())
                    torch.testing.assert_close(g_[..., f], w_[..., f], rtol=rtol,
                                               atol=1e-9 * scale, equal_nan=True)
            else:
                torch.testing.assert_close(g_, w_, rtol=1e-6, atol=1e-6, equal_nan=True)
        gl = torch.tensor(1.3, dtype=got[0].dtype)
        gs = torch.linspace(-1, 1, b * c, dtype=got[1].dtype).view(b, c)
        for grads in ((None, None), (gs, 2 * gs)):
            d_want = torch.ops.ugr.weighted_sisdr_bwd(gl, *grads, est, ref, want[4], want[6])
            d_got = fused.backward(gl, *grads, est, ref, want[4], want[6])
            # The same formula in float64, rounded once to the dtype (the CPU op may
            # contract to FMA): equal to rounding of the two terms s a (y - my) and
            # s c (x - mx), which cancel where the estimate is near perfect.
            ulp = torch.finfo(dtype).eps
            cf = want[6].nan_to_num(0.0)
            s_max = 1.3 * cf[..., 0].abs().max() + 2 * 2.0
            terms = s_max * (cf[..., 1].abs().max() * ref.double().nan_to_num(0.0).abs().max()
                             + cf[..., 2].abs().max() * est.double().nan_to_num(0.0).abs().max())
            torch.testing.assert_close(d_got.double(), d_want.double(), rtol=2 * ulp,
                                       atol=8 * ulp * float(terms) + 1e-300, equal_nan=True)

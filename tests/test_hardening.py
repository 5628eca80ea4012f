"""Issue 13: the defects an independent audit found in the loss, one test (or more) each.

Every fast backend is checked against float64 oracles: the textbook reference
backend (``backend="reference"``) or a closed form. Triton runs through the
interpreter on CPU tensors (``conftest.py``).
"""
import contextlib
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import ugr_kernels as uk
from ugr_kernels import backends
from ugr_kernels.reference import pairwise_sisdr

FAST = [b for b in ("cpp", "torch", "triton") if backends.is_available(b, "cpu")]
ALL = FAST + ["reference"]


@pytest.fixture(autouse=True)
def small_triton_tiles(monkeypatch):
    if backends.is_available("triton", "cpu"):
        monkeypatch.setattr(backends.get_backend("triton"), "BLOCK_T", 64)
    yield


def _at_db(ref: torch.Tensor, db: float, seed: int = 0) -> torch.Tensor:
    """An estimate exactly ``db`` dB SI-SDR from ``ref`` (noise orthogonal to ref), float64."""
    g = torch.Generator().manual_seed(seed)
    ref = ref - ref.mean(-1, keepdim=True)
    noise = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    noise = noise - noise.mean(-1, keepdim=True)
    noise = noise - (noise * ref).sum(-1, keepdim=True) / (ref * ref).sum(-1, keepdim=True) * ref
    scale = torch.sqrt((ref * ref).sum(-1, keepdim=True) / (noise * noise).sum(-1, keepdim=True))
    return ref + noise * scale * 10 ** (-db / 20)


def _signals(b=2, c=2, t=300, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(b, c, t, generator=g, dtype=torch.float64)
    est = ref + 0.5 * torch.randn(b, c, t, generator=g, dtype=torch.float64)
    mix = ref.sum(1)
    return est.to(dtype), ref.to(dtype), mix.to(dtype)


# ----------------------------------------------------------------- 1: high SI-SDR in fp32
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("db", [60.0, 80.0, 90.0])
def test_float32_high_sisdr_is_accurate(backend, db):
    g = torch.Generator().manual_seed(1)
    ref64 = torch.randn(2, 2, 700, generator=g, dtype=torch.float64)
    est32, ref32 = _at_db(ref64, db).float(), ref64.float()
    # The oracle is the SI-SDR of the float32 values themselves, in float64.
    want = uk.weighted_sisdr(est32.double(), ref32.double(), backend="reference").sisdr
    got = uk.weighted_sisdr(est32, ref32, backend=backend).sisdr
    assert torch.allclose(got.double(), want, atol=0.01), (got, want)


@pytest.mark.parametrize("backend", FAST)
def test_float32_exact_multiple_reads_the_ceiling(backend):
    ref = torch.randn(2, 2, 500, dtype=torch.float64).float()
    est = 0.37 * ref                        # k * ref in float32: SI-SDR at the eps ceiling
    want = uk.weighted_sisdr(est.double(), ref.double(), backend="reference").sisdr
    got = uk.weighted_sisdr(est, ref, backend=backend).sisdr
    assert torch.allclose(got.double(), want, atol=0.5), (got, want)
    assert bool((got > 115).all())


# ----------------------------------------------------------------- 10: fp32 range
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("amplitude", [1e30, 1e-30, 1e-41])
def test_float32_extreme_amplitudes(backend, amplitude):
    est, ref, _ = _signals(t=200)
    base = uk.weighted_sisdr(est.double(), ref.double(), backend="reference").sisdr
    scaled_est = (est.double() * amplitude).float()
    scaled_ref = (ref.double() * amplitude).float()
    assert bool(torch.isfinite(scaled_est).all())
    want = uk.weighted_sisdr(scaled_est.double(), scaled_ref.double(), backend="reference")
    got = uk.weighted_sisdr(scaled_est, scaled_ref, backend=backend)
    assert bool(got.mask.all())
    tol = 0.01 if amplitude > 1e-38 else 0.5          # denormals keep fewer bits
    assert torch.allclose(got.sisdr.double(), want.sisdr, atol=tol)
    if amplitude > 1e-38:
        assert torch.allclose(got.sisdr.double(), base, atol=tol)


# ----------------------------------------------------------------- 7b: bf16 denormals
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("amplitude", [1e-39, 1e-41])
def test_bfloat16_denormal_inputs_match_the_oracle(backend, fused, amplitude):
    # bf16 shares fp32's exponent range: 1e-39 and 1e-41 are bf16 subnormals (Triton's
    # interpreter used to renormalise them into garbage: -10.6 dB instead of -1.08).
    est, ref, mix = _signals(t=200)
    est = (est.double() * amplitude).to(torch.bfloat16)
    ref = (ref.double() * amplitude).to(torch.bfloat16)
    mix = (mix.double() * amplitude).to(torch.bfloat16)
    assert bool((est.float().abs() < torch.finfo(torch.float32).tiny).all())
    want = uk.weighted_sisdr(est.double(), ref.double(), mixture=mix.double(), alpha=0.5,
                             backend="reference")
    leaf = est.clone().requires_grad_(True)
    with contextlib.nullcontext() if fused else uk.fused.disabled():
        got = uk.weighted_sisdr(leaf, ref, mixture=mix, alpha=0.5, backend=backend)
    assert torch.allclose(got.sisdr.double(), want.sisdr, atol=0.01), (got.sisdr, want.sisdr)
    assert torch.allclose(got.sisdri.double(), want.sisdri, atol=0.01)
    got.loss.backward()
    assert bool(torch.isfinite(leaf.grad.float()).all())


# ----------------------------------------------------------------- 2: non-finite alpha / bias
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_alpha_is_an_error(bad):
    est, ref, mix = _signals()
    with pytest.raises(ValueError, match="alpha"):
        uk.weighted_sisdr(est, ref, mixture=mix, alpha=bad)
    with pytest.raises(ValueError, match="alpha"):
        uk.weighted_sisdr(est, ref, mixture=mix, alpha=torch.tensor(bad))
    with pytest.raises(ValueError, match="alpha"):
        uk.Robust(bad)
    with pytest.raises(ValueError, match="beta"):
        uk.Curriculum(bad)


def test_non_finite_bias_is_an_error():
    est, ref, mix = _signals()
    bias = torch.zeros(2, 2)
    bias[1, 0] = float("nan")
    with pytest.raises(ValueError, match="bias"):
        uk.weighted_sisdr(est, ref, mixture=mix, bias=bias)


@pytest.mark.parametrize("make", [
    lambda bad: uk.Linear(bad, 0.0, 10),
    lambda bad: uk.Cosine(-0.2, bad, 10),
    lambda bad: uk.Exponential(bad, 0.0, 10),
    lambda bad: uk.Step([0.0, bad], [5]),
    lambda bad: uk.Constant(bad),
    lambda bad: uk.InverseTemperature(t_start=bad),
    lambda bad: uk.ClassBias({0: bad}, class_names=["a", "b"]),
])
def test_schedules_reject_non_finite_values(make):
    with pytest.raises(ValueError, match="finite"):
        make(float("nan"))


# ----------------------------------------------------------------- 4: NaN item, zero gradient
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("where", ["est", "ref"])
def test_masked_nan_item_gets_exactly_zero_gradient(backend, where):
    est, ref, mix = _signals(b=3, c=2, t=150)
    if where == "est":
        est[1, 0, 17] = float("nan")
    else:
        ref[1, 1, 17] = float("nan")
    est.requires_grad_(True)
    out = uk.weighted_sisdr(est, ref, mixture=mix, alpha=0.1, backend=backend,
                            check_finite=False)
    out.loss.backward()
    assert bool(torch.isfinite(out.loss))
    grad = est.grad
    assert bool(torch.isfinite(grad).all())
    masked = ~out.mask
    assert bool(masked[1].any()) and not bool(masked[0].any())
    for j in masked[1].nonzero().flatten().tolist():
        k = int(out.perm[1, j])
        assert torch.equal(grad[1, k], torch.zeros_like(grad[1, k]))
    assert bool((grad[0] != 0).any()) and bool((grad[2] != 0).any())


@pytest.mark.parametrize("backend", FAST)
def test_masked_nan_item_zero_gradient_under_compile(backend):
    est, ref, mix = _signals(b=2, c=2, t=130)
    est[0, 1, 3] = float("nan")
    est.requires_grad_(True)

    def loss_fn(e, r, m):
        return uk.weighted_sisdr(e, r, mixture=m, backend=backend).loss

    loss = torch.compile(loss_fn, fullgraph=True)(est, ref, mix)
    loss.backward()
    assert bool(torch.isfinite(est.grad).all())
    assert bool((est.grad[1] != 0).any())


# ----------------------------------------------------------------- 5: float64 amplitude range
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("amplitude", [1e-150, 1e-120, 1e-90, 1e80, 1e120, 1e150])
def test_float64_amplitude_independence(backend, amplitude):
    est, ref, mix = _signals(t=500, dtype=torch.float64)
    base = uk.weighted_sisdr(est, ref, mixture=mix, backend=backend)
    got = uk.weighted_sisdr(est * amplitude, ref * amplitude, mixture=mix * amplitude,
                            backend=backend)
    assert bool(got.mask.all()) and bool(torch.isfinite(got.loss))
    assert torch.allclose(got.sisdr, base.sisdr, atol=1e-9)
    assert torch.allclose(got.sisdri, base.sisdri, atol=1e-9)
    assert torch.allclose(got.loss, base.loss, atol=1e-9)


# ----------------------------------------------------------------- 6: fp32/bf16 gradient range
def _reference_grad(est, ref, mix, **kw):
    e = est.detach().double().requires_grad_(True)
    uk.weighted_sisdr(e, ref.double(), mixture=mix.double(), backend="reference",
                      **kw).loss.backward()
    return e.grad


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("amplitude", [1e-20, 1e-30, 1e22, 1e30])
def test_low_precision_gradients_at_extreme_amplitudes(backend, dtype, amplitude):
    est, ref, mix = _signals(t=160, dtype=torch.float64)
    est, ref, mix = ((t * amplitude).to(dtype) for t in (est, ref, mix))
    leaf = est.clone().requires_grad_(True)
    uk.weighted_sisdr(leaf, ref, mixture=mix, alpha=0.1, backend=backend).loss.backward()
    want = _reference_grad(est, ref, mix, alpha=0.1)
    got = leaf.grad.double()
    assert bool(torch.isfinite(got).all())
    scale = want.abs().max()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert float((got - want).abs().max()) <= tol * float(scale)


# ----------------------------------------------------------------- 7: DC offset in fp32
@pytest.mark.parametrize("backend", FAST)
def test_float32_gradient_with_large_dc_offset(backend):
    g = torch.Generator().manual_seed(3)
    ref = (1e4 + 1e-3 * torch.randn(2, 2, 400, generator=g, dtype=torch.float64)).float()
    est = (1e4 + 1e-3 * torch.randn(2, 2, 400, generator=g, dtype=torch.float64)).float()
    mix = (ref.double().sum(1)).float()
    leaf = est.clone().requires_grad_(True)
    uk.weighted_sisdr(leaf, ref, mixture=mix, backend=backend).loss.backward()
    want = _reference_grad(est, ref, mix)
    got = leaf.grad.double()
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 1e-5 * scale
    # Centring makes the exact gradient zero-mean over time.
    assert float(got.sum(-1).abs().max()) <= 1e-4 * scale


# ----------------------------------------------------------------- 8: ref gradient of SI-SDRi
def _textbook_sisdri_loss(est, ref, mix):
    """-mean_j (SI-SDR(est_j, ref_j) - SI-SDR(mix, ref_j)), float64 autograd, no PIT."""
    pair, _ = pairwise_sisdr(est, ref)
    mpair, _ = pairwise_sisdr(mix.unsqueeze(1), ref)
    diag = torch.diagonal(pair, dim1=1, dim2=2)
    return -(diag - mpair[:, 0]).mean()


@pytest.mark.parametrize("backend", ALL)
def test_ref_gradient_includes_the_mixture_term(backend):
    est, ref, mix = _signals(b=2, c=2, t=120, dtype=torch.float64)
    r1 = ref.clone().requires_grad_(True)
    m1 = mix.clone().requires_grad_(True)
    uk.weighted_sisdr(est, r1, mixture=m1, pit=False, backend=backend).loss.backward()
    r2 = ref.clone().requires_grad_(True)
    m2 = mix.clone().requires_grad_(True)
    _textbook_sisdri_loss(est, r2, m2).backward()
    assert torch.allclose(r1.grad, r2.grad, rtol=1e-6, atol=1e-9)
    assert torch.allclose(m1.grad, m2.grad, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------- 9: clear errors for shapes
@pytest.mark.parametrize("kwargs, name", [
    (dict(bias=torch.zeros(2, 3)), "bias"),
    (dict(bias=torch.zeros(3)), "bias"),
    (dict(bias=torch.zeros(2, 2, 1)), "bias"),
    (dict(bias=np.zeros((2, 2))), "bias"),
    (dict(mask=torch.ones(2, 3, dtype=torch.bool)), "mask"),
    (dict(mask=torch.ones(2, 2, dtype=torch.bool), granularity="example"), "mask"),
    (dict(bias=torch.zeros(2, 2), granularity="example"), "bias"),
    (dict(alpha=torch.zeros(2)), "alpha"),
    (dict(alpha="0.1"), "alpha"),
])
def test_wrong_bias_or_mask_names_the_argument(kwargs, name):
    est, ref, mix = _signals()
    with pytest.raises(ValueError, match=name):
        uk.weighted_sisdr(est, ref, mixture=mix, **kwargs)


def test_broadcastable_bias_and_mask_still_work():
    est, ref, mix = _signals()
    a = uk.weighted_sisdr(est, ref, mixture=mix, bias=torch.zeros(2, 1), mask=torch.tensor(True))
    b = uk.weighted_sisdr(est, ref, mixture=mix)
    assert torch.allclose(a.loss, b.loss)
    c = uk.weighted_sisdr(est, ref, mixture=mix, granularity="example", bias=torch.zeros(2),
                          mask=torch.ones(2, dtype=torch.bool))
    assert bool(torch.isfinite(c.loss))


# ----------------------------------------------------------------- 11: Triton availability
def test_triton_interpret_set_after_import_is_not_available():
    pytest.importorskip("triton")
    code = textwrap.dedent("""
        import os
        import torch, ugr_kernels as uk
        from ugr_kernels import backends
        os.environ["TRITON_INTERPRET"] = "1"
        print("available", backends.is_available("triton", "cpu"))
        try:
            uk.weighted_sisdr(torch.randn(2, 2, 50), torch.randn(2, 2, 50), backend="triton")
        except ValueError as exc:
            print("error", exc)
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "available False" in run.stdout
    assert "error backend 'triton' is not available" in run.stdout
    assert "TRITON_INTERPRET=1" in run.stdout


# ----------------------------------------------------------------- 13: T = 2
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_two_samples_give_zero_gradient(backend, dtype):
    # Centred, two samples span one direction: SI-SDR is constant, its gradient 0.
    est, ref, mix = _signals(b=3, c=2, t=2, dtype=dtype)
    leaf = est.clone().requires_grad_(True)
    out = uk.weighted_sisdr(leaf, ref, mixture=mix, backend=backend)
    out.loss.backward()
    grad = leaf.grad.double()
    assert bool(torch.isfinite(grad).all())
    # Relative to the gradient an ordinary item of the same amplitude gets (~1/|x|).
    typical = 1.0 / float(est.double().abs().max())
    assert float(grad.abs().max()) <= 1e-2 * typical, grad
    assert math.isfinite(float(out.loss))


@pytest.mark.parametrize("labels, granularity", [
    (torch.zeros(2, 3, dtype=torch.long), "source"),
    (torch.zeros(3, dtype=torch.long), "source"),
    (torch.zeros(2, 2, dtype=torch.long), "example"),
])
def test_wrong_class_labels_name_the_argument(labels, granularity):
    est, ref, mix = _signals()
    criterion = uk.WeightedSISDRLoss(uk.ClassBias({"a": 1.0}, class_names=["a", "b"]),
                                     granularity=granularity)
    with pytest.raises(ValueError, match="labels"):
        criterion(est, ref, mix, labels=labels)


def test_class_labels_shaped_like_the_items_work():
    est, ref, mix = _signals()
    criterion = uk.WeightedSISDRLoss(uk.ClassBias({"a": 1.0}, class_names=["a", "b"]))
    per_source = criterion(est, ref, mix, labels=torch.tensor([[0, 1], [1, 1]]))
    per_example = criterion(est, ref, mix, labels=torch.tensor([[0], [1]]))
    assert bool(torch.isfinite(per_source)) and bool(torch.isfinite(per_example))

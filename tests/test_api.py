"""weighted_sisdr: values, PIT, pmf, gradients, edge cases, bad input.

Every fast path is compared with an independent textbook SI-SDR written here
(numpy, float64) and with the autograd reference backend.
"""
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ugr_kernels as uk
from ugr_kernels import backends

FAST_BACKENDS = [b for b in ("torch", "cpp") if backends.is_available(b, "cpu")]
ALL_BACKENDS = FAST_BACKENDS + ["reference"]


def textbook_sisdr(x, y):
    """Le Roux et al. 2019, straight from the definition (numpy float64)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    s = np.dot(x, y) / np.dot(y, y) * y
    e = x - s
    return 10 * np.log10(np.dot(s, s) / np.dot(e, e))


def brute_force(est, ref, mixture=None):
    """Per example: best permutation by mean SI-SDR, per-source values, via loops."""
    est, ref = est.double().numpy(), ref.double().numpy()
    out, perms = [], []
    for b in range(est.shape[0]):
        best = None
        for p in itertools.permutations(range(est.shape[1])):
            vals = [textbook_sisdr(est[b, p[j]], ref[b, j]) for j in range(est.shape[1])]
            if best is None or np.mean(vals) > np.mean(best[0]) + 1e-12:
                best = (vals, p)
        vals = best[0]
        if mixture is not None:
            vals = [v - textbook_sisdr(mixture[b].double().numpy(), ref[b, j])
                    for j, v in enumerate(vals)]
        out.append(vals)
        perms.append(best[1])
    return np.array(out), np.array(perms)


def rand(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def mixed_batch(b=4, c=2, t=257, seed=0):
    ref = rand(b, c, t, seed=seed)
    est = ref[:, torch.randperm(c, generator=torch.Generator().manual_seed(seed))] \
        + 0.8 * rand(b, c, t, seed=seed + 1)
    return est, ref, ref.sum(1) + 0.3 * rand(b, t, seed=seed + 2)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("c", [1, 2, 3, 4])
def test_matches_textbook_and_brute_force_pit(backend, c):
    est, ref, mix = mixed_batch(3, c, 301, seed=c)
    out = uk.weighted_sisdr(est, ref, mixture=mix, backend=backend)
    want_i, want_perm = brute_force(est, ref, mix)
    want, _ = brute_force(est, ref)
    np.testing.assert_allclose(out.sisdr.numpy(), want, rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(out.sisdri.numpy(), want_i, rtol=1e-9, atol=1e-8)
    assert (out.perm.numpy() == want_perm).all()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("granularity", ["source", "example"])
def test_backends_match_reference(backend, granularity):
    est, ref, mix = mixed_batch(5, 3, 1000, seed=7)
    est.requires_grad_(True)
    bias = rand(5, 3, seed=3) if granularity == "source" else rand(5, seed=3)
    kw = dict(mixture=mix, alpha=0.3, bias=bias, granularity=granularity)
    got = uk.weighted_sisdr(est, ref, backend=backend, **kw)
    want = uk.weighted_sisdr(est, ref, backend="reference", **kw)
    for f in ("loss", "sisdr", "sisdri", "weights"):
        torch.testing.assert_close(getattr(got, f), getattr(want, f), rtol=1e-9, atol=1e-9)
    g1, = torch.autograd.grad(got.loss, est)
    g2, = torch.autograd.grad(want.loss, est)
    torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_float32_matches_float64_reference(backend):
    est, ref, mix = mixed_batch(4, 2, 4003, seed=11)
    e32 = est.float().requires_grad_(True)
    got = uk.weighted_sisdr(e32, ref.float(), mixture=mix.float(), alpha=0.1, backend=backend)
    e64 = est.clone().requires_grad_(True)
    want = uk.weighted_sisdr(e64, ref, mixture=mix, alpha=0.1, backend="reference")
    assert got.loss.dtype == torch.float32
    torch.testing.assert_close(got.sisdr.double(), want.sisdr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss.double(), want.loss, rtol=1e-5, atol=1e-5)
    g32, = torch.autograd.grad(got.loss, e32)
    g64, = torch.autograd.grad(want.loss, e64)
    scale = g64.abs().max()
    assert ((g32.double() - g64).abs().max() / scale) < 1e-4


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gradcheck_float64(backend):
    est, ref, mix = mixed_batch(2, 2, 23, seed=5)
    est.requires_grad_(True)
    # Weights are detached by design, so check the per-item values (all of the
    # chain but the pmf) and the uniform loss.
    assert torch.autograd.gradcheck(
        lambda e: uk.weighted_sisdr(e, ref, mixture=mix, backend=backend).sisdri, (est,))
    assert torch.autograd.gradcheck(
        lambda e: uk.weighted_sisdr(e, ref, backend=backend, granularity="example").loss, (est,))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gradient_is_weighted_sum_of_item_gradients(backend):
    est, ref, mix = mixed_batch(3, 2, 200, seed=2)
    est.requires_grad_(True)
    out = uk.weighted_sisdr(est, ref, mixture=mix, alpha=0.25, backend=backend)
    g, = torch.autograd.grad(out.loss, est)
    want = torch.zeros_like(est)
    p = out.weights.detach()
    perm = out.perm
    for b in range(3):
        for j in range(2):
            e = est[b, perm[b, j]].detach().clone().requires_grad_(True)
            sisdr = uk.pairwise_sisdr(e[None, None], ref[b, j][None, None])[0][0, 0, 0]
            gi, = torch.autograd.grad(-sisdr, e)
            want[b, perm[b, j]] += p[b, j] * gi
    torch.testing.assert_close(g, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_alpha_zero_is_plain_mean_pit_loss(backend):
    est, ref, _ = mixed_batch(4, 3, 500, seed=9)
    out = uk.weighted_sisdr(est, ref, backend=backend)
    want, _ = brute_force(est, ref)
    assert math.isclose(out.loss.item(), -want.mean(), rel_tol=1e-8)
    torch.testing.assert_close(out.weights, torch.full((4, 3), 1 / 12, dtype=torch.float64))


def test_weights_follow_softmax_of_alpha_times_loss():
    est, ref, _ = mixed_batch(6, 2, 300, seed=4)
    out = uk.weighted_sisdr(est, ref, alpha=0.2)
    want = torch.softmax(0.2 * -out.sisdr.flatten(), 0).reshape(6, 2)
    torch.testing.assert_close(out.weights, want)
    assert math.isclose(out.weights.sum().item(), 1.0, rel_tol=1e-12)
    # alpha > 0 puts more weight on the worst item than uniform would.
    worst = out.sisdr.flatten().argmin()
    assert out.weights.flatten()[worst] > 1 / 12


def test_example_granularity_uses_mean_over_sources():
    est, ref, mix = mixed_batch(5, 2, 300, seed=6)
    out = uk.weighted_sisdr(est, ref, mixture=mix, alpha=-0.5, granularity="example")
    per_example = -out.sisdri.mean(1)
    torch.testing.assert_close(out.weights, torch.softmax(-0.5 * per_example, 0))
    torch.testing.assert_close(out.loss, (out.weights * per_example).sum())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_silent_target_and_estimate_are_masked(backend):
    est, ref, mix = mixed_batch(3, 2, 128, seed=1)
    ref[1, 0] = 0.0            # silent target
    est[2, :] = 0.0            # silent estimates for a whole example
    est.requires_grad_(True)
    out = uk.weighted_sisdr(est, ref, mixture=mix, alpha=0.2, backend=backend)
    assert torch.isfinite(out.loss) and torch.isfinite(out.sisdr).all()
    assert not out.mask[1, 0] and not out.mask[2].any() and out.mask[0].all()
    assert out.weights[1, 0] == 0 and (out.weights[2] == 0).all()
    assert math.isclose(out.weights.sum().item(), 1.0, rel_tol=1e-12)
    g, = torch.autograd.grad(out.loss, est)
    assert torch.isfinite(g).all()
    assert (g[2] == 0).all()
    assert (g[1, out.perm[1, 0]] == 0).all()


def test_everything_masked_gives_zero_loss_not_nan():
    est, ref, _ = mixed_batch(2, 2, 64)
    out = uk.weighted_sisdr(est, torch.zeros_like(ref), alpha=0.3)
    assert out.loss.item() == 0.0 and (out.weights == 0).all()


def test_user_mask_removes_items_from_pmf():
    est, ref, _ = mixed_batch(3, 2, 100, seed=8)
    mask = torch.tensor([[True, False], [True, True], [False, False]])
    out = uk.weighted_sisdr(est, ref, mask=mask)
    assert (out.weights[~mask] == 0).all()
    torch.testing.assert_close(out.weights[mask], torch.full((3,), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_identical_estimate_is_finite_and_high(backend):
    ref = rand(2, 2, 1000)
    est = ref.clone().requires_grad_(True)
    out = uk.weighted_sisdr(est, ref, backend=backend)
    assert (out.sisdr > 110).all() and torch.isfinite(out.sisdr).all()
    g, = torch.autograd.grad(out.loss, est)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("db", [60.0, 75.0])
def test_high_sisdr_stays_accurate(backend, db):
    ref = rand(2, 1, 16000, seed=3)
    noise = rand(2, 1, 16000, seed=4)
    noise = noise - noise.mean(-1, keepdim=True)
    est = ref + noise * ref.std() * 10 ** (-db / 20)
    got = uk.weighted_sisdr(est.float(), ref.float(), backend=backend).sisdr \
        if backend != "reference" else uk.weighted_sisdr(est, ref, backend=backend).sisdr
    want = [textbook_sisdr(est[b, 0].float().double(), ref[b, 0].float().double())
            for b in range(2)]
    np.testing.assert_allclose(got[:, 0].numpy(), want, atol=0.01)


@pytest.mark.parametrize("scale", [1e-15, 1e15])
def test_huge_and_tiny_amplitudes_are_scale_invariant(scale):
    est, ref, mix = mixed_batch(2, 2, 500, seed=12)
    base = uk.weighted_sisdr(est, ref, mixture=mix)
    scaled = uk.weighted_sisdr(est * scale, ref / scale, mixture=mix * scale)
    torch.testing.assert_close(scaled.sisdri, base.sisdri, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_return_float32(dtype):
    est, ref, mix = mixed_batch(3, 2, 5000, seed=13)
    e = est.to(dtype).requires_grad_(True)
    out = uk.weighted_sisdr(e, ref.to(dtype), mixture=mix.to(dtype), alpha=0.1)
    assert out.loss.dtype == torch.float32 and out.sisdr.dtype == torch.float32
    want = uk.weighted_sisdr(est.to(dtype).double(), ref.to(dtype).double(),
                             mixture=mix.to(dtype).double(), alpha=0.1, backend="reference")
    torch.testing.assert_close(out.sisdr.double(), want.sisdr, rtol=1e-5, atol=1e-4)
    out.loss.backward()
    assert e.grad.dtype == dtype and torch.isfinite(e.grad.float()).all()


def test_fp16_long_signal_does_not_overflow():
    # sum(x^2) over 4 s of loud fp16 audio exceeds fp16's 65504; accumulation is wider.
    est, ref, _ = mixed_batch(2, 2, 64000, seed=14)
    out = uk.weighted_sisdr((est * 100).half(), (ref * 100).half())
    assert torch.isfinite(out.sisdr).all() and torch.isfinite(out.loss)


def test_clamp_db_bounds_sisdr_smoothly():
    ref = rand(2, 2, 1000)
    est = ref + 1e-4 * rand(2, 2, 1000, seed=1)
    free = uk.weighted_sisdr(est, ref).sisdr
    clamped = uk.weighted_sisdr(est, ref, clamp_db=30.0).sisdr
    assert (free > 70).all() and (clamped < 30).all() and (clamped > 29.9).all()
    low_est, _, _ = mixed_batch(2, 2, 1000)
    a = uk.weighted_sisdr(low_est, ref, clamp_db=30.0).sisdr
    b = uk.weighted_sisdr(low_est, ref).sisdr
    torch.testing.assert_close(a, b, atol=0.01, rtol=0)


def test_no_pit_keeps_order():
    est, ref, _ = mixed_batch(2, 3, 100, seed=3)
    out = uk.weighted_sisdr(est, ref, pit=False)
    assert (out.perm == torch.arange(3)).all()
    want = [[textbook_sisdr(est[b, j], ref[b, j]) for j in range(3)] for b in range(2)]
    np.testing.assert_allclose(out.sisdr.numpy(), want, rtol=1e-9, atol=1e-6)


def test_perm_reorders_estimates_onto_references():
    est, ref, _ = mixed_batch(3, 3, 400, seed=21)
    out = uk.weighted_sisdr(est, ref)
    aligned = est.gather(1, out.perm[..., None].expand_as(est))
    direct = uk.weighted_sisdr(aligned, ref, pit=False)
    torch.testing.assert_close(direct.sisdr, out.sisdr)


def test_six_sources_exhaustive_and_seven_uses_the_solver():
    est, ref, _ = mixed_batch(2, 6, 50, seed=5)
    out = uk.weighted_sisdr(est, ref)
    _, perm = brute_force(est, ref)
    assert (out.perm.numpy() == perm).all()
    est7, ref7, _ = mixed_batch(2, 7, 50, seed=6)
    out7 = uk.weighted_sisdr(est7, ref7)
    _, perm7 = brute_force(est7, ref7)
    assert (out7.perm.numpy() == perm7).all()


@pytest.mark.parametrize("bad, match", [
    (dict(est=torch.randn(2, 100)), "est must have shape"),
    (dict(ref=torch.randn(2, 3, 100)), "same shape"),
    (dict(est=torch.randint(0, 3, (2, 2, 100))), "est must be float"),
    (dict(mixture=torch.randn(3, 100)), "mixture must have shape"),
    (dict(granularity="batch"), "granularity"),
])
def test_bad_input_raises_clear_error(bad, match):
    kw = dict(est=torch.randn(2, 2, 100), ref=torch.randn(2, 2, 100))
    kw.update(bad)
    est, ref = kw.pop("est"), kw.pop("ref")
    with pytest.raises(ValueError, match=match):
        uk.weighted_sisdr(est, ref, **kw)


@pytest.mark.parametrize("name", ["est", "ref", "mixture"])
def test_non_finite_input_names_the_argument(name):
    t = {"est": torch.randn(2, 2, 50), "ref": torch.randn(2, 2, 50), "mixture": torch.randn(2, 50)}
    t[name].view(-1)[7] = float("nan")
    with pytest.raises(ValueError, match=f"{name} contains NaN"):
        uk.weighted_sisdr(t["est"], t["ref"], mixture=t["mixture"])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_unchecked_non_finite_items_are_masked_not_propagated(backend):
    est, ref, mix = mixed_batch(3, 2, 100, seed=3)
    est[1, 0, 5] = float("nan")
    out = uk.weighted_sisdr(est, ref, mixture=mix, alpha=0.2, check_finite=False, backend=backend)
    assert torch.isfinite(out.loss) and torch.isfinite(out.weights).all()
    assert not out.mask[1, (out.perm[1] == 0)].any() and out.mask[0].all() and out.mask[2].all()


def test_unknown_or_unavailable_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        uk.weighted_sisdr(torch.randn(1, 1, 5), torch.randn(1, 1, 5), backend="fortran")
    with pytest.raises(ValueError, match="not available"):
        uk.weighted_sisdr(torch.randn(1, 1, 5), torch.randn(1, 1, 5), backend="cuda")


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 4), c=st.integers(1, 4), t=st.sampled_from([1, 2, 7, 255, 1025, 4097]),
       log_scale=st.floats(-8, 8), dtype=st.sampled_from(["float32", "float64", "bfloat16"]),
       seed=st.integers(0, 2**16))
def test_fuzz_fast_path_matches_reference(b, c, t, log_scale, dtype, seed):
    dtype = getattr(torch, dtype)
    est = (rand(b, c, t, seed=seed) * 10 ** log_scale).to(dtype)
    ref = (rand(b, c, t, seed=seed + 1) * 10 ** -log_scale).to(dtype)
    got = uk.weighted_sisdr(est, ref, alpha=0.1)
    want = uk.weighted_sisdr(est.double(), ref.double(), alpha=0.1, backend="reference")
    assert torch.isfinite(got.loss)
    # float64 differs only by rounding. Near the +-120 dB bound (rho^2 -> 1, e.g. T = 2,
    # where any two centred signals are collinear) 1 - rho^2 ~ 1e-16 is pure rounding
    # against eps = 1e-12, so there only agreement to 0.01 dB is meaningful.
    tol = 1e-6 if dtype == torch.float64 else 2e-3
    saturated = want.sisdr.abs() > 100
    torch.testing.assert_close(got.sisdr.double()[~saturated], want.sisdr[~saturated],
                               rtol=tol, atol=tol)
    torch.testing.assert_close(got.sisdr.double()[saturated], want.sisdr[saturated],
                               rtol=0, atol=0.01)
    torch.testing.assert_close(got.mask, want.mask)

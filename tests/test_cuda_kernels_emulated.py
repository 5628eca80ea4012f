"""The CUDA kernels (csrc/cuda/ugr_cuda_kernels.cuh), run on the CPU through a
thread-per-CUDA-thread emulation shim and checked against float64 sums; the fused
ops' CUDA kernels (csrc/cuda/ugr_fused_cuda_kernels.cuh) likewise, against the C++
CPU op on the same inputs.

This checks the kernels' arithmetic and indexing (tiles, tails, vector and scalar
loads, padded source counts, the merge, the combine pass) on machines without a
GPU; ``tests/test_gpu.py`` checks the compiled extension on a GPU.
"""
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import ugr_kernels.fused  # noqa: F401  (defines the ugr::weighted_sisdr_fwd/_bwd schemas)

HERE = Path(__file__).resolve().parent / "cuda_emulation"
CXX = shutil.which("g++") or shutil.which("clang++")
# No contraction (the float-float arithmetic needs every operation rounded as written,
# as nvcc's __f*_rn intrinsics are); 64 threads per block (2 warps) to run in CI's time.
_EMU_FLAGS = [CXX, "-std=c++20", "-O1", "-ffp-contract=off", "-DUGR_CUDA_THREADS=64",
              "-pthread"]


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or clang++) on PATH")
def test_cuda_kernels_match_float64_under_emulation(tmp_path):
    exe = tmp_path / "check_kernels"
    build = subprocess.run([*_EMU_FLAGS, f"-I{HERE}",
                            str(HERE / "check_kernels.cc"), "-o", str(exe)],
                           capture_output=True, text=True)
    if build.returncode != 0 and "barrier" in build.stderr:
        pytest.skip("the C++ compiler lacks C++20 <barrier>")
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "guard BAD" not in run.stdout


# ---------------------------------------------------------------------------------------
# The fused ops' CUDA kernels (csrc/cuda/ugr_fused_cuda_kernels.cuh: tile pass, epilogue,
# backward) under the same emulation, against the C++ CPU op on the same inputs.


_HEADER = ("B", "C", "T", "has_mix", "by_source", "pit", "zero_mean", "has_bias", "has_mask",
           "dtype", "tile", "has_gs", "has_gsi", "gl_f64", "naive_stats", "bias_per_example")
_DTYPES = {0: torch.float64, 1: torch.float32, 2: torch.bfloat16, 3: torch.float16}


def _cpu_op_ready() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("ugr::weighted_sisdr_fwd", "CPU")


def _fused_case(seed, B, C, T, *, mix=True, by_source=True, pit=True, zero_mean=True,
                bias=False, mask=False, dtype=1, tile=256, gs=True, gsi=True, gl_f64=False,
                naive=False, bias_per_example=False, eps=1e-12, clamp_db=math.inf, alpha=0.7,
                silent=(), nan=(), ties=False, grad_loss=1.3, signals=None):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(B, C, T, generator=g, dtype=torch.float64)
    level = torch.logspace(-2, 0.3, B, dtype=torch.float64).view(B, 1, 1)
    est = ref.roll(1, dims=1) + level * torch.randn(B, C, T, generator=g, dtype=torch.float64)
    est = est + 0.3 * torch.randn(B, C, 1, generator=g, dtype=torch.float64)   # DC offsets
    if signals is not None:                 # given (est, ref[, mixture]) in float64
        est, ref = signals[0].clone(), signals[1].clone()
    if ties and C > 1:
        est[:, 1] = est[:, 0]
    for (what, b, k) in silent:            # zero rows: masked items
        {"est": est, "ref": ref}[what][b, k] = 0.0
    mixture = ref.sum(1) + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    if signals is not None and len(signals) > 2:
        mixture = signals[2].clone()
    for (what, b, k) in nan:
        if what == "mix":
            mixture[b, T // 2] = math.nan
        else:
            {"est": est, "ref": ref}[what][b, k, T // 3] = math.nan if k % 2 == 0 else math.inf
    tdt = _DTYPES[dtype]
    est, ref, mixture = (t.to(tdt).double() for t in (est, ref, mixture))   # exact in tdt
    items = B * C if by_source else B
    bias_v = torch.randn(B if bias_per_example else items, generator=g, dtype=torch.float64)
    mask_v = torch.rand(items, generator=g) > 0.25
    gs_v = torch.randn(B, C, generator=g, dtype=torch.float64)
    gsi_v = torch.randn(B, C, generator=g, dtype=torch.float32).double()
    header = dict(B=B, C=C, T=T, has_mix=mix, by_source=by_source, pit=pit, zero_mean=zero_mean,
                  has_bias=bias, has_mask=mask, dtype=dtype, tile=tile, has_gs=gs, has_gsi=gsi,
                  gl_f64=gl_f64, naive_stats=naive, bias_per_example=bias_per_example)
    return dict(header=header, params=(eps, clamp_db, alpha, grad_loss), est=est, ref=ref,
                mix=mixture if mix else None, bias=bias_v if bias else None,
                mask=mask_v if mask else None, gs=gs_v if gs else None,
                gsi=gsi_v if gsi else None)


def _fused_cases():
    cases = []
    s = 100
    # Every C with and without the mixture, both granularities, PIT on, several tiles.
    for C in range(1, 7):
        for mix in (True, False):
            s += 1
            cases.append(_fused_case(s, 2, C, 301, mix=mix, by_source=(C + mix) % 2 == 0,
                                     tile=128, bias=C % 3 == 0, mask=C % 2 == 1,
                                     dtype=1 if C % 2 else 0, gl_f64=C > 3))
    cases += [
        # silent items and NaN/inf rows (est, ref, mixture), odd T, float64
        _fused_case(1, 4, 3, 257, tile=64, dtype=0, silent=[("est", 0, 1), ("ref", 2, 0)],
                    nan=[("est", 1, 2), ("ref", 3, 1), ("mix", 2, 0)]),
        _fused_case(2, 4, 2, 200, by_source=False, tile=64, dtype=1, mask=True, bias=True,
                    silent=[("est", 0, 0), ("est", 0, 1)], nan=[("est", 1, 0)]),
        # T = 1 and T = 2 (collinear: constant SI-SDR, zero gradient), raw and centred
        _fused_case(3, 3, 2, 1, zero_mean=False, tile=16, dtype=0),
        _fused_case(4, 3, 2, 1, zero_mean=True, tile=16, dtype=0),
        _fused_case(5, 3, 2, 2, zero_mean=True, tile=16, dtype=1),
        _fused_case(6, 3, 2, 2, zero_mean=False, tile=16, dtype=0, mix=False),
        # raw sums, clamp, eps, alpha < 0, per-example bias expanded over sources
        _fused_case(7, 3, 3, 515, zero_mean=False, clamp_db=30.0, eps=1e-6, tile=200, dtype=0,
                    alpha=-2.0, bias=True, bias_per_example=True),
        # ties in PIT: identical estimates -> the first permutation
        _fused_case(8, 2, 3, 100, ties=True, tile=64, dtype=0),
        _fused_case(9, 2, 2, 100, ties=True, tile=64, dtype=1, mix=False),
        # no PIT, many sources: the register tile (C = 8) and the float64 fallback (C = 9)
        _fused_case(10, 2, 8, 70, pit=False, mix=False, tile=64, dtype=1),
        _fused_case(11, 1, 9, 50, pit=False, tile=64, dtype=0),
        # B = 1; a large batch (more items than threads), with the example granularity
        _fused_case(12, 1, 2, 999, tile=256, dtype=1),
        _fused_case(13, 600, 2, 9, tile=8, dtype=0, naive=True, mask=True, bias=True),
        _fused_case(14, 300, 3, 9, tile=8, dtype=1, naive=True, by_source=False, mask=True),
        # bfloat16 inputs, a single gradient input, grad_loss only
        _fused_case(15, 2, 2, 333, dtype=2, tile=128, gs=False),
        _fused_case(16, 2, 3, 130, dtype=2, tile=64, by_source=False, gs=False, gsi=False),
        # float16 inputs (no scale in the tile pass), vector loads (T, tile % 4 == 0)
        _fused_case(17, 3, 2, 512, dtype=3, tile=128),
        _fused_case(18, 2, 4, 301, dtype=3, tile=64, by_source=False, mask=True),
        # vector loads for every dtype; PIT off with 5 and 6 sources (row groups of 4)
        _fused_case(19, 2, 3, 1024, dtype=1, tile=256, pit=False, bias=True),
        _fused_case(20, 2, 6, 256, dtype=1, tile=128, pit=False),
        _fused_case(21, 2, 5, 200, dtype=2, tile=64, by_source=False),
        _fused_case(22, 2, 6, 128, dtype=0, tile=64, mix=False, clamp_db=20.0),
        # B = 70 (several blocks of the per-example epilogue), both granularities
        _fused_case(23, 70, 2, 64, dtype=1, tile=32, mask=True, bias=True),
        _fused_case(24, 70, 3, 33, dtype=3, tile=16, by_source=False, mask=True),
    ]
    cases += _nasty_cases()
    return cases


def _at_db(ref, db, seed):
    """An estimate exactly db dB SI-SDR from ref (noise orthogonal to the centred ref)."""
    g = torch.Generator().manual_seed(seed)
    ref = ref - ref.mean(-1, keepdim=True)
    noise = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    noise = noise - noise.mean(-1, keepdim=True)
    noise = noise - (noise * ref).sum(-1, keepdim=True) / (ref * ref).sum(-1, keepdim=True) * ref
    scale = torch.sqrt((ref * ref).sum(-1, keepdim=True) / (noise * noise).sum(-1, keepdim=True))
    return ref + noise * scale * 10 ** (-db / 20)


def _nasty_cases():
    """The hardening list (tests/test_hardening.py) for the CUDA kernels: high SI-SDR in
    fp32, extreme amplitudes and denormals, DC offsets, an exact multiple (the eps
    ceiling), T = 2. Marked with "oracle" for the float64 comparison below."""
    g = torch.Generator().manual_seed(5)
    out = []
    ref = torch.randn(2, 2, 700, generator=g, dtype=torch.float64)
    for i, db in enumerate((60.0, 80.0, 90.0)):
        est = _at_db(ref, db, seed=i)
        out.append(dict(_fused_case(40 + i, 2, 2, 700, dtype=1, tile=256, mix=False,
                                    signals=(est, ref)), oracle=f"{db:g} dB"))
    base = torch.randn(2, 2, 200, generator=g, dtype=torch.float64)
    base_est = base + 0.5 * torch.randn(2, 2, 200, generator=g, dtype=torch.float64)
    for i, amp in enumerate((1e30, 1e-30, 1e-41)):
        for dt in (1, 2):
            out.append(dict(_fused_case(50 + i, 2, 2, 200, dtype=dt, tile=64, mix=False,
                                        signals=(base_est * amp, base * amp)),
                            oracle=f"amplitude {amp:g}"))
    dc = 1e4 + 1e-3 * torch.randn(2, 2, 400, generator=g, dtype=torch.float64)
    dc_est = 1e4 + 1e-3 * torch.randn(2, 2, 400, generator=g, dtype=torch.float64)
    out.append(dict(_fused_case(60, 2, 2, 400, dtype=1, tile=128,
                                signals=(dc_est, dc, dc.sum(1))), oracle="DC offset 1e4"))
    exact = torch.randn(2, 2, 500, generator=g, dtype=torch.float64).float().double()
    out.append(dict(_fused_case(61, 2, 2, 500, dtype=1, tile=128, mix=False,
                                signals=(0.37 * exact, exact)), oracle="exact multiple"))
    t2 = torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    out.append(dict(_fused_case(62, 3, 2, 2, dtype=1, tile=2, signals=(t2 + 0.1, t2)),
                    oracle="T=2"))
    return out


def _write_cases(path, cases):
    with open(path, "wb") as f:
        for c in cases:
            h = c["header"]
            f.write(np.array([int(h[k]) for k in _HEADER], dtype="<i8").tobytes())
            f.write(np.array(c["params"], dtype="<f8").tobytes())
            for key in ("est", "ref", "mix", "bias", "mask", "gs", "gsi"):
                if c[key] is not None:
                    f.write(c[key].double().contiguous().numpy().astype("<f8").tobytes())


def _read_outputs(path, cases):
    flat = np.fromfile(path, dtype="<f8")
    out, pos = [], 0
    for c in cases:
        h = c["header"]
        B, C, T = h["B"], h["C"], h["T"]
        items = B * C if h["by_source"] else B
        sizes = [("loss", 1), ("sisdr", B * C), ("sisdri", B * C), ("weights", items),
                 ("perm", B * C), ("valid", B * C), ("coef", B * C * 10), ("d_est", B * C * T)]
        res = {}
        for name, n in sizes:
            res[name] = torch.from_numpy(flat[pos:pos + n].copy())
            pos += n
        res["loss"] = res["loss"].reshape(())
        for name in ("sisdr", "sisdri", "perm", "valid"):
            res[name] = res[name].reshape(B, C)
        res["weights"] = res["weights"].reshape((B, C) if h["by_source"] else (B,))
        res["coef"] = res["coef"].reshape(B, C, 10)
        res["d_est"] = res["d_est"].reshape(B, C, T)
        out.append(res)
    assert pos == flat.size
    return out


def _cpu_reference(c):
    h = c["header"]
    B, C = h["B"], h["C"]
    dt = _DTYPES[h["dtype"]]
    est, ref = c["est"].to(dt), c["ref"].to(dt)
    mix = c["mix"].to(dt) if c["mix"] is not None else None
    eps, clamp_db, alpha, grad_loss = c["params"]
    bias = c["bias"]
    if bias is not None and h["bias_per_example"] and h["by_source"]:
        bias = bias.unsqueeze(1).expand(B, C)
    elif bias is not None and h["by_source"]:
        bias = bias.reshape(B, C)
    mask = c["mask"]
    if mask is not None and h["by_source"]:
        mask = mask.reshape(B, C)
    fwd = torch.ops.ugr.weighted_sisdr_fwd(
        est, ref, mix, torch.tensor(alpha, dtype=torch.float64), bias, mask, bool(h["by_source"]),
        bool(h["pit"]), bool(h["zero_mean"]), eps, clamp_db)
    gl = torch.tensor(grad_loss, dtype=torch.float64 if h["gl_f64"] else torch.float32)
    gs = c["gs"]
    gsi = c["gsi"].float() if c["gsi"] is not None else None

    def bwd(perm, coef):
        return torch.ops.ugr.weighted_sisdr_bwd(gl, gs, gsi, est, ref, perm, coef)

    return fwd, bwd


def _assert_close_scaled(got, want, rtol, what):
    """|got - want| <= rtol * max|want| over finite values; non-finite ones equal."""
    got, want = got.double(), want.double()
    ok = torch.isfinite(want)
    assert torch.equal(torch.isnan(got), torch.isnan(want)), what
    assert torch.equal(got[~ok & ~torch.isnan(want)], want[~ok & ~torch.isnan(want)]), what
    scale = want[ok].abs().max().item() if ok.any() else 0.0
    err = (got[ok] - want[ok]).abs().max().item() if ok.any() else 0.0
    assert err <= rtol * scale + 1e-300, f"{what}: max error {err:.3e} vs scale {scale:.3e}"


def _check_oracle(c, got, tag):
    """SI-SDR(i) of the emulated kernels against the textbook float64 reference on the
    same (dtype-rounded) values: within 0.01 dB (0.5 dB where the values are denormal or
    at the eps ceiling, as in tests/test_hardening.py); a DC offset leaves the gradient
    zero-mean over time."""
    import ugr_kernels as uk
    h = c["header"]
    dt = _DTYPES[h["dtype"]]
    est, ref = c["est"].to(dt).double(), c["ref"].to(dt).double()
    mix = c["mix"].to(dt).double() if c["mix"] is not None else None
    eps, clamp_db, _, _ = c["params"]
    want = uk.weighted_sisdr(est, ref, mixture=mix, backend="reference", eps=eps)
    loose = c["oracle"] in ("amplitude 1e-41", "exact multiple")
    tol = 0.5 if loose else 0.01
    for name in ("sisdr", "sisdri") if mix is not None else ("sisdr",):
        err = (got[name] - getattr(want, name).double()).abs().max().item()
        assert err <= tol, f"{c['oracle']}: {name} off the float64 oracle by {err:.3g} dB: {tag}"
    if c["oracle"] == "exact multiple":
        assert bool((got["sisdr"] > 115).all()), tag
    if c["oracle"].startswith("DC"):
        d = got["d_est"]
        assert d.sum(-1).abs().max().item() <= 1e-4 * d.abs().max().item(), tag


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or clang++) on PATH")
def test_fused_cuda_kernels_match_cpu_op_under_emulation(tmp_path):
    if not _cpu_op_ready():
        pytest.skip("the compiled extension (CPU kernels of the fused ops) is not built")
    exe = tmp_path / "check_fused"
    build = subprocess.run([*_EMU_FLAGS, f"-I{HERE}",
                            str(HERE / "check_fused.cc"), "-o", str(exe)],
                           capture_output=True, text=True)
    if build.returncode != 0 and "barrier" in build.stderr:
        pytest.skip("the C++ compiler lacks C++20 <barrier>")
    assert build.returncode == 0, build.stderr[-3000:]
    cases = _fused_cases()
    _write_cases(tmp_path / "in.bin", cases)
    run = subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    for i, (c, got) in enumerate(zip(cases, _read_outputs(tmp_path / "out.bin", cases))):
        h = c["header"]
        tag = f"case {i} {h}"
        f64 = h["dtype"] == 0
        fwd, bwd = _cpu_reference(c)
        loss, sisdr, sisdri, weights, perm, valid, coef = fwd
        rtol = 1e-9 if f64 else 2e-6
        # Near the SI-SDR ceiling (the 60-90 dB and exact-multiple cases) d SI-SDR / d sxy
        # and the weights amplify the ~1e-14 relative error of the float-float sums by
        # 1 / (1 - rho^2) (up to 1e9, 1e12 at eps): checked against the CPU op at 1e-3 /
        # 3e-2 there, and the SI-SDR itself against the float64 oracle (_check_oracle).
        # Denormal inputs (1e-41): the float-float products of the fp32 backward lose the
        # bits below 2^-149, a few % of d est (the SI-SDR stays within 0.5 dB, as required
        # of every backend by tests/test_hardening.py).
        loose = {"60 dB": 1e-3, "80 dB": 1e-3, "90 dB": 1e-3, "exact multiple": 3e-2,
                 "amplitude 1e-41": 5e-2}.get(c.get("oracle"), 0.0)
        assert torch.equal(got["perm"].long(), perm), tag
        assert torch.equal(got["valid"].bool(), valid), tag
        assert torch.equal(got["coef"][..., 5:], coef[..., 5:]), tag      # gates, flags
        for name, want in (("loss", loss), ("sisdr", sisdr), ("sisdri", sisdri),
                           ("weights", weights)):
            tol = max(rtol, loose)
            torch.testing.assert_close(got[name], want.double(), rtol=tol, atol=tol,
                                       equal_nan=True, msg=f"{name}: {tag}")
        for slot in range(5):
            _assert_close_scaled(got["coef"][..., slot], coef[..., slot], max(1e-8, loose),
                                 f"coef[{slot}]: {tag}")
        # The backward: end to end, and on the emulated coefficients (its arithmetic alone).
        d_tol = max(loose, {0: 1e-9, 1: 2e-6, 2: 2 ** -7, 3: 2 ** -10}[h["dtype"]])
        _assert_close_scaled(got["d_est"], bwd(perm, coef), d_tol, f"d_est: {tag}")
        own = bwd(got["perm"].long(), got["coef"])
        _assert_close_scaled(got["d_est"], own,
                             max(loose, {0: 1e-12, 1: 2e-7, 2: 2 ** -8, 3: 2 ** -11}[h["dtype"]]),
                             f"d_est (emulated coef): {tag}")
        if "oracle" in c:                          # the hardening list: float64 oracle
            _check_oracle(c, got, tag)
        zero_rows = (coef[..., 1] == 0) & (coef[..., 2] == 0)
        if zero_rows.any():                       # masked items: exactly 0 (never 0 * NaN)
            b_idx, j_idx = zero_rows.nonzero(as_tuple=True)
            rows = perm[b_idx, j_idx]
            assert (got["d_est"][b_idx, rows] == 0).all(), tag

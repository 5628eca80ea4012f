"""CPU benchmark: forward+backward of the weighted PIT SI-SDR loss.

    pytest bench/bench_loss.py --benchmark-only --benchmark-columns=mean,stddev,rounds \
        --benchmark-json bench/results/cpu.json

Rows (each a full forward + backward w.r.t. the estimates, float32 inputs):
  ugr-cpp        ugr_kernels.weighted_sisdr, C++/OpenMP backend (the fused path: one op
                 forward, one op backward, epilogue in C++)
  ugr-cpp-2pass  the same with the fused path off (ugr_kernels.fused.disabled()): the two
                 C++ passes and the torch epilogue with its autograd graph
  ugr-torch      same API, pure-torch statistics backend
  eager          the textbook loss as users write it: pairwise SI-SDR over T in float32
                 with autograd, exhaustive PIT, mean (ugr_kernels.pairwise_sisdr + pit_best_perm)
  compiled       torch.compile of ``eager``
  torchmetrics   permutation_invariant_training(scale_invariant_signal_distortion_ratio)
  fast_bss_eval  fast_bss_eval.si_sdr_pit_loss
  floor          reading est and ref once (est.sum() + ref.sum()): the memory floor
Plus the weighting overhead: ugr-cpp with alpha=0.1 and a bias vs the plain mean loss,
and ``test_fused_rows``: fused vs two-pass vs floor at B4-C2-T16 (the fixed per-call
cost), B4-C2-T8000 and B64-C2-T64000 (a short run of its own, see bench/README.md):

    pytest bench/bench_loss.py --benchmark-only -k fused_rows \
        --benchmark-json bench/results/cpu-loss-fused.json
"""
import pytest
import torch

import ugr_kernels as uk
from ugr_kernels import backends, fused

SHAPES = [(b, c, t) for b in (4, 16, 64) for c in (2, 4) for t in (8000, 32000, 64000)]
HAS_CPP = backends.is_available("cpp", "cpu")


def _inputs(b, c, t):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(b, c, t, generator=g)
    est = (ref + 0.5 * torch.randn(b, c, t, generator=g)).requires_grad_(True)
    return est, ref


def eager_loss(est, ref):
    pair, valid = uk.pairwise_sisdr(est, ref)
    perm = uk.pit_best_perm(pair, valid)
    return -pair.gather(1, perm.unsqueeze(1)).mean()


_compiled = {}


def compiled_loss(est, ref):
    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(eager_loss, fullgraph=True)
    return _compiled["fn"](est, ref)


def torchmetrics_loss(est, ref):
    from torchmetrics.functional.audio import (
        permutation_invariant_training,
        scale_invariant_signal_distortion_ratio,
    )
    best, _ = permutation_invariant_training(est, ref, scale_invariant_signal_distortion_ratio,
                                             mode="speaker-wise", eval_func="max")
    return -best.mean()


def fast_bss_eval_loss(est, ref):
    import fast_bss_eval
    return fast_bss_eval.si_sdr_pit_loss(est, ref, zero_mean=True).mean()


IMPLS = {
    "ugr-cpp": lambda e, r: uk.weighted_sisdr(e, r, backend="cpp", check_finite=False).loss,
    "ugr-cpp-2pass": lambda e, r: _two_pass(e, r),
    "ugr-torch": lambda e, r: uk.weighted_sisdr(e, r, backend="torch", check_finite=False).loss,
    "eager": eager_loss,
    "compiled": compiled_loss,
    "torchmetrics": torchmetrics_loss,
    "fast_bss_eval": fast_bss_eval_loss,
}


def _two_pass(est, ref):
    with fused.disabled():
        return uk.weighted_sisdr(est, ref, backend="cpp", check_finite=False).loss


def _skip_if_missing(name):
    if name.startswith("ugr-cpp") and not HAS_CPP:
        pytest.skip("ugr_kernels._C not built")
    if name == "torchmetrics":
        pytest.importorskip("torchmetrics")
    if name == "fast_bss_eval":
        pytest.importorskip("fast_bss_eval")


def _fwd_bwd(fn, est, ref):
    def run():
        est.grad = None
        fn(est, ref).backward()
    return run


def _rounds(b, c, t):
    return 10 if b * c * t >= 64 * 2 * 32000 else 15


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-C{}-T{}".format(*s))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_fwd_bwd(benchmark, impl, shape):
    _skip_if_missing(impl)
    est, ref = _inputs(*shape)
    benchmark.group = "B{}-C{}-T{}".format(*shape)
    benchmark.extra_info.update(impl=impl, shape=list(shape))
    benchmark.pedantic(_fwd_bwd(IMPLS[impl], est, ref), rounds=_rounds(*shape),
                       iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-C{}-T{}".format(*s))
def test_floor_read_once(benchmark, shape):
    est, ref = _inputs(*shape)
    est = est.detach()
    benchmark.group = "B{}-C{}-T{}".format(*shape)
    benchmark.extra_info.update(impl="floor", shape=list(shape))
    benchmark.pedantic(lambda: (est.sum() + ref.sum()).item(), rounds=_rounds(*shape),
                       iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("weighted", [False, True], ids=["plain-mean", "alpha0.1+bias"])
def test_weighting_overhead(benchmark, weighted):
    if not HAS_CPP:
        pytest.skip("ugr_kernels._C not built")
    est, ref = _inputs(16, 2, 32000)
    mix = ref.sum(1)
    bias = torch.randn(16, 2)
    kw = dict(alpha=0.1, bias=bias) if weighted else {}
    fn = lambda e, r: uk.weighted_sisdr(e, r, mixture=mix, backend="cpp",  # noqa: E731
                                        check_finite=False, **kw).loss
    benchmark.group = "weighting-overhead B16-C2-T32000"
    benchmark.extra_info.update(impl="ugr-cpp weighted" if weighted else "ugr-cpp plain",
                                shape=[16, 2, 32000])
    benchmark.pedantic(_fwd_bwd(fn, est, ref), rounds=20, iterations=1, warmup_rounds=2)


FUSED_SHAPES = [(4, 2, 16), (4, 2, 8000), (64, 2, 64000)]


@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=lambda s: "B{}-C{}-T{}".format(*s))
@pytest.mark.parametrize("impl", ["floor", "ugr-cpp", "ugr-cpp-2pass"])
def test_fused_rows(benchmark, impl, shape):
    """The fused C++ path against the two-pass path and the read-once floor."""
    _skip_if_missing(impl)
    est, ref = _inputs(*shape)
    benchmark.group = "fused B{}-C{}-T{}".format(*shape)
    benchmark.extra_info.update(impl=impl, shape=list(shape))
    if impl == "floor":
        e = est.detach()
        fn = lambda: (e.sum() + ref.sum()).item()  # noqa: E731
    else:
        fn = _fwd_bwd(IMPLS[impl], est, ref)
    tiny = shape[2] < 1000
    benchmark.pedantic(fn, rounds=300 if tiny else _rounds(*shape) + 5, iterations=1,
                       warmup_rounds=20 if tiny else 2)

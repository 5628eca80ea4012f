"""GPU benchmark: forward+backward of the (weighted) PIT SI-SDR loss.

Run on a CUDA machine (skipped otherwise)::

    pytest bench/bench_gpu.py --benchmark-only --benchmark-json bench_gpu.json

Rows: our backends (triton, cuda, torch), the textbook float64 ``reference``
and its ``torch.compile``, the peers when importable (torchmetrics PIT + SI-SDR,
fast_bss_eval, Asteroid), and a device-to-device copy of est+ref as the bandwidth
yardstick. Bytes counted: forward reads est and ref, backward reads est and ref and
writes d est, i.e. 5 * B*C*T * itemsize for a step (the copy: 4 * B*C*T * itemsize,
reading and writing both tensors). ``extra_info`` holds GB/s, bytes, backend,
shape and dtype; ``bench/gpu_report.py`` turns the JSON into a table.

Grid: our backends and the copy on B in {16, 64, 256}, C in {2, 4},
T in {32000, 64000}, fp32 and bf16; the slow rows (reference, compiled reference,
peers) on a smaller grid unless ``UGR_BENCH_FULL=1``. ``UGR_BENCH_ROUNDS`` sets the
timed rounds (default 20). Without pytest-benchmark a minimal stand-in fixture
times the same functions and writes a compatible JSON to ``$UGR_BENCH_JSON``.
"""
import importlib
import itertools
import json
import os
import statistics
import time

import pytest
import torch

import ugr_kernels as uk
from ugr_kernels import backends

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False)")

FULL = os.environ.get("UGR_BENCH_FULL") == "1"
ROUNDS = int(os.environ.get("UGR_BENCH_ROUNDS", "20"))
WARMUP = 3

BATCHES, SOURCES, LENGTHS = (16, 64, 256), (2, 4), (32000, 64000)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GRID = list(itertools.product(BATCHES, SOURCES, LENGTHS, DTYPES))
SLOW_GRID = GRID if FULL else [(b, c, 32000, "fp32") for b in (16, 64) for c in (2, 4)]


def _ids(grid):
    return [f"B{b}-C{c}-T{t}-{d}" for b, c, t, d in grid]


def _has_module(name):
    try:
        importlib.import_module(name)
        return True
    except Exception:
        return False


def _cuda_backend_ready():
    return backends.is_available("cuda", "cuda")


def _fast_backends():
    if not torch.cuda.is_available():
        return ["triton", "cuda", "torch"]          # collected, then skipped
    names = []
    if backends.is_available("triton", "cuda"):
        names.append("triton")
    if _cuda_backend_ready():
        names.append("cuda")
    names.append("torch")
    return names


# ---------------------------------------------------------------- inputs and timing

_INPUTS = {}


def _inputs(b, c, t, dtype_name):
    key = (b, c, t, dtype_name)
    if key not in _INPUTS:
        _INPUTS.clear()                                  # keep one shape resident
        torch.cuda.empty_cache()
        g = torch.Generator(device="cuda").manual_seed(0)
        ref = torch.randn(b, c, t, device="cuda", generator=g)
        est = ref.roll(1, dims=1) + 0.3 * torch.randn(b, c, t, device="cuda", generator=g)
        dtype = DTYPES[dtype_name]
        _INPUTS[key] = (est.to(dtype).requires_grad_(True), ref.to(dtype))
    return _INPUTS[key]


def _step(loss_fn, est, ref):
    est.grad = None
    loss = loss_fn(est, ref)
    loss.backward()
    torch.cuda.synchronize()


def _record(benchmark, *, backend, shape, dtype_name, nbytes, fn, what="fwd+bwd"):
    benchmark.extra_info.update(backend=backend, shape=list(shape), dtype=dtype_name,
                                bytes=int(nbytes), what=what,
                                device=torch.cuda.get_device_name())
    for _ in range(WARMUP):
        fn()
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    mean = _mean_seconds(benchmark)
    if mean:
        benchmark.extra_info["gbps"] = nbytes / mean / 1e9
        benchmark.extra_info["mean_ms"] = mean * 1e3


def _mean_seconds(benchmark):
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return None
    inner = getattr(stats, "stats", stats)              # pytest-benchmark: Metadata.stats
    mean = getattr(inner, "mean", None)
    if mean is None and isinstance(inner, dict):
        mean = inner.get("mean")
    return mean


def _step_bytes(b, c, t, dtype_name):
    return 5 * b * c * t * torch.empty((), dtype=DTYPES[dtype_name]).element_size()


# ---------------------------------------------------------------- our backends


@pytest.mark.parametrize("shape", GRID, ids=_ids(GRID))
@pytest.mark.parametrize("backend", _fast_backends())
def test_ugr_backend(benchmark, backend, shape):
    b, c, t, dtype_name = shape
    benchmark.group = f"B{b}-C{c}-T{t}-{dtype_name}"
    est, ref = _inputs(b, c, t, dtype_name)

    def loss_fn(e, r):
        return uk.weighted_sisdr(e, r, backend=backend, check_finite=False).loss

    _record(benchmark, backend=backend, shape=(b, c, t), dtype_name=dtype_name,
            nbytes=_step_bytes(b, c, t, dtype_name), fn=lambda: _step(loss_fn, est, ref))


@pytest.mark.parametrize("shape", GRID, ids=_ids(GRID))
def test_copy_bandwidth(benchmark, shape):
    b, c, t, dtype_name = shape
    benchmark.group = f"B{b}-C{c}-T{t}-{dtype_name}"
    est, ref = _inputs(b, c, t, dtype_name)
    src = torch.stack([est.detach(), ref])
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
        torch.cuda.synchronize()

    _record(benchmark, backend="copy", shape=(b, c, t), dtype_name=dtype_name,
            nbytes=2 * src.numel() * src.element_size(), fn=copy, what="d2d copy est+ref")


WEIGHT_GRID = [(16, 2, 32000, "fp32"), (64, 2, 32000, "fp32"), (64, 4, 64000, "bf16")]


@pytest.mark.parametrize("weighting", ["alpha0", "alpha0.1+bias"])
@pytest.mark.parametrize("shape", WEIGHT_GRID, ids=_ids(WEIGHT_GRID))
def test_weighting_overhead(benchmark, shape, weighting):
    b, c, t, dtype_name = shape
    backend = backends.resolve("auto", "cuda")
    benchmark.group = f"weighting B{b}-C{c}-T{t}-{dtype_name}"
    est, ref = _inputs(b, c, t, dtype_name)
    bias = torch.linspace(-1.0, 1.0, b, device="cuda").unsqueeze(1)
    if weighting == "alpha0":
        kwargs = dict(alpha=0.0)
    else:
        kwargs = dict(alpha=0.1, bias=bias)

    def loss_fn(e, r):
        return uk.weighted_sisdr(e, r, backend=backend, check_finite=False, **kwargs).loss

    _record(benchmark, backend=f"{backend} {weighting}", shape=(b, c, t),
            dtype_name=dtype_name, nbytes=_step_bytes(b, c, t, dtype_name),
            fn=lambda: _step(loss_fn, est, ref), what="weighting overhead")


VARIANT_GRID = [(16, 2, 32000, "fp32"), (64, 2, 64000, "fp32"), (64, 4, 64000, "bf16")]


@pytest.mark.parametrize("variant", ["fused", "2pass-fp64", "2pass-fp32acc"])
@pytest.mark.parametrize("shape", VARIANT_GRID, ids=_ids(VARIANT_GRID))
def test_triton_fusion_and_precision_cost(benchmark, shape, variant):
    """What the fused epilogue saves and what float64 accumulation costs (issues 8, 13).

    fused: the default Triton path (3 launches, float64 tile sums); 2pass-fp64: the two
    Triton passes with the torch epilogue (``ugr_kernels.fused.disabled()``); 2pass-fp32acc:
    the same with the old fp32 tile sums (``ACCUMULATE_F64 = False``: wrong above ~50 dB,
    measured only to price the fix).
    """
    if not backends.is_available("triton", "cuda"):
        pytest.skip("triton is not available")
    from ugr_kernels import fused
    tb = backends.get_backend("triton")
    b, c, t, dtype_name = shape
    benchmark.group = f"triton variants B{b}-C{c}-T{t}-{dtype_name}"
    est, ref = _inputs(b, c, t, dtype_name)

    def loss_fn(e, r):
        return uk.weighted_sisdr(e, r, backend="triton", check_finite=False).loss

    before = tb.ACCUMULATE_F64
    tb.ACCUMULATE_F64 = variant != "2pass-fp32acc"
    try:
        if variant == "fused":
            fn = lambda: _step(loss_fn, est, ref)  # noqa: E731
        else:
            def fn():
                with fused.disabled():
                    _step(loss_fn, est, ref)
        _record(benchmark, backend=f"triton {variant}", shape=(b, c, t), dtype_name=dtype_name,
                nbytes=_step_bytes(b, c, t, dtype_name), fn=fn, what="fusion / precision")
    finally:
        tb.ACCUMULATE_F64 = before


# ---------------------------------------------------------------- reference and peers

def _reference_loss(e, r):
    return uk.weighted_sisdr(e, r, backend="reference", check_finite=False).loss


_COMPILED = {}


def _compiled_reference():
    if "ref" not in _COMPILED:
        _COMPILED["ref"] = torch.compile(
            lambda e, r: uk.weighted_sisdr(e, r, backend="reference").loss)
    return _COMPILED["ref"]


def _torchmetrics_loss():
    from torchmetrics.functional.audio import (
        permutation_invariant_training,
        scale_invariant_signal_distortion_ratio,
    )

    def loss(e, r):
        best, _ = permutation_invariant_training(e, r, scale_invariant_signal_distortion_ratio,
                                                 mode="speaker-wise", eval_func="max",
                                                 zero_mean=True)
        return -best.mean()
    return loss


def _torchmetrics_module_loss():
    from torchmetrics.audio import PermutationInvariantTraining
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio
    metric = PermutationInvariantTraining(scale_invariant_signal_distortion_ratio,
                                          mode="speaker-wise", eval_func="max",
                                          zero_mean=True).cuda()

    def loss(e, r):
        value = -metric(e, r)
        metric.reset()
        return value
    return loss


def _fast_bss_eval_loss():
    import fast_bss_eval

    def loss(e, r):
        return fast_bss_eval.si_sdr_pit_loss(e, r, zero_mean=True).mean()
    return loss


def _asteroid_loss():
    from asteroid.losses import PITLossWrapper, pairwise_neg_sisdr
    wrapper = PITLossWrapper(pairwise_neg_sisdr, pit_from="pw_mtx")

    def loss(e, r):
        return wrapper(e, r)
    return loss


SLOW = {
    "reference": (None, lambda: _reference_loss),
    "reference+compile": (None, _compiled_reference),
    "torchmetrics-pit": ("torchmetrics", _torchmetrics_loss),
    "torchmetrics-PIT-module": ("torchmetrics", _torchmetrics_module_loss),
    "fast_bss_eval": ("fast_bss_eval", _fast_bss_eval_loss),
    "asteroid": ("asteroid", _asteroid_loss),
}


@pytest.mark.parametrize("shape", SLOW_GRID, ids=_ids(SLOW_GRID))
@pytest.mark.parametrize("name", list(SLOW))
def test_reference_and_peers(benchmark, name, shape):
    module, factory = SLOW[name]
    if module is not None and not _has_module(module):
        pytest.skip(f"{module} is not installed")
    b, c, t, dtype_name = shape
    benchmark.group = f"B{b}-C{c}-T{t}-{dtype_name}"
    est, ref = _inputs(b, c, t, dtype_name)
    loss_fn = factory()
    try:
        _step(loss_fn, est, ref)
    except Exception as exc:  # a peer that cannot run this shape/dtype is reported, not fatal
        pytest.skip(f"{name} failed on this input: {type(exc).__name__}: {exc}")
    _record(benchmark, backend=name, shape=(b, c, t), dtype_name=dtype_name,
            nbytes=_step_bytes(b, c, t, dtype_name), fn=lambda: _step(loss_fn, est, ref))


# ---------------------------------------------------------------- stand-in fixture

if not _has_module("pytest_benchmark"):
    _RESULTS = []

    class _Stats:
        def __init__(self, times):
            self.mean = statistics.fmean(times)
            self.min, self.max = min(times), max(times)
            self.median = statistics.median(times)
            self.stddev = statistics.pstdev(times)
            self.rounds = len(times)

    class _StandInBenchmark:
        def __init__(self, name):
            self.name, self.group, self.extra_info, self.stats = name, None, {}, None

        def pedantic(self, fn, args=(), kwargs=None, rounds=1, iterations=1,
                     warmup_rounds=0, setup=None):
            kwargs = kwargs or {}
            for _ in range(warmup_rounds):
                fn(*args, **kwargs)
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                for _ in range(iterations):
                    fn(*args, **kwargs)
                times.append((time.perf_counter() - start) / iterations)
            self.stats = _Stats(times)

        def __call__(self, fn, *args, **kwargs):
            return self.pedantic(fn, args, kwargs, rounds=ROUNDS)

    @pytest.fixture
    def benchmark(request):
        bench = _StandInBenchmark(request.node.name)
        yield bench
        if bench.stats is not None:
            s = bench.stats
            _RESULTS.append(dict(
                name=bench.name, fullname=request.node.nodeid, group=bench.group,
                stats=dict(mean=s.mean, min=s.min, max=s.max, median=s.median,
                           stddev=s.stddev, rounds=s.rounds),
                extra_info=bench.extra_info))

    @pytest.fixture(scope="module", autouse=True)
    def _write_stand_in_json():
        yield
        path = os.environ.get("UGR_BENCH_JSON")
        if path and _RESULTS:
            with open(path, "w") as fh:
                json.dump({"machine_info": {"note": "pytest-benchmark stand-in"},
                           "benchmarks": _RESULTS}, fh, indent=1)

"""ugr_kernels/checks.py: argument checks, and no hidden host-to-device copy (issue 16, item 5).

There is no GPU here: fake CUDA tensors (``FakeTensorMode``) stand in for CUDA signals.
"""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import ugr_kernels as uk
from ugr_kernels import checks


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls.append((str(func), getattr(out, "device", None)))
        return out


@pytest.fixture
def fake_cuda():
    with FakeTensorMode(allow_non_fake_inputs=True):
        est = torch.randn(2, 2, 100, device="cuda")
        yield est, torch.randn(2, 2, 100, device="cuda")


@pytest.mark.parametrize("name, value", [
    ("alpha", lambda: torch.tensor(0.3)),
    ("alpha", lambda: torch.tensor([0.3], dtype=torch.float64)),
    ("bias", lambda: torch.tensor(0.5)),
    ("bias", lambda: torch.zeros(1, 1)),
    ("mask", lambda: torch.ones(1, dtype=torch.bool)),
])
def test_cpu_argument_with_cuda_signals_is_an_error_naming_it(fake_cuda, name, value):
    est, ref = fake_cuda
    with pytest.raises(ValueError, match=rf"^{name} must be on cuda:0 like est, got cpu "
                                         r"\(moving it would be a blocking host-to-device"):
        uk.weighted_sisdr(est, ref, check_finite=False, **{name: value()})


def test_python_float_alpha_is_a_fill_on_the_device(fake_cuda):
    est, _ = fake_cuda
    with _Ops() as ops:
        alpha = checks.alpha_tensor(0.25, est.device)
    assert alpha.device == est.device and alpha.dtype == torch.float64 and alpha.dim() == 0
    assert ops.calls == [("aten.full.default", est.device)]


def test_device_arguments_pass_without_copies(fake_cuda):
    est, _ = fake_cuda
    alpha = torch.tensor(0.1, dtype=torch.float64, device="cuda")
    bias = torch.zeros(2, 1, dtype=torch.float64, device="cuda")
    mask = torch.ones(2, 2, dtype=torch.bool, device="cuda")
    with _Ops() as ops:
        a = checks.alpha_tensor(alpha, est.device)
        b = checks.item_tensor("bias", bias, (2, 2), torch.float64, est.device)
        m = checks.item_tensor("mask", mask, (2, 2), torch.bool, est.device)
    assert a is alpha and m is mask and b.shape == (2, 2)
    assert [name for name, _ in ops.calls if name.startswith("aten.")] == ["aten.expand.default"]


def test_item_shapes():
    assert checks.item_tensor("bias", torch.ones(3, 1), (3,), torch.float64, "cpu").shape == (3,)
    assert checks.item_tensor("mask", torch.ones(2), (3, 2), torch.bool, "cpu").dtype == torch.bool
    for bad, items in ((torch.ones(3, 3), (3, 2)), (torch.ones(3, 2), (3,)),
                       (torch.ones(1, 3, 2), (3, 2))):
        with pytest.raises(ValueError, match="^bias must be broadcastable"):
            checks.item_tensor("bias", bad, items, torch.float64, "cpu")
    with pytest.raises(ValueError, match="^mask must be a torch.Tensor"):
        checks.item_tensor("mask", [True], (3,), torch.bool, "cpu")


def test_alpha_kinds():
    assert checks.alpha_tensor(torch.tensor([2]), "cpu").dtype == torch.float64
    for bad in (True, "0.1", None):
        with pytest.raises(ValueError, match="^alpha must be a number"):
            checks.alpha_tensor(bad, "cpu")
    with pytest.raises(ValueError, match="^alpha must be a number or a 0-d tensor"):
        checks.alpha_tensor(torch.zeros(2), "cpu")


def test_non_finite_names_the_first_bad_argument():
    checks.raise_if_non_finite(("est", "ref"), torch.tensor([False, False]))
    with pytest.raises(ValueError, match="^ref contains NaN"):
        checks.raise_if_non_finite(("est", "ref", "bias"), torch.tensor([False, True, True]))
    with pytest.raises(ValueError, match="^bias contains NaN or inf values: every score F"):
        checks.raise_if_non_finite(("est", "bias"), torch.tensor([False, True]))

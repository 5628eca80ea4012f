"""The banded-GEMM mask layer (model.mask_conv) against the paper's nn.Conv2d.

Every comparison builds an ``nn.Conv2d(1, S, (N + 1, 1), padding=(N // 2, 0))``
from the same weight and bias and checks outputs, input gradients and weight /
bias gradients, for several N, S and frame counts in float32 and float64.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import BandedMaskConv, build_model, toeplitz_band


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _band_by_loop(weight):
    """The definition, entry by entry: T[s, i, j] = w[s, j - i + N/2] if in range."""
    s, n = weight.shape[0], weight.shape[2] - 1
    w = weight.reshape(s, n + 1)
    band = torch.zeros(s, n, n, dtype=weight.dtype)
    for i in range(n):
        for j in range(n):
            k = j - i + n // 2
            if 0 <= k <= n:
                band[:, i, j] = w[:, k]
    return band


@pytest.mark.parametrize("n, s", [(2, 1), (4, 2), (10, 3), (32, 2)])
def test_toeplitz_band_matches_its_definition(n, s):
    w = torch.randn(s, 1, n + 1, 1, dtype=torch.float64)
    band = toeplitz_band(w)
    assert band.shape == (s, n, n) and band.is_contiguous()
    assert torch.equal(band, _band_by_loop(w))


def _conv_twin(layer):
    conv = nn.Conv2d(1, layer.out_channels, layer.kernel_size, padding=layer.padding,
                     dtype=layer.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(layer.weight)
        conv.bias.copy_(layer.bias)
    return conv


def _forward_backward(module, x, grad_out):
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = module(x)
    out.backward(grad_out)
    return out.detach(), x.grad, module.weight.grad, module.bias.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, s, batch, frames", [
    (2, 1, 1, 1), (6, 2, 2, 7), (16, 3, 3, 33), (64, 2, 2, 50), (128, 1, 1, 17),
    (512, 2, 2, 40),
])
def test_matches_conv2d_values_and_gradients(dtype, n, s, batch, frames):
    layer = BandedMaskConv(n, s).to(dtype)
    with torch.no_grad():  # a non-zero bias so that its gradient path is exercised
        layer.bias.normal_()
    conv = _conv_twin(layer)
    x = torch.randn(batch, 1, n, frames, dtype=dtype)
    grad_out = torch.randn(batch, s, n, frames, dtype=dtype)
    got = _forward_backward(layer, x, grad_out)
    want = _forward_backward(conv, x, grad_out)
    assert got[0].shape == want[0].shape == (batch, s, n, frames)
    # fp32: sums of up to N + 1 (forward, input grad) or batch * frames * N
    # (weight grad) terms of O(1) products, rounding grows with the sum length.
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-4, rtol=1e-4)
    for name, a, b in zip(("output", "grad x", "grad weight", "grad bias"), got, want):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a / scale, b / scale, msg=name, **tol)


def test_gradcheck_float64():
    layer = BandedMaskConv(6, 2).double()
    x = torch.randn(2, 1, 6, 3, dtype=torch.float64, requires_grad=True)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)

    def functional(x, w, b):
        s, n = w.shape[0], w.shape[2] - 1
        out = torch.matmul(toeplitz_band(w).reshape(s * n, n), x.squeeze(1))
        return out.unflatten(1, (s, n)) + b.view(s, 1, 1)

    assert torch.autograd.gradcheck(functional, (x, w, b))
    assert torch.autograd.gradgradcheck(functional, (x, w, b))
    # ... and the functional form is what the module computes, and equals the conv.
    torch.testing.assert_close(layer(x), functional(x, w, b), atol=0, rtol=0)
    torch.testing.assert_close(functional(x, w, b), F.conv2d(x, w, b, padding=(3, 0)))


def test_conv2d_formulation_is_kept_and_switchable():
    layer = BandedMaskConv(8, 2, gemm=False)
    x = torch.randn(2, 1, 8, 5)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, layer.bias, padding=(4, 0)),
                               atol=0, rtol=0)
    layer.gemm = True
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, layer.bias, padding=(4, 0)),
                               atol=1e-5, rtol=1e-5)
    assert "gemm=True" in repr(layer)
    with pytest.raises(ValueError):
        BandedMaskConv(7, 2)


def test_state_dict_layout_and_round_trip():
    """Paper layout in the state_dict; checkpoints of the nn.Conv2d model load unchanged."""
    model = build_model("sudormrf-tiny", num_sources=3)
    sd = model.state_dict()
    assert sd["mask_conv.weight"].shape == (3, 1, 129, 1)
    assert sd["mask_conv.bias"].shape == (3,)
    assert isinstance(model.mask_conv, nn.Conv2d)

    # A checkpoint written before the change: the same model with a plain nn.Conv2d.
    old = build_model("sudormrf-tiny", num_sources=3)
    old.mask_conv = nn.Conv2d(1, 3, (129, 1), padding=(64, 0))
    old_sd = old.state_dict()
    assert {k: v.shape for k, v in old_sd.items()} == {k: v.shape for k, v in sd.items()}
    new = build_model("sudormrf-tiny", num_sources=3)
    new.load_state_dict(old_sd)  # strict
    x = torch.randn(2, 700)
    with torch.no_grad():
        torch.testing.assert_close(new.eval()(x), old.eval()(x), atol=1e-5, rtol=1e-5)
    # And back: the new model's state_dict loads into the old one and equals it.
    old2 = build_model("sudormrf-tiny", num_sources=3, mask_gemm=False)
    old2.load_state_dict(new.state_dict())
    for k, v in new.state_dict().items():
        assert torch.equal(old2.state_dict()[k], v), k


@pytest.mark.parametrize("num_sources", [1, 2, 3])
def test_model_gemm_equals_conv2d_formulation(num_sources):
    """The whole model, forward and every parameter gradient, in both formulations."""
    torch.manual_seed(1)
    gemm = build_model("sudormrf-tiny", num_sources=num_sources).double()
    conv = build_model("sudormrf-tiny", num_sources=num_sources, mask_gemm=False).double()
    conv.load_state_dict(gemm.state_dict())
    x = torch.randn(2, 900, dtype=torch.float64)
    out_g, out_c = gemm(x), conv(x)
    torch.testing.assert_close(out_g, out_c, atol=1e-10, rtol=1e-10)
    out_g.pow(2).mean().backward()
    out_c.pow(2).mean().backward()
    grads_c = dict(conv.named_parameters())
    for name, p in gemm.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads_c[name].grad, atol=1e-10, rtol=1e-8,
                                       msg=name)


def test_improved_variant_has_no_banded_layer():
    model = build_model("sudormrf-tiny", variant="improved")
    assert not isinstance(model.mask_conv, BandedMaskConv)


def test_torch_compile_fullgraph_forward_and_backward():
    layer = BandedMaskConv(16, 2)
    x = torch.randn(2, 1, 16, 9, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True)
    out_c = compiled(x)
    gx_c, gw_c = torch.autograd.grad(out_c.square().sum(), (x, layer.weight))
    out_e = layer(x)
    gx_e, gw_e = torch.autograd.grad(out_e.square().sum(), (x, layer.weight))
    torch.testing.assert_close(out_c, out_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx_c, gx_e, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gw_c, gw_e, atol=1e-4, rtol=1e-4)

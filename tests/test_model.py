"""Tests for the SuDoRM-RF model package (CPU, tiny inputs)."""

import pytest
import torch

from model import MODEL_CONFIGS, SuDORMRF, build_model, count_parameters


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- parameter counts (no forward pass) ------------------------------------

@pytest.mark.parametrize(
    "name, expected",
    [
        ("sudormrf-1.0x", 2_662_022),
        ("sudormrf-0.5x", 1_414_790),
        ("sudormrf-0.25x", 791_174),
    ],
)
def test_original_param_counts_exact(name, expected):
    assert count_parameters(build_model(name, num_sources=2)) == expected


def test_original_parity_norm_is_frozen_and_optional():
    model = build_model("sudormrf-0.25x")
    # The only frozen parameters are the reference's unused GroupNorm(512).
    assert count_parameters(model) - count_parameters(model, trainable_only=True) == 1024
    lean = build_model("sudormrf-0.25x", reference_param_parity=False)
    assert count_parameters(lean) == 791_174 - 1024


def test_improved_param_count_near_5_02m():
    n = count_parameters(build_model("sudormrf-improved", num_sources=2))
    assert abs(n - 5.02e6) / 5.02e6 < 0.01
    assert n == 5_016_353


def test_tiny_is_small():
    assert count_parameters(build_model("sudormrf-tiny")) < 300_000


def test_configs_and_errors():
    assert set(MODEL_CONFIGS) >= {
        "sudormrf-1.0x", "sudormrf-0.5x", "sudormrf-0.25x", "sudormrf-improved", "sudormrf-tiny",
    }
    with pytest.raises(ValueError):
        build_model("nope")
    with pytest.raises(ValueError):
        SuDORMRF(variant="bogus")
    with pytest.raises(ValueError):
        SuDORMRF(enc_kernel=20)


# --- forward behaviour on the tiny config -----------------------------------

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("sudormrf-tiny", num_sources=2).eval()


@pytest.mark.parametrize("length", [1, 7, 8000 + 3])
def test_output_length_matches_input(tiny, length):
    with torch.no_grad():
        y = tiny(torch.randn(2, length))
    assert y.shape == (2, 2, length)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("variant", ["original", "improved"])
def test_both_input_layouts_agree(variant):
    model = build_model("sudormrf-tiny", num_sources=3, variant=variant).eval()
    x = torch.randn(2, 321)
    with torch.no_grad():
        y2 = model(x)
        y3 = model(x.unsqueeze(1))
    assert y2.shape == (2, 3, 321)
    torch.testing.assert_close(y2, y3)


def test_batch_items_independent(tiny):
    # All norms are per example, so an item's output must not depend on its batch mates.
    x = torch.randn(3, 500)
    with torch.no_grad():
        full = tiny(x)
        single = tiny(x[1:2])
    torch.testing.assert_close(full[1:2], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(100,), (2, 2, 100), (1, 1, 1, 100)])
def test_wrong_rank_or_channels_raises(tiny, shape):
    with pytest.raises(ValueError):
        tiny(torch.randn(*shape))


def test_gradients_flow():
    model = build_model("sudormrf-tiny").train()
    x = torch.randn(2, 400)
    model(x).pow(2).mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
        else:
            assert name.startswith("unused_mask_input_norm")
    assert model.encoder.weight.grad.abs().sum() > 0
    assert model.blocks[0].expand.weight.grad.abs().sum() > 0


def test_original_masks_sum_to_one(tiny):
    with torch.no_grad():
        y, masks = tiny(torch.randn(2, 999), return_masks=True)
    assert masks.shape[:3] == (2, 2, 128)
    assert (masks >= 0).all()
    torch.testing.assert_close(masks.sum(dim=1), torch.ones_like(masks[:, 0]))


def test_improved_masks_are_relu():
    model = build_model("sudormrf-tiny", variant="improved").eval()
    with torch.no_grad():
        y, masks = model(torch.randn(2, 999), return_masks=True)
    assert y.shape == (2, 2, 999)
    assert (masks >= 0).all()
    assert (masks == 0).any()  # ReLU, not a softmax


def test_torch_compile_fullgraph_matches_eager(tiny):
    x = torch.randn(1, 333)
    compiled = torch.compile(tiny, fullgraph=True)
    with torch.no_grad():
        eager = tiny(x)
        comp = compiled(x)
    torch.testing.assert_close(comp, eager, atol=1e-4, rtol=1e-4)

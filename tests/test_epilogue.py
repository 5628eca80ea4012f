"""ugr_kernels/epilogue.py: one torch epilogue for the two-pass path, the fused path's
process-group tail and the unfused baseline (train/run/unfused.py)."""
import pytest
import torch

import ugr_kernels as uk
from train.run.unfused import unfused_weighted_sisdr
from ugr_kernels import epilogue
from ugr_kernels.reference import pairwise_sisdr


def _batch(seed=0, b=4, c=3, t=600):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(b, c, t, generator=g, dtype=torch.float64)
    est = ref.flip(1) + 0.4 * torch.randn(b, c, t, generator=g, dtype=torch.float64)
    est[1, 2] = 0.0                                   # a silent estimate: masked item
    return est, ref, ref.sum(1)


@pytest.mark.parametrize("granularity", ["source", "example"])
@pytest.mark.parametrize("with_mix", [False, True])
def test_unfused_baseline_and_weighted_sisdr_share_the_epilogue(granularity, with_mix):
    est, ref, mix = _batch()
    mix = mix if with_mix else None
    bias = torch.linspace(-1.0, 1.0, 4, dtype=torch.float64)
    bias = bias[:, None].expand(4, 3) if granularity == "source" else bias
    got = unfused_weighted_sisdr(est, ref, mix, alpha=0.2, bias=bias, granularity=granularity)
    want = uk.weighted_sisdr(est, ref, mixture=mix, alpha=0.2, bias=bias,
                             granularity=granularity, backend="reference")
    for field in ("loss", "sisdr", "sisdri", "weights", "mask"):
        g, w = getattr(got, field), getattr(want, field)
        if w is None:
            assert g is None
        else:
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    assert not bool(got.mask[1].all())


def test_user_mask_keeps_sisdri_like_the_fused_op():
    est, ref, mix = _batch(1)
    pair, valid = pairwise_sisdr(est, ref)
    mpair, mvalid = pairwise_sisdr(mix[:, None], ref)
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[0, 1] = False
    out = epilogue.weighted_pit_loss(pair, valid, mpair[:, 0], mvalid[:, 0], alpha=0.1,
                                     mask=mask)
    assert not out.mask[0, 1] and out.sisdr[0, 1] == 0 and out.sisdri[0, 1] != 0
    assert out.weights[0, 1] == 0
    assert torch.isclose(out.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    if uk.backends.is_available("cpp", "cpu"):
        fused = uk.weighted_sisdr(est, ref, mixture=mix, alpha=0.1, mask=mask, backend="cpp")
        for field in ("loss", "sisdr", "sisdri", "weights", "mask"):
            torch.testing.assert_close(getattr(fused, field), getattr(out, field))

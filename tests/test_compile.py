"""torch.compile(fullgraph=True) traces around the custom ops and matches eager."""
import pytest
import torch

import ugr_kernels as uk
from ugr_kernels import backends

BACKENDS = [b for b in ("torch", "cpp") if backends.is_available(b, "cpu")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_loss_and_gradient_match_eager(backend):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 2, 1000, generator=g)
    mix = ref.sum(1)
    est = (ref.flip(1) + 0.5 * torch.randn(3, 2, 1000, generator=g)).requires_grad_(True)
    alpha = torch.tensor(0.2)

    def step(e, r, m, a):
        out = uk.weighted_sisdr(e, r, mixture=m, alpha=a, backend=backend)
        return out.loss, out.sisdri, out.weights

    compiled = torch.compile(step, fullgraph=True)
    loss_c, sisdri_c, w_c = compiled(est, ref, mix, alpha)
    (grad_c,) = torch.autograd.grad(loss_c, est)
    loss_e, sisdri_e, w_e = step(est, ref, mix, alpha)
    (grad_e,) = torch.autograd.grad(loss_e, est)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sisdri_c, sisdri_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w_c, w_e)
    torch.testing.assert_close(grad_c, grad_e, rtol=1e-4, atol=1e-7)


def test_custom_op_schema_is_sound():
    x, y = torch.randn(2, 2, 50), torch.randn(2, 2, 50)
    torch.library.opcheck(torch.ops.ugr.sufficient_stats, (x, y, True, "torch"))
    outs = torch.ops.ugr.sufficient_stats(x, y, True, "torch")
    args = (x, y, outs[0], outs[1], torch.randn(2, 2, 2, dtype=torch.float64),
            torch.randn(2, 2, dtype=torch.float64), "torch")
    torch.library.opcheck(torch.ops.ugr.stats_backward, args)

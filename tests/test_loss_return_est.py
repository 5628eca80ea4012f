"""``WeightedSISDRLoss(...)(est, ref, return_est=True)`` returns ``(loss, reordered_est)``
as Asteroid's ``PITLossWrapper`` does: the estimates put in the order of the references."""
import torch

import ugr_kernels as uk


def test_return_est_gives_the_loss_and_the_estimates_in_reference_order():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4, 3, 2000, generator=g)
    order = torch.tensor([[2, 0, 1], [1, 2, 0], [0, 1, 2], [2, 1, 0]])
    # est[b, i] is a noisy copy of ref[b, order[b, i]]: shuffled sources.
    est = ref.gather(1, order[..., None].expand_as(ref)) + 0.1 * torch.randn(4, 3, 2000,
                                                                             generator=g)
    est.requires_grad_(True)
    criterion = uk.WeightedSISDRLoss(uk.Robust(0.1))
    loss, reordered = criterion(est, ref, ref.sum(1), return_est=True)
    assert torch.equal(loss, criterion(est, ref, ref.sum(1)))
    assert reordered.shape == est.shape
    # Each reordered estimate is the one made from its reference.
    inverse = order.argsort(1)
    expected = est.detach().gather(1, inverse[..., None].expand_as(est))
    assert torch.equal(reordered.detach(), expected)
    # ... and it scores the same without PIT as the PIT result did.
    result = criterion(est, ref, return_result=True)
    again = uk.weighted_sisdr(reordered.detach(), ref, pit=False)
    torch.testing.assert_close(again.sisdr, result.sisdr)
    # The gradient flows through both outputs to est.
    (loss + reordered.sum()).backward()
    assert est.grad is not None and torch.isfinite(est.grad).all()
    # With return_result as well: (result, reordered).
    both = criterion(est, ref, return_result=True, return_est=True)
    assert isinstance(both[0], uk.WeightedSISDRResult) and torch.equal(both[1], reordered)

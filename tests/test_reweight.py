"""reweight: UGR for any per-item loss — weights, gradient identity, masking, classes,
the global pmf over 2 gloo ranks, bad input; and that weighted_sisdr shares its tail."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ugr_kernels as uk


def losses_of(params, x):
    """A per-item loss that is not SI-SDR: squared error of a linear model, (B,)."""
    return ((x @ params) ** 2).sum(-1)


def per_item_grads(params, x):
    return torch.stack([torch.autograd.grad(losses_of(params, x)[i], params)[0]
                        for i in range(x.shape[0])])


@pytest.mark.parametrize("weighting, alpha", [(None, 0.0), (0.3, 0.3), (uk.Robust(0.3), 0.3),
                                              (uk.Curriculum(uk.Constant(-0.5)), -0.5)])
def test_weights_equal_an_independent_softmax(weighting, alpha):
    losses = torch.tensor([0.5, 2.0, -1.0, 4.0], dtype=torch.float64)
    out = uk.reweight(losses, weighting)
    want = torch.exp(alpha * losses) / torch.exp(alpha * losses).sum()
    torch.testing.assert_close(out.weights, want)
    torch.testing.assert_close(out.loss, (want * losses).sum())
    assert not out.weights.requires_grad and out.mask.all()


def test_gradient_is_the_weighted_sum_of_item_gradients():
    torch.manual_seed(0)
    params = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, dtype=torch.float64)
    out = uk.reweight(losses_of(params, x), uk.Robust(0.2))
    (grad,) = torch.autograd.grad(out.loss, params)
    want = (out.weights[:, None, None] * per_item_grads(params, x)).sum(0)
    torch.testing.assert_close(grad, want)
    # Not the gradient through the weights: tilting makes that one differ.
    item = losses_of(params, x)
    (through_p,) = torch.autograd.grad((torch.softmax(0.2 * item, 0) * item).sum(), params)
    assert not torch.allclose(grad, through_p)


def test_schedules_read_step_and_epoch():
    losses = torch.tensor([1.0, 3.0])
    w = uk.Curriculum(uk.Linear(-1.0, 0.0, 10))
    early = uk.reweight(losses, w, step=0).weights
    late = uk.reweight(losses, w, step=10).weights
    assert early[0] > early[1]
    torch.testing.assert_close(late, torch.tensor([0.5, 0.5]))
    temp = uk.Robust(uk.InverseTemperature())   # alpha = 1 / max(2, 20 - (epoch + 1))
    torch.testing.assert_close(uk.reweight(losses, temp, epoch=0).weights,
                               torch.softmax(losses / 19, 0))


def test_masked_and_non_finite_items_get_zero_weight_and_exactly_zero_gradient():
    losses = torch.tensor([1.0, float("nan"), 2.0, float("inf"), 5.0], requires_grad=True)
    mask = torch.tensor([True, True, True, True, False])
    out = uk.reweight(losses, 0.5, mask=mask)
    assert out.mask.tolist() == [True, False, True, False, False]
    want = torch.softmax(torch.tensor([0.5, 1.0]), 0)
    torch.testing.assert_close(out.weights[[0, 2]], want)
    assert out.weights[[1, 3, 4]].eq(0).all() and torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.equal(losses.grad, torch.tensor([want[0], 0.0, want[1], 0.0, 0.0]))


def test_all_masked_gives_zero_loss_not_nan():
    losses = torch.tensor([1.0, 2.0], requires_grad=True)
    out = uk.reweight(losses, 0.1, mask=torch.tensor([False, False]))
    assert out.loss.item() == 0.0 and out.weights.eq(0).all()


def test_class_bias_uses_labels_shaped_like_the_items():
    losses = torch.zeros(2, 2)                       # (B, C) per-source losses
    labels = torch.tensor([[0, 1], [1, 1]])
    w = uk.ClassBias({"speech": math.log(3.0)}, class_names=["speech", "env"])
    out = uk.reweight(losses, w, labels=labels)
    torch.testing.assert_close(out.weights, torch.tensor([[3.0, 1.0], [1.0, 1.0]]) / 6)
    combined = uk.reweight(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), uk.Robust(1.0) + w,
                           labels=labels)
    f = torch.tensor([[math.log(3.0), 1.0], [0.0, 0.0]])
    torch.testing.assert_close(combined.weights, torch.softmax(f.flatten(), 0).reshape(2, 2))
    with pytest.raises(ValueError, match="labels"):
        uk.reweight(losses, w)


def test_half_precision_losses_are_weighted_in_float32():
    losses = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16, requires_grad=True)
    out = uk.reweight(losses, 1.0)
    assert out.loss.dtype == torch.float32 and out.weights.dtype == torch.float32
    out.loss.backward()
    assert losses.grad.dtype == torch.bfloat16


def test_a_classifier_cross_entropy():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    ce = torch.nn.functional.cross_entropy(net(x), y, reduction="none")
    out = uk.reweight(ce, uk.Robust(1.0))
    torch.testing.assert_close(out.weights, torch.softmax(ce.detach(), 0))
    out.loss.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()


@pytest.mark.parametrize("call, name", [
    (lambda: uk.reweight(torch.tensor(1.0)), "item_losses"),
    (lambda: uk.reweight([1.0, 2.0]), "item_losses"),
    (lambda: uk.reweight(torch.tensor([1, 2])), "item_losses"),
    (lambda: uk.reweight(torch.ones(4), mask=torch.ones(3, dtype=torch.bool)), "mask"),
    (lambda: uk.reweight(torch.ones(4, 2), uk.ClassBias({0: 1.0}), labels=torch.zeros(3, 2,
                                                                                   dtype=torch.long)),
     "labels"),
    (lambda: uk.reweight(torch.ones(4), float("nan")), "alpha"),
    (lambda: uk.reweight(torch.ones(4), uk.Robust(float("inf"))), "alpha"),
    (lambda: uk.reweight(torch.ones(4), "robust"), "weighting"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_weighted_sisdr_loss_accepts_a_float_alpha_like_reweight():
    torch.manual_seed(0)
    est, ref = torch.randn(3, 2, 400, dtype=torch.float64), torch.randn(3, 2, 400,
                                                                         dtype=torch.float64)
    a = uk.WeightedSISDRLoss(0.2, backend="torch")(est, ref, return_result=True)
    b = uk.WeightedSISDRLoss(uk.Robust(0.2), backend="torch")(est, ref, return_result=True)
    torch.testing.assert_close(a.weights, b.weights)
    # weighted_sisdr's tail is reweight on its item losses.
    again = uk.reweight(-a.sisdr, 0.2)
    torch.testing.assert_close(again.weights, a.weights)
    torch.testing.assert_close(again.loss, a.loss)
    with pytest.raises(ValueError, match="alpha"):
        uk.WeightedSISDRLoss(float("nan"))(est, ref)


# ------------------------------------------------------------------ 2 gloo ranks
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, params0, xs, masks, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        params = params0.clone().requires_grad_(True)
        res = uk.reweight(losses_of(params, xs[rank]), uk.Robust(0.3), mask=masks[rank],
                          process_group=dist.group.WORLD)
        res.loss.backward()
        grad = params.grad.clone()
        dist.all_reduce(grad)          # what DDP does: the mean over ranks
        out[rank] = (res.weights, grad / world, res.loss.detach())
    finally:
        dist.destroy_process_group()


def test_global_pmf_over_two_gloo_ranks_equals_one_process_on_the_global_batch():
    torch.manual_seed(1)
    params0 = torch.randn(3, 2, dtype=torch.float64)
    xs = torch.randn(2, 4, 3, dtype=torch.float64)
    xs[1, 0] *= 4                   # the hardest item (largest F) lives on rank 1 only
    masks = torch.ones(2, 4, dtype=torch.bool)
    masks[0, 1] = False
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), params0, xs, masks, out), nprocs=2, join=True)

    params = params0.clone().requires_grad_(True)
    single = uk.reweight(losses_of(params, xs.reshape(8, 3)), uk.Robust(0.3),
                         mask=masks.reshape(8))
    single.loss.backward()
    weights = torch.cat([out[0][0], out[1][0]])
    torch.testing.assert_close(weights, single.weights)
    assert weights.sum().item() == pytest.approx(1.0)
    for r in range(2):
        torch.testing.assert_close(out[r][1], params.grad)
    # Each rank's loss is its share of the global loss times the world size.
    torch.testing.assert_close((out[0][2] + out[1][2]) / 2, single.loss.detach())

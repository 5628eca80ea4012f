"""softmax_pmf: stability, masking, and the global pmf across processes."""
import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ugr_kernels import softmax_pmf


def test_equals_softmax_and_sums_to_one():
    f = torch.randn(5, 3, dtype=torch.float64)
    p = softmax_pmf(f)
    torch.testing.assert_close(p, torch.softmax(f.flatten(), 0).reshape(5, 3))


def test_stable_for_huge_scores():
    p = softmax_pmf(torch.tensor([1e4, 1e4 - 1.0, -1e4], dtype=torch.float64))
    assert torch.isfinite(p).all()
    assert math.isclose(p[0] / p[1], math.e, rel_tol=1e-12) and p[2] == 0


def test_mask_and_non_finite_scores_take_no_part():
    f = torch.tensor([0.0, float("nan"), float("inf"), 1.0, 50.0])
    mask = torch.tensor([True, True, True, True, False])
    p = softmax_pmf(f, mask)
    assert p[1] == 0 and p[2] == 0 and p[4] == 0
    torch.testing.assert_close(p[[0, 3]], torch.softmax(torch.tensor([0.0, 1.0]), 0))


def test_all_masked_gives_zeros():
    p = softmax_pmf(torch.randn(4), torch.zeros(4, dtype=torch.bool))
    assert (p == 0).all()


def test_detached():
    f = torch.randn(4, requires_grad=True)
    assert not softmax_pmf(f).requires_grad


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, scores, masks, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        p = softmax_pmf(scores[rank], masks[rank], process_group=dist.group.WORLD)
        out[rank] = p
    finally:
        dist.destroy_process_group()


def test_global_pmf_across_two_processes_equals_one_process():
    torch.manual_seed(0)
    scores = torch.randn(2, 6, dtype=torch.float64) * 3
    scores[1, 0] = 40.0   # the global max lives on rank 1 only
    masks = torch.ones(2, 6, dtype=torch.bool)
    masks[0, 2] = False
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), scores, masks, out), nprocs=2, join=True)
    want = softmax_pmf(scores.flatten(), masks.flatten()).reshape(2, 6)
    torch.testing.assert_close(torch.stack([out[0], out[1]]), want)

"""CPU benchmark: PIT on a (B, C, C) SI-SDR matrix, B = 16, float64 (what weighted_sisdr feeds it).

    pytest bench/bench_pit.py --benchmark-only --benchmark-columns=median,min,rounds \
        --benchmark-json bench/results/cpu-pit.json

Rows:
  exhaustive     ugr_kernels.pit_best_perm's exhaustive search over the C! permutations
                 (forced for C = 7, 8 by raising MAX_PIT_SOURCES for the run)
  solver         ugr_kernels.pit.best_assignment, the batched on-device Hungarian
  host-hungarian what torchmetrics / asteroid-style PIT does for many sources: copy to the
                 host (``.cpu()``, a device sync on a GPU), scipy linear_sum_assignment per
                 example, copy the permutation back
C = 2..8: exhaustive vs solver (the crossover). C = 8, 12, 16: solver vs host Hungarian.
"""
import pytest
import torch

from ugr_kernels import pit
from ugr_kernels.pit import best_assignment

BATCH = 16


def _scores(c, seed=0):
    """SI-SDR-like matrix: one good estimate per reference (~+15 dB), the rest ~-10 dB."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(BATCH, c, c, generator=g, dtype=torch.float64) * 3 - 10
    p = torch.stack([torch.randperm(c, generator=g) for _ in range(BATCH)])
    return s.scatter_add(1, p.unsqueeze(1), torch.full((BATCH, 1, c), 25.0, dtype=torch.float64))


def host_hungarian(score):
    from scipy.optimize import linear_sum_assignment
    host = score.detach().cpu().numpy()
    perms = []
    for m in host:
        rows, cols = linear_sum_assignment(m, maximize=True)   # rows: estimates, cols: refs
        perm = [0] * m.shape[0]
        for r, c in zip(rows, cols):
            perm[c] = r
        perms.append(perm)
    return torch.tensor(perms, dtype=torch.long).to(score.device)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _synced(fn, device):
    if device == "cpu":
        return fn
    def run(score):
        out = fn(score)
        torch.cuda.synchronize()
        return out
    return run


def _graphed(fn, score):
    """Capture fn(score) in a CUDA graph once; the timed call is a replay."""
    static = score.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(static)

    def run(_):
        graph.replay()
        torch.cuda.synchronize()
        return out
    return run


def _run(benchmark, impl, c, fn, rounds, device="cpu"):
    score = _scores(c).to(device)
    if impl.endswith("cudagraph"):
        fn = _graphed(fn, score)
    else:
        fn = _synced(fn, device)
    benchmark.group = f"pit {device} B{BATCH}-C{c}"
    benchmark.extra_info.update(impl=impl, shape=[BATCH, c, c], device=device)
    perm = benchmark.pedantic(lambda: fn(score), rounds=rounds, iterations=1, warmup_rounds=2)
    want = score.gather(1, host_hungarian(score).unsqueeze(1)).sum()
    assert torch.allclose(score.gather(1, perm.unsqueeze(1)).sum(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", range(2, 9))
def test_exhaustive(benchmark, monkeypatch, c, device):
    monkeypatch.setattr(pit, "MAX_PIT_SOURCES", 8)
    _run(benchmark, "exhaustive", c, pit.pit_best_perm, 15 if c < 8 else 7, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", [2, 3, 4, 5, 6, 7, 8, 12, 16])
def test_solver(benchmark, c, device):
    _run(benchmark, "solver", c, best_assignment, 15, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", [8, 12, 16])
def test_host_hungarian(benchmark, c, device):
    pytest.importorskip("scipy")
    _run(benchmark, "host-hungarian", c, host_hungarian, 15, device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("c", [4, 6, 8, 12, 16])
def test_solver_cudagraph(benchmark, c):
    _run(benchmark, "solver-cudagraph", c, best_assignment, 30, "cuda")

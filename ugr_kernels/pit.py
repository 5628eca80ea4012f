"""Permutation-invariant training (PIT): which estimate goes with which reference.

For a (B, C, C) score matrix ``pair[b, i, j]`` (estimate i against reference j) PIT
picks per example the permutation

    perm[b] = argmax over permutations  sum_j pair[b, perm[b, j], j]

(``perm[b, j]``: the estimate assigned to reference j; invalid entries count 0).

- ``pit_best_perm``: exhaustive over the C! rows of ``permutation_table`` for
  C <= ``MAX_PIT_SOURCES``, the exact solver ``best_assignment`` beyond.
- ``identity_perm``: estimate i for reference i (``pit=False``).

Every function runs on the tensors' device with no host sync, can be captured in
a CUDA graph and traced by ``torch.compile(fullgraph=True)``. The backends (the
fused Triton kernels take the permutation table) import this module; it imports
nothing of ugr_kernels.

The solver, ``best_assignment(score, valid)``, solves the problem above for every
example of a batch at once (``score`` is ``pair``). Algorithm: the shortest-
augmenting-path Hungarian method (Jonker–Volgenant / Crouse 2016, the algorithm
behind ``scipy.optimize.linear_sum_assignment``) with row and column potentials in
float64, vectorised over the batch. References are the rows, estimates the columns,
the cost is ``-score``. Rows are added one at a time; adding row k (k rows already
matched) is a Dijkstra search over reduced costs that scans one new column per step
and stops at the first free column. At most k columns are matched, so it needs at
most k + 1 steps: the loop runs **exactly k + 1 steps for row k**, C (C + 1) / 2
Dijkstra steps in total, each a handful of torch ops on (B, C) tensors; an example
that already reached a free column points its search at a padding row of +inf costs,
so its later steps change nothing (distances, path, sink and dual step stay frozen).
The augmenting path (at most k + 1 columns) is then collected by pointer doubling in
ceil(log2(k + 1)) steps and the potentials are updated as in Crouse's method. The
iteration count depends on C only, never on the data, so there is no host sync (no
``.item()``, no ``nonzero``, no boolean indexing, no data-dependent Python branch),
the whole solve runs on the tensors' device, can be captured in a CUDA graph and
traced by ``torch.compile(fullgraph=True)``. Ties are broken by ``min`` taking the
first minimum, so results are deterministic (an all-equal matrix gives the
identity).

Cost: C (C + 1) / 2 Dijkstra steps of ~13 small kernels each, plus O(C log C)
for the path walks: 793 non-view ops for C = 8, 1541 for C = 12, 2513 for C = 16,
8689 for C = 32, O(B C^3) arithmetic. Exhaustive search (``pit_best_perm``)
is one gather over the C! permutations (``(B, C!, C)`` elements) and wins for small C.

Measured (``OMP_NUM_THREADS=1 pytest bench/bench_pit.py --benchmark-only``, B = 16,
float64, shared 2-core AMD EPYC CPU, torch 2.13, medians; see ``bench/README.md``):
exhaustive 0.25 ms vs solver 1.5 ms at C = 6, **1.8 ms vs 1.9 ms at C = 7 (the
crossover)**, 93 ms vs 2.2–6.4 ms (min–median) at C = 8 (C! blows up). Hence exhaustive for
C <= 6 (``MAX_PIT_SOURCES``), this solver above. On the CPU the host Hungarian
(scipy per example, 0.06–0.09 ms for C = 8..16) is 40–120x faster than this
op-by-op solver, because a CPU has no sync to avoid and each torch op costs
microseconds of dispatch; the point of this solver is the device: no sync, no
host round trip, CUDA-graph capturable and ``torch.compile``-traceable.
"""
from __future__ import annotations

import itertools
from typing import Optional

import torch
from torch import Tensor

# Exhaustive search for C <= MAX_PIT_SOURCES, the exact batched solver above. Measured
# crossover (bench/bench_pit.py, B=16, 2-core CPU): C = 7, where both take ~1.8 ms;
# exhaustive is 6x faster at C = 6, the solver 15-40x faster at C = 8 (C! = 40320
# permutations: 90 ms).
MAX_PIT_SOURCES = 6

_PERM_CACHE: dict = {}


def permutation_table(n_src: int, device) -> Tensor:
    """All n_src! permutations as a (P, n_src) int64 tensor on ``device``, in
    lexicographic order (cached per device; built afresh while compiling, where it
    becomes a constant of the graph)."""
    if torch.compiler.is_compiling():
        return torch.tensor(list(itertools.permutations(range(n_src))), dtype=torch.long,
                            device=device)
    key = (n_src, str(device))
    if key not in _PERM_CACHE:
        _PERM_CACHE[key] = torch.tensor(list(itertools.permutations(range(n_src))),
                                        dtype=torch.long, device=device)
    return _PERM_CACHE[key]


def pit_best_perm(pair: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """PIT on a (B, C, C) score matrix ``pair[b, i, j]`` (estimate i, reference j).

    Exhaustive search over the C! permutations for C <= ``MAX_PIT_SOURCES``; beyond,
    the exact batched assignment solver ``best_assignment`` (same optimum; ties may
    resolve to a different permutation of equal total).

    Returns ``perm`` (B, C) int64 with ``perm[b, j]`` the estimate for reference j that
    maximises ``sum_j pair[b, perm[b, j], j]``; invalid entries count as 0. All on the
    device, no host sync (ties resolve to the first permutation in lexicographic order).
    """
    batch, n_src = pair.shape[0], pair.shape[1]
    if n_src > MAX_PIT_SOURCES:
        return best_assignment(pair, valid)
    scores = pair.detach()
    if valid is not None:
        scores = torch.where(valid, scores, torch.zeros_like(scores))
    table = permutation_table(n_src, pair.device)                      # (P, C)
    cols = torch.arange(n_src, device=pair.device)
    flat_index = (table * n_src + cols).reshape(-1)                     # row-major (i, j)
    per_perm = scores.reshape(batch, n_src * n_src)[:, flat_index]
    total = per_perm.reshape(batch, -1, n_src).sum(-1)                  # (B, P)
    return table[total.argmax(dim=1)]


def identity_perm(batch: int, n_src: int, device) -> Tensor:
    """(B, C) int64 ``perm[b, j] = j``: estimate j for reference j (no PIT)."""
    return torch.arange(n_src, device=device).expand(batch, n_src).contiguous()


def best_assignment(score: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """Exact maximum-score assignment for a batch of square score matrices.

    Args:
        score: (B, C, C) float tensor, ``score[b, i, j]`` the score of estimate i
            for reference j. Must be finite where valid (invalid entries are
            replaced by 0 before solving).
        valid: optional (B, C, C) bool, False entries count as score 0.

    Returns:
        perm: (B, C) int64 on ``score.device``, ``perm[b, j]`` the estimate assigned
        to reference j, maximising ``sum_j score[b, perm[b, j], j]``.

    Exact up to float64 rounding of the potentials (the same guarantee as
    ``scipy.optimize.linear_sum_assignment``). Runs C (C + 1) / 2 fixed Dijkstra
    steps and C pointer-doubling path walks, every one vectorised over the batch,
    with no host synchronisation. Measured crossover with exhaustive search on a
    2-core CPU (B = 16): C = 7 (1.8 vs 1.9 ms); exhaustive stays faster for C <= 6,
    this solver is 15x faster at C = 8 (see ``bench/README.md``).
    """
    if score.dim() != 3 or score.shape[1] != score.shape[2]:
        raise ValueError(f"score must have shape (B, C, C), got {tuple(score.shape)}")
    batch, n = score.shape[0], score.shape[1]
    device = score.device
    s = score.detach().to(torch.float64)
    if valid is not None:
        s = torch.where(valid, s, torch.zeros_like(s))
    # rows = references, columns = estimates, minimise cost = -score
    cost = -s.transpose(1, 2)                                           # (B, n_ref, n_est)

    f64, i64 = dict(dtype=torch.float64, device=device), dict(dtype=torch.long, device=device)
    dummy = n                          # padded index meaning "no row" / "no column"
    cols = torch.arange(n, device=device)
    batch_idx = torch.arange(batch, device=device).unsqueeze(1)          # (B, 1)
    inf = torch.full((), float("inf"), **f64)
    inf_row = inf.expand(batch, 1, n)                                    # cost row of `dummy`
    zero_col = torch.zeros(batch, 1, **f64)
    dummy_col = torch.full((batch, 1), dummy, **i64)
    u = torch.zeros(batch, n + 1, **f64)          # row potentials (u[dummy] unused)
    v = torch.zeros(batch, n, **f64)              # column potentials
    row4col = torch.full((batch, n + 1), dummy, **i64)   # column -> matched row
    col4row = torch.full((batch, n + 1), dummy, **i64)   # row -> matched column

    for cur in range(n):
        # Dijkstra from row `cur` over reduced costs: exactly cur + 1 steps. A search that
        # reached a free column (the sink) sets row = dummy, whose reduced costs are +inf,
        # so its later steps change nothing but `open_` (not used after the search).
        reduced = torch.cat([cost - u[:, :n, None] - v[:, None, :], inf_row], 1)  # (B, n+1, n)
        spc = torch.full((batch, n), float("inf"), **f64)   # shortest path cost per column
        path = torch.full((batch, n), cur, **i64)            # row the best path came from
        open_ = torch.ones(batch, n, dtype=torch.bool, device=device)  # not yet scanned
        row = torch.full((batch, 1), cur, **i64)
        min_val = torch.zeros(batch, 1, **f64)
        sink = dummy_col
        for _ in range(cur + 1):
            dist = reduced[batch_idx, row].squeeze(1) + min_val          # (B, n)
            better = (dist < spc) & open_
            spc = torch.where(better, dist, spc)
            path = torch.where(better, row, path)
            lowest, col = torch.where(open_, spc, inf).min(dim=1, keepdim=True)
            owner = row4col.gather(1, col)                                # dummy if free
            done = row == dummy
            sink = torch.where(done, sink, col)
            min_val = torch.where(done, min_val, lowest)
            row = owner.masked_fill(done, dummy)
            open_ = open_.scatter(1, col, False)

        # Dual update (Crouse 2016): scanned columns have spc <= min_val, the others
        # spc >= min_val, so the clamp selects exactly the scanned ones.
        delta = torch.clamp(min_val - spc, min=0.0)                     # (B, n)
        v = v - delta
        u = u + torch.cat([delta, zero_col], 1).gather(1, col4row)
        u[:, cur] += min_val.squeeze(1)

        # Augment: the path is sink, nxt[sink], nxt[nxt[sink]], ... (at most cur + 1
        # columns), nxt[j] = old column of the row j was reached from (dummy for `cur`).
        # Collect it by pointer doubling: ceil(log2(cur + 1)) levels.
        jump = torch.cat([col4row.gather(1, path), dummy_col], 1)        # (B, n+1)
        points = sink
        for _ in range(max(cur, 1).bit_length()):
            points = torch.cat([points, jump.gather(1, points)], 1)
            jump = jump.gather(1, jump)
        on_path = torch.zeros(batch, n + 1, dtype=torch.bool, device=device) \
            .scatter(1, points, True)[:, :n]
        row4col = torch.cat([torch.where(on_path, path, row4col[:, :n]), dummy_col], 1)
        # col4row = inverse of row4col; free columns go to distinct spare slots n + j
        slot = torch.where(row4col[:, :n] == dummy, cols + n, row4col[:, :n])
        col4row = torch.full((batch, 2 * n), dummy, **i64).scatter(1, slot, cols.expand(batch, n))
        col4row = torch.cat([col4row[:, :n], dummy_col], 1)
    return col4row[:, :n].contiguous()

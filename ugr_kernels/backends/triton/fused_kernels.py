"""Triton kernels of the fused weighted PIT SI-SDR(i) (launch code in ``fused.py``).

Three launches per forward + backward, no host sync:

1. ``fused_tile_kernel``, grid (B, n_tiles): per (example, T-tile) the tile means and
   centred sums of the C estimate rows and the mixture row (one more "estimate",
   row C) against the C reference rows, accumulated in float64 (fp32 tile sums lose
   SI-SDR above ~50 dB and overflow/underflow at float32's range ends).
2. ``fused_epilogue_kernel``, grid (1,): one program walks the batch in a fixed
   order: Chan merge of the tile partials (float64), the SI-SDR matrix, exhaustive
   PIT over a permutation table, masks, F = alpha L + bias, the masked softmax over
   every item of the batch (online max/sum, then a normalising sweep), the loss and
   the per-estimate backward coefficients.
3. ``fused_backward_kernel``, grid (B, n_tiles): d est from those coefficients and
   the incoming gradients, in float64, cast once at the store.

Layouts (all float64)
    partials ``part[(b * n_tiles + tile) * NF + f]``, NF = 2 CE + 2 C + CE C with
    CE = C + HAS_MIX rows of "estimates": ``mean_x[CE] | mean_y[C] | sxx[CE] | syy[C]
    | sxy[CE*C]`` (row-major i, j), each centred on the tile's own means.
    workspace (after the partials, per example, WS = 8 QN + 2 C + 1, QN = CE C) in
    "pair space" q = i C + j: ``sdr | valid | a | c | mx_i | my_j | nf_i | nf_j``
    (nf: the row holds NaN/inf) then the item
    scores F and losses L (C slots, or 1 for example granularity) and the count of
    valid sources.
    coef ``coef[b, k, :]`` per *estimate* k (its reference is j = inv perm):
    ``j, w, v1, v0, a, c, mx_k, my_j, nf_est, nf_ref, nf_mix`` (``COEF_FIELDS``):
    w = d loss / d SI-SDR(k, j), v1 / v0 = 1 where the ``sisdr`` / ``sisdri`` output of
    reference j carries a gradient, a = d SI-SDR / d sxy[k, j], c = 2 d SI-SDR / d sxx[k],
    nf_* = 1 where est row k, ref row j, the example's mixture hold NaN/inf (what
    ``check_finite`` reads with one host sync).

No ``from __future__ import annotations``: the interpreter needs real ``tl.constexpr``
annotations. Loops over runtime bounds take a ``*_STATIC`` constexpr under the
interpreter (NumPy >= 2.4 cannot ``range`` over a scalar argument); 0 on a GPU.
"""

import triton
import triton.language as tl

from .kernels import narrow_from_f32, widen_f32

COEF_FIELDS = 10
#: float64 workspace words per (estimate row, reference) pair of the epilogue.
WORKSPACE_PER_PAIR = 8
_WPP = tl.constexpr(WORKSPACE_PER_PAIR)
_NCOEF = tl.constexpr(COEF_FIELDS)
_LOG10_SCALE = tl.constexpr(4.3429448190325175)   # 10 / ln(10): 10 log10(x) = _LOG10_SCALE * ln(x)


@triton.jit
def _widen(v, IN_F64: tl.constexpr):
    # fp16/bf16/fp32 -> fp32 (exact) -> fp64 (exact): a direct bf16 -> fp64 cast is
    # not lowered by every Triton version.
    if IN_F64:
        r = v.to(tl.float64)
    else:
        r = widen_f32(v).to(tl.float64)
    return r


@triton.jit
def _narrow(v, OUT_F64: tl.constexpr):
    if OUT_F64:
        r = v
    else:
        r = v.to(tl.float32)
    return r


@triton.jit
def _finite(v):
    return tl.abs(v) < float("inf")


@triton.jit
def _f64_from_bits(bits):
    # Python floats reach a kernel as fp32; eps and tau travel as their int64 bits.
    # (+ an int64 zero rather than .to(): a scalar argument may arrive as a constexpr)
    return (bits + tl.zeros([], tl.int64)).to(tl.float64, bitcast=True)


@triton.jit
def fused_tile_kernel(est_ptr, ref_ptr, mix_ptr, part_ptr, T, n_tiles,
                      C: tl.constexpr, CEP: tl.constexpr, HAS_MIX: tl.constexpr,
                      IN_F64: tl.constexpr, BLOCK_T: tl.constexpr):
    """Per (example, tile): float64 tile means and centred (co-)moments -> partials."""
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1).to(tl.int64)
    start = tile * BLOCK_T
    offs = start + tl.arange(0, BLOCK_T)
    tmask = offs < T
    nf = tl.minimum(T - start, BLOCK_T).to(tl.float64)

    CE: tl.constexpr = C + HAS_MIX
    NF: tl.constexpr = 2 * CE + 2 * C + CE * C
    OFF_SXX: tl.constexpr = CE + C
    OFF_SYY: tl.constexpr = 2 * CE + C
    OFF_SXY: tl.constexpr = 2 * CE + 2 * C

    ix = tl.arange(0, CEP)
    m_est = (ix < C)[:, None] & tmask[None, :]
    m_all = (ix < CE)[:, None] & tmask[None, :]
    x_rows = est_ptr + (b * C + ix.to(tl.int64))[:, None] * T + offs[None, :]
    xv = _widen(tl.load(x_rows, mask=m_est, other=0.0), IN_F64)
    if HAS_MIX:
        mv = _widen(tl.load(mix_ptr + b * T + offs, mask=tmask, other=0.0), IN_F64)
        xv = tl.where((ix == C)[:, None], mv[None, :], xv)
    # Corrected two-pass (Chan, Golub & LeVeque): centre on the rounded tile mean,
    # then fold the residual mean back in.
    mean_x = tl.sum(xv, axis=1) / nf
    xc = tl.where(m_all, xv - mean_x[:, None], 0.0)
    dx = tl.sum(xc, axis=1) / nf
    sxx = tl.sum(xc * xc, axis=1) - nf * dx * dx

    pbase = part_ptr + (b * n_tiles + tile) * NF
    rmask = ix < CE
    tl.store(pbase + ix, mean_x + dx, mask=rmask)
    tl.store(pbase + OFF_SXX + ix, sxx, mask=rmask)
    for j in tl.static_range(C):
        yv = _widen(tl.load(ref_ptr + (b * C + j) * T + offs, mask=tmask, other=0.0), IN_F64)
        mean_y = tl.sum(yv, axis=0) / nf
        yc = tl.where(tmask, yv - mean_y, 0.0)
        dy = tl.sum(yc, axis=0) / nf
        syy = tl.sum(yc * yc, axis=0) - nf * dy * dy
        sxy = tl.sum(xc * yc[None, :], axis=1) - nf * dx * dy
        tl.store(pbase + CE + j, mean_y + dy)
        tl.store(pbase + OFF_SYY + j, syy)
        tl.store(pbase + OFF_SXY + ix * C + j, sxy, mask=rmask)


# Runtime integers that must not specialize the compiled kernel (Triton would compile a
# variant for the value 1 and for multiples of 16): a new batch size, length, stride
# or flag then compiles nothing.
@triton.jit(do_not_specialize=["B", "T", "n_tiles", "has_bias", "bias_sb", "bias_sc",
                               "has_mask", "mask_sb", "mask_sc", "zero_mean", "eps_bits",
                               "tau_bits"])
def fused_item_kernel(
        part_ptr, work_ptr, item_ptr, alpha_ptr, bias_ptr, mask_ptr,
        sisdr_ptr, sisdri_ptr, perm_ptr, valid_ptr, coef_ptr,
        B, T, n_tiles, has_bias, bias_sb, bias_sc, has_mask, mask_sb, mask_sc, zero_mean,
        eps_bits, tau_bits,
        C: tl.constexpr, CP: tl.constexpr, HAS_MIX: tl.constexpr, QP: tl.constexpr,
        PIT: tl.constexpr, N_PERM: tl.constexpr, PB: tl.constexpr,
        BY_SOURCE: tl.constexpr, BLOCK_T: tl.constexpr, TC: tl.constexpr,
        NT_STATIC: tl.constexpr):
    """One example per program: merge, SI-SDR matrix, PIT, items, F and L, coef 1..9.

    Nothing here depends on the batch size: the program reads its example's tile
    partials and writes its example's outputs; the batch-wide softmax is left to
    ``fused_normalise_kernel``.
    """
    CE: tl.constexpr = C + HAS_MIX
    QN: tl.constexpr = CE * C
    NF: tl.constexpr = 2 * CE + 2 * C + CE * C
    OFF_SXX: tl.constexpr = CE + C
    OFF_SYY: tl.constexpr = 2 * CE + C
    OFF_SXY: tl.constexpr = 2 * CE + 2 * C
    W_SDR: tl.constexpr = 0
    W_VALID: tl.constexpr = QN
    W_A: tl.constexpr = 2 * QN
    W_C: tl.constexpr = 3 * QN
    W_MX: tl.constexpr = 4 * QN
    W_MY: tl.constexpr = 5 * QN
    W_NFX: tl.constexpr = 6 * QN
    W_NFY: tl.constexpr = 7 * QN
    WS: tl.constexpr = _WPP * QN
    NCF: tl.constexpr = _NCOEF

    b = tl.program_id(0).to(tl.int64)
    eps = _f64_from_bits(eps_bits)
    tau = _f64_from_bits(tau_bits)
    alpha = tl.load(alpha_ptr).to(tl.float64)
    inf = float("inf")
    n_total = T + tl.zeros([], tl.float64)
    # (runtime flags may arrive as constants: Triton specializes the integer 1)
    zero_mean = zero_mean + tl.zeros([], tl.int32)
    has_bias = has_bias + tl.zeros([], tl.int32)
    has_mask = has_mask + tl.zeros([], tl.int32)
    # One effective sample (T = 2 centred, T = 1 raw): every pair is collinear, the
    # SI-SDR a constant (rho = +-1) and its exact gradient 0 (not 1/eps x rounding).
    collinear = (T - zero_mean) <= 1

    # ---- 1. merge the tile partials in pair space q = i C + j ----------------------
    # Chan et al.'s k-way update in float64: the global means M = sum n_t m_t / N,
    # then S = sum_t [S_t + n_t (m_t - M)(m'_t - M')]; tiles in a fixed order.
    q = tl.arange(0, QP)
    qv = q < QN
    i_row = q // C
    j_col = q % C
    pbase = part_ptr + b * n_tiles * NF
    mean_x = tl.zeros([QP], dtype=tl.float64)
    mean_y = tl.zeros([QP], dtype=tl.float64)
    for t0 in range(0, NT_STATIC if NT_STATIC > 0 else n_tiles, TC):
        tiles = t0 + tl.arange(0, TC)
        tm = tiles < n_tiles
        nb = tl.where(tm, tl.minimum(T - tiles.to(tl.int64) * BLOCK_T, BLOCK_T), 0)
        nb = nb.to(tl.float64)
        m2 = qv[:, None] & tm[None, :]
        off = pbase + tiles.to(tl.int64)[None, :] * NF
        mean_x += tl.sum(tl.load(off + i_row[:, None], mask=m2, other=0.0) * nb[None, :],
                         axis=1)
        mean_y += tl.sum(tl.load(off + (CE + j_col)[:, None], mask=m2, other=0.0)
                         * nb[None, :], axis=1)
    mean_x = mean_x / n_total
    mean_y = mean_y / n_total
    sxx = tl.zeros([QP], dtype=tl.float64)
    syy = tl.zeros([QP], dtype=tl.float64)
    sxy = tl.zeros([QP], dtype=tl.float64)
    for t0 in range(0, NT_STATIC if NT_STATIC > 0 else n_tiles, TC):
        tiles = t0 + tl.arange(0, TC)
        tm = tiles < n_tiles
        nb = tl.where(tm, tl.minimum(T - tiles.to(tl.int64) * BLOCK_T, BLOCK_T), 0)
        nb = nb.to(tl.float64)
        m2 = qv[:, None] & tm[None, :]
        off = pbase + tiles.to(tl.int64)[None, :] * NF
        dx = tl.where(m2, tl.load(off + i_row[:, None], mask=m2, other=0.0)
                      - mean_x[:, None], 0.0)
        dy = tl.where(m2, tl.load(off + (CE + j_col)[:, None], mask=m2, other=0.0)
                      - mean_y[:, None], 0.0)
        sxx += tl.sum(tl.load(off + (OFF_SXX + i_row)[:, None], mask=m2, other=0.0)
                      + nb[None, :] * dx * dx, axis=1)
        syy += tl.sum(tl.load(off + (OFF_SYY + j_col)[:, None], mask=m2, other=0.0)
                      + nb[None, :] * dy * dy, axis=1)
        sxy += tl.sum(tl.load(off + (OFF_SXY + q)[:, None], mask=m2, other=0.0)
                      + nb[None, :] * dx * dy, axis=1)
    # Raw sums without centring: S_raw = S + N M M'.
    raw = zero_mean == 0
    sxx = tl.where(raw, sxx + n_total * mean_x * mean_x, sxx)
    syy = tl.where(raw, syy + n_total * mean_y * mean_y, syy)
    sxy = tl.where(raw, sxy + n_total * mean_x * mean_y, sxy)

    # ---- 2. SI-SDR of every pair (row C: the mixture, never clamped) ---------------
    # rho = sxy / sqrt(sxx) / sqrt(syy) in [-1, 1] (never sxx syy: it under/overflows),
    # SI-SDR = 10 log10((rho^2 + eps) / ((1 - rho)(1 + rho) + eps + tau (rho^2 + eps))),
    # a = d SI-SDR / d sxy, c = 2 d SI-SDR / d sxx.
    pv = qv & (sxx > 0) & (syy > 0) & _finite(sxx) & _finite(syy) & _finite(sxy)
    sx = tl.sqrt(tl.where(pv, sxx, 1.0))
    sy = tl.sqrt(tl.where(pv, syy, 1.0))
    rho = tl.where(pv, sxy, 0.0) / sx / sy
    rho = tl.minimum(tl.maximum(rho, -1.0), 1.0)
    rho = tl.where(collinear, tl.where(rho >= 0.0, 1.0, -1.0), rho)
    rho2 = rho * rho
    tau_q = tl.where(i_row < C, tau, 0.0)
    num = rho2 + eps
    den = (1.0 - rho) * (1.0 + rho) + eps + tau_q * num
    sdr = tl.where(pv, _LOG10_SCALE * tl.log(num / den), 0.0)
    d_rho2 = _LOG10_SCALE * (1.0 / num + (1.0 - tau_q) / den)
    coef_ok = pv & ~collinear
    a = tl.where(coef_ok, d_rho2 * 2.0 * rho / sx / sy, 0.0)
    c = tl.where(coef_ok, -2.0 * d_rho2 * rho2 / tl.where(pv, sxx, 1.0), 0.0)
    wbase = work_ptr + b * WS + q
    tl.store(wbase + W_SDR, sdr, mask=qv)
    tl.store(wbase + W_VALID, pv.to(tl.float64), mask=qv)
    tl.store(wbase + W_A, a, mask=qv)
    tl.store(wbase + W_C, c, mask=qv)
    tl.store(wbase + W_MX, tl.where(raw, 0.0, mean_x), mask=qv)
    tl.store(wbase + W_MY, tl.where(raw, 0.0, mean_y), mask=qv)
    # Non-finite rows (NaN/inf samples, or float64 too large to square): check_finite
    # reads these flags with one host sync.
    tl.store(wbase + W_NFX, (~(_finite(sxx) & _finite(mean_x))).to(tl.float64), mask=qv)
    tl.store(wbase + W_NFY, (~(_finite(syy) & _finite(mean_y))).to(tl.float64), mask=qv)
    tl.debug_barrier()

    # ---- 3. PIT: argmax over permutations p of sum_j SI-SDR(p[j], j) ------------------
    # Permutations in lexicographic order, decoded from their rank (Lehmer code, no
    # table); invalid pairs count 0; the first maximum wins (as std::next_permutation).
    jj = tl.arange(0, CP)
    jm = jj < C
    ework = work_ptr + b * WS
    if PIT:
        best = -inf
        best_code = 0
        for p0 in tl.static_range(0, N_PERM, PB):
            pp = p0 + tl.arange(0, PB)
            pm = pp < N_PERM
            rem = pp
            used = tl.zeros([PB], dtype=tl.int32)
            code = tl.zeros([PB], dtype=tl.int32)
            total = tl.zeros([PB], dtype=tl.float64)
            for pos in tl.static_range(C):
                f = 1
                for m in tl.static_range(2, C - pos):
                    f = f * m
                digit = rem // f
                rem = rem % f
                # the digit-th estimate not used yet
                chosen = tl.zeros([PB], dtype=tl.int32)
                seen = tl.zeros([PB], dtype=tl.int32)
                for k in tl.static_range(C):
                    free = ((used >> k) & 1) == 0
                    chosen = tl.where(free & (seen == digit), k, chosen)
                    seen += free.to(tl.int32)
                used = used | (1 << chosen)
                code = code | (chosen << (3 * pos))
                total += tl.load(ework + W_SDR + chosen * C + pos, mask=pm, other=0.0)
            total = tl.where(pm, total, -inf)
            cmax = tl.max(total, axis=0)
            cidx = tl.min(tl.where(total == cmax, pp, N_PERM), axis=0)
            ccode = tl.sum(tl.where(pp == cidx, code, 0), axis=0)
            better = cmax > best
            best = tl.where(better, cmax, best)
            best_code = tl.where(better, ccode, best_code)
        kk = (best_code >> (3 * jj)) & 7
        kk = tl.where(jm, kk, 0)
    else:
        kk = jj

    # ---- 4. items: SI-SDR(i) after PIT, masks, F = alpha L + bias ---------------------
    qk = kk * C + jj
    sdr_j = tl.load(ework + W_SDR + qk, mask=jm, other=0.0)
    pm_j = tl.load(ework + W_VALID + qk, mask=jm, other=0.0) != 0.0
    a_j = tl.load(ework + W_A + qk, mask=jm, other=0.0)
    c_j = tl.load(ework + W_C + qk, mask=jm, other=0.0)
    if HAS_MIX:
        qm = C * C + jj
        mix_j = tl.load(ework + W_SDR + qm, mask=jm, other=0.0)
        pm_j = pm_j & (tl.load(ework + W_VALID + qm, mask=jm, other=0.0) != 0.0)
        sisdri = tl.where(pm_j, sdr_j - mix_j, 0.0)
    else:
        sisdri = tl.zeros([CP], dtype=tl.float64)
    pm_j = pm_j & jm
    v = pm_j
    user = tl.load(mask_ptr + b * mask_sb + jj * mask_sc, mask=jm & (has_mask != 0),
                   other=1) != 0
    if BY_SOURCE:
        v = v & user
    sisdr = tl.where(v, sdr_j, 0.0)
    if HAS_MIX:
        loss_j = -sisdri
    else:
        loss_j = -sisdr
    bias = tl.load(bias_ptr + b * bias_sb + jj * bias_sc, mask=jm & (has_bias != 0),
                   other=0.0).to(tl.float64)
    # items: F (B C or B slots), L (same), count (B slots), contiguous for the normaliser
    n_items = B * C if BY_SOURCE else B
    f_ptr = item_ptr
    l_ptr = item_ptr + n_items
    cnt_ptr = item_ptr + 2 * n_items
    if BY_SOURCE:
        f = alpha * loss_j + bias
        ok = v & _finite(f)
        tl.store(f_ptr + b * C + jj, tl.where(ok, f, -inf), mask=jm)
        tl.store(l_ptr + b * C + jj, loss_j, mask=jm)
        valid_out = v
    else:
        count = tl.sum(v.to(tl.float64), axis=0)
        loss_b = tl.sum(tl.where(jm, loss_j, 0.0), axis=0) / tl.maximum(count, 1.0)
        f = alpha * loss_b + tl.sum(tl.where(jj == 0, bias, 0.0), axis=0)
        user_b = tl.sum(tl.where(jj == 0, user.to(tl.int32), 0), axis=0)
        kept = (count > 0) & (user_b != 0)
        ok = kept & _finite(f)
        tl.store(f_ptr + b, tl.where(ok, f, -inf))
        tl.store(l_ptr + b, loss_b)
        tl.store(cnt_ptr + b, count)
        # (an int product: the interpreter cannot broadcast a reduced i1 in `&`)
        valid_out = (v.to(tl.int32) * kept.to(tl.int32)) != 0

    # ---- 5. outputs, coef fields 1..9 per reference j (field 0 by the normaliser) ----
    item = b * C + jj
    tl.store(perm_ptr + item, kk.to(tl.int64), mask=jm)
    tl.store(valid_ptr + item, valid_out, mask=jm)
    tl.store(sisdr_ptr + item, sisdr.to(sisdr_ptr.dtype.element_ty), mask=jm)
    tl.store(sisdri_ptr + item, sisdri.to(sisdri_ptr.dtype.element_ty), mask=jm)
    cbase = coef_ptr + item * NCF
    tl.store(cbase + 1, tl.where(pm_j, a_j, 0.0), mask=jm)
    tl.store(cbase + 2, tl.where(pm_j, c_j, 0.0), mask=jm)
    tl.store(cbase + 3, tl.load(ework + W_MX + qk, mask=jm, other=0.0), mask=jm)
    tl.store(cbase + 4, tl.load(ework + W_MY + qk, mask=jm, other=0.0), mask=jm)
    tl.store(cbase + 5, v.to(tl.float64), mask=jm)
    if HAS_MIX:
        tl.store(cbase + 6, pm_j.to(tl.float64), mask=jm)
        nf_mix = tl.load(ework + W_NFX + C * C + jj, mask=jm, other=0.0)
    else:
        tl.store(cbase + 6, tl.zeros([CP], dtype=tl.float64), mask=jm)
        nf_mix = tl.zeros([CP], dtype=tl.float64)
    # est row j (pair (j, 0)), ref row j (pair (0, j)), the mixture (pair (C, 0))
    tl.store(cbase + 7, tl.load(ework + W_NFX + jj * C, mask=jm, other=0.0), mask=jm)
    tl.store(cbase + 8, tl.load(ework + W_NFY + jj, mask=jm, other=0.0), mask=jm)
    tl.store(cbase + 9, nf_mix, mask=jm)


@triton.jit(do_not_specialize=["B"])
def fused_normalise_kernel(item_ptr, coef_ptr, weights_ptr, loss_ptr, B,
                           C: tl.constexpr, BY_SOURCE: tl.constexpr, NB: tl.constexpr,
                           N_STATIC: tl.constexpr):
    """The batch-wide softmax: the only serial part, over n_items <= B C scalars.

    p_i = exp(F_i - max) / sum_k exp(F_k - max) over the items with finite F (others
    hold -inf and get p = 0); loss = sum_i p_i L_i; coef field 0 (w = d loss / d
    SI-SDR) = -p_i (source) or -p_b / count_b where the source is valid (example).
    Three sweeps (max, sum, normalise) of NB lanes over the items in a fixed order,
    lane partials reduced by a fixed tree at the end: deterministic. Its trip count
    is n_items / NB, the one place where the work of a program grows with B.
    """
    inf = float("inf")
    n_items = B * C if BY_SOURCE else B
    f_ptr = item_ptr
    l_ptr = item_ptr + n_items
    cnt_ptr = item_ptr + 2 * n_items
    r = tl.arange(0, NB)
    # ---- 1. the max of F, then the sum of exp(F - max) (two sweeps, as the reference) --
    run_max = tl.full([NB], -inf, tl.float64)
    for i0 in range(0, N_STATIC if N_STATIC > 0 else n_items, NB):
        idx = i0 + r
        run_max = tl.maximum(run_max, tl.load(f_ptr + idx, mask=idx < n_items, other=-inf))
    f_max = tl.max(run_max, axis=0)
    shift = tl.where(f_max > -inf, f_max, 0.0)
    run_sum = tl.zeros([NB], tl.float64)
    for i0 in range(0, N_STATIC if N_STATIC > 0 else n_items, NB):
        idx = i0 + r
        f = tl.load(f_ptr + idx, mask=idx < n_items, other=-inf)
        run_sum += tl.where(f > -inf, tl.exp(f - shift), 0.0)
    denom = tl.maximum(tl.sum(run_sum, axis=0), 2.2250738585072014e-308)
    # ---- 2. weights, loss, and coef w over the B C (reference) entries -----------------
    loss = tl.full([], 0.0, tl.float64)
    for i0 in range(0, N_STATIC if N_STATIC > 0 else n_items, NB):
        idx = i0 + r
        im = idx < n_items
        f = tl.load(f_ptr + idx, mask=im, other=-inf)
        p = tl.where(f > -inf, tl.exp(f - shift) / denom, 0.0)
        lv = tl.load(l_ptr + idx, mask=im, other=0.0)
        loss += tl.sum(tl.where(im, p * lv, 0.0), axis=0)
        tl.store(weights_ptr + idx, p.to(weights_ptr.dtype.element_ty), mask=im)
        if BY_SOURCE:
            tl.store(coef_ptr + idx.to(tl.int64) * _NCOEF, -p, mask=im)
        else:
            count = tl.load(cnt_ptr + idx, mask=im, other=1.0)
            wb = -p / tl.maximum(count, 1.0)
            for j in tl.static_range(C):
                cj = coef_ptr + (idx.to(tl.int64) * C + j) * _NCOEF
                gate = tl.load(cj + 5, mask=im, other=0.0)
                tl.store(cj, tl.where(gate != 0.0, wb, 0.0), mask=im)
    tl.store(loss_ptr, loss.to(loss_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=["has_gsdr", "gs_sb", "gs_sc", "has_gsdri", "gi_sb",
                               "gi_sc"])
def fused_backward_kernel(est_ptr, ref_ptr, perm_ptr, coef_ptr, gloss_ptr, gsdr_ptr,
                          gsdri_ptr, out_ptr, T, has_gsdr, gs_sb, gs_sc, has_gsdri,
                          gi_sb, gi_sc,
                          C: tl.constexpr, CP: tl.constexpr, IN_F64: tl.constexpr,
                          BLOCK_T: tl.constexpr):
    """d est[b, k, t] = s a (ref[b, j, t] - my_j) + s c (est[b, k, t] - mx_k), k = perm[b, j].

    Per reference j: s = grad_loss w + [gate 5] grad_sisdr[b, j] + [gate 6]
    grad_sisdri[b, j] (float64), taken only when a or c is non-zero; a term whose
    factor is exactly 0 contributes exactly 0 (masked items holding NaN get 0).
    """
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1).to(tl.int64)
    offs = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = offs < T
    j = tl.arange(0, CP)
    jm = j < C
    cb = coef_ptr + (b * C + j) * _NCOEF
    k = tl.load(perm_ptr + b * C + j, mask=jm, other=0)
    w = tl.load(cb + 0, mask=jm, other=0.0)
    a = tl.load(cb + 1, mask=jm, other=0.0)
    c = tl.load(cb + 2, mask=jm, other=0.0)
    g5 = tl.load(cb + 5, mask=jm, other=0.0)
    g6 = tl.load(cb + 6, mask=jm, other=0.0)
    gl = tl.load(gloss_ptr).to(tl.float64)
    has_gsdr = has_gsdr + tl.zeros([], tl.int32)
    has_gsdri = has_gsdri + tl.zeros([], tl.int32)
    gs = tl.load(gsdr_ptr + b * gs_sb + j * gs_sc, mask=jm & (has_gsdr != 0) & (g5 != 0.0),
                 other=0.0).to(tl.float64)
    gi = tl.load(gsdri_ptr + b * gi_sb + j * gi_sc, mask=jm & (has_gsdri != 0) & (g6 != 0.0),
                 other=0.0).to(tl.float64)
    s = tl.where(w != 0.0, gl * w, 0.0) + gs + gi
    s = tl.where((a != 0.0) | (c != 0.0), s, 0.0)
    sa = tl.where((s != 0.0) & (a != 0.0), s * a, 0.0)
    sc = tl.where((s != 0.0) & (c != 0.0), s * c, 0.0)
    mx = tl.load(cb + 3, mask=jm, other=0.0)
    my = tl.load(cb + 4, mask=jm, other=0.0)
    m2 = jm[:, None] & tmask[None, :]
    x_rows = (b * C + k)[:, None] * T + offs[None, :]
    y_rows = (b * C + j.to(tl.int64))[:, None] * T + offs[None, :]
    xv = _widen(tl.load(est_ptr + x_rows, mask=m2 & (sc != 0.0)[:, None], other=0.0), IN_F64)
    yv = _widen(tl.load(ref_ptr + y_rows, mask=m2 & (sa != 0.0)[:, None], other=0.0), IN_F64)
    out = tl.where((sa != 0.0)[:, None], sa[:, None] * (yv - my[:, None]), 0.0) \
        + tl.where((sc != 0.0)[:, None], sc[:, None] * (xv - mx[:, None]), 0.0)
    if IN_F64:
        res = out
    else:
        res = narrow_from_f32(out.to(tl.float32), out_ptr.dtype.element_ty)
    tl.store(out_ptr + x_rows, res, mask=m2)

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

COEF_FIELDS = 11
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
        r = v.to(tl.float32).to(tl.float64)
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


@triton.jit
def fused_epilogue_kernel(
        part_ptr, alpha_ptr, bias_ptr, mask_ptr, table_ptr,
        loss_ptr, sisdr_ptr, sisdri_ptr, weights_ptr, perm_ptr, valid_ptr, coef_ptr,
        B, T, n_tiles, bias_sb, bias_sc, mask_sb, mask_sc, eps_bits, tau_bits,
        C: tl.constexpr, CP: tl.constexpr, HAS_MIX: tl.constexpr, QP: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, PIT: tl.constexpr,
        N_PERM: tl.constexpr, PB: tl.constexpr, BY_SOURCE: tl.constexpr,
        ZERO_MEAN: tl.constexpr, OUT_F64: tl.constexpr, BLOCK_T: tl.constexpr,
        BB: tl.constexpr, TC: tl.constexpr, B_STATIC: tl.constexpr,
        NT_STATIC: tl.constexpr):
    """The whole batch in one program: merge, SI-SDR, PIT, masks, softmax pmf, loss, coef."""
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
    W_F: tl.constexpr = 8 * QN
    W_L: tl.constexpr = 8 * QN + C
    W_COUNT: tl.constexpr = 8 * QN + 2 * C
    WS: tl.constexpr = _WPP * QN + 2 * C + 1
    NCF: tl.constexpr = _NCOEF
    R: tl.constexpr = BB * QP

    eps = _f64_from_bits(eps_bits)
    tau = _f64_from_bits(tau_bits)
    alpha = tl.load(alpha_ptr).to(tl.float64)
    inf = float("inf")
    n_total = T + tl.zeros([], tl.float64)
    # Exact gradient 0 where the centred signals span at most one dimension
    # (T = 2 centred, T = 1 raw): every valid pair then has |rho| = 1 and a constant
    # SI-SDR, and the closed form would return rounding noise times ~1/eps.
    grad_on = (T - ZERO_MEAN) > 1
    work_ptr = part_ptr + (B + tl.zeros([], tl.int64)) * n_tiles * NF

    # Running max and rescaled sum of exp(F - max) over the valid items.
    run_max = tl.full([], -inf, tl.float64)
    run_sum = tl.full([], 0.0, tl.float64)

    r = tl.arange(0, R)
    q = r % QP
    i_row = q // C
    j_col = q % C
    bl = tl.arange(0, BB)
    jj = tl.arange(0, CP)
    jm = jj < C
    for b0 in range(0, B_STATIC if B_STATIC > 0 else B, BB):
        # ---- merge the tile partials, in pair space (b, q = i C + j) ----------------
        bb = b0 + r // QP
        rv = (bb < B) & (q < QN)
        pbase = part_ptr + bb.to(tl.int64) * n_tiles * NF
        mean_x = tl.zeros([R], dtype=tl.float64)
        mean_y = tl.zeros([R], dtype=tl.float64)
        if ZERO_MEAN:
            for t0 in range(0, NT_STATIC if NT_STATIC > 0 else n_tiles, TC):
                tiles = t0 + tl.arange(0, TC)
                tm = tiles < n_tiles
                nb = tl.where(tm, tl.minimum(T - tiles.to(tl.int64) * BLOCK_T, BLOCK_T), 0)
                nb = nb.to(tl.float64)
                m2 = rv[:, None] & tm[None, :]
                off = pbase[:, None] + tiles.to(tl.int64)[None, :] * NF
                mx_t = tl.load(off + i_row[:, None], mask=m2, other=0.0)
                my_t = tl.load(off + (CE + j_col)[:, None], mask=m2, other=0.0)
                mean_x += tl.sum(mx_t * nb[None, :], axis=1)
                mean_y += tl.sum(my_t * nb[None, :], axis=1)
            mean_x = mean_x / n_total
            mean_y = mean_y / n_total
        sxx = tl.zeros([R], dtype=tl.float64)
        syy = tl.zeros([R], dtype=tl.float64)
        sxy = tl.zeros([R], dtype=tl.float64)
        for t0 in range(0, NT_STATIC if NT_STATIC > 0 else n_tiles, TC):
            tiles = t0 + tl.arange(0, TC)
            tm = tiles < n_tiles
            nb = tl.where(tm, tl.minimum(T - tiles.to(tl.int64) * BLOCK_T, BLOCK_T), 0)
            nb = nb.to(tl.float64)
            m2 = rv[:, None] & tm[None, :]
            off = pbase[:, None] + tiles.to(tl.int64)[None, :] * NF
            mx_t = tl.load(off + i_row[:, None], mask=m2, other=0.0)
            my_t = tl.load(off + (CE + j_col)[:, None], mask=m2, other=0.0)
            sxx_t = tl.load(off + (OFF_SXX + i_row)[:, None], mask=m2, other=0.0)
            syy_t = tl.load(off + (OFF_SYY + j_col)[:, None], mask=m2, other=0.0)
            sxy_t = tl.load(off + (OFF_SXY + q)[:, None], mask=m2, other=0.0)
            dx = tl.where(m2, mx_t - mean_x[:, None], 0.0)
            dy = tl.where(m2, my_t - mean_y[:, None], 0.0)
            sxx += tl.sum(sxx_t + nb[None, :] * dx * dx, axis=1)
            syy += tl.sum(syy_t + nb[None, :] * dy * dy, axis=1)
            sxy += tl.sum(sxy_t + nb[None, :] * dx * dy, axis=1)

        # ---- SI-SDR of every pair (row C: the mixture, never clamped) --------------
        pv = rv & (sxx > 0) & (syy > 0) & _finite(sxx) & _finite(syy) & _finite(sxy)
        sx = tl.sqrt(tl.where(pv, sxx, 1.0))
        sy = tl.sqrt(tl.where(pv, syy, 1.0))
        rho = tl.where(pv, sxy, 0.0) / (sx * sy)
        rho = tl.minimum(tl.maximum(rho, -1.0), 1.0)
        rho2 = rho * rho
        residual = (1.0 - rho) * (1.0 + rho)
        tau_q = tl.where(i_row < C, tau, 0.0)
        num = rho2 + eps
        den = residual + eps + tau_q * num
        sdr = tl.where(pv, _LOG10_SCALE * tl.log(num / den), 0.0)
        dsdr_drho2 = _LOG10_SCALE * (1.0 / num + (1.0 - tau_q) / den)
        coef_ok = pv & grad_on
        a = tl.where(coef_ok, dsdr_drho2 * (2.0 * rho / (sx * sy)), 0.0)
        c = tl.where(coef_ok, 2.0 * dsdr_drho2 * (-rho2 / tl.where(pv, sxx, 1.0)), 0.0)
        wbase = work_ptr + bb.to(tl.int64) * WS + q
        tl.store(wbase + W_SDR, sdr, mask=rv)
        tl.store(wbase + W_VALID, pv.to(tl.float64), mask=rv)
        tl.store(wbase + W_A, a, mask=rv)
        tl.store(wbase + W_C, c, mask=rv)
        tl.store(wbase + W_MX, mean_x, mask=rv)
        tl.store(wbase + W_MY, mean_y, mask=rv)
        # Non-finite rows (NaN/inf samples, or float64 too large to square): read by
        # check_finite with one host sync, from the coef flags below.
        nfx = ~(_finite(sxx) & _finite(mean_x))
        nfy = ~(_finite(syy) & _finite(mean_y))
        tl.store(wbase + W_NFX, nfx.to(tl.float64), mask=rv)
        tl.store(wbase + W_NFY, nfy.to(tl.float64), mask=rv)
        tl.debug_barrier()

        # ---- PIT: the best permutation per example (first one on ties) -------------
        eb = b0 + bl
        ev = eb < B
        ework = work_ptr + eb.to(tl.int64) * WS
        m_item = ev[:, None] & jm[None, :]
        if PIT:
            best = tl.full([BB], -inf, tl.float64)
            best_p = tl.zeros([BB], dtype=tl.int32)
            for p0 in tl.static_range(0, N_PERM, PB):
                pp = p0 + tl.arange(0, PB)
                pm = pp < N_PERM
                total = tl.zeros([BB, PB], dtype=tl.float64)
                for j in tl.static_range(C):
                    k = tl.load(table_ptr + pp * C + j, mask=pm, other=0).to(tl.int32)
                    total += tl.load(ework[:, None] + W_SDR + k[None, :] * C + j,
                                     mask=ev[:, None] & pm[None, :], other=0.0)
                total = tl.where(pm[None, :], total, -inf)
                cmax = tl.max(total, axis=1)
                cidx = tl.min(tl.where(total == cmax[:, None], pp[None, :], N_PERM), axis=1)
                better = cmax > best
                best = tl.where(better, cmax, best)
                best_p = tl.where(better, cidx, best_p)
            kk = tl.load(table_ptr + best_p[:, None] * C + jj[None, :], mask=m_item,
                         other=0).to(tl.int32)
        else:
            kk = tl.zeros([BB, CP], dtype=tl.int32) + jj[None, :]

        # ---- items: SI-SDR(i) after PIT, masks, scores --------------------------------
        qk = kk * C + jj[None, :]
        sdr_j = tl.load(ework[:, None] + W_SDR + qk, mask=m_item, other=0.0)
        valid0 = tl.load(ework[:, None] + W_VALID + qk, mask=m_item, other=0.0) != 0.0
        a_j = tl.load(ework[:, None] + W_A + qk, mask=m_item, other=0.0)
        c_j = tl.load(ework[:, None] + W_C + qk, mask=m_item, other=0.0)
        mx_j = tl.load(ework[:, None] + W_MX + qk, mask=m_item, other=0.0)
        my_j = tl.load(ework[:, None] + W_MY + qk, mask=m_item, other=0.0)
        nf_est = tl.load(ework[:, None] + W_NFX + qk, mask=m_item, other=0.0)
        nf_ref = tl.load(ework[:, None] + W_NFY + qk, mask=m_item, other=0.0)
        if HAS_MIX:
            nf_mix = tl.load(ework[:, None] + W_NFX + C * C + jj[None, :], mask=m_item,
                             other=0.0)
        else:
            nf_mix = tl.zeros([BB, CP], dtype=tl.float64)
        if HAS_MIX:
            qm = C * C + jj[None, :]
            mix_j = tl.load(ework[:, None] + W_SDR + qm, mask=m_item, other=0.0)
            valid0 = valid0 & (tl.load(ework[:, None] + W_VALID + qm, mask=m_item,
                                       other=0.0) != 0.0)
            sisdri = tl.where(valid0, sdr_j - mix_j, 0.0)
        else:
            sisdri = tl.zeros([BB, CP], dtype=tl.float64)
        valid0 = valid0 & m_item
        valid1 = valid0
        if HAS_MASK and BY_SOURCE:
            um = tl.load(mask_ptr + eb.to(tl.int64)[:, None] * mask_sb + jj[None, :] * mask_sc,
                         mask=m_item, other=0) != 0
            valid1 = valid1 & um
        sisdr = tl.where(valid1, sdr_j, 0.0)
        if HAS_MIX:
            loss_j = -sisdri
        else:
            loss_j = -sisdr
        if BY_SOURCE:
            score = alpha * loss_j
            if HAS_BIAS:
                score += tl.load(bias_ptr + eb.to(tl.int64)[:, None] * bias_sb
                                 + jj[None, :] * bias_sc, mask=m_item, other=0.0).to(tl.float64)
            item_ok = valid1 & _finite(score)
            f_masked = tl.where(item_ok, score, -inf)
            tl.store(ework[:, None] + W_F + jj[None, :], f_masked, mask=m_item)
            tl.store(ework[:, None] + W_L + jj[None, :], loss_j, mask=m_item)
            valid_out = valid1
            chunk_max = tl.max(tl.max(f_masked, axis=1), axis=0)
        else:
            count = tl.sum(valid1.to(tl.float64), axis=1)
            loss_b = tl.sum(loss_j, axis=1) / tl.maximum(count, 1.0)
            score_b = alpha * loss_b
            if HAS_BIAS:
                score_b += tl.load(bias_ptr + eb.to(tl.int64) * bias_sb, mask=ev,
                                   other=0.0).to(tl.float64)
            item_ok = ev & (count > 0) & _finite(score_b)
            if HAS_MASK:
                item_ok = item_ok & (tl.load(mask_ptr + eb.to(tl.int64) * mask_sb, mask=ev,
                                             other=0) != 0)
            f_masked = tl.where(item_ok, score_b, -inf)
            tl.store(ework + W_F, f_masked, mask=ev)
            tl.store(ework + W_L, loss_b, mask=ev)
            tl.store(ework + W_COUNT, count, mask=ev)
            valid_out = valid1 & ((count > 0) & ev)[:, None]
            if HAS_MASK:
                valid_out = valid_out & (tl.load(mask_ptr + eb.to(tl.int64) * mask_sb,
                                                 mask=ev, other=0) != 0)[:, None]
            chunk_max = tl.max(f_masked, axis=0)
        new_max = tl.maximum(run_max, chunk_max)
        shift = tl.where(new_max > -inf, new_max, 0.0)
        e = tl.where(f_masked > -inf, tl.exp(f_masked - shift), 0.0)
        if BY_SOURCE:
            chunk_sum = tl.sum(tl.sum(e, axis=1), axis=0)
        else:
            chunk_sum = tl.sum(e, axis=0)
        run_sum = run_sum * tl.where(run_max > -inf, tl.exp(run_max - shift), 0.0) + chunk_sum
        run_max = new_max

        # ---- outputs of the item stage ---------------------------------------------
        item = eb.to(tl.int64)[:, None] * C + jj[None, :]
        tl.store(perm_ptr + item, kk.to(tl.int64), mask=m_item)
        tl.store(valid_ptr + item, valid_out, mask=m_item)
        tl.store(sisdr_ptr + item, _narrow(sisdr, OUT_F64), mask=m_item)
        tl.store(sisdri_ptr + item, _narrow(sisdri, OUT_F64), mask=m_item)
        cbase = coef_ptr + (eb.to(tl.int64)[:, None] * C + kk) * NCF
        if HAS_MIX:
            v0_out = valid0
        else:
            v0_out = valid0 & (jj[None, :] < 0)
        tl.store(cbase + 0, jj[None, :].to(tl.float64) + tl.zeros([BB, CP], tl.float64),
                 mask=m_item)
        tl.store(cbase + 2, valid1.to(tl.float64), mask=m_item)
        tl.store(cbase + 3, v0_out.to(tl.float64), mask=m_item)
        tl.store(cbase + 4, a_j, mask=m_item)
        tl.store(cbase + 5, c_j, mask=m_item)
        tl.store(cbase + 6, mx_j, mask=m_item)
        tl.store(cbase + 7, my_j, mask=m_item)
        tl.store(cbase + 8, nf_est, mask=m_item)
        tl.store(cbase + 9, nf_ref, mask=m_item)
        tl.store(cbase + 10, nf_mix, mask=m_item)
    tl.debug_barrier()

    # ---- normalise: weights, loss, d loss / d SI-SDR ------------------------------------
    shift = tl.where(run_max > -inf, run_max, 0.0)
    denom = tl.maximum(run_sum, 2.2250738585072014e-308)
    loss = tl.full([], 0.0, tl.float64)
    for b0 in range(0, B_STATIC if B_STATIC > 0 else B, BB):
        eb = b0 + bl
        ev = eb < B
        ework = work_ptr + eb.to(tl.int64) * WS
        m_item = ev[:, None] & jm[None, :]
        item = eb.to(tl.int64)[:, None] * C + jj[None, :]
        kk = tl.load(perm_ptr + item, mask=m_item, other=0)
        cbase = coef_ptr + (eb.to(tl.int64)[:, None] * C + kk) * NCF
        if BY_SOURCE:
            f = tl.load(ework[:, None] + W_F + jj[None, :], mask=m_item, other=-inf)
            lj = tl.load(ework[:, None] + W_L + jj[None, :], mask=m_item, other=0.0)
            p = tl.where(f > -inf, tl.exp(f - shift), 0.0) / denom
            loss += tl.sum(tl.sum(p * lj, axis=1), axis=0)
            tl.store(weights_ptr + item, _narrow(p, OUT_F64), mask=m_item)
            tl.store(cbase + 1, -p, mask=m_item)
        else:
            f = tl.load(ework + W_F, mask=ev, other=-inf)
            lb = tl.load(ework + W_L, mask=ev, other=0.0)
            count = tl.load(ework + W_COUNT, mask=ev, other=1.0)
            p = tl.where(f > -inf, tl.exp(f - shift), 0.0) / denom
            loss += tl.sum(p * lb, axis=0)
            tl.store(weights_ptr + eb, _narrow(p, OUT_F64), mask=ev)
            v1 = tl.load(cbase + 2, mask=m_item, other=0.0)
            w = tl.where(v1 != 0.0, (-p / tl.maximum(count, 1.0))[:, None], 0.0)
            tl.store(cbase + 1, w, mask=m_item)
    tl.store(loss_ptr, _narrow(loss, OUT_F64))


@triton.jit
def fused_backward_kernel(est_ptr, ref_ptr, coef_ptr, gloss_ptr, gsdr_ptr, gsdri_ptr, out_ptr,
                          T, gs_sb, gs_sc, gi_sb, gi_sc,
                          C: tl.constexpr, CP: tl.constexpr, HAS_GLOSS: tl.constexpr,
                          HAS_GSDR: tl.constexpr, HAS_GSDRI: tl.constexpr,
                          IN_F64: tl.constexpr, BLOCK_T: tl.constexpr):
    """d est[b, k, t] = s (a (ref[b, j, t] - my_j) + c (est[b, k, t] - mx_k)), j = inv perm.

    s = grad_loss w + grad_sisdr[b, j] v1 + grad_sisdri[b, j] v0, all float64; a term
    whose coefficient is exactly 0 contributes exactly 0 (masked items with NaN
    signals get a zero gradient, not NaN).
    """
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1).to(tl.int64)
    offs = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = offs < T
    k = tl.arange(0, CP)
    km = k < C
    cb = coef_ptr + (b * C + k) * _NCOEF
    j = tl.load(cb + 0, mask=km, other=0.0).to(tl.int64)
    s = tl.zeros([CP], dtype=tl.float64)
    if HAS_GLOSS:
        w = tl.load(cb + 1, mask=km, other=0.0)
        gl = tl.load(gloss_ptr).to(tl.float64)
        s += tl.where(w != 0.0, gl * w, 0.0)
    if HAS_GSDR:
        v1 = tl.load(cb + 2, mask=km, other=0.0)
        g1 = tl.load(gsdr_ptr + b * gs_sb + j * gs_sc, mask=km & (v1 != 0.0), other=0.0)
        s += g1.to(tl.float64)
    if HAS_GSDRI:
        v0 = tl.load(cb + 3, mask=km, other=0.0)
        g0 = tl.load(gsdri_ptr + b * gi_sb + j * gi_sc, mask=km & (v0 != 0.0), other=0.0)
        s += g0.to(tl.float64)
    ga = s * tl.load(cb + 4, mask=km, other=0.0)
    gc = s * tl.load(cb + 5, mask=km, other=0.0)
    mx = tl.load(cb + 6, mask=km, other=0.0)
    my = tl.load(cb + 7, mask=km, other=0.0)
    m2 = km[:, None] & tmask[None, :]
    x_rows = (b * C + k.to(tl.int64))[:, None] * T + offs[None, :]
    y_rows = (b * C + j)[:, None] * T + offs[None, :]
    xv = _widen(tl.load(est_ptr + x_rows, mask=m2 & (gc != 0.0)[:, None], other=0.0), IN_F64)
    yv = _widen(tl.load(ref_ptr + y_rows, mask=m2 & (ga != 0.0)[:, None], other=0.0), IN_F64)
    out = tl.where((ga != 0.0)[:, None], ga[:, None] * (yv - my[:, None]), 0.0) \
        + tl.where((gc != 0.0)[:, None], gc[:, None] * (xv - mx[:, None]), 0.0)
    tl.store(out_ptr + x_rows, _narrow(out, IN_F64).to(out_ptr.dtype.element_ty), mask=m2)
